//! Fault matrix for `StackAuthVerifier` behind `CachedVerifier` and `RequireApiKey`: the
//! transport (slow, silent, reset, refused, TLS failures), server errors and retries, rate
//! limits and `Retry-After`, `Duration::MAX` in every knob, and the environment's proxy.
//!
//! The upstream is the harness's scripted raw-TCP server on loopback: every connection gets the
//! behaviour the case chose, and every complete HTTP request it reads is counted. Each case
//! asserts the client-facing answer (status, `WWW-Authenticate`, body `code`, and `Retry-After`
//! on every 503), the upstream call count (exact, or bounded by `max_retries + 1`), and what the
//! cache kept: verdicts are cached (a second identical request makes no upstream call), errors
//! are not (a second request calls the upstream again, and `stats()` counts the errors and holds
//! no entry).

mod common;

use std::time::Duration;

use common::kinds::USER;
use common::stack_auth::{
    assert_answer, run_all, run_case, verifier, Calls, Case, Fixture, Gate, Outcome, MAX_ATTEMPTS,
    PROJECT_ID, SERVER_KEY,
};
use common::upstream::{
    boom, http_response, json_reply, reply, slow_reply, Script, Upstream, JSON_UTF8, TEXT,
};
use keygate::stack_auth::StackAuthVerifierBuilder;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Slow, silent and broken connections
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slow_answer_within_the_deadline_is_valid_and_cached() {
    let f = Fixture::new();
    let case = Case::new(
        "slow 200 (100 ms) within the deadline",
        slow_reply(
            Duration::from_millis(100),
            200,
            &[JSON_UTF8],
            f.key_object().to_string(),
        ),
        Outcome::Valid,
        Calls::Exactly(1),
    );
    let (_gate, upstream) = run_case(&f, &case).await;

    // The check request on the wire, once.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", USER.check().as_str())
    );
    assert_eq!(r.header("x-stack-access-type"), Some("server"));
    assert_eq!(r.header("x-stack-project-id"), Some(PROJECT_ID));
    assert_eq!(r.header("x-stack-secret-server-key"), Some(SERVER_KEY));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-stack-override-error-status"), None);
    let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(body, json!({ "api_key": f.key.expose_secret() }));
}

#[tokio::test]
async fn transport_faults_answer_503_and_are_not_cached() {
    let f = Fixture::new();
    let mut truncated = http_response(
        200,
        &[
            ("content-type", "application/json"),
            ("content-length", "500"),
        ],
        b"",
    );
    truncated.extend_from_slice(&f.key_object().to_string().as_bytes()[..10]);
    run_all(
        &f,
        &[
            Case::new(
                "never answers",
                Script::Silent,
                Outcome::Unavailable,
                Calls::Between(1, MAX_ATTEMPTS),
            ),
            Case::new(
                "slow 200 (300 ms) past the attempt timeout",
                slow_reply(
                    Duration::from_millis(300),
                    200,
                    &[JSON_UTF8],
                    f.key_object().to_string(),
                ),
                Outcome::Unavailable,
                Calls::Between(1, MAX_ATTEMPTS),
            ),
            Case::new(
                "connection refused",
                Script::Refused,
                Outcome::Unavailable,
                Calls::Exactly(0),
            ),
            Case::new(
                "reset mid-body (10 of 500 bytes)",
                Script::ResetAfter(truncated.into()),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
            Case::new(
                "TLS failure (plain HTTP answers the handshake)",
                Script::PlainToTls,
                Outcome::Unavailable,
                Calls::Exactly(0),
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Server errors, rate limits and Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_errors_are_retried_within_budget_then_503() {
    let f = Fixture::new();
    run_all(
        &f,
        &[
            Case::new(
                "500",
                boom(),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
            Case::new(
                "502",
                reply(502, &[TEXT], "bad gateway"),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
            Case::new(
                "503",
                reply(503, &[TEXT], "unavailable"),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn rate_limit_passes_retry_after_and_does_not_wait_past_the_deadline() {
    let f = Fixture::new();
    let case = Case::new(
        "429 Retry-After: 30",
        reply(429, &[TEXT, ("retry-after", "30")], "slow down"),
        Outcome::Unavailable,
        Calls::Exactly(1),
    )
    .retry_after("30");
    run_case(&f, &case).await;
}

/// Regression (issue 9): an upstream `Retry-After` given as an HTTP date is honoured.
#[tokio::test]
async fn retry_after_as_an_http_date_is_passed_on() {
    let f = Fixture::new();
    let in_a_minute =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let upstream = Upstream::start(reply(
        429,
        &[TEXT, ("retry-after", &in_a_minute)],
        "slow down",
    ))
    .await;
    let gate = Gate::new(verifier(upstream.base_url()), &f.key);
    let answer = gate.send().await;
    let secs = answer.assert_unavailable("429 with an HTTP-date Retry-After");
    // The date has a one-second resolution, and some time passes on the way.
    assert!((55..=60).contains(&secs), "Retry-After {secs}");
    assert_eq!(upstream.calls(), 1, "a minute does not fit in the deadline");

    // A date that has passed says nothing: the verifier's own backoff applies.
    let a_minute_ago =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
    let case = Case::new(
        "503 Retry-After: a date that has passed",
        reply(503, &[TEXT, ("retry-after", &a_minute_ago)], "later"),
        Outcome::Unavailable,
        Calls::Exactly(MAX_ATTEMPTS),
    );
    run_case(&f, &case).await;
}

// ---------------------------------------------------------------------------------------------
// Duration::MAX in every knob
// ---------------------------------------------------------------------------------------------

/// A change to the verifier's settings.
type Knob = fn(StackAuthVerifierBuilder) -> StackAuthVerifierBuilder;

/// Regression (issue 9): `Duration::MAX` in any duration knob neither panics nor overflows.
#[tokio::test]
async fn duration_max_in_every_knob_saturates() {
    let f = Fixture::new();
    let ok = json_reply(200, &f.key_object());
    let boom = boom();

    let knobs: [(&str, Knob); 3] = [
        ("attempt_timeout", |b| b.attempt_timeout(Duration::MAX)),
        ("deadline", |b| b.deadline(Duration::MAX)),
        ("attempt_timeout and deadline", |b| {
            b.attempt_timeout(Duration::MAX).deadline(Duration::MAX)
        }),
    ];
    for (name, knob) in knobs {
        // A valid answer, and a retried 500 followed by one.
        for script in [
            ok.clone(),
            Script::Each(vec![boom.clone(), ok.clone()].into()),
        ] {
            let upstream = Upstream::start(script).await;
            let gate = Gate::new(knob(verifier(upstream.base_url())), &f.key);
            let answer = gate.send().await;
            assert_answer(name, Outcome::Valid, None, &f, &answer);
        }
    }

    // Backoff: a wait that cannot fit in the deadline ends the retries at once.
    let upstream = Upstream::start(Script::Each(vec![boom.clone(), ok.clone()].into())).await;
    let gate = Gate::new(
        verifier(upstream.base_url()).backoff(Duration::MAX, Duration::MAX),
        &f.key,
    );
    gate.send().await.assert_unavailable("backoff MAX");
    assert_eq!(upstream.calls(), 1, "no retry after an endless backoff");
    assert_answer("backoff MAX", Outcome::Valid, None, &f, &gate.send().await);

    // Cooldown: the circuit stays open; its Retry-After is capped at a day.
    let upstream = Upstream::start(boom).await;
    let gate = Gate::new(
        verifier(upstream.base_url())
            .max_retries(0)
            .circuit_breaker(1, Duration::MAX),
        &f.key,
    );
    gate.send()
        .await
        .assert_unavailable("cooldown MAX, first failure");
    let answer = gate.send().await;
    assert_eq!(answer.assert_unavailable("cooldown MAX, open"), 86_400);
    assert_eq!(upstream.calls(), 1, "the open circuit calls nothing");
}

// ---------------------------------------------------------------------------------------------
// The environment's proxy
// ---------------------------------------------------------------------------------------------

/// Set (to a base URL) only in the child process of
/// `default_client_ignores_the_environments_proxy`.
const PROXY_PROBE: &str = "KEYGATE_FAULTS_PROXY_PROBE";

/// Child half of `default_client_ignores_the_environments_proxy`; does nothing otherwise.
#[tokio::test]
async fn proxy_probe_child() {
    let Ok(base_url) = std::env::var(PROXY_PROBE) else {
        return;
    };
    let f = Fixture::new();
    let answer = Gate::new(verifier(&base_url), &f.key).send().await;
    println!("proxy probe child: {}", answer.status);
}

#[tokio::test]
async fn default_client_ignores_the_environments_proxy() {
    // The default client must not hand the server key and the caller's key to a proxy that
    // nobody chose for it: `default_client` calls `no_proxy()`. The environment is changed in a
    // child process (this test binary, running only `proxy_probe_child`), never in this one,
    // where other tests build clients concurrently. The child's target is a second upstream, so
    // a direct call is seen there and a proxied one at the proxy.
    let f = Fixture::new();
    let proxy = Upstream::start(json_reply(
        200,
        &json!({ "is_valid": true, "user_id": f.user_id }),
    ))
    .await;
    let direct = Upstream::start(json_reply(
        200,
        &json!({ "is_valid": true, "user_id": f.user_id }),
    ))
    .await;
    let target = direct.base_url().to_owned();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([
            "--exact",
            "proxy_probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROXY_PROBE, &target)
        .env("HTTP_PROXY", proxy.base_url());
    for var in [
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "REQUEST_METHOD",
    ] {
        child.env_remove(var);
    }
    let output = child.output().await.expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    assert!(
        stdout.contains("proxy probe child:"),
        "child did not run: {stdout}"
    );

    assert!(
        proxy.requests().is_empty(),
        "the check went through the environment's proxy"
    );
    assert_eq!(
        direct.requests().len(),
        1,
        "the check went straight to Stack Auth"
    );
    assert!(stdout.contains("proxy probe child: 200"), "{stdout}");
}
