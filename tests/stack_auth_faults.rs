//! Fault matrix for `StackAuthVerifier` behind `CachedVerifier` and `RequireApiKey`.
//!
//! The upstream is a scripted raw-TCP server on loopback: every connection gets the behaviour the
//! case chose (answer after a delay, never answer, reset mid-body, refuse the connection, …) and
//! every complete HTTP request it reads is counted. Each case asserts:
//!
//! - the client-facing answer (status, `WWW-Authenticate`, body `code`, and `Retry-After` on
//!   every 503);
//! - the upstream call count, exact or bounded by `max_retries + 1`;
//! - what the cache kept: verdicts are cached (a second identical request makes no upstream
//!   call), errors are not (a second request calls the upstream again, and `stats()` counts
//!   the errors and holds no entry).
//!
//! The verifier runs with small knobs (200 ms per attempt, 1 s deadline, 2 retries, 10–50 ms
//! backoff, 16 KiB bodies), so the deadlines bound the run time; nothing asserts on timing.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::stack_auth::{
    StackAuthClient, StackAuthConfig, StackAuthError, StackAuthVerifier, StackAuthVerifierBuilder,
};
use keygate::verify::{KeyVerifier, VerifyError, VerifyErrorKind};
use keygate::{AuthenticatedUser, CachedVerifier, Owner, RequireApiKey, Verdict};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::util::SubscriberInitExt;
use uuid::Uuid;

const PROJECT_ID: &str = "6a1f0c52-2b0e-4d8f-9c1a-3e5b7d9f1a2c";
const SERVER_KEY: &str = "ssk_fault_matrix_0123456789abcdefghjkmnpqrstvwxyz";
const CHECK_PATH: &str = "/api/v1/user-api-keys/check";
const MAX_RETRIES: u32 = 2;
/// The most upstream calls one check may make.
const MAX_ATTEMPTS: usize = MAX_RETRIES as usize + 1;
const MAX_BODY: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------------------------

/// What the upstream does with every connection.
#[derive(Clone)]
enum Script {
    /// Nothing listens: the port was bound, then released.
    Refused,
    /// Reads the request, waits `delay`, writes `bytes` (a whole response) and closes.
    Reply { delay: Duration, bytes: Arc<[u8]> },
    /// Reads the request and never writes a byte; holds the connection until the client drops it.
    Silent,
    /// Reads the request, writes `bytes` (a head promising more body than follows), then resets
    /// the connection.
    ResetAfter(Arc<[u8]>),
    /// The client is told to speak TLS (`https://`); the upstream answers the handshake with
    /// plain HTTP at once and closes. No HTTP request is ever read.
    PlainToTls,
    /// Connection `n` (from 0, in accept order) gets script `n`; later ones get the last.
    Each(Arc<[Script]>),
    /// The request's path decides: the script of the first prefix it starts with (`Silent` if
    /// none). Only `Reply`, `Silent` and `ResetAfter` may be chosen this way.
    ByPath(Arc<[(&'static str, Script)]>),
}

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    /// Lower-cased names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Upstream {
    base_url: String,
    calls: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let scheme = match script {
            Script::PlainToTls => "https",
            _ => "http",
        };
        let upstream = Self {
            base_url: format!("{scheme}://{addr}"),
            calls: Arc::default(),
            requests: Arc::default(),
        };
        if let Script::Refused = script {
            drop(listener);
            return upstream;
        }
        let (calls, requests) = (upstream.calls.clone(), upstream.requests.clone());
        tokio::spawn(async move {
            let mut accepted = 0usize;
            while let Ok((stream, _)) = listener.accept().await {
                let script = match &script {
                    Script::Each(scripts) => scripts
                        .get(accepted.min(scripts.len().saturating_sub(1)))
                        .cloned()
                        .unwrap_or(Script::Silent),
                    other => other.clone(),
                };
                accepted += 1;
                let (calls, requests) = (calls.clone(), requests.clone());
                // I/O errors only mean the client went away first (an oversized body, a timeout).
                tokio::spawn(async move {
                    let _ = serve(stream, script, calls, requests).await;
                });
            }
        });
        upstream
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Complete HTTP requests read so far.
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Script,
    calls: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
) -> io::Result<()> {
    if let Script::PlainToTls = script {
        let answer = http_response(400, &[("content-type", "text/plain")], b"not TLS");
        stream.write_all(&answer).await?;
        return stream.shutdown().await;
    }
    let Some(request) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let script = match script {
        Script::ByPath(routes) => routes
            .iter()
            .find(|(prefix, _)| request.path.starts_with(prefix))
            .map_or(Script::Silent, |(_, script)| script.clone()),
        other => other,
    };
    requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request);
    calls.fetch_add(1, Ordering::SeqCst);
    match script {
        Script::Refused | Script::PlainToTls | Script::Each(_) | Script::ByPath(_) => {
            unreachable!("handled above")
        }
        Script::Reply { delay, bytes } => {
            tokio::time::sleep(delay).await;
            stream.write_all(&bytes).await?;
            stream.shutdown().await?;
        }
        Script::Silent => {
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? != 0 {}
        }
        Script::ResetAfter(bytes) => {
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            // Let the client read the head and the first bytes of the body, then RST.
            tokio::time::sleep(Duration::from_millis(50)).await;
            stream.set_zero_linger()?;
            drop(stream);
        }
    }
    Ok(())
}

/// Reads one request: the head up to `\r\n\r\n`, then `Content-Length` bytes of body. `None` if
/// the client closed first.
async fn read_request(stream: &mut TcpStream) -> io::Result<Option<Recorded>> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| invalid(&e))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, v)) => v.parse::<usize>().map_err(|e| invalid(&e))?,
        None => 0,
    };
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(Recorded {
        method,
        path,
        headers,
        body,
    }))
}

// ---------------------------------------------------------------------------------------------
// Scripted answers
// ---------------------------------------------------------------------------------------------

const JSON_UTF8: (&str, &str) = ("content-type", "application/json; charset=utf-8");

/// A whole HTTP/1.1 response with `Content-Length` and `Connection: close`.
fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Whatever");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nconnection: close\r\n");
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let _ = write!(head, "content-length: {}\r\n", body.len());
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Script {
    slow_reply(Duration::ZERO, status, headers, body)
}

fn slow_reply(
    delay: Duration,
    status: u16,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Script {
    Script::Reply {
        delay,
        bytes: http_response(status, headers, body.as_ref()).into(),
    }
}

fn json_reply(status: u16, body: &Value) -> Script {
    reply(status, &[JSON_UTF8], body.to_string())
}

/// A Stack Auth known error, the way `KnownError.toDescriptiveJson` and `smart-response` send it.
fn known_error(status: u16, code: &str, message: &str) -> Script {
    reply(
        status,
        &[JSON_UTF8, ("x-stack-known-error", code)],
        json!({ "code": code, "error": message }).to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The gate under test
// ---------------------------------------------------------------------------------------------

/// One well-formed user key and the user it belongs to.
struct Fixture {
    key: ApiKey,
    user_id: String,
}

impl Fixture {
    fn new() -> Self {
        Self {
            key: ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
                .expect("OS RNG"),
            user_id: Uuid::new_v4().to_string(),
        }
    }

    /// Stack Auth's Read body for the key, as `/user-api-keys/check` answers it.
    fn key_object(&self) -> Value {
        json!({
            "id": self.key.key_id().to_string(),
            "description": "fault matrix",
            "created_at_millis": 1_745_000_000_000_i64,
            "is_public": false,
            "value": { "last_four": self.key.last_four() },
            "type": "user",
            "user_id": self.user_id,
        })
    }

    /// The short `{"is_valid": true, …}` answer (a form only Stack Auth's Swift SDK mentions).
    fn short_form(&self) -> Value {
        json!({
            "is_valid": true,
            "id": self.key.key_id().to_string(),
            "user_id": self.user_id,
        })
    }
}

/// The verifier with the suite's small knobs, pointed at `base_url`. The breaker's threshold is
/// high enough never to open except where a test sets its own.
fn verifier(base_url: &str) -> StackAuthVerifierBuilder {
    StackAuthVerifier::builder(StackAuthConfig::new(PROJECT_ID, SERVER_KEY).base_url(base_url))
        .attempt_timeout(Duration::from_millis(200))
        .deadline(Duration::from_secs(1))
        .max_retries(MAX_RETRIES)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_body_bytes(MAX_BODY)
        .circuit_breaker(1_000, Duration::from_secs(30))
}

async fn whoami(user: AuthenticatedUser) -> String {
    user.user_id.to_string()
}

/// A router guarded by `RequireApiKey(CachedVerifier(StackAuthVerifier))`, and a handle on the
/// cache for its stats.
struct Gate {
    cache: CachedVerifier<StackAuthVerifier>,
    app: Router,
    bearer: String,
}

/// What the client got.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn code(&self) -> Option<String> {
        serde_json::from_str::<Value>(&self.body)
            .ok()?
            .get("code")?
            .as_str()
            .map(str::to_owned)
    }

    fn header(&self, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Gate {
    fn new(builder: StackAuthVerifierBuilder, key: &ApiKey) -> Self {
        let cache = CachedVerifier::new(builder.build().expect("verifier"));
        let app = Router::new()
            .route("/", get(whoami))
            .layer(RequireApiKey::new(cache.clone()).users_only());
        Self {
            cache,
            app,
            bearer: format!("Bearer {}", key.expose_secret()),
        }
    }

    async fn send(&self) -> Answer {
        let request = Request::get("/")
            .header(AUTHORIZATION, &self.bearer)
            .body(Body::empty())
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// What the client should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 200 from the handler, with the key's user. Cached.
    Valid,
    /// 401 `invalid_token`. Cached (negative cache).
    Invalid,
    /// 503 `VERIFIER_UNAVAILABLE` with `Retry-After`. Not cached.
    Unavailable,
}

/// Upstream calls one client request may cost.
#[derive(Clone, Copy, Debug)]
enum Calls {
    Exactly(usize),
    Between(usize, usize),
}

impl Calls {
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

struct Case {
    name: &'static str,
    script: Script,
    outcome: Outcome,
    calls: Calls,
    /// The exact `Retry-After` a 503 must carry, when the upstream named one.
    retry_after: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, script: Script, outcome: Outcome, calls: Calls) -> Self {
        Self {
            name,
            script,
            outcome,
            calls,
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: &'static str) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

fn assert_answer(name: &str, outcome: Outcome, retry_after: Option<&str>, f: &Fixture, a: &Answer) {
    let context = format!("{name}: got {} {:?} {}", a.status, a.headers, a.body);
    match outcome {
        Outcome::Valid => {
            assert_eq!(a.status, StatusCode::OK, "{context}");
            assert_eq!(a.body, f.user_id, "{context}");
        }
        Outcome::Invalid => {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{context}");
            let challenge = a.header(WWW_AUTHENTICATE).unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
                "{context}"
            );
            assert_eq!(a.code().as_deref(), Some("API_KEY_INVALID"), "{context}");
            assert!(a.header(RETRY_AFTER).is_none(), "{context}");
        }
        Outcome::Unavailable => {
            assert_unavailable(&context, a);
            if let Some(expected) = retry_after {
                assert_eq!(a.header(RETRY_AFTER), Some(expected), "{context}");
            }
        }
    }
}

/// 503, `VERIFIER_UNAVAILABLE`, a `Retry-After` of at least one second, and no challenge (the
/// caller's key is not to blame). Returns the `Retry-After` seconds.
fn assert_unavailable(context: &str, a: &Answer) -> u64 {
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{context}");
    assert_eq!(
        a.code().as_deref(),
        Some("VERIFIER_UNAVAILABLE"),
        "{context}"
    );
    assert!(a.header(WWW_AUTHENTICATE).is_none(), "{context}");
    let secs = a
        .header(RETRY_AFTER)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{context}: no numeric Retry-After"));
    assert!(secs >= 1, "{context}");
    secs
}

/// Runs `case` twice through one fresh gate and upstream, asserting the answer both times, the
/// upstream call count, and what the cache kept. Returns both for further requests.
async fn run_case(f: &Fixture, case: &Case) -> (Gate, Upstream) {
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

async fn run_all(f: &Fixture, cases: &[Case]) {
    for case in cases {
        run_case(f, case).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
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
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", CHECK_PATH));
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

#[tokio::test]
async fn server_errors_are_retried_within_budget_then_503() {
    let f = Fixture::new();
    let text = [("content-type", "text/plain")];
    run_all(
        &f,
        &[
            Case::new(
                "500",
                reply(500, &text, "boom"),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
            Case::new(
                "502",
                reply(502, &text, "bad gateway"),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
            Case::new(
                "503",
                reply(503, &text, "unavailable"),
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
        reply(
            429,
            &[("content-type", "text/plain"), ("retry-after", "30")],
            "slow down",
        ),
        Outcome::Unavailable,
        Calls::Exactly(1),
    )
    .retry_after("30");
    run_case(&f, &case).await;
}

#[tokio::test]
async fn unusable_answers_are_503_and_not_retried() {
    let f = Fixture::new();
    let object = f.key_object().to_string();
    let oversized = vec![b' '; 1024 * 1024];
    run_all(
        &f,
        &[
            Case::new(
                "200 malformed JSON",
                reply(200, &[("content-type", "application/json")], r#"{"id": "#),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 JSON of the wrong shape",
                json_reply(200, &json!({ "hello": 1 })),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 oversized body (1 MiB)",
                reply(200, &[("content-type", "application/json")], oversized),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 text/html with a key object",
                reply(200, &[("content-type", "text/html")], &object),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "401 known-error header disagrees with body",
                reply(
                    401,
                    &[JSON_UTF8, ("x-stack-known-error", "API_KEY_NOT_FOUND")],
                    json!({ "code": "API_KEY_REVOKED", "error": "API key has been revoked." })
                        .to_string(),
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn verdicts_are_answered_and_cached() {
    let f = Fixture::new();
    let short_valid = f.short_form();
    run_all(
        &f,
        &[
            Case::new(
                "404 API_KEY_NOT_FOUND",
                known_error(404, "API_KEY_NOT_FOUND", "API key not found."),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "400 WRONG_API_KEY_TYPE",
                known_error(
                    400,
                    "WRONG_API_KEY_TYPE",
                    "This endpoint is for team API keys, but a user API key was provided.",
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401 API_KEY_REVOKED",
                known_error(401, "API_KEY_REVOKED", "API key has been revoked."),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401 API_KEY_EXPIRED",
                known_error(401, "API_KEY_EXPIRED", "API key has expired."),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + x-stack-actual-status: 401 API_KEY_REVOKED",
                reply(
                    200,
                    &[
                        JSON_UTF8,
                        ("x-stack-actual-status", "401"),
                        ("x-stack-known-error", "API_KEY_REVOKED"),
                    ],
                    json!({ "code": "API_KEY_REVOKED", "error": "API key has been revoked." })
                        .to_string(),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true, id, user_id}",
                json_reply(200, &short_valid),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: false}",
                json_reply(200, &json!({ "is_valid": false })),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

/// Milliseconds since the epoch, `offset_secs` from now.
fn millis_from_now(offset_secs: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_millis()).expect("fits") + offset_secs * 1000
}

/// `base` with `extra`'s fields added (or replaced).
fn with(base: &Value, extra: &Value) -> Value {
    let mut merged = base.clone();
    if let (Some(merged), Some(extra)) = (merged.as_object_mut(), extra.as_object()) {
        merged.extend(extra.clone());
    }
    merged
}

#[tokio::test]
async fn a_key_object_with_is_valid_is_still_read_as_a_key_object() {
    let f = Fixture::new();
    let object = f.key_object();
    let revoked_at = json!({ "manually_revoked_at_millis": 1_745_100_000_000_i64 });
    run_all(
        &f,
        &[
            Case::new(
                "200 key object + is_valid: true",
                json_reply(200, &with(&object, &json!({ "is_valid": true }))),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 revoked key object",
                json_reply(200, &with(&object, &revoked_at)),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 revoked key object + is_valid: true",
                json_reply(
                    200,
                    &with(&with(&object, &revoked_at), &json!({ "is_valid": true })),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 expired key object + is_valid: true",
                json_reply(
                    200,
                    &with(
                        &object,
                        &json!({ "is_valid": true, "expires_at_millis": millis_from_now(-60) }),
                    ),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 key object + is_valid: false",
                json_reply(200, &with(&object, &json!({ "is_valid": false }))),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 key object + is_valid: \"yes\"",
                json_reply(200, &with(&object, &json!({ "is_valid": "yes" }))),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 partial key object (type, no created_at_millis) + is_valid: true",
                json_reply(200, &with(&f.short_form(), &json!({ "type": "user" }))),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_short_form_honours_revocation_and_expiry() {
    let f = Fixture::new();
    let short = f.short_form();
    run_all(
        &f,
        &[
            Case::new(
                "200 {is_valid: true} + manually_revoked_at_millis",
                json_reply(
                    200,
                    &with(
                        &short,
                        &json!({ "manually_revoked_at_millis": 1_745_100_000_000_i64 }),
                    ),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + manually_revoked_at_millis: null",
                json_reply(
                    200,
                    &with(&short, &json!({ "manually_revoked_at_millis": null })),
                ),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + past expires_at_millis",
                json_reply(
                    200,
                    &with(
                        &short,
                        &json!({ "expires_at_millis": millis_from_now(-60) }),
                    ),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + future expires_at_millis",
                json_reply(
                    200,
                    &with(
                        &short,
                        &json!({ "expires_at_millis": millis_from_now(3600) }),
                    ),
                ),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + expires_at_millis: \"soon\"",
                json_reply(200, &with(&short, &json!({ "expires_at_millis": "soon" }))),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + user_id and team_id",
                json_reply(
                    200,
                    &with(&short, &json!({ "team_id": Uuid::new_v4().to_string() })),
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: false} + manually_revoked_at_millis",
                json_reply(
                    200,
                    &json!({ "is_valid": false, "manually_revoked_at_millis": 1 }),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

/// An in-memory writer for `tracing_subscriber::fmt`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[tokio::test]
async fn misconfiguration_is_503_never_cached_and_logged_once() {
    let capture = Capture::default();
    let writer = capture.clone();
    // `tokio::test` runs on this thread only, so a thread-local default sees every event.
    let _default = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(LevelFilter::TRACE)
        .finish()
        .set_default();

    let f = Fixture::new();
    let known = |status, code: &'static str, message, advice| {
        let case = Case::new(
            code,
            known_error(status, code, message),
            Outcome::Unavailable,
            Calls::Exactly(1),
        );
        (case, code, advice)
    };
    let cases = [
        known(
            401,
            "INVALID_SECRET_SERVER_KEY",
            "The secret server key is not valid for this project.",
            "STACK_SECRET_SERVER_KEY",
        ),
        known(
            401,
            "SERVER_AUTHENTICATION_REQUIRED",
            "The secret server key must be provided.",
            "STACK_SECRET_SERVER_KEY",
        ),
        known(
            401,
            "INSUFFICIENT_ACCESS_TYPE",
            "The x-stack-access-type header must be 'server' or 'admin'.",
            "secret server key",
        ),
        known(
            400,
            "CURRENT_PROJECT_NOT_FOUND",
            "The current project could not be found.",
            "STACK_PROJECT_ID",
        ),
        (
            Case::new(
                "400 text/plain: user API keys not enabled",
                reply(
                    400,
                    &[("content-type", "text/plain; charset=utf-8")],
                    "User API keys are not enabled for this project.",
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            "api-keys-disabled",
            "not enabled",
        ),
    ];

    for (case, cause, advice) in &cases {
        let (gate, upstream) = run_case(&f, case).await;
        // A third request with the same misconfiguration: still 503, still asks upstream.
        let third = gate.send().await;
        assert_unavailable(case.name, &third);
        assert_eq!(upstream.calls(), 3, "{}", case.name);

        let log = capture.text();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.trim_start().starts_with("ERROR") && l.contains(cause))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "{cause}: one ERROR advice line over three requests, got {errors:#?}"
        );
        assert!(errors[0].contains(advice), "{cause}: {}", errors[0]);
    }

    let log = capture.text();
    let error_lines = log
        .lines()
        .filter(|l| l.trim_start().starts_with("ERROR"))
        .count();
    assert_eq!(error_lines, cases.len(), "one ERROR line per cause:\n{log}");
    // Neither the caller's key nor the server key reaches the logs.
    assert!(!log.contains(f.key.expose_secret()), "key leaked:\n{log}");
    assert!(!log.contains(SERVER_KEY), "server key leaked:\n{log}");
}

#[tokio::test]
async fn circuit_opens_after_consecutive_failures() {
    let f = Fixture::new();
    let upstream = Upstream::start(reply(500, &[("content-type", "text/plain")], "boom")).await;
    let gate = Gate::new(
        verifier(upstream.base_url()).circuit_breaker(2, Duration::from_secs(30)),
        &f.key,
    );

    for n in 1..=2 {
        let answer = gate.send().await;
        assert_unavailable(&format!("failing request {n}"), &answer);
        assert_eq!(
            upstream.calls(),
            n * MAX_ATTEMPTS,
            "request {n} retried within budget"
        );
    }

    // Open: answered at once, without the upstream.
    let answer = gate.send().await;
    let secs = assert_unavailable("circuit open", &answer);
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

/// Polls until the upstream has read `n` requests; panics after 5 s.
async fn wait_for_calls(upstream: &Upstream, n: usize) {
    for _ in 0..5_000 {
        if upstream.calls() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!(
        "the upstream never read {n} requests (read {})",
        upstream.calls()
    );
}

#[tokio::test]
async fn dropping_a_call_that_is_not_the_probe_leaves_the_probe_alone() {
    let f = Fixture::new();
    let boom = reply(500, &[("content-type", "text/plain")], "boom");
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
    wait_for_calls(&upstream, 1).await;
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
    wait_for_calls(&upstream, 3).await;
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

/// Set (to a base URL) only in the child process of
/// `default_client_takes_its_proxy_from_the_environment`.
const PROXY_PROBE: &str = "KEYGATE_FAULTS_PROXY_PROBE";

/// Child half of `default_client_takes_its_proxy_from_the_environment`; does nothing otherwise.
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

// ---------------------------------------------------------------------------------------------
// One breaker per check route
// ---------------------------------------------------------------------------------------------

const TEAM_CHECK_PATH: &str = "/api/v1/team-api-keys/check";

/// A well-formed key of `kind` that no server ever issued.
fn fresh_key(kind: KeyKind) -> ApiKey {
    ApiKey::generate(Uuid::new_v4(), kind, false, Deployment::SelfHosted).expect("OS RNG")
}

/// Stack Auth's Read body for `key`, owned by `owner`.
fn key_object_of(key: &ApiKey, owner: &str) -> Value {
    let (kind, owner_field) = match key.kind() {
        KeyKind::User => ("user", "user_id"),
        _ => ("team", "team_id"),
    };
    json!({
        "id": key.key_id().to_string(),
        "description": "breaker",
        "created_at_millis": 1_745_000_000_000_i64,
        "is_public": false,
        "value": { "last_four": key.last_four() },
        "type": kind,
        owner_field: owner,
    })
}

fn check_path(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::User => CHECK_PATH,
        _ => TEAM_CHECK_PATH,
    }
}

fn other(kind: KeyKind) -> KeyKind {
    match kind {
        KeyKind::User => KeyKind::Team,
        _ => KeyKind::User,
    }
}

#[track_caller]
fn assert_error(result: &Result<Verdict, VerifyError>, kind: VerifyErrorKind, context: &str) {
    match result {
        Err(e) if e.kind() == kind => {}
        other => panic!("{context}: expected {kind:?}, got {other:?}"),
    }
}

/// Regression (issue 9, defect 2): the check route of `broken` keys keeps failing with
/// `failure`; fresh keys of that kind get `expected`, one per key. Keys of the other kind are
/// still checked and valid.
async fn one_route_down(broken: KeyKind, failure: Script, expected: &[VerifyErrorKind]) {
    let good = other(broken);
    let good_key = fresh_key(good);
    let good_object = key_object_of(&good_key, "owner-1");
    let upstream = Upstream::start(Script::ByPath(
        vec![
            (check_path(broken), failure),
            (check_path(good), json_reply(200, &good_object)),
        ]
        .into(),
    ))
    .await;
    let verifier = verifier(upstream.base_url())
        .max_retries(0)
        .circuit_breaker(5, Duration::from_secs(30))
        .build()
        .expect("verifier");

    // Anyone can mint well-formed keys of the broken kind.
    for (n, &kind) in expected.iter().enumerate() {
        let result = verifier.verify(&fresh_key(broken)).await;
        assert_error(&result, kind, &format!("{broken:?} key {n}"));
    }
    let calls = upstream.calls();
    let good_answer = verifier.verify(&good_key).await;
    match &good_answer {
        Ok(Verdict::Valid(info)) => assert_eq!(info.key_id, good_key.key_id()),
        other => panic!("a valid uncached {good:?} key after {broken:?} failures: {other:?}"),
    }
    assert_eq!(upstream.calls(), calls + 1, "the {good:?} key was checked");
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.last().map(String::as_str), Some(check_path(good)));
}

#[tokio::test]
async fn an_outage_of_one_route_never_refuses_keys_of_the_other_kind() {
    let boom = reply(500, &[("content-type", "text/plain")], "boom");
    // Five failures open that route's breaker; the sixth key is refused at once.
    let mut expected = [VerifyErrorKind::Upstream; 6];
    expected[5] = VerifyErrorKind::CircuitOpen;
    one_route_down(KeyKind::Team, boom.clone(), &expected).await;
    one_route_down(KeyKind::User, boom, &expected).await;
}

/// Regression (issue 9, defect 2): a project without team keys answers Stack Auth's plain-text
/// 400 to every team key. That is a misconfiguration, never an outage: after any number of
/// them, a valid uncached user key is valid (and the reverse).
#[tokio::test]
async fn a_kind_that_is_not_enabled_never_refuses_keys_of_the_other_kind() {
    for (broken, text) in [
        (
            KeyKind::Team,
            "Team API keys are not enabled for this project.",
        ),
        (
            KeyKind::User,
            "User API keys are not enabled for this project.",
        ),
    ] {
        let disabled = reply(400, &[("content-type", "text/plain; charset=utf-8")], text);
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
            reply(500, &[("content-type", "text/plain")], "boom"),
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

// ---------------------------------------------------------------------------------------------
// Retry-After as an HTTP date
// ---------------------------------------------------------------------------------------------

/// Regression (issue 9): an upstream `Retry-After` given as an HTTP date is honoured.
#[tokio::test]
async fn retry_after_as_an_http_date_is_passed_on() {
    let f = Fixture::new();
    let in_a_minute =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let upstream = Upstream::start(reply(
        429,
        &[
            ("content-type", "text/plain"),
            ("retry-after", &in_a_minute),
        ],
        "slow down",
    ))
    .await;
    let gate = Gate::new(verifier(upstream.base_url()), &f.key);
    let answer = gate.send().await;
    let secs = assert_unavailable("429 with an HTTP-date Retry-After", &answer);
    // The date has a one-second resolution, and some time passes on the way.
    assert!((55..=60).contains(&secs), "Retry-After {secs}");
    assert_eq!(upstream.calls(), 1, "a minute does not fit in the deadline");

    // A date that has passed says nothing: the verifier's own backoff applies.
    let a_minute_ago =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
    let case = Case::new(
        "503 Retry-After: a date that has passed",
        reply(
            503,
            &[
                ("content-type", "text/plain"),
                ("retry-after", &a_minute_ago),
            ],
            "later",
        ),
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
    let boom = reply(500, &[("content-type", "text/plain")], "boom");

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
    assert_unavailable("backoff MAX", &gate.send().await);
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
    assert_unavailable("cooldown MAX, first failure", &gate.send().await);
    let answer = gate.send().await;
    assert_eq!(assert_unavailable("cooldown MAX, open", &answer), 86_400);
    assert_eq!(upstream.calls(), 1, "the open circuit calls nothing");
}

// ---------------------------------------------------------------------------------------------
// Hexclave: x-hexclave-* response headers first, x-stack-* requests
// ---------------------------------------------------------------------------------------------

/// A known error with the given known-error and actual-status headers.
fn known_error_with(status: u16, body_code: &str, extra: &[(&str, &str)]) -> Script {
    let mut headers = vec![JSON_UTF8];
    headers.extend_from_slice(extra);
    reply(
        status,
        &headers,
        json!({ "code": body_code, "error": "message" }).to_string(),
    )
}

#[tokio::test]
async fn hexclave_response_headers_are_read_first() {
    let f = Fixture::new();
    const REVOKED: &str = "API_KEY_REVOKED";
    const NOT_FOUND: &str = "API_KEY_NOT_FOUND";
    let hex_ke = "x-hexclave-known-error";
    let stack_ke = "x-stack-known-error";
    let hex_as = "x-hexclave-actual-status";
    let stack_as = "x-stack-actual-status";
    let (gate, upstream) = run_case(
        &f,
        &Case::new(
            "401, only x-hexclave-known-error",
            known_error_with(401, REVOKED, &[(hex_ke, REVOKED)]),
            Outcome::Invalid,
            Calls::Exactly(1),
        ),
    )
    .await;
    drop(gate);
    // Requests carry the x-stack-* names only: the ones every backend version understands.
    let request = &upstream.requests()[0];
    assert_eq!(request.header("x-stack-access-type"), Some("server"));
    assert!(
        request
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-hexclave-")),
        "{:?}",
        request.headers
    );
    run_all(
        &f,
        &[
            Case::new(
                "401, only x-stack-known-error",
                known_error_with(401, REVOKED, &[(stack_ke, REVOKED)]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, both known-error headers agreeing",
                known_error_with(401, REVOKED, &[(hex_ke, REVOKED), (stack_ke, REVOKED)]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, x-hexclave-known-error wins over a disagreeing x-stack one",
                known_error_with(401, REVOKED, &[(hex_ke, REVOKED), (stack_ke, NOT_FOUND)]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, x-hexclave-known-error disagrees with the body",
                known_error_with(401, REVOKED, &[(hex_ke, NOT_FOUND), (stack_ke, REVOKED)]),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, only x-hexclave-known-error, disagreeing with the body",
                known_error_with(401, REVOKED, &[(hex_ke, NOT_FOUND)]),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + only x-hexclave-actual-status: 401",
                known_error_with(200, REVOKED, &[(hex_as, "401"), (hex_ke, REVOKED)]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + both actual-status headers: 401",
                known_error_with(200, REVOKED, &[(hex_as, "401"), (stack_as, "401")]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + x-hexclave-actual-status 401 wins over x-stack-actual-status 500",
                known_error_with(200, REVOKED, &[(hex_as, "401"), (stack_as, "500")]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + x-hexclave-actual-status 500 wins over x-stack-actual-status 401",
                known_error_with(200, REVOKED, &[(hex_as, "500"), (stack_as, "401")]),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The admin client against the scripted upstream
// ---------------------------------------------------------------------------------------------

fn admin(base_url: &str) -> StackAuthClient {
    StackAuthClient::new(StackAuthConfig::new(PROJECT_ID, SERVER_KEY).base_url(base_url))
        .expect("client")
}

#[tokio::test]
async fn the_admin_client_reads_hexclave_headers_and_keeps_error_sources() {
    use std::error::Error as _;

    let f = Fixture::new();
    let owner = Owner::user(&f.user_id);

    // An error answered as 200 with Hexclave's actual-status header is an error.
    let upstream = Upstream::start(known_error_with(
        200,
        "API_KEY_NOT_FOUND",
        &[
            ("x-hexclave-actual-status", "404"),
            ("x-hexclave-known-error", "API_KEY_NOT_FOUND"),
            ("x-stack-actual-status", "200"),
        ],
    ))
    .await;
    let error = admin(upstream.base_url())
        .get(&owner, f.key.key_id())
        .await
        .expect_err("not found");
    assert_eq!(error.status(), Some(404), "{error:?}");
    assert_eq!(error.code(), Some("API_KEY_NOT_FOUND"), "{error:?}");

    // A known-error header that disagrees with the body: the answer makes no sense.
    let upstream = Upstream::start(known_error_with(
        404,
        "API_KEY_NOT_FOUND",
        &[
            ("x-hexclave-known-error", "API_KEY_REVOKED"),
            ("x-stack-known-error", "API_KEY_NOT_FOUND"),
        ],
    ))
    .await;
    let error = admin(upstream.base_url())
        .revoke(&owner, f.key.key_id())
        .await
        .expect_err("disagreeing headers");
    assert!(
        matches!(error, StackAuthError::InvalidResponse { .. }),
        "{error:?}"
    );

    // Both header names agreeing, as a current backend sends them.
    let upstream = Upstream::start(known_error_with(
        404,
        "API_KEY_NOT_FOUND",
        &[
            ("x-hexclave-known-error", "API_KEY_NOT_FOUND"),
            ("x-stack-known-error", "API_KEY_NOT_FOUND"),
        ],
    ))
    .await;
    let error = admin(upstream.base_url())
        .get(&owner, f.key.key_id())
        .await
        .expect_err("not found");
    assert_eq!(error.code(), Some("API_KEY_NOT_FOUND"), "{error:?}");

    // A 200 that is not a key object keeps its parse error as the source.
    let upstream = Upstream::start(json_reply(200, &json!({ "hello": 1 }))).await;
    let error = admin(upstream.base_url())
        .get(&owner, f.key.key_id())
        .await
        .expect_err("not a key object");
    assert!(
        matches!(error, StackAuthError::InvalidResponse { .. }),
        "{error:?}"
    );
    let source = error.source().expect("source");
    assert!(source.is::<serde_json::Error>(), "{source:?}");

    // A refused connection keeps reqwest's error as the source.
    let upstream = Upstream::start(Script::Refused).await;
    let error = admin(upstream.base_url())
        .list(&owner)
        .await
        .expect_err("refused");
    assert!(matches!(error, StackAuthError::Transport(_)), "{error:?}");
    let source = error.source().expect("source");
    assert!(source.is::<reqwest::Error>(), "{source:?}");
}

/// Regression (issue 9): `Duration::MAX` as the admin client's timeout neither panics nor
/// overflows.
#[tokio::test]
async fn the_admin_clients_timeout_saturates() {
    let f = Fixture::new();
    let upstream = Upstream::start(json_reply(200, &f.key_object())).await;
    let client = admin(upstream.base_url()).timeout(Duration::MAX);
    let record = client
        .get(&Owner::user(&f.user_id), f.key.key_id())
        .await
        .expect("get");
    assert_eq!(record.id, f.key.key_id());
    assert_eq!(upstream.calls(), 1);
    let request = &upstream.requests()[0];
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.path,
        format!(
            "/api/v1/user-api-keys/{}?user_id={}",
            f.key.key_id(),
            f.user_id
        )
    );
}
