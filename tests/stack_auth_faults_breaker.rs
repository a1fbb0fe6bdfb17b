//! The circuit breaker of `StackAuthVerifier`: it opens after consecutive failures, lets one
//! probe through after the cooldown, keeps one breaker per check route (an outage or a disabled
//! kind never refuses keys of the other kind), and is not opened by misconfiguration.
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

use common::kinds::{Kind, TEAM, USER};
use common::stack_auth::{assert_error, verifier, Fixture, Gate, MAX_ATTEMPTS};
use common::upstream::{boom, json_reply, known_error, reply, Script, Upstream};
use keygate::verify::{VerifyError, VerifyErrorKind};
use keygate::{KeyVerifier, Verdict};

// ---------------------------------------------------------------------------------------------
// Consecutive failures open the circuit; one probe after the cooldown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn circuit_opens_after_consecutive_failures() {
    let f = Fixture::new();
    let upstream = Upstream::start(boom()).await;
    let gate = Gate::new(
        verifier(upstream.base_url()).circuit_breaker(2, Duration::from_secs(30)),
        &f.key,
    );

    for n in 1..=2 {
        let answer = gate.send().await;
        answer.assert_unavailable(&format!("failing request {n}"));
        assert_eq!(
            upstream.calls(),
            n * MAX_ATTEMPTS,
            "request {n} retried within budget"
        );
    }

    // Open: answered at once, without the upstream.
    let answer = gate.send().await;
    let secs = answer.assert_unavailable("circuit open");
    assert_eq!(upstream.calls(), 2 * MAX_ATTEMPTS, "no new upstream call");
    // ~29.99 s of the 30 s cooldown remain: rounded up, so an obedient client does not come
    // back while the circuit is still open.
    assert_eq!(secs, 30, "Retry-After {secs}");

    let stats = gate.cache.stats();
    assert_eq!((stats.verifier_calls, stats.errors), (3, 3), "{stats:?}");
    eprintln!(
        "circuit breaker (2, 30 s), upstream 500 -> 503, 503, then 503 (Retry-After {secs}) with upstream calls {}",
        upstream.calls()
    );
}

#[tokio::test]
async fn dropping_a_call_that_is_not_the_probe_leaves_the_probe_alone() {
    let f = Fixture::new();
    let boom = boom();
    // Connection 1 (call A) hangs; 2 (call B) fails and opens the circuit; 3 (the probe) hangs;
    // any later one fails.
    let upstream = Upstream::start(Script::Each(
        vec![Script::Silent, boom.clone(), Script::Silent, boom].into(),
    ))
    .await;
    let verifier = verifier(upstream.base_url())
        .attempt_timeout(Duration::from_secs(10))
        .deadline(Duration::from_secs(10))
        .max_retries(0)
        .circuit_breaker(1, Duration::from_millis(100))
        .build()
        .expect("verifier");
    let spawn_call = || {
        let (verifier, key) = (verifier.clone(), f.key.clone());
        tokio::spawn(async move { verifier.verify(&key).await })
    };
    let refused = |context: &str, result: Result<Verdict, VerifyError>| match result {
        Err(e) if e.kind() == VerifyErrorKind::CircuitOpen => {}
        other => panic!("{context}: expected CircuitOpen, got {other:?}"),
    };

    // A: admitted while the circuit is closed, then stuck upstream.
    let a = spawn_call();
    upstream.wait_for_calls(1).await;
    // B: fails and opens the circuit (threshold 1).
    let b = verifier.verify(&f.key).await;
    assert!(
        matches!(&b, Err(e) if e.kind() == VerifyErrorKind::Upstream),
        "{b:?}"
    );
    refused("open", verifier.verify(&f.key).await);

    // After the cooldown, one probe goes out and hangs; everyone else is refused.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let probe = spawn_call();
    upstream.wait_for_calls(3).await;
    refused("half-open, probe in flight", verifier.verify(&f.key).await);

    // A is dropped mid-flight. It never held the probe, so the probe's slot stays taken.
    a.abort();
    assert!(a.await.expect_err("aborted").is_cancelled());
    refused(
        "half-open after a non-probe call was dropped",
        verifier.verify(&f.key).await,
    );
    assert_eq!(upstream.calls(), 3, "a second probe went out");

    // The probe itself is dropped: its slot is freed and the next call probes at once.
    probe.abort();
    assert!(probe.await.expect_err("aborted").is_cancelled());
    let next = verifier.verify(&f.key).await;
    assert!(
        matches!(&next, Err(e) if e.kind() == VerifyErrorKind::Upstream),
        "the next call probes: {next:?}"
    );
    assert_eq!(upstream.calls(), 4);
}

// ---------------------------------------------------------------------------------------------
// One breaker per check route
// ---------------------------------------------------------------------------------------------

/// Regression (issue 9, defect 2): the check route of `broken` keys keeps failing with
/// `failure`; fresh keys of that kind get `expected`, one per key. Keys of the other kind are
/// still checked and valid.
async fn one_route_down(broken: Kind, failure: Script, expected: &[VerifyErrorKind]) {
    let good = broken.other();
    let good_key = good.unknown_key();
    let good_object = good.key_object(&good_key, "owner-1");
    let upstream = Upstream::start(Script::ByPath(
        vec![
            (broken.base, failure),
            (good.base, json_reply(200, &good_object)),
        ]
        .into(),
    ))
    .await;
    let verifier = verifier(upstream.base_url())
        .max_retries(0)
        .circuit_breaker(5, Duration::from_secs(30))
        .build()
        .expect("verifier");
    let (broken_name, good_name) = (broken.name, good.name);

    // Anyone can mint well-formed keys of the broken kind.
    for (n, &kind) in expected.iter().enumerate() {
        let result = verifier.verify(&broken.unknown_key()).await;
        assert_error(&result, kind, &format!("{broken_name} key {n}"));
    }
    let calls = upstream.calls();
    let good_answer = verifier.verify(&good_key).await;
    match &good_answer {
        Ok(Verdict::Valid(info)) => assert_eq!(info.key_id, good_key.key_id()),
        other => {
            panic!("a valid uncached {good_name} key after {broken_name} failures: {other:?}")
        }
    }
    assert_eq!(
        upstream.calls(),
        calls + 1,
        "the {good_name} key was checked"
    );
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.last(), Some(&good.check()));
}

#[tokio::test]
async fn an_outage_of_one_route_never_refuses_keys_of_the_other_kind() {
    let boom = boom();
    // Five failures open that route's breaker; the sixth key is refused at once.
    let mut expected = [VerifyErrorKind::Upstream; 6];
    expected[5] = VerifyErrorKind::CircuitOpen;
    one_route_down(TEAM, boom.clone(), &expected).await;
    one_route_down(USER, boom, &expected).await;
}

/// Regression (issue 9, defect 2): a project without team keys answers Stack Auth's plain-text
/// 400 to every team key. That is a misconfiguration, never an outage: after any number of
/// them, a valid uncached user key is valid (and the reverse).
#[tokio::test]
async fn a_kind_that_is_not_enabled_never_refuses_keys_of_the_other_kind() {
    for broken in [TEAM, USER] {
        let disabled = reply(
            400,
            &[("content-type", "text/plain; charset=utf-8")],
            broken.disabled,
        );
        let expected = [VerifyErrorKind::Misconfigured; 6];
        one_route_down(broken, disabled, &expected).await;
    }
}

/// Misconfiguration answers do not count against their own route's breaker either: each one
/// is asked (and answered precisely), however many there are; an outage then opens it.
#[tokio::test]
async fn misconfiguration_does_not_open_the_breaker() {
    let f = Fixture::new();
    let upstream = Upstream::start(Script::Each(
        vec![
            known_error(
                401,
                "INVALID_SECRET_SERVER_KEY",
                "The secret server key is not valid for this project.",
            ),
            known_error(
                401,
                "INVALID_SECRET_SERVER_KEY",
                "The secret server key is not valid for this project.",
            ),
            known_error(
                401,
                "INVALID_SECRET_SERVER_KEY",
                "The secret server key is not valid for this project.",
            ),
            boom(),
        ]
        .into(),
    ))
    .await;
    let verifier = verifier(upstream.base_url())
        .max_retries(0)
        .circuit_breaker(2, Duration::from_secs(30))
        .build()
        .expect("verifier");
    for n in 1..=3 {
        let result = verifier.verify(&f.key).await;
        assert_error(
            &result,
            VerifyErrorKind::Misconfigured,
            &format!("call {n}"),
        );
        assert_eq!(upstream.calls(), n, "call {n} reached the upstream");
    }
    for n in 4..=5 {
        let result = verifier.verify(&f.key).await;
        assert_error(&result, VerifyErrorKind::Upstream, &format!("call {n}"));
    }
    let result = verifier.verify(&f.key).await;
    assert_error(
        &result,
        VerifyErrorKind::CircuitOpen,
        "two outages in a row",
    );
    assert_eq!(upstream.calls(), 5);
}
