//! `keygate serve` end to end: the built binary on a temporary SQLite file (and, when
//! `DATABASE_URL` is set, two instances on one PostgreSQL database), over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::key_api::{PROJECT, SECRET};
use common::keygate_bin::{keygate, KeygateServe};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET url` with an optional bearer key: (status, headers, body).
async fn get(url: &str, key: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = client().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// The key API of `server`: `method path` with the server credentials.
async fn key_api(
    server: &KeygateServe,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut request = client()
        .request(method.clone(), server.url(path))
        .header("x-stack-access-type", "server")
        .header("x-stack-project-id", PROJECT)
        .header("x-stack-secret-server-key", SECRET);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Creates a user key through the key API: (key id, the key).
async fn create_user_key(server: &KeygateServe, user: &str) -> (String, String) {
    let body = json!({ "user_id": user, "description": "serve test", "expires_at_millis": null });
    let created = key_api(
        server,
        reqwest::Method::POST,
        "/api/v1/user-api-keys",
        Some(body),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["value"].as_str().unwrap().to_owned();
    (id, key)
}

async fn revoke_user_key(server: &KeygateServe, id: &str, user: &str) {
    let path = format!("/api/v1/user-api-keys/{id}?user_id={user}");
    let revoked = key_api(
        server,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "revoked": true })),
    )
    .await;
    assert_eq!(revoked["id"], id);
}

fn with_key_api<'a>(db: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
        "--project-id",
        PROJECT,
        "--secret-server-key",
        SECRET,
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn serves_authz_health_metrics_and_the_key_api_then_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let server = KeygateServe::spawn(&with_key_api(&db, &[]), &[]);
    assert!(server.admin_addr().is_none());

    let (status, _, body) = get(&server.url("/healthz"), None).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "ok"));
    let (status, _, _) = get(&server.url("/readyz"), None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, headers, _) = get(&server.url("/v1/authz"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&headers, "x-keygate-reason"), "API_KEY_MISSING");
    assert_eq!(
        header(&headers, "www-authenticate"),
        "Bearer realm=\"keygate\""
    );

    let user = Uuid::new_v4().to_string();
    let (id, key) = create_user_key(&server, &user).await;
    let (status, headers, body) = get(&server.url("/v1/authz/api/orders"), Some(&key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.is_empty());
    assert_eq!(header(&headers, "x-keygate-key-id"), id);
    assert_eq!(header(&headers, "x-keygate-key-type"), "user");
    assert_eq!(header(&headers, "x-keygate-user-id"), user);
    assert_eq!(header(&headers, "x-keygate-team-id"), "");
    assert_eq!(header(&headers, "cache-control"), "no-store");

    // A revocation through this process's key API reaches its cache at once.
    revoke_user_key(&server, &id, &user).await;
    let (status, headers, _) = get(&server.url("/v1/authz"), Some(&key)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&headers, "x-keygate-reason"), "API_KEY_INVALID");

    let (status, _, metrics) = get(&server.url("/metrics"), None).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "keygate_requests_total{outcome=\"missing\"",
        "keygate_requests_total{outcome=\"pass\"",
        "keygate_verifier_calls_total",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }

    let logs = server.stderr();
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0; logs:\n{logs}");
    assert!(!logs.contains("574ck4u7h"), "a key in the logs:\n{logs}");
}

#[tokio::test]
async fn the_admin_listener_takes_the_ops_endpoints_and_sigint_stops_too() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let mut server = KeygateServe::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ],
        &[],
    );
    let admin = format!("http://{}", server.admin_addr().expect("admin line"));
    assert_ne!(server.admin_addr(), Some(server.addr()));
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get(&format!("{admin}{path}"), None).await.0,
            StatusCode::OK,
            "admin {path}"
        );
        assert_eq!(
            get(&server.url(path), None).await.0,
            StatusCode::NOT_FOUND,
            "main {path}"
        );
    }
    assert_eq!(
        get(&format!("{admin}/v1/authz"), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&server.url("/v1/authz"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // No --secret-server-key: no key API.
    let status = client()
        .post(server.url("/api/v1/user-api-keys"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(server.signal("INT").code(), Some(0));
}

#[tokio::test]
async fn settings_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let server = KeygateServe::spawn(
        &["--listen", "127.0.0.1:0"],
        &[
            ("KEYGATE_DATABASE_URL", &db),
            ("KEYGATE_REQUIRE", "team"),
            ("KEYGATE_KEY_HEADER", "x-api-key"),
            ("KEYGATE_PROJECT_ID", PROJECT),
            ("KEYGATE_SECRET_SERVER_KEY", SECRET),
        ],
    );
    let (_, key) = create_user_key(&server, &Uuid::new_v4().to_string()).await;
    let response = client()
        .get(server.url("/v1/authz"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "KEYGATE_REQUIRE=team refuses a user key"
    );
    assert_eq!(
        header(response.headers(), "x-keygate-reason"),
        "INSUFFICIENT_SCOPE"
    );
    // KEYGATE_KEY_HEADER replaces `Authorization: Bearer`.
    let (status, headers, _) = get(&server.url("/v1/authz"), Some(&key)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&headers, "x-keygate-reason"), "API_KEY_MISSING");
    assert_eq!(server.stop().code(), Some(0));
}

#[tokio::test]
async fn rate_limits_answer_403_for_nginx_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let server = KeygateServe::spawn(
        &with_key_api(
            &db,
            &[
                "--rate-limit",
                "1",
                "--rate-limit-burst",
                "2",
                "--limit-status",
                "403",
            ],
        ),
        &[],
    );
    let (_, key) = create_user_key(&server, &Uuid::new_v4().to_string()).await;
    for i in 0..2 {
        assert_eq!(
            get(&server.url("/v1/authz"), Some(&key)).await.0,
            StatusCode::OK,
            "request {i}"
        );
    }
    let (status, headers, _) = get(&server.url("/v1/authz"), Some(&key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(header(&headers, "x-keygate-reason"), "RATE_LIMITED");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(server.stop().code(), Some(0));
}

#[tokio::test]
async fn readiness_fails_with_a_reason_while_stack_auth_is_unreachable() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = KeygateServe::spawn(
        &["--listen", "127.0.0.1:0", "--stack-api-url", &url],
        &[
            ("STACK_PROJECT_ID", PROJECT),
            ("STACK_SECRET_SERVER_KEY", SECRET),
        ],
    );
    let (status, _, body) = get(&server.url("/readyz"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.trim().lines().count(), 1, "{body}");
    assert!(body.contains("Stack Auth is unreachable"), "{body}");
    assert_eq!(get(&server.url("/healthz"), None).await.0, StatusCode::OK);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn bad_configuration_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let unreadable = format!(
        "sqlite://{}",
        dir.path().join("missing-dir/keys.db").display()
    );
    // (what, flags, environment, a word the message must contain)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 9] = [
        (
            "bad address",
            vec!["--listen", "localhost"],
            vec![],
            "--listen",
        ),
        (
            "bad admin address",
            vec!["--admin-listen", "1.2.3.4"],
            vec![],
            "--admin-listen",
        ),
        (
            "bad duration",
            vec!["--cache-ttl", "10 minutes"],
            vec![],
            "--cache-ttl",
        ),
        (
            "bad env duration",
            vec![],
            vec![("KEYGATE_NEGATIVE_CACHE_TTL", "5")],
            "--negative-cache-ttl",
        ),
        (
            "unknown scheme",
            vec!["--database-url", "mysql://h/db"],
            vec![],
            "--database-url",
        ),
        (
            "half Stack Auth",
            vec!["--stack-project-id", "p"],
            vec![],
            "--stack-secret-server-key",
        ),
        (
            "half Stack Auth, env",
            vec![],
            vec![("STACK_SECRET_SERVER_KEY", "ssk_x")],
            "--stack-project-id",
        ),
        (
            "bad CIDR",
            vec!["--trusted-proxies", "10.0.0.0/33"],
            vec![],
            "--trusted-proxies",
        ),
        (
            "unreadable SQLite path",
            vec!["--database-url", &unreadable],
            vec![],
            "SQLite",
        ),
    ];
    for (what, extra, envs, mentions) in cases {
        // The base settings come from the environment, so a flag can override them.
        let mut args = vec!["serve"];
        args.extend_from_slice(&extra);
        let mut all_envs = vec![
            ("KEYGATE_LISTEN", "127.0.0.1:0"),
            ("KEYGATE_DATABASE_URL", db.as_str()),
        ];
        all_envs.extend_from_slice(&envs);
        let output = keygate(&args, &all_envs);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{what}: one line, got:\n{stderr}"
        );
        assert!(stderr.starts_with("keygate: "), "{what}: {stderr}");
        assert!(
            stderr.contains(mentions),
            "{what}: {stderr} should mention {mentions}"
        );
        assert!(output.stdout.is_empty(), "{what}: nothing listened");
    }
}

#[test]
fn help_names_every_flag_and_its_environment_variable() {
    let output = keygate(
        &["serve", "--help"],
        &[("KEYGATE_SECRET_SERVER_KEY", "ssk_do_not_print_me")],
    );
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for name in [
        "KEYGATE_LISTEN",
        "KEYGATE_ADMIN_LISTEN",
        "KEYGATE_DATABASE_URL",
        "KEYGATE_REVOCATION_POLL_INTERVAL",
        "STACK_API_URL",
        "STACK_PROJECT_ID",
        "STACK_SECRET_SERVER_KEY",
        "KEYGATE_PROJECT_ID",
        "KEYGATE_SECRET_SERVER_KEY",
        "KEYGATE_CACHE_TTL",
        "KEYGATE_NEGATIVE_CACHE_TTL",
        "KEYGATE_REQUIRE",
        "KEYGATE_ALLOW_PUBLIC_KEYS",
        "KEYGATE_KEY_HEADER",
        "KEYGATE_ALLOW_PREFLIGHT",
        "KEYGATE_REFUSAL_BODIES",
        "KEYGATE_TRUSTED_PROXIES",
        "KEYGATE_RATE_LIMIT",
        "KEYGATE_RATE_LIMIT_BURST",
        "KEYGATE_RATE_LIMIT_BY",
        "KEYGATE_REFUSAL_LIMIT",
        "KEYGATE_LIMIT_STATUS",
        "KEYGATE_LOG",
    ] {
        assert!(help.contains(name), "--help does not name {name}");
    }
    assert!(
        !help.contains("ssk_do_not_print_me"),
        "--help shows a secret"
    );
}

/// Waits (bounded) until `server` refuses `key` with 401, after accepting it until then.
async fn wait_until_refused(server: &KeygateServe, key: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = get(&server.url("/v1/authz"), Some(key)).await;
        if status == StatusCode::UNAUTHORIZED {
            return;
        }
        assert_eq!(status, StatusCode::OK, "{what}");
        assert!(
            Instant::now() < deadline,
            "{what}: the revoked key is still accepted; logs:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sqlite_revocations_by_another_process_reach_the_cache_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let a = KeygateServe::spawn(&with_key_api(&db, &[]), &[]);
    let b = KeygateServe::spawn(
        &with_key_api(
            &db,
            &["--cache-ttl", "1h", "--revocation-poll-interval", "50ms"],
        ),
        &[],
    );
    let user = Uuid::new_v4().to_string();
    let (id, key) = create_user_key(&a, &user).await;
    // B caches the valid verdict for an hour…
    assert_eq!(get(&b.url("/v1/authz"), Some(&key)).await.0, StatusCode::OK);
    // …until A revokes the key and B's poll of the file finds it.
    revoke_user_key(&a, &id, &user).await;
    wait_until_refused(&b, &key, "SQLite poll").await;
    assert_eq!(a.stop().code(), Some(0));
    assert_eq!(b.stop().code(), Some(0));
}

#[tokio::test]
async fn postgres_revocations_reach_a_second_instance() {
    let Some(url) = common::store_suite::database_url() else {
        return;
    };
    let a = KeygateServe::spawn(&with_key_api(&url, &["--cache-ttl", "1h"]), &[]);
    let b = KeygateServe::spawn(&with_key_api(&url, &["--cache-ttl", "1h"]), &[]);
    let user = Uuid::new_v4().to_string();
    let (id, key) = create_user_key(&a, &user).await;
    // B caches the valid verdict for an hour…
    let (status, _, _) = get(&b.url("/v1/authz"), Some(&key)).await;
    assert_eq!(status, StatusCode::OK);
    // …until A revokes the key and the database tells B.
    revoke_user_key(&a, &id, &user).await;
    wait_until_refused(&b, &key, "PostgreSQL feed").await;
    assert_eq!(a.stop().code(), Some(0));
    assert_eq!(b.stop().code(), Some(0));
}

/// Stack Auth mode against a slow, failing stand-in: a check in flight when SIGTERM arrives
/// still gets its answer (503, fail closed), and the process then exits 0.
#[tokio::test]
async fn stack_auth_mode_fails_closed_and_finishes_requests_in_flight_on_sigterm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub_url = format!("http://{}", stub.local_addr().unwrap());
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = stub.accept().await else {
                break;
            };
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let _ = seen.send(head);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let mut server = KeygateServe::spawn(
        &["--listen", "127.0.0.1:0", "--stack-api-url", &stub_url],
        &[
            ("STACK_PROJECT_ID", PROJECT),
            ("STACK_SECRET_SERVER_KEY", SECRET),
        ],
    );
    // Readiness: Stack Auth answers HTTP (even a 503), so the service is ready.
    assert_eq!(get(&server.url("/readyz"), None).await.0, StatusCode::OK);
    while let Ok(head) = seen_rx.try_recv() {
        assert!(head.starts_with("GET /api/v1"), "{head}");
    }

    let key = common::keys::generated(keygate::KeyKind::User, false);
    let url = server.url("/v1/authz");
    let secret = key.expose_secret().to_owned();
    let in_flight = tokio::spawn(async move { get(&url, Some(&secret)).await });
    let head = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("keygate asked Stack Auth")
        .unwrap();
    assert!(
        head.starts_with("POST /api/v1/user-api-keys/check"),
        "{head}"
    );
    let status = tokio::task::spawn_blocking(move || server.signal("TERM"))
        .await
        .unwrap();
    let (answer, headers, _) = in_flight.await.expect("the request in flight was answered");
    assert_eq!(answer, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&headers, "x-keygate-reason"), "VERIFIER_UNAVAILABLE");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(status.code(), Some(0));
}
