//! The fault matrix harness for `StackAuthVerifier` behind `CachedVerifier` and
//! `RequireApiKey`: the verifier with small knobs, a guarded router, and cases run twice (the
//! repeat shows what the cache kept).
//!
//! The knobs (200 ms per attempt, 1 s deadline, 2 retries, 10–50 ms backoff, 16 KiB bodies)
//! make the deadlines bound the run time; nothing asserts on timing.

use std::time::Duration;

use axum::http::header::RETRY_AFTER;
use axum::Router;
use keygate::key::{ApiKey, KeyKind};
use keygate::stack_auth::{
    StackAuthClient, StackAuthConfig, StackAuthVerifier, StackAuthVerifierBuilder,
};
use keygate::verify::{VerifyError, VerifyErrorKind};
use keygate::{CachedVerifier, RequireApiKey, Verdict};
use serde_json::{json, Value};
use uuid::Uuid;

use super::app::routes;
use super::http::{bearer, send, Reply, INVALID};
use super::keys::generated;
use super::kinds::USER;
use super::upstream::{Script, Upstream};

pub const PROJECT_ID: &str = "6a1f0c52-2b0e-4d8f-9c1a-3e5b7d9f1a2c";
pub const SERVER_KEY: &str = "ssk_fault_matrix_0123456789abcdefghjkmnpqrstvwxyz";
pub const MAX_RETRIES: u32 = 2;
/// Attempts one verification may make.
pub const MAX_ATTEMPTS: usize = MAX_RETRIES as usize + 1;
pub const MAX_BODY: usize = 16 * 1024;

/// One well-formed user key and the user it belongs to.
pub struct Fixture {
    pub key: ApiKey,
    pub user_id: String,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            key: generated(KeyKind::User, false),
            user_id: Uuid::new_v4().to_string(),
        }
    }

    /// Stack Auth's Read body for the key, as `/user-api-keys/check` answers it.
    pub fn key_object(&self) -> Value {
        USER.key_object(&self.key, &self.user_id)
    }

    /// The short `{"is_valid": true, …}` answer (a form only Stack Auth's Swift SDK mentions).
    pub fn short_form(&self) -> Value {
        json!({
            "is_valid": true,
            "id": self.key.key_id().to_string(),
            "user_id": self.user_id,
        })
    }
}

/// The verifier with the suite's small knobs, pointed at `base_url`. The breaker's threshold is
/// high enough never to open except where a test sets its own.
pub fn verifier(base_url: &str) -> StackAuthVerifierBuilder {
    StackAuthVerifier::builder(StackAuthConfig::new(PROJECT_ID, SERVER_KEY).base_url(base_url))
        .attempt_timeout(Duration::from_millis(200))
        .deadline(Duration::from_secs(1))
        .max_retries(MAX_RETRIES)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_body_bytes(MAX_BODY)
        .circuit_breaker(1_000, Duration::from_secs(30))
}

/// The admin client, pointed at `base_url`.
pub fn admin(base_url: &str) -> StackAuthClient {
    StackAuthClient::new(StackAuthConfig::new(PROJECT_ID, SERVER_KEY).base_url(base_url))
        .expect("client")
}

#[track_caller]
pub fn assert_error(result: &Result<Verdict, VerifyError>, kind: VerifyErrorKind, context: &str) {
    match result {
        Err(e) if e.kind() == kind => {}
        other => panic!("{context}: expected {kind:?}, got {other:?}"),
    }
}

/// The test routes guarded by `RequireApiKey(CachedVerifier(StackAuthVerifier))` (users only),
/// and a handle on the cache for its stats.
pub struct Gate {
    pub cache: CachedVerifier<StackAuthVerifier>,
    app: Router,
    key: String,
}

impl Gate {
    pub fn new(builder: StackAuthVerifierBuilder, key: &ApiKey) -> Self {
        let cache = CachedVerifier::new(builder.build().expect("verifier"));
        let app = routes().layer(RequireApiKey::new(cache.clone()).users_only());
        Self {
            cache,
            app,
            key: key.expose_secret().to_owned(),
        }
    }

    /// `GET /me` with the key.
    pub async fn send(&self) -> Reply {
        send(&self.app, "/me", &[bearer(&self.key)]).await
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// What the client should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 from the handler, with the key's user. Cached.
    Valid,
    /// 401 `invalid_token`. Cached (negative cache).
    Invalid,
    /// 503 `VERIFIER_UNAVAILABLE` with `Retry-After`. Not cached.
    Unavailable,
}

/// Upstream calls one client request may cost.
#[derive(Clone, Copy, Debug)]
pub enum Calls {
    Exactly(usize),
    Between(usize, usize),
}

impl Calls {
    #[track_caller]
    fn check(self, case: &str, calls: usize) {
        match self {
            Calls::Exactly(n) => assert_eq!(calls, n, "{case}: upstream calls"),
            Calls::Between(lo, hi) => assert!(
                (lo..=hi).contains(&calls),
                "{case}: {calls} upstream calls, expected {lo}..={hi}"
            ),
        }
    }
}

pub struct Case {
    pub name: &'static str,
    pub script: Script,
    pub outcome: Outcome,
    pub calls: Calls,
    /// The exact `Retry-After` a 503 must carry, when the upstream named one.
    pub retry_after: Option<&'static str>,
}

impl Case {
    pub fn new(name: &'static str, script: Script, outcome: Outcome, calls: Calls) -> Self {
        Self {
            name,
            script,
            outcome,
            calls,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: &'static str) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

#[track_caller]
pub fn assert_answer(
    name: &str,
    outcome: Outcome,
    retry_after: Option<&str>,
    f: &Fixture,
    a: &Reply,
) {
    let context = format!("{name}: got {} {:?} {}", a.status, a.headers, a.text());
    match outcome {
        Outcome::Valid => {
            let body = a.assert_ok(&context);
            assert_eq!(body["user_id"], f.user_id, "{context}");
            assert_eq!(body["key_id"], f.key.key_id().to_string(), "{context}");
        }
        Outcome::Invalid => a.assert_rejected(&INVALID, &context),
        Outcome::Unavailable => {
            a.assert_unavailable(&context);
            if let Some(expected) = retry_after {
                assert_eq!(a.header(RETRY_AFTER), Some(expected), "{context}");
            }
        }
    }
}

/// Runs `case` twice through one fresh gate and upstream, asserting the answer both times, the
/// upstream call count, and what the cache kept. Returns both for further requests.
pub async fn run_case(f: &Fixture, case: &Case) -> (Gate, Upstream) {
    let upstream = Upstream::start(case.script.clone()).await;
    let gate = Gate::new(verifier(upstream.base_url()), &f.key);
    let name = case.name;

    let first = gate.send().await;
    assert_answer(name, case.outcome, case.retry_after, f, &first);
    let first_calls = upstream.calls();
    case.calls.check(name, first_calls);

    let second = gate.send().await;
    assert_answer(name, case.outcome, case.retry_after, f, &second);
    let second_calls = upstream.calls() - first_calls;

    gate.cache.run_pending_tasks();
    let stats = gate.cache.stats();
    match case.outcome {
        Outcome::Valid | Outcome::Invalid => {
            assert_eq!(second_calls, 0, "{name}: the verdict was not cached");
            assert_eq!(stats.verifier_calls, 1, "{name}: {stats:?}");
            assert_eq!(stats.errors, 0, "{name}: {stats:?}");
            let (hits, entries) = if case.outcome == Outcome::Valid {
                (stats.hits, stats.valid_entries)
            } else {
                (stats.negative_hits, stats.invalid_entries)
            };
            assert_eq!((hits, entries), (1, 1), "{name}: {stats:?}");
        }
        Outcome::Unavailable => {
            // Not cached: the second request asked the verifier (and the upstream) again.
            case.calls.check(name, second_calls);
            assert_eq!(stats.verifier_calls, 2, "{name}: {stats:?}");
            assert_eq!(stats.errors, 2, "{name}: {stats:?}");
            assert_eq!(stats.hits + stats.negative_hits, 0, "{name}: {stats:?}");
            assert_eq!(
                (stats.valid_entries, stats.invalid_entries),
                (0, 0),
                "{name}: {stats:?}"
            );
        }
    }
    eprintln!(
        "{name:<48} -> {} (Retry-After {:?}); upstream calls {first_calls}, then {second_calls} on the repeat",
        first.status,
        first.header(RETRY_AFTER),
    );
    (gate, upstream)
}

/// [`run_case`] for each case, each with its own gate and upstream.
pub async fn run_all(f: &Fixture, cases: &[Case]) {
    for case in cases {
        run_case(f, case).await;
    }
}
