//! The SQL stores when the database fails: down, slow or refusing connections (PostgreSQL behind
//! a loopback proxy the test switches), a closed pool, a corrupt or unreadable SQLite file.
//!
//! What users depend on: the layer answers 503 with `Retry-After` (never 401, never cached) and
//! recovers by itself once the database is back; store operations fail with a clear
//! `StoreError` that keeps its cause; a bad SQLite file is an error at open, not a panic.

mod common;

use std::error::Error as _;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::store_suite;
use keygate::key::KeyKind;
use keygate::store::{NewKey, StoreError};
use keygate::verify::{KeyVerifier, VerifyErrorKind};
use keygate::{CachedVerifier, KeyStore, RequireApiKey, SqliteKeyStore};
use store_suite::new_owner;
use tower::ServiceExt;

fn guarded<V: KeyVerifier>(verifier: V) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireApiKey::new(CachedVerifier::new(verifier)))
}

/// Status and `Retry-After` of one request with `key`; never waits more than 10 s.
async fn request(app: &Router, key: &str) -> (StatusCode, Option<String>, bool) {
    let request = Request::get("/")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
        .await
        .expect("the layer answers within 10 s")
        .expect("infallible");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let challenged = response.headers().contains_key("www-authenticate");
    (response.status(), retry_after, challenged)
}

#[track_caller]
fn assert_unavailable(
    what: &str,
    (status, retry_after, challenged): (StatusCode, Option<String>, bool),
) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{what}: Retry-After");
    assert!(
        !challenged,
        "{what}: an outage is not the caller's key's fault"
    );
}

#[track_caller]
fn assert_backend_error(error: &StoreError, doing: &str, cause: &str) {
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert!(error.to_string().contains(doing), "{error}");
    let source = error.source().map(ToString::to_string).unwrap_or_default();
    assert!(
        source.contains(cause),
        "cause {source:?} should mention {cause:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_closed_sqlite_pool_is_a_clear_error_and_a_503() {
    let (store, _dir) = store_suite::sqlite_file().await.expect("sqlite");
    let created = store
        .create(new_owner(KeyKind::User), NewKey::new("k"))
        .await
        .expect("create");
    let app = guarded(store.clone());
    store.pool().close().await;

    let error = store.list(&created.record.owner).await.expect_err("closed");
    assert_backend_error(&error, "listing keys", "closed");
    let error = store.revoke(created.record.id).await.expect_err("closed");
    assert_backend_error(&error, "revoking a key", "closed");
    let error = store
        .create(new_owner(KeyKind::Team), NewKey::new("k"))
        .await
        .expect_err("closed");
    assert_backend_error(&error, "creating a key", "closed");

    let error = store.verify(&created.key).await.expect_err("closed");
    assert_eq!(error.kind(), VerifyErrorKind::Store);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    assert!(!error.message().contains(created.key.expose_secret()));
    assert_unavailable(
        "closed pool",
        request(&app, created.key.expose_secret()).await,
    );
}

#[tokio::test]
async fn a_corrupt_sqlite_file_is_an_error_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("corrupt.db");
    std::fs::write(
        &path,
        "this is not a SQLite database, just text. ".repeat(200),
    )
    .expect("write");
    let error = SqliteKeyStore::open(&path).await.expect_err("corrupt");
    assert_backend_error(&error, "opening the SQLite database", "not a database");
}

#[tokio::test]
async fn an_unreadable_sqlite_path_is_an_error_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory where the file should be, and a file in a directory that does not exist.
    let error = SqliteKeyStore::open(dir.path())
        .await
        .expect_err("a directory");
    assert_backend_error(&error, "opening the SQLite database", "unable to open");
    let error = SqliteKeyStore::open(dir.path().join("missing/keys.db"))
        .await
        .expect_err("no dir");
    assert_backend_error(&error, "opening the SQLite database", "unable to open");
    let error = SqliteKeyStore::open("sqlite://?bad=option")
        .await
        .expect_err("bad URL");
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL behind a switchable proxy
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "postgres")]
mod postgres {
    use std::net::SocketAddr;
    use std::str::FromStr;

    use sqlx::postgres::PgConnectOptions;
    use sqlx::ConnectOptions as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    use super::*;
    use keygate::PostgresKeyStore;
    use store_suite::PgSchema;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mode {
        /// Bytes flow both ways.
        Up,
        /// Connections are accepted and held, but no byte is forwarded: a database that hangs.
        Stalled,
        /// Every connection is closed at once, new ones as soon as they are accepted.
        Down,
    }

    /// A loopback TCP proxy in front of PostgreSQL.
    struct Proxy {
        addr: SocketAddr,
        mode: watch::Sender<Mode>,
    }

    impl Proxy {
        async fn start(upstream: SocketAddr) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (mode, _) = watch::channel(Mode::Up);
            let modes = mode.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let mut rx = modes.subscribe();
                    if *rx.borrow() == Mode::Down {
                        continue; // dropped: closed at once
                    }
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let (up, down) = (rx.clone(), rx.clone());
                        tokio::select! {
                            _ = pump(cr, sw, up) => {}
                            _ = pump(sr, cw, down) => {}
                            _ = rx.wait_for(|m| *m == Mode::Down) => {}
                        }
                    });
                }
            });
            Self { addr, mode }
        }

        fn set(&self, mode: Mode) {
            self.mode.send_replace(mode);
        }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut mode: watch::Receiver<Mode>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Hold the bytes while stalled.
            if mode.wait_for(|m| *m == Mode::Up).await.is_err() {
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// A store in a fresh schema, reached through a proxy; `None` without `DATABASE_URL`.
    async fn behind_proxy() -> Option<(PostgresKeyStore, Proxy, PgSchema)> {
        let url = store_suite::database_url()?;
        let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL");
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let proxy = Proxy::start(upstream).await;
        let via = options
            .host("127.0.0.1")
            .port(proxy.addr.port())
            .to_url_lossy()
            .to_string();
        let schema = PgSchema {
            url,
            name: store_suite::fresh_schema(),
        };
        let store = PostgresKeyStore::builder(via)
            .schema(&schema.name)
            .max_connections(4)
            .acquire_timeout(Duration::from_millis(500))
            .check_timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("connect through the proxy");
        Some((store, proxy, schema))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_down_is_503_and_recovers_by_itself() {
        let Some((store, proxy, _schema)) = behind_proxy().await else {
            return;
        };
        let owner = new_owner(KeyKind::User);
        let seen = store
            .create(owner.clone(), NewKey::new("seen"))
            .await
            .expect("create");
        let unseen = store
            .create(owner.clone(), NewKey::new("unseen"))
            .await
            .expect("create");
        let app = guarded(store.clone());
        assert_eq!(
            request(&app, seen.key.expose_secret()).await.0,
            StatusCode::OK
        );

        proxy.set(Mode::Down);
        for attempt in 0..3 {
            assert_unavailable(
                &format!("down, attempt {attempt}"),
                request(&app, unseen.key.expose_secret()).await,
            );
        }
        // A store operation names what failed and keeps the driver's error.
        let error = store.list(&owner).await.expect_err("down");
        assert!(error.to_string().contains("listing keys"), "{error}");
        assert!(error.source().is_some(), "{error:?}");

        proxy.set(Mode::Up);
        assert_eq!(
            request(&app, unseen.key.expose_secret()).await.0,
            StatusCode::OK,
            "back at once, nothing cached from the outage"
        );
        assert_eq!(store.list(&owner).await.expect("list").len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_postgres_is_503_not_a_hang() {
        let Some((store, proxy, _schema)) = behind_proxy().await else {
            return;
        };
        let created = store
            .create(new_owner(KeyKind::Team), NewKey::new("k"))
            .await
            .expect("create");
        let app = guarded(store.clone());

        proxy.set(Mode::Stalled);
        assert_unavailable("stalled", request(&app, created.key.expose_secret()).await);
        let error = store.verify(&created.key).await.expect_err("stalled");
        assert!(
            matches!(
                error.kind(),
                VerifyErrorKind::Timeout | VerifyErrorKind::Store
            ),
            "{error:?}"
        );

        // The held bytes flow again; the pool sorts out the connections a timed-out check left.
        proxy.set(Mode::Up);
        assert_eq!(
            request(&app, created.key.expose_secret()).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_clear_error() {
        let Some(url) = store_suite::database_url() else {
            return;
        };
        // A port nothing listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let via = PgConnectOptions::from_str(&url)
            .expect("DATABASE_URL")
            .host("127.0.0.1")
            .port(port)
            .to_url_lossy()
            .to_string();
        let error = PostgresKeyStore::builder(via)
            .acquire_timeout(Duration::from_secs(2))
            .connect()
            .await
            .expect_err("refused");
        assert!(
            error.to_string().contains("connecting to PostgreSQL"),
            "{error}"
        );
        assert!(error.source().is_some(), "{error:?}");
    }

    #[tokio::test]
    async fn a_closed_postgres_pool_is_a_clear_error_and_a_503() {
        let Some((store, _schema)) = store_suite::postgres().await else {
            return;
        };
        let created = store
            .create(new_owner(KeyKind::User), NewKey::new("k"))
            .await
            .expect("create");
        let app = guarded(store.clone());
        store.pool().close().await;
        let error = store.get(created.record.id).await.expect_err("closed");
        assert_backend_error(&error, "reading a key", "closed");
        let error = store
            .update_description(created.record.id, "x".into())
            .await
            .expect_err("closed");
        assert_backend_error(&error, "updating a key", "closed");
        assert_unavailable(
            "closed pool",
            request(&app, created.key.expose_secret()).await,
        );
    }
}
