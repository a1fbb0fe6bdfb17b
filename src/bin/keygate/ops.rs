//! The operations side of `keygate serve`: `/healthz`, `/readyz`, `/metrics`, the shutdown
//! signal, and the listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Failure;

/// How the service tells whether it can answer.
#[derive(Clone)]
pub(crate) enum Readiness {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    /// Stack Auth at this base URL answers HTTP at all.
    StackAuth {
        client: reqwest::Client,
        url: String,
    },
}

/// How long a readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    /// `Ok` when the store answers a trivial query / Stack Auth answers; else a one-line reason.
    async fn check(&self) -> Result<(), String> {
        let probe = async {
            match self {
                Readiness::Sqlite(pool) => sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|e| format!("the key database does not answer: {e}")),
                Readiness::Postgres(pool) => sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|e| format!("the key database does not answer: {e}")),
                Readiness::StackAuth { client, url } => client
                    .get(url)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| format!("Stack Auth is unreachable: {e}")),
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the readiness probe took longer than {PROBE_TIMEOUT:?}"
            )),
        }
    }
}

/// Shared by the ops handlers.
struct Ops {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Installs the process-wide Prometheus recorder (and its upkeep task).
pub(crate) fn install_metrics() -> Result<PrometheusHandle, Failure> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Failure::Runtime(format!("cannot install the metrics recorder: {e}")))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `/healthz`, `/readyz` and `/metrics`.
pub(crate) fn routes(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render))
        .with_state(Arc::new(Ops { readiness, metrics }))
}

async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    match ops.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            )
                .into_response()
        }
    }
}

async fn render(State(ops): State<Arc<Ops>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}

/// Resolves once SIGTERM or SIGINT arrives; tells every listener through `stop`.
pub(crate) async fn wait_for_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    match (terminate, interrupt) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutting down: finishing requests in flight");
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
    // Nobody listening any more means everything already stopped.
    let _ = stop.send(true);
}

/// Binds `addr`.
pub(crate) async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {addr} ({flag}): {e}")))
}

/// Serves `app` on `listener` until `stop` turns true, then finishes requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let addr = listener.local_addr().ok();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        // An error means the sender is gone: stop too.
        let _ = stop.wait_for(|stopped| *stopped).await;
    })
    .await
    .map_err(|e| Failure::Runtime(format!("the listener on {addr:?} failed: {e}")))
}
