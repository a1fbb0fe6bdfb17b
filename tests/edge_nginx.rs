//! `keygate serve` behind a real nginx (`auth_request`), configured exactly as documented
//! (`docs/edge/nginx.conf`, shown in the README): what the client gets, what the app behind nginx
//! receives, and what keygate is sent. Keys live in a temporary SQLite file, managed with the
//! `keygate keys` CLI. Skipped (with a note) when nginx is not installed; CI requires it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cli::{create_key, key_id, revoke_key, CliDb};
use common::echo::{Echo, Seen};
use common::keygate_bin::KeygateServe;
use common::nginx::{keygate_site, nginx_bin, replace_all, Nginx, KEYGATE_SITE};
use common::tap::Tap;
use reqwest::StatusCode;

/// A user (Stack Auth ids are UUIDs).
const USER: &str = "0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c";
/// A team.
const TEAM: &str = "5f0e9d8c-7b6a-4594-8372-61504f3e2d1c";

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
        let json: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("{} with a non-JSON body ({e}): {}", self.status, self.body)
        });
        json["error"].as_str().expect("error field").to_owned()
    }
}

/// keygate serve over a SQLite file, the echo app, and nginx in front of both.
struct Edge {
    db: CliDb,
    keygate: Option<KeygateServe>,
    echo: Echo,
    /// Between nginx and keygate, when asked for.
    tap: Option<Tap>,
    nginx: Nginx,
    client: reqwest::Client,
}

impl Edge {
    /// Starts all three over a fresh SQLite file; with `tap`, nginx reaches keygate through a
    /// [`Tap`].
    async fn start(nginx_bin: &Path, tap: bool) -> Edge {
        Self::start_with(nginx_bin, tap, &[], |site| site).await
    }

    /// [`Edge::start`] with `serve_args` added to `keygate serve`, and the nginx configuration
    /// changed by `edit`.
    async fn start_with(
        nginx_bin: &Path,
        tap: bool,
        serve_args: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> Edge {
        let db = CliDb::sqlite();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--log",
            "warn",
        ];
        args.extend_from_slice(serve_args);
        let keygate = tokio::task::block_in_place(|| KeygateServe::spawn(&args, &[]));
        let echo = Echo::start().await;
        let tap = if tap {
            Some(Tap::start(keygate.addr()).await)
        } else {
            None
        };
        let auth_addr = tap.as_ref().map_or(keygate.addr(), Tap::addr);
        let site = edit(keygate_site(auth_addr, echo.addr()));
        let nginx = tokio::task::block_in_place(|| Nginx::start(nginx_bin, &site));
        Edge {
            db,
            keygate: Some(keygate),
            echo,
            tap,
            nginx,
            client: client(),
        }
    }

    /// `keygate keys create --user ID` (or `--team`) on keygate's database: `Authorization`'s
    /// value for the new key, and its id.
    fn create_key(&self, owner_flag: &str, owner_id: &str) -> (String, String) {
        let key =
            tokio::task::block_in_place(|| create_key(&self.db.url, owner_flag, owner_id, &[]));
        (format!("Bearer {key}"), key_id(&key))
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
    let (user, user_key_id) = edge.create_key("--user", USER);
    let (team, team_key_id) = edge.create_key("--team", TEAM);

    let seen = edge.get("/api/orders?page=2", &forged(&user)).await.seen();
    assert_eq!(seen.method(), "GET");
    assert_eq!(seen.uri(), "/api/orders?page=2");
    assert_eq!(seen.header("x-keygate-key-id"), Some(user_key_id));
    assert_eq!(seen.header("x-keygate-key-type").as_deref(), Some("user"));
    assert_eq!(seen.header("x-keygate-user-id").as_deref(), Some(USER));
    assert_eq!(
        seen.header("x-keygate-team-id"),
        None,
        "forged team id removed"
    );

    let seen = edge
        .get("/api/teams/1/invoices", &forged(&team))
        .await
        .seen();
    assert_eq!(seen.header("x-keygate-key-id"), Some(team_key_id));
    assert_eq!(seen.header("x-keygate-key-type").as_deref(), Some("team"));
    assert_eq!(
        seen.header("x-keygate-user-id"),
        None,
        "forged user id removed"
    );
    assert_eq!(seen.header("x-keygate-team-id").as_deref(), Some(TEAM));
    assert_eq!(edge.echo.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_key_gets_401_with_the_challenge_and_a_json_reason() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, false).await;
    let (user, _) = edge.create_key("--user", USER);
    let (head, last) = user.split_at(user.len() - 1);
    let bad_checksum = format!("{head}{}", if last == "0" { "1" } else { "0" });
    let elsewhere = CliDb::sqlite();
    let unknown = format!(
        "Bearer {}",
        tokio::task::block_in_place(|| create_key(&elsewhere.url, "--user", USER, &[]))
    );

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
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.body
        );
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
    let (user, _) = edge.create_key("--user", USER);
    let (team, _) = edge.create_key("--team", TEAM);

    let answer = edge.get("/api/teams/1", &[("authorization", &user)]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(answer.error(), "INSUFFICIENT_SCOPE");
    assert_eq!(edge.echo.hits(), 0);

    // The same key elsewhere under /api/ passes, even when the client asks keygate to narrow:
    // nginx sends its own X-Keygate-Require (none here), never the client's.
    let seen = edge
        .get(
            "/api/orders",
            &[("authorization", &user), ("x-keygate-require", "team")],
        )
        .await
        .seen();
    assert_eq!(seen.header("x-keygate-user-id").as_deref(), Some(USER));

    // A team key below /api/teams/ passes.
    let seen = edge
        .get("/api/teams/1", &[("authorization", &team)])
        .await
        .seen();
    assert_eq!(seen.header("x-keygate-team-id").as_deref(), Some(TEAM));
    assert_eq!(edge.echo.hits(), 2);
}

/// `auth` with forged identity headers.
fn forged(auth: &str) -> [(&str, &str); 5] {
    [
        ("authorization", auth),
        ("x-keygate-key-id", "forged-key"),
        ("x-keygate-key-type", "team"),
        ("x-keygate-user-id", "admin"),
        ("x-keygate-team-id", "team-admins"),
    ]
}

/// `sent` without its `Authorization` lines (for assertion messages: they hold keys).
fn redacted(sent: &str) -> String {
    sent.split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("authorization:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_reaches_the_app_intact_while_keygate_gets_headers_only() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, true).await;
    let (user, _) = edge.create_key("--user", USER);
    let body = r#"{"order":"a body only the app may read","qty":3}"#;

    let seen = edge
        .send(
            reqwest::Method::POST,
            "/api/orders",
            &[
                ("authorization", &user),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
        .await
        .seen();
    assert_eq!(seen.method(), "POST");
    assert_eq!(seen.body(), body);
    assert_eq!(seen.header("content-length"), Some(body.len().to_string()));
    assert_eq!(seen.header("x-keygate-user-id").as_deref(), Some(USER));

    // What nginx sent keygate: a GET naming the original request, with no body and no
    // Content-Length promising one.
    let sent = redacted(&edge.tap.as_ref().unwrap().sent());
    let lower = sent.to_ascii_lowercase();
    assert!(sent.starts_with("GET /v1/authz HTTP/1.1\r\n"), "{sent}");
    assert!(lower.contains("\r\nx-original-method: post\r\n"), "{sent}");
    assert!(
        lower.contains("\r\nx-original-uri: /api/orders\r\n"),
        "{sent}"
    );
    assert!(!lower.contains("content-length"), "{sent}");
    assert!(!sent.contains("a body only the app may read"), "{sent}");
    assert!(
        sent.ends_with("\r\n\r\n"),
        "nothing after the headers: {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_content_length_line_posts_still_pass_at_once_at_the_cost_of_a_connection() {
    let bin = nginx_or_skip!();
    // The trap: nginx then sends keygate the client's Content-Length with no body. Had keygate
    // waited for that body, nginx would give up after 2 s and answer 500.
    let edge = Edge::start_with(&bin, true, &[], |site| {
        replace_all(
            &site,
            &[(
                "proxy_set_header Content-Length \"\";",
                "proxy_read_timeout 2s;",
                1,
            )],
        )
    })
    .await;
    let (user, _) = edge.create_key("--user", USER);
    let body = "a body keygate is promised but never sent";
    let headers = [("authorization", user.as_str())];
    let post = || edge.send(reqwest::Method::POST, "/api/orders", &headers, Some(body));
    assert_eq!(post().await.seen().body(), body);
    let sent = redacted(&edge.tap.as_ref().unwrap().sent());
    assert!(
        sent.to_ascii_lowercase()
            .contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "nginx forwarded the client's Content-Length: {sent}"
    );
    // The next request is not mistaken for the missing body.
    edge.get("/api/orders", &[("authorization", &user)])
        .await
        .seen();
    assert_eq!(post().await.seen().body(), body);
    assert_eq!(edge.echo.hits(), 3);
    // keygate closed the connection after each POST: the GET needed a second one.
    assert_eq!(edge.tap.as_ref().unwrap().accepted(), 2);
}

/// Statuses of `n` back-to-back requests with `auth` under a rate limit of 1 a second.
/// A new user key sent 10 times in a row to `edge`; the answers that were not 200, at least one.
async fn refused_in_a_burst(edge: &Edge) -> Vec<Answer> {
    let (auth, _) = edge.create_key("--user", USER);
    let mut refused = Vec::new();
    for _ in 0..10 {
        let answer = edge.get("/api/orders", &[("authorization", &auth)]).await;
        if answer.status != StatusCode::OK {
            refused.push(answer);
        }
    }
    assert!(
        !refused.is_empty(),
        "10 requests at once, 1 a second allowed"
    );
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_key_gets_403_with_limit_status_403_and_a_500_without() {
    let bin = nginx_or_skip!();
    let limit = ["--rate-limit", "1", "--rate-limit-burst", "1"];

    let args = [&limit[..], &["--limit-status", "403"]].concat();
    let edge = Edge::start_with(&bin, false, &args, |site| site).await;
    for answer in refused_in_a_burst(&edge).await {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert_eq!(answer.error(), "RATE_LIMITED");
    }

    // keygate's default 429 is what nginx cannot pass on: the client gets 500.
    let edge = Edge::start_with(&bin, false, &limit, |site| site).await;
    for answer in refused_in_a_burst(&edge).await {
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            answer.body
        );
    }
    let log = edge.nginx.error_log();
    assert!(
        log.contains("auth request unexpected status: 429"),
        "error.log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_nginx_answers_500_and_never_calls_the_app() {
    let bin = nginx_or_skip!();
    let mut edge = Edge::start(&bin, false).await;
    let (auth, _) = edge.create_key("--user", USER);
    edge.get("/api/orders", &[("authorization", &auth)])
        .await
        .seen();
    assert_eq!(edge.echo.hits(), 1);

    let keygate = edge.keygate.take().unwrap();
    let status = tokio::task::block_in_place(|| keygate.stop());
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
    let (auth, key_id) = edge.create_key("--user", USER);
    // Cached as valid in keygate before the revocation.
    for _ in 0..3 {
        edge.get("/api/orders", &[("authorization", &auth)])
            .await
            .seen();
    }

    tokio::task::block_in_place(|| revoke_key(&edge.db.url, &key_id));

    // The documented bound is the revocation poll interval (200 ms by default); allow 2 s.
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
    assert_eq!(
        edge.echo.hits(),
        hits,
        "no request after the refusal reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_one_keep_alive_connection_to_keygate() {
    let bin = nginx_or_skip!();
    let edge = Edge::start(&bin, true).await;
    let (auth, _) = edge.create_key("--user", USER);
    let (head, last) = auth.split_at(auth.len() - 1);
    let bad_checksum = format!("{head}{}", if last == "0" { "1" } else { "0" });
    let tap = edge.tap.as_ref().unwrap();
    // Allowed and refused answers mixed: a refusal must not cost the connection either (an
    // auth answer with a body would: nginx never reads it and closes the connection).
    const N: usize = 50;
    let mut allowed = 0;
    for i in 0..N {
        if i % 5 == 4 {
            let answer = edge
                .get(
                    &format!("/api/orders/{i}"),
                    &[("authorization", &bad_checksum)],
                )
                .await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
            assert_eq!(answer.error(), "API_KEY_INVALID");
        } else {
            edge.get(&format!("/api/orders/{i}"), &[("authorization", &auth)])
                .await
                .seen();
            allowed += 1;
        }
    }
    assert_eq!(edge.echo.hits(), allowed);
    assert_eq!(
        tap.sent().matches("GET /v1/authz HTTP/1.1\r\n").count(),
        N,
        "every request was checked"
    );
    assert_eq!(
        tap.accepted(),
        1,
        "nginx opened one connection to keygate for {allowed} allowed and {} refused requests",
        N - allowed
    );
}

#[test]
fn the_readme_shows_the_tested_nginx_config() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
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
