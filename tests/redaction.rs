//! No key in plain text outside the request: not in logs (at TRACE), not in response bodies or
//! headers, not in any `Debug`/`Display` output. Driven over real loopback HTTP (axum::serve on
//! 127.0.0.1, a raw HTTP/1.1 client), so that whatever hyper and axum log is captured as well.
//!
//! These tests check named paths. The whole suite is checked too: `.ci/log-audit` (run by
//! `.ci/run`) runs every test with every crate's log lines at TRACE captured to files
//! (tests/common/audit.rs, teed by `LogCapture`) and fails if a line holds a full key, the
//! `574ck4u7h` marker, or a 45-character secret.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderName, Response};
use axum::routing::get;
use axum::Router;
use common::app::whoami;
use common::http::X_KEY;
use common::keys::{unknown_key, with_bad_checksum, with_char};
use common::logs::LogCapture;
use common::verifier::CountingVerifier;
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::store::CreatedKey;
use keygate::verify::{VerifyError, VerifyErrorKind};
use keygate::{
    CachedVerifier, DefaultResponder, KeyExtractor, NewKey, Owner, Rejection, RejectionResponder,
    RequireApiKey,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// `GET path` over a fresh connection; the status and the whole raw response (head and body).
async fn get_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    (status, raw)
}

/// The body's `code`, from a raw response.
fn code(raw: &str) -> String {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// One request of the scenario.
struct Case {
    what: &'static str,
    path: &'static str,
    header: Option<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn bearer(
    what: &'static str,
    path: &'static str,
    key: &str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        path,
        header: Some(("authorization", format!("Bearer {key}"))),
        status,
        code,
    }
}

/// `key` with one character of its secret part changed: malformed (bad checksum), and holding
/// 44 of the 45 secret characters of `key`.
fn mutated(key: &str) -> String {
    with_char(key, 10, if &key[10..11] == "a" { 'b' } else { 'a' })
}

#[tokio::test]
async fn no_key_is_revealed_by_logs_bodies_or_debug_output() {
    // Everything keygate, axum and hyper log at TRACE, on this thread (current-thread runtime:
    // the server's tasks run here too).
    let log = LogCapture::start();

    // Keys of every sort.
    let good = CountingVerifier::new();
    let valid = good.create_user_key("valid").await;
    let revoked = good.create_user_key("revoked").await;
    good.revoke(revoked.record.id).await;
    let expired = good
        .create(
            Owner::user("user-expired"),
            NewKey::new("expired").expires_at(SystemTime::now() - Duration::from_secs(10)),
        )
        .await;
    let team = good
        .create(Owner::team("team-1"), NewKey::new("team"))
        .await;
    let public = good
        .create(
            Owner::user("user-public"),
            NewKey::new("public").public(true),
        )
        .await;
    let stranger = unknown_key();
    let flaky = CountingVerifier::new();
    flaky.set_failing(true);
    let unreachable = flaky.create_user_key("unreachable").await;

    let malformed_one_char = mutated(valid.key.expose_secret());
    let malformed_checksum = with_bad_checksum(valid.key.expose_secret());
    let too_long = valid.key.expose_secret().repeat(6); // 612 bytes, past the 512-byte cap
    let wrong_length = &valid.key.expose_secret()[..101];
    for bad in [
        &malformed_one_char,
        &malformed_checksum,
        &too_long,
        wrong_length,
    ] {
        assert!(ApiKey::parse(bad).is_err(), "test keys must be malformed");
    }

    // Every refusal's Debug and Display, as the layer built it.
    let rejections = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = {
        let rejections = Arc::clone(&rejections);
        move |rejection: &Rejection| -> Response<Body> {
            rejections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{rejection:?} | {rejection}"));
            RejectionResponder::<Body>::respond(&DefaultResponder::default(), rejection)
        }
    };

    let cached = CachedVerifier::new(good.clone());
    let flaky_cached = CachedVerifier::new(flaky.clone());
    let guarded = |path: &str, layer| Router::new().route(path, get(whoami)).route_layer(layer);
    let app = Router::new()
        .merge(guarded(
            "/user",
            RequireApiKey::new(cached.clone())
                .users_only()
                .allow_public_keys(false)
                .responder(recorder.clone()),
        ))
        .merge(guarded(
            "/optional",
            RequireApiKey::new(cached.clone())
                .optional()
                .responder(recorder.clone()),
        ))
        .merge(guarded(
            "/header",
            RequireApiKey::new(cached.clone())
                .extractor(
                    KeyExtractor::new()
                        .bearer(false)
                        .header(HeaderName::from_static(X_KEY)),
                )
                .responder(recorder.clone()),
        ))
        .merge(
            Router::new()
                .route("/flaky", get(whoami))
                .route_layer(RequireApiKey::new(flaky_cached.clone()).responder(recorder.clone())),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let v = valid.key.expose_secret();
    let cases = vec![
        bearer("valid", "/user", v, 200, ""),
        bearer("valid again (cache hit)", "/user", v, 200, ""),
        bearer(
            "unknown",
            "/user",
            stranger.expose_secret(),
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "unknown again",
            "/user",
            stranger.expose_secret(),
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "revoked",
            "/user",
            revoked.key.expose_secret(),
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "expired",
            "/user",
            expired.key.expose_secret(),
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "one char changed",
            "/user",
            &malformed_one_char,
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "wrong checksum",
            "/user",
            &malformed_checksum,
            401,
            "API_KEY_INVALID",
        ),
        bearer("too long", "/user", &too_long, 401, "API_KEY_INVALID"),
        bearer(
            "wrong length",
            "/user",
            wrong_length,
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "team key on a user route",
            "/user",
            team.key.expose_secret(),
            403,
            "INSUFFICIENT_SCOPE",
        ),
        bearer(
            "public key refused",
            "/user",
            public.key.expose_secret(),
            403,
            "INSUFFICIENT_SCOPE",
        ),
        bearer(
            "verifier down",
            "/flaky",
            unreachable.key.expose_secret(),
            503,
            "VERIFIER_UNAVAILABLE",
        ),
        Case {
            what: "optional, no key",
            path: "/optional",
            header: None,
            status: 200,
            code: "",
        },
        bearer("optional, valid", "/optional", v, 200, ""),
        bearer(
            "optional, revoked",
            "/optional",
            revoked.key.expose_secret(),
            401,
            "API_KEY_INVALID",
        ),
        bearer(
            "optional, malformed",
            "/optional",
            &malformed_one_char,
            401,
            "API_KEY_INVALID",
        ),
        Case {
            what: "custom header, valid",
            path: "/header",
            header: Some((X_KEY, v.to_owned())),
            status: 200,
            code: "",
        },
        Case {
            what: "custom header, unknown",
            path: "/header",
            header: Some((X_KEY, stranger.expose_secret().to_owned())),
            status: 401,
            code: "API_KEY_INVALID",
        },
        Case {
            what: "custom header, malformed",
            path: "/header",
            header: Some((X_KEY, malformed_checksum.clone())),
            status: 401,
            code: "API_KEY_INVALID",
        },
        Case {
            what: "custom header, missing",
            path: "/header",
            header: None,
            status: 401,
            code: "API_KEY_MISSING",
        },
        bearer(
            "team key with a bad checksum on a user route",
            "/user",
            &with_bad_checksum(team.key.expose_secret()),
            401,
            "API_KEY_INVALID",
        ),
        Case {
            what: "optional, tab after the scheme",
            path: "/optional",
            header: Some(("authorization", format!("Bearer\t{v}"))),
            status: 400,
            code: "INVALID_REQUEST",
        },
        bearer(
            "bad Authorization syntax",
            "/user",
            &format!("{v}, {}", stranger.expose_secret()),
            400,
            "INVALID_REQUEST",
        ),
    ];

    let mut responses = String::new();
    let mut invalid_bodies = Vec::new();
    for case in &cases {
        let headers: Vec<(&str, &str)> =
            case.header.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, raw) = get_raw(addr, case.path, &headers).await;
        assert_eq!(status, case.status, "{}: {raw}", case.what);
        assert_eq!(code(&raw), case.code, "{}: {raw}", case.what);
        if case.code == "API_KEY_INVALID" {
            invalid_bodies.push(raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned());
        }
        responses.push_str(&raw);
        responses.push('\n');
    }
    server.abort();
    assert!(
        invalid_bodies.windows(2).all(|w| w[0] == w[1]),
        "unknown, revoked, expired and malformed keys get one uniform body: {invalid_bodies:?}"
    );

    // Every Debug and Display of the types that hold or describe keys.
    let created: [&CreatedKey; 6] = [&valid, &revoked, &expired, &team, &public, &unreachable];
    let mut shown = String::new();
    for c in created {
        shown.push_str(&format!("{c:?}\n{:?}\n{}\n{:?}\n", c.key, c.key, c.record));
    }
    let parsed = ApiKey::parse(v).expect("valid key parses");
    shown.push_str(&format!(
        "{stranger:?}\n{stranger}\n{parsed:?}\n{parsed}\n{:?}\n",
        parsed.digest()
    ));
    shown.push_str(&format!("{:?}\n{:?}\n", good.store(), flaky.store()));
    cached.run_pending_tasks();
    shown.push_str(&format!(
        "{cached:?}\n{flaky_cached:?}\n{:?}\n{:?}\n",
        cached.stats(),
        flaky_cached.stats()
    ));
    shown.push_str(&format!("{:?}\n", RequireApiKey::new(cached.clone())));
    let error = VerifyError::new(VerifyErrorKind::Transport, "down");
    shown.push_str(&format!("{error:?}\n{error}\n"));
    let recorded = rejections
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .join("\n");
    assert!(
        recorded.matches('\n').count() + 1 >= 15,
        "every refusal went through the recorder: {recorded}"
    );
    shown.push_str(&recorded);

    let log = log.text();
    assert!(
        !log.is_empty(),
        "nothing was logged, so nothing was checked"
    );
    assert!(log.contains("API key refused"), "{log}");

    // The secrets: every full key presented, and the secret part (chars 3..48) of each.
    let mut secrets: Vec<(String, String)> = Vec::new();
    for (name, key) in [
        ("valid", v),
        ("revoked", revoked.key.expose_secret()),
        ("expired", expired.key.expose_secret()),
        ("team", team.key.expose_secret()),
        ("public", public.key.expose_secret()),
        ("unknown", stranger.expose_secret()),
        ("unreachable", unreachable.key.expose_secret()),
        ("one char changed", &malformed_one_char),
        ("wrong checksum", &malformed_checksum),
        (
            "team, wrong checksum",
            &with_bad_checksum(team.key.expose_secret()),
        ),
    ] {
        secrets.push((format!("{name} (full key)"), key.to_owned()));
        secrets.push((format!("{name} (secret part)"), key[3..48].to_owned()));
    }
    for (where_, text) in [
        ("the log", &log),
        ("a response", &responses),
        ("Debug/Display output", &shown),
    ] {
        for (name, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name} appears in {where_}:\n{text}"
            );
        }
    }

    // Logs identify refused keys without revealing them: by key id and `sk_…<last four>`.
    for (name, key) in [
        ("revoked", &revoked.key),
        ("expired", &expired.key),
        ("unknown", &stranger),
        ("team", &team.key),
        ("public", &public.key),
        ("unreachable", &unreachable.key),
    ] {
        let key_id = key.key_id().to_string();
        let redacted = key.to_string();
        assert!(
            redacted.ends_with(key.last_four()) && redacted.len() < 12,
            "{name}: {redacted}"
        );
        assert!(
            log.contains(&key_id) || log.contains(&redacted),
            "the {name} key ({key_id}, {redacted}) is not identified in the log:\n{log}"
        );
    }
    assert!(log.contains(&revoked.record.id.to_string()), "{log}");
    assert!(log.contains(&format!("key={}", revoked.key)), "{log}");
    assert!(
        log.contains("revoked") && log.contains("expired"),
        "reasons are logged: {log}"
    );
    assert!(
        !responses.contains("revoked") && !responses.contains("expired"),
        "reasons are not sent: {responses}"
    );
}

#[test]
fn debug_and_display_of_a_key_show_prefix_and_last_four_only() {
    // The same promise, checked alone on a generated key of each sort.
    for (kind, public) in [
        (KeyKind::User, false),
        (KeyKind::User, true),
        (KeyKind::Team, false),
        (KeyKind::Team, true),
    ] {
        let key = ApiKey::generate(Uuid::new_v4(), kind, public, Deployment::Cloud).expect("rng");
        let full = key.expose_secret();
        let prefix = if public { "pk" } else { "sk" };
        assert_eq!(key.to_string(), format!("{prefix}_…{}", &full[98..]));
        let shown = format!("{key} {key:?} {:?} {:?}", key.digest(), key.parts());
        assert!(!shown.contains(full), "{shown}");
        assert!(!shown.contains(&full[3..48]), "{shown}");
        // No 8-character run of the secret part either.
        for start in 3..=40 {
            assert!(!shown.contains(&full[start..start + 8]), "{shown}");
        }
    }
}
