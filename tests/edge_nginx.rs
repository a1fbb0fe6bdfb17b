//! `keygate serve` behind a real nginx (`auth_request`), configured exactly as documented
//! (`docs/edge/nginx.conf`, shown in the README): what the client gets, what the app behind nginx
//! receives, and what keygate is sent. Keys live in a temporary SQLite file, managed with the
//! `keygate keys` CLI. Skipped (with a note) when nginx is not installed; CI requires it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::echo::{Echo, Seen};
use common::keygate_bin::{keygate, KeygateServe};
use common::nginx::{keygate_site, nginx_bin, Nginx, KEYGATE_SITE};
use common::tap::Tap;
use keygate::store::CreatedKey;
use keygate::{KeyStore, NewKey, Owner, SqliteKeyStore};
use reqwest::StatusCode;
use tempfile::TempDir;

/// A client for nginx: loopback only, bounded in time.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One answer from nginx.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// What the app saw (the echo's answer); panics unless the request got through.
    fn seen(&self) -> Seen {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        Seen::parse(&self.body)
    }

    /// The JSON error body of the documented refusal pages.
    fn error(&self) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} with a non-JSON body ({e}): {}", self.status, self.body));
        json["error"].as_str().expect("error field").to_owned()
    }
}

/// keygate serve over a SQLite file, the echo app, and nginx in front of both.
struct Edge {
    dir: TempDir,
    keygate: Option<KeygateServe>,
    echo: Echo,
    /// Between nginx and keygate, when asked for.
    tap: Option<Tap>,
    nginx: Nginx,
    client: reqwest::Client,
}

impl Edge {
    /// `None` when nginx is missing (the test is skipped). `serve_args` are added to
    /// `keygate serve`; `keys` are created in the database before it starts.
    async fn start(nginx_bin: &Path, tap: bool) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("keys.db").display());
        // Create the database (and its schema) before keygate serve opens it.
        drop(SqliteKeyStore::open(dir.path().join("keys.db")).await.unwrap());
        let keygate = KeygateServe::spawn(
            &[
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &database_url,
                "--log",
                "warn",
            ],
            &[],
        );
        let echo = Echo::start().await;
        let tap = if tap {
            Some(Tap::start(keygate.addr()).await)
        } else {
            None
        };
        let auth_addr = tap.as_ref().map_or(keygate.addr(), Tap::addr);
        let site = keygate_site(auth_addr, echo.addr());
        let bin = nginx_bin.to_owned();
        let nginx = tokio::task::spawn_blocking(move || Nginx::start(&bin, &site))
            .await
            .unwrap();
        Edge {
            dir,
            keygate: Some(keygate),
            echo,
            tap,
            nginx,
            client: client(),
        }
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("keys.db")
    }

    /// A new key of `owner` in the database keygate serves.
    async fn create_key(&self, owner: Owner) -> CreatedKey {
        let store = SqliteKeyStore::open(self.db_path()).await.unwrap();
        store.create(owner, NewKey::new("edge test")).await.unwrap()
    }

    /// `METHOD path` through nginx with `headers` and `body`.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = self.client.request(method, self.nginx.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    /// `GET path` through nginx with `headers`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::GET, path, headers, None).await
    }
}

fn bearer(key: &CreatedKey) -> String {
    format!("Bearer {}", key.key.expose_secret())
}

/// The nginx binary, or `return` from the test (skipped) without one.
macro_rules! nginx_or_skip {
    () => {
        match nginx_bin() {
            Some(bin) => bin,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_reaches_the_app_with_its_owner_and_forged_identity_headers_replaced() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, false).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let team = edge.create_key(Owner::team("team-1")).await;
    let forged = [
        ("x-keygate-key-id", "forged-key"),
        ("x-keygate-key-type", "team"),
        ("x-keygate-user-id", "admin"),
        ("x-keygate-team-id", "team-admins"),
    ];

    let mut headers = vec![("authorization", bearer(&user))];
    headers.extend(forged.iter().map(|(n, v)| (*n, (*v).to_owned())));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let seen = edge.get("/api/orders?page=2", &headers).await.seen();
    assert_eq!(seen.method(), "GET");
    assert_eq!(seen.uri(), "/api/orders?page=2");
    assert_eq!(
        seen.header("x-keygate-key-id"),
        Some(user.record.id.to_string())
    );
    assert_eq!(seen.header("x-keygate-key-type").as_deref(), Some("user"));
    assert_eq!(seen.header("x-keygate-user-id").as_deref(), Some("user-1"));
    assert_eq!(seen.header("x-keygate-team-id"), None, "forged team id removed");

    let mut headers = vec![("authorization", bearer(&team))];
    headers.extend(forged.iter().map(|(n, v)| (*n, (*v).to_owned())));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let seen = edge.get("/api/teams/1/invoices", &headers).await.seen();
    assert_eq!(
        seen.header("x-keygate-key-id"),
        Some(team.record.id.to_string())
    );
    assert_eq!(seen.header("x-keygate-key-type").as_deref(), Some("team"));
    assert_eq!(seen.header("x-keygate-user-id"), None, "forged user id removed");
    assert_eq!(seen.header("x-keygate-team-id").as_deref(), Some("team-1"));
    assert_eq!(edge.echo.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_key_gets_401_with_the_challenge_and_a_json_reason() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, false).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let secret = user.key.expose_secret().to_owned();
    let (head, last) = secret.split_at(secret.len() - 1);
    let bad_checksum = format!("Bearer {head}{}", if last == "0" { "1" } else { "0" });
    let unknown = {
        let other = tempfile::tempdir().unwrap();
        let store = SqliteKeyStore::open(other.path().join("other.db"))
            .await
            .unwrap();
        let key = store
            .create(Owner::user("user-1"), NewKey::new("elsewhere"))
            .await
            .unwrap();
        bearer(&key)
    };

    for (what, headers, reason) in [
        ("no key", vec![], "API_KEY_MISSING"),
        (
            "a key of another database",
            vec![("authorization", unknown.as_str())],
            "API_KEY_INVALID",
        ),
        (
            "a key with a wrong checksum",
            vec![("authorization", bad_checksum.as_str())],
            "API_KEY_INVALID",
        ),
    ] {
        let answer = edge.get("/api/orders", &headers).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}: {}", answer.body);
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
        assert_eq!(answer.error(), reason, "{what}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{what}"
        );
    }
    assert_eq!(edge.echo.hits(), 0, "no refused request reaches the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_key_below_the_team_only_location_gets_403_and_a_forged_narrowing_is_ignored() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, false).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let team = edge.create_key(Owner::team("team-1")).await;

    let answer = edge
        .get("/api/teams/1", &[("authorization", &bearer(&user))])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(answer.error(), "INSUFFICIENT_SCOPE");
    assert_eq!(edge.echo.hits(), 0);

    // The same key elsewhere under /api/ passes, even when the client asks keygate to narrow:
    // nginx sends its own X-Keygate-Require (none here), never the client's.
    let seen = edge
        .get(
            "/api/orders",
            &[
                ("authorization", &bearer(&user)),
                ("x-keygate-require", "team"),
            ],
        )
        .await
        .seen();
    assert_eq!(seen.header("x-keygate-user-id").as_deref(), Some("user-1"));

    // A team key below /api/teams/ passes.
    let seen = edge
        .get("/api/teams/1", &[("authorization", &bearer(&team))])
        .await
        .seen();
    assert_eq!(seen.header("x-keygate-team-id").as_deref(), Some("team-1"));
    assert_eq!(edge.echo.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_reaches_the_app_intact_while_keygate_gets_headers_only() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, true).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let body = r#"{"order":"a body only the app may read","qty":3}"#;

    let seen = edge
        .send(
            reqwest::Method::POST,
            "/api/orders",
            &[
                ("authorization", &bearer(&user)),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
        .await
        .seen();
    assert_eq!(seen.method(), "POST");
    assert_eq!(seen.body(), body);
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string())
    );
    assert_eq!(seen.header("x-keygate-user-id").as_deref(), Some("user-1"));

    // What nginx sent keygate: a GET naming the original request, with no body and no
    // Content-Length promising one.
    let sent = edge.tap.as_ref().unwrap().sent();
    let lower = sent.to_ascii_lowercase();
    assert!(sent.starts_with("GET /v1/authz HTTP/1.1\r\n"), "{sent}");
    assert!(lower.contains("\r\nx-original-method: post\r\n"), "{sent}");
    assert!(lower.contains("\r\nx-original-uri: /api/orders\r\n"), "{sent}");
    assert!(!lower.contains("content-length"), "{sent}");
    assert!(!sent.contains("a body only the app may read"), "{sent}");
    assert!(sent.ends_with("\r\n\r\n"), "nothing after the headers: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_nginx_answers_500_and_never_calls_the_app() {
    let bin = nginx_or_skip!();
    let mut edge = Edge::start(&bin, false).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let auth = bearer(&user);
    edge.get("/api/orders", &[("authorization", &auth)])
        .await
        .seen();
    assert_eq!(edge.echo.hits(), 1);

    let status = edge.keygate.take().unwrap().stop();
    assert!(status.success(), "keygate serve exited with {status}");
    for _ in 0..3 {
        let answer = edge.get("/api/orders", &[("authorization", &auth)]).await;
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            answer.body
        );
    }
    assert_eq!(edge.echo.hits(), 1, "fail closed: the app is never called");
    let log = edge.nginx.error_log();
    assert!(
        log.contains("auth request unexpected status: 502"),
        "error.log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_with_the_cli_is_refused_within_two_seconds_and_stays_refused() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, false).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let auth = bearer(&user);
    // Cached as valid in keygate before the revocation.
    for _ in 0..3 {
        edge.get("/api/orders", &[("authorization", &auth)])
            .await
            .seen();
    }

    let database_url = edge.database_url();
    let key_id = user.record.id.to_string();
    let revoke = tokio::task::spawn_blocking(move || {
        keygate(
            &["keys", "revoke", "--database-url", &database_url, &key_id],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(
        revoke.status.success(),
        "keygate keys revoke: {}\n{}",
        revoke.status,
        String::from_utf8_lossy(&revoke.stderr)
    );

    // Documented bound: the revocation poll interval (200 ms by default). Allow 2 s.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let answer = edge.get("/api/orders", &[("authorization", &auth)]).await;
        if answer.status == StatusCode::UNAUTHORIZED {
            assert_eq!(answer.error(), "API_KEY_INVALID");
            break;
        }
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(
            Instant::now() < deadline,
            "the revoked key still passes nginx 2 s after `keygate keys revoke`"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = edge.echo.hits();
    for _ in 0..20 {
        let answer = edge.get("/api/orders", &[("authorization", &auth)]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    }
    assert_eq!(edge.echo.hits(), hits, "no request after the refusal reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_one_keep_alive_connection_to_keygate() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, true).await;
    let user = edge.create_key(Owner::user("user-1")).await;
    let auth = bearer(&user);
    let tap = edge.tap.as_ref().unwrap();
    const N: usize = 50;
    for i in 0..N {
        edge.get(&format!("/api/orders/{i}"), &[("authorization", &auth)])
            .await
            .seen();
    }
    assert_eq!(edge.echo.hits(), N);
    assert_eq!(
        tap.sent().matches("GET /v1/authz HTTP/1.1\r\n").count(),
        N,
        "every request was checked"
    );
    assert_eq!(tap.accepted(), 1, "nginx opened one connection to keygate");
}

#[test]
fn the_readme_shows_the_tested_nginx_config() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let body = KEYGATE_SITE
        .lines()
        .skip_while(|line| line.starts_with('#') || line.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        readme.contains(&body),
        "README.md must show docs/edge/nginx.conf (from its `upstream` line) verbatim"
    );
}
