//! The `keygate.verify` span: one per request, a child of the caller's span (a `TraceLayer`'s,
//! say), with the outcome, the key's id (never the key) and its kind; and, with `stack-auth`,
//! the `keygate.stack_auth.check` span inside it with the upstream status and attempt count.

mod common;

use axum::Router;
use common::app::routes;
use common::http::{bearer, send, Hdr};
use common::keys::{secret, Keys};
use common::logs::LogCapture;
use keygate::{CachedVerifier, RequireApiKey};
use tracing::Instrument;

/// `GET /me` inside a `request` span, as a `TraceLayer` would make it; the status.
async fn traced(app: &Router, headers: &[Hdr]) -> u16 {
    send(app, "/me", headers)
        .instrument(tracing::info_span!("request"))
        .await
        .status
        .as_u16()
}

/// The close lines of `keygate.verify` spans.
fn verify_closes(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains("keygate.verify{") && l.ends_with(": close"))
        .collect()
}

/// Whether a span at `path` (`parent:child{fields}`) closed, with exactly those fields.
#[cfg(feature = "stack-auth")]
fn closed(text: &str, path: &str) -> bool {
    text.lines()
        .any(|l| l.contains(&format!("{path}: ")) && l.ends_with(": close"))
}

#[tokio::test]
async fn each_request_closes_one_verify_span_inside_the_callers_with_outcome_key_id_and_kind() {
    let keys = Keys::new().await;
    let user = secret(&keys.user);
    let team = secret(&keys.team);
    let app =
        routes().layer(RequireApiKey::new(CachedVerifier::new(keys.store.clone())).users_only());
    let logs = LogCapture::with_span_closes();
    assert_eq!(
        traced(&app, &[bearer(&user)]).await,
        200,
        "valid, first (verified)"
    );
    assert_eq!(traced(&app, &[bearer(&user)]).await, 200, "valid, cached");
    assert_eq!(traced(&app, &[bearer(&team)]).await, 403, "team key");
    assert_eq!(traced(&app, &[]).await, 401, "no key");
    let text = logs.text();
    let closes = verify_closes(&text);
    let user_id = keys.user.record.id;
    let team_id = keys.team.record.id;
    let want = [
        format!("request:keygate.verify{{key_id={user_id} kind=\"user\" outcome=\"pass\"}}"),
        format!("request:keygate.verify{{key_id={user_id} kind=\"user\" outcome=\"pass\"}}"),
        format!("request:keygate.verify{{key_id={team_id} kind=\"team\" outcome=\"insufficient_scope\"}}"),
        "request:keygate.verify{outcome=\"missing\"}".to_owned(),
    ];
    assert_eq!(closes.len(), want.len(), "one span per request:\n{text}");
    for (line, want) in closes.iter().zip(&want) {
        assert!(
            line.contains(want.as_str()),
            "{line:?} should hold {want:?}\n{text}"
        );
    }
    assert!(
        !text.contains(&user) && !text.contains(&team),
        "a key was logged:\n{text}"
    );
}

#[cfg(feature = "stack-auth")]
#[tokio::test]
async fn the_stack_auth_check_is_a_child_span_with_the_upstream_status_and_attempts() {
    use common::stack_auth::{verifier, Fixture, Gate};
    use common::upstream::{json_reply, reply, Script, Upstream};

    let fixture = Fixture::new();
    // The first attempt meets a 503 and is retried; the second is answered.
    let upstream = Upstream::start(Script::Each(
        vec![
            reply(503, &[], "busy"),
            json_reply(200, &fixture.key_object()),
        ]
        .into(),
    ))
    .await;
    let gate = Gate::new(verifier(upstream.base_url()), &fixture.key);
    let logs = LogCapture::with_span_closes();
    let status = gate
        .send()
        .instrument(tracing::info_span!("request"))
        .await
        .status;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(upstream.calls(), 2, "two attempts");
    let text = logs.text();
    let key_id = fixture.key.key_id();
    let check = format!(
        "request:keygate.verify{{key_id={key_id} kind=\"user\"}}:keygate.stack_auth.check{{route=\"user\" attempts=2 status=200}}"
    );
    assert!(closed(&text, &check), "no {check:?} closed in:\n{text}");
    let verify =
        format!("request:keygate.verify{{key_id={key_id} kind=\"user\" outcome=\"pass\"}}");
    assert!(closed(&text, &verify), "no {verify:?} closed in:\n{text}");
    assert!(
        !text.contains(fixture.key.expose_secret()),
        "the key was logged:\n{text}"
    );
}
