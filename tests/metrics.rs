//! The `metrics` feature: traffic of every outcome through the layer moves exactly the counters
//! it should, as a Prometheus recorder renders them, and no rendered line names a key, a key id
//! or an owner.
//!
//! One recorder per test, installed on this thread only (`metrics::with_local_recorder`), with a
//! current-thread runtime on the same thread: no global recorder, so tests stay independent.

mod common;

use std::collections::BTreeMap;

use axum::Router;
use common::app::routes;
use common::http::{auth, bearer, send, Hdr};
use common::keys::{secret, unknown_secret, with_bad_checksum, Keys};
use common::verifier::CountingVerifier;
use keygate::{CachedVerifier, RequireApiKey};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// Runs `traffic` on this thread with `recorder` as its recorder.
fn recorded<F: std::future::Future<Output = ()>>(
    recorder: &PrometheusRecorder,
    traffic: impl FnOnce() -> F,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(recorder, || runtime.block_on(traffic()));
}

/// Every rendered sample, `name{labels}` → value (comments dropped).
fn samples(rendered: &str) -> BTreeMap<String, f64> {
    rendered
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn expect_status(app: &Router, headers: &[Hdr], status: u16, what: &str) {
    let reply = send(app, "/me", headers).await;
    assert_eq!(reply.status.as_u16(), status, "{what}: {reply:?}");
}

#[test]
fn every_outcome_moves_its_counters_exactly_and_names_no_key_id_or_owner() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let keys = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(Keys::new());
    let user = secret(&keys.user);
    let team = secret(&keys.team);
    let unknown = unknown_secret();
    recorded(&recorder, || async {
        let verifier = CountingVerifier::over(keys.store.clone());
        let app = routes().layer(RequireApiKey::new(CachedVerifier::new(verifier)).users_only());
        let down = routes().layer(RequireApiKey::new(CachedVerifier::new(
            CountingVerifier::failing(None),
        )));
        // pass ×3: one miss and verifier call, then two hits.
        for i in 0..3 {
            expect_status(&app, &[bearer(&user)], 200, &format!("valid #{i}")).await;
        }
        // invalid ×2: one miss and verifier call, then one negative hit.
        for i in 0..2 {
            expect_status(&app, &[bearer(&unknown)], 401, &format!("unknown #{i}")).await;
        }
        expect_status(
            &app,
            &[bearer(&with_bad_checksum(&user))],
            401,
            "bad checksum",
        )
        .await;
        expect_status(&app, &[bearer("not-a-key")], 401, "not a key").await;
        expect_status(&app, &[], 401, "no key").await;
        expect_status(&app, &[auth("Bearer")], 400, "Bearer alone").await;
        expect_status(&app, &[bearer(&team)], 403, "team key, users only").await;
        // The verifier is down: 503, one miss, one call, one transport error.
        expect_status(&down, &[bearer(&user)], 503, "verifier down").await;
    });
    let rendered = handle.render();
    let got = samples(&rendered);
    let requests = |outcome: &str, kind: &str| {
        format!("keygate_requests_total{{outcome=\"{outcome}\",kind=\"{kind}\"}}")
    };
    let want: BTreeMap<String, f64> = [
        (requests("pass", "user"), 3.0),
        (requests("invalid", "user"), 2.0),
        (requests("malformed", "user"), 1.0),
        (requests("malformed", "unknown"), 1.0),
        (requests("missing", "unknown"), 1.0),
        (requests("bad_request", "unknown"), 1.0),
        (requests("insufficient_scope", "team"), 1.0),
        (requests("unavailable", "user"), 1.0),
        ("keygate_cache_hits_total".into(), 2.0),
        ("keygate_cache_negative_hits_total".into(), 1.0),
        ("keygate_cache_misses_total".into(), 3.0),
        ("keygate_verifier_calls_total".into(), 3.0),
        (
            "keygate_verifier_errors_total{kind=\"transport\"}".into(),
            1.0,
        ),
        ("keygate_verifier_duration_seconds_count".into(), 3.0),
    ]
    .into_iter()
    .collect();
    let ours: BTreeMap<String, f64> = got
        .iter()
        .filter(|(series, _)| {
            !series.starts_with("keygate_verifier_duration_seconds{")
                && series.as_str() != "keygate_verifier_duration_seconds_sum"
        })
        .map(|(series, value)| (series.clone(), *value))
        .collect();
    assert_eq!(ours, want, "rendered:\n{rendered}");
    let sum = got["keygate_verifier_duration_seconds_sum"];
    assert!((0.0..10.0).contains(&sum), "latency sum in seconds: {sum}");

    let secrets = [
        user.clone(),
        team.clone(),
        unknown.clone(),
        keys.user.record.id.to_string(),
        keys.team.record.id.to_string(),
        keys.user.record.owner.id().to_owned(),
        keys.team.record.owner.id().to_owned(),
    ];
    for line in rendered.lines() {
        for secret in &secrets {
            assert!(!line.contains(secret.as_str()), "{line:?} holds {secret:?}");
        }
        assert!(!line.contains(&user[..20]), "{line:?} holds part of a key");
    }
}

#[cfg(feature = "stack-auth")]
#[test]
fn the_breaker_gauge_shows_the_failing_route_open_and_the_other_closed() {
    use common::stack_auth::{verifier, Fixture, Gate};
    use common::upstream::{reply, Upstream};
    use std::time::Duration;

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let fixture = Fixture::new();
    recorded(&recorder, || async {
        let upstream = Upstream::start(reply(503, &[], "down")).await;
        let builder = verifier(upstream.base_url())
            .max_retries(0)
            .circuit_breaker(1, Duration::from_secs(60));
        let gate = Gate::new(builder, &fixture.key);
        // The first check fails and opens the user route's circuit; the second meets it open.
        assert_eq!(gate.send().await.status.as_u16(), 503, "upstream 503");
        assert_eq!(gate.send().await.status.as_u16(), 503, "circuit open");
        assert_eq!(upstream.calls(), 1, "the open circuit made no call");
    });
    let rendered = handle.render();
    let got = samples(&rendered);
    for (series, want) in [
        ("keygate_stack_auth_breaker_state{route=\"user\"}", 1.0),
        ("keygate_stack_auth_breaker_state{route=\"team\"}", 0.0),
        ("keygate_verifier_errors_total{kind=\"upstream\"}", 1.0),
        ("keygate_verifier_errors_total{kind=\"circuit_open\"}", 1.0),
        (
            "keygate_requests_total{outcome=\"unavailable\",kind=\"user\"}",
            2.0,
        ),
    ] {
        assert_eq!(got.get(series), Some(&want), "{series} in:\n{rendered}");
    }
}
