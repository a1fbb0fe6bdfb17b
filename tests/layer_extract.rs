//! Where `RequireApiKey` finds keys (bearer, a configured header, an opted-in query parameter),
//! how strictly it reads `Authorization: Bearer`, and what the handler sees of the credentials
//! with and without `strip_credentials`.

mod common;

use axum::http::HeaderName;
use common::app::{every_place, principal_json, routes};
use common::http::{auth, bearer, send, x_key, Hdr, Outcome, BAD_REQUEST, INVALID, MISSING, X_KEY};
use common::keys::{secret, unknown_secret, Keys};
use common::verifier::CountingVerifier;
use keygate::{CachedVerifier, KeyExtractor, MemoryKeyStore, RequireApiKey};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Where keys are read
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let k = Keys::new().await;
    let app = routes().layer(RequireApiKey::new(k.store.clone()));
    let user = secret(&k.user);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR", "Bearer  "] {
        send(&app, "/principal", &[auth(format!("{scheme} {user}"))])
            .await
            .assert_outcome(&Outcome::Ok(principal_json(&k.user)), scheme);
    }
}

#[tokio::test]
async fn keys_are_read_only_where_the_extractor_looks() {
    let k = Keys::new().await;
    let user = secret(&k.user);
    let x = || HeaderName::from_static(X_KEY);
    let pass = Outcome::Ok(principal_json(&k.user));
    let missing = Outcome::Rejected(MISSING);
    let invalid = Outcome::Rejected(INVALID);
    let long = "a".repeat(513);
    let rows: Vec<(&str, KeyExtractor, String, Vec<Hdr>, &Outcome)> = vec![
        (
            "default: bearer",
            KeyExtractor::new(),
            "/principal".into(),
            vec![bearer(&user)],
            &pass,
        ),
        (
            "header added: header",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![x_key(user.clone())],
            &pass,
        ),
        (
            "header added: padded header",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![x_key(format!("  {user} "))],
            &pass,
        ),
        (
            "header added: bearer still read",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![bearer(&user)],
            &pass,
        ),
        (
            "header instead of bearer: header",
            KeyExtractor::new().bearer(false).header(x()),
            "/principal".into(),
            vec![x_key(user.clone())],
            &pass,
        ),
        (
            "header instead of bearer: bearer is no key",
            KeyExtractor::new().bearer(false).header(x()),
            "/principal".into(),
            vec![bearer(&user)],
            &missing,
        ),
        (
            "header instead of bearer: bearer syntax not checked",
            KeyExtractor::new().bearer(false).header(x()),
            "/principal".into(),
            vec![auth("Bearer a b")],
            &missing,
        ),
        (
            "query disabled",
            KeyExtractor::new(),
            format!("/principal?api_key={user}"),
            vec![],
            &missing,
        ),
        (
            "query enabled",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?api_key={user}"),
            vec![],
            &pass,
        ),
        (
            "query enabled, among other parameters",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?a=1&api_key={user}&b=2"),
            vec![],
            &pass,
        ),
        (
            "query enabled, other parameter name",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?key={user}"),
            vec![],
            &missing,
        ),
        (
            "same key: bearer and header",
            every_place(),
            "/principal".into(),
            vec![bearer(&user), x_key(user.clone())],
            &pass,
        ),
        (
            "same key: bearer and query",
            every_place(),
            format!("/principal?api_key={user}"),
            vec![bearer(&user)],
            &pass,
        ),
        (
            "same key: everywhere, twice",
            every_place(),
            format!("/principal?api_key={user}&api_key={user}"),
            vec![bearer(&user), bearer(&user), x_key(user.clone())],
            &pass,
        ),
        (
            "over-long bearer",
            KeyExtractor::new(),
            "/principal".into(),
            vec![bearer(&long)],
            &invalid,
        ),
        (
            "over-long bearer is refused before its syntax is read",
            KeyExtractor::new(),
            "/principal".into(),
            vec![auth(format!("Bearer {}", "a b".repeat(200)))],
            &invalid,
        ),
        (
            "over-long header",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![x_key(long.clone())],
            &invalid,
        ),
        (
            "over-long query parameter",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?api_key={long}"),
            vec![],
            &invalid,
        ),
        (
            "key longer than a lowered cap",
            KeyExtractor::new().max_key_len(101),
            "/principal".into(),
            vec![bearer(&user)],
            &invalid,
        ),
        (
            "key exactly at a lowered cap",
            KeyExtractor::new().max_key_len(102),
            "/principal".into(),
            vec![bearer(&user)],
            &pass,
        ),
    ];
    for (name, extractor, uri, headers, outcome) in &rows {
        let verifier = CountingVerifier::over(k.store.clone());
        let app = routes().layer(RequireApiKey::new(verifier.clone()).extractor(extractor.clone()));
        send(&app, uri, headers).await.assert_outcome(outcome, name);
        // Only a key that was found and well-formed is looked up.
        let lookups = usize::from(matches!(outcome, Outcome::Ok(_)));
        assert_eq!(verifier.calls(), lookups, "{name}: lookups");
    }
}

#[tokio::test]
async fn an_over_long_value_is_refused_before_it_is_scanned() {
    let app = routes().layer(
        RequireApiKey::new(MemoryKeyStore::new())
            .extractor(KeyExtractor::new().header(HeaderName::from_static(X_KEY))),
    );
    let mut value = b"\xff".to_vec();
    value.extend_from_slice("a".repeat(600).as_bytes());
    let mut bearer_value = b"Bearer ".to_vec();
    bearer_value.extend_from_slice(&value);
    send(&app, "/principal", &[auth(bearer_value)])
        .await
        .assert_rejected(&INVALID, "over-long, non-ASCII bearer");
    // The cap comes first in a configured header too: 401, not a 400 for its bad bytes.
    send(&app, "/principal", &[x_key(value)])
        .await
        .assert_rejected(&INVALID, "over-long, non-ASCII configured header");
}

// ---------------------------------------------------------------------------------------------
// Bearer credentials in loose forms: checked or refused, never let through (issue 9, defect 4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bearer_credential_in_any_form_is_checked_or_refused_and_stripped() {
    let k = Keys::new().await;
    let user = secret(&k.user);
    let unknown = unknown_secret();
    let ok = |authorization: Option<&str>, header: Option<&str>| {
        Outcome::Ok(
            json!({"authorization": authorization, "x-stack-api-key": header, "uri": "/echo"}),
        )
    };
    let raw = |value: String| (value.clone(), auth(value));
    // (name, headers, outcome with the credentials kept; with stripping, an admitted request
    // reaches the handler with neither header)
    let lower = raw(format!("bearer {user}"));
    let spaces = raw(format!("Bearer    {user}"));
    let leading = raw(format!(" \tBearer {user}"));
    let trailing = raw(format!("Bearer {user} \t"));
    let padded_header = format!("\t{user} ");
    let rows: Vec<(&str, Vec<Hdr>, Outcome)> = vec![
        // Well-formed, or only padded as RFC 9110 §5.5 allows: checked, admitted.
        ("lowercase scheme", vec![lower.1], ok(Some(&lower.0), None)),
        ("several spaces", vec![spaces.1], ok(Some(&spaces.0), None)),
        (
            "leading whitespace",
            vec![leading.1],
            ok(Some(&leading.0), None),
        ),
        (
            "trailing whitespace",
            vec![trailing.1],
            ok(Some(&trailing.0), None),
        ),
        (
            "padded configured header",
            vec![x_key(padded_header.clone())],
            ok(None, Some(&padded_header)),
        ),
        // Recognisably bearer, but not `Bearer 1*SP token`: refused, never another scheme.
        (
            "tab after the scheme",
            vec![auth(format!("Bearer\t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "uppercase scheme and a tab",
            vec![auth(format!("BEARER\t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "space then tab",
            vec![auth(format!("Bearer \t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "tab then space",
            vec![auth(format!("Bearer\t {user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "leading whitespace and a tab",
            vec![auth(format!("  Bearer\t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "comma after the scheme",
            vec![auth(format!("Bearer,{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "scheme alone",
            vec![auth("Bearer")],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "scheme alone, tab",
            vec![auth("bearer\t")],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "unknown key after a tab",
            vec![auth(format!("Bearer\t{unknown}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "tab form next to a valid configured header",
            vec![auth(format!("Bearer\t{user}")), x_key(user.clone())],
            Outcome::Rejected(BAD_REQUEST),
        ),
        // A configured header carries a bare key: anything else in it is checked as a key.
        (
            "configured header holding a bearer credential",
            vec![x_key(format!("Bearer {user}"))],
            Outcome::Rejected(INVALID),
        ),
    ];
    for (name, headers, outcome) in &rows {
        for optional in [false, true] {
            for strip in [false, true] {
                let ctx = format!("{name}, optional: {optional}, strip_credentials({strip})");
                let verifier = CountingVerifier::over(k.store.clone());
                let layer = RequireApiKey::new(verifier.clone())
                    .extractor(every_place())
                    .strip_credentials(strip);
                let layer = if optional { layer.optional() } else { layer };
                let app = routes().layer(layer);
                let reply = send(&app, "/echo", headers).await;
                match outcome {
                    Outcome::Ok(kept) => {
                        let expected = if strip {
                            ok(None, None)
                        } else {
                            Outcome::Ok(kept.clone())
                        };
                        reply.assert_outcome(&expected, &ctx);
                        assert_eq!(verifier.calls(), 1, "{ctx}: the key was checked");
                    }
                    // Refused: the handler (and whatever it would pass the headers on to) never
                    // sees the request, so it never sees the credential.
                    Outcome::Rejected(expect) => {
                        reply.assert_rejected(expect, &ctx);
                        assert_eq!(verifier.calls(), 0, "{ctx}: a refusal without a lookup");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the handler sees of the credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_handler_sees_the_credentials_unless_they_are_stripped() {
    let k = Keys::new().await;
    let user = secret(&k.user);
    let echo = |authorization: Option<String>, header: Option<&str>, uri: &str| json!({"authorization": authorization, "x-stack-api-key": header, "uri": uri});
    let with_query = format!("/echo?a=1&api_key={user}&b=2");
    // (name, uri, headers, what the handler sees when kept, ... when stripped)
    let rows: Vec<(&str, &str, Vec<Hdr>, Value, Value)> = vec![
        (
            "bearer",
            "/echo",
            vec![bearer(&user)],
            echo(Some(format!("Bearer {user}")), None, "/echo"),
            echo(None, None, "/echo"),
        ),
        (
            "configured header",
            "/echo",
            vec![x_key(user.clone())],
            echo(None, Some(&user), "/echo"),
            echo(None, None, "/echo"),
        ),
        (
            "query parameter",
            &with_query,
            vec![],
            echo(None, None, &with_query),
            echo(None, None, "/echo?a=1&b=2"),
        ),
        (
            "everywhere",
            &with_query,
            vec![bearer(&user), x_key(user.clone())],
            echo(Some(format!("Bearer {user}")), Some(&user), &with_query),
            echo(None, None, "/echo?a=1&b=2"),
        ),
        (
            "another scheme is not a credential",
            "/echo",
            vec![auth("Basic dXNlcjpwdw=="), x_key(user.clone())],
            echo(Some("Basic dXNlcjpwdw==".into()), Some(&user), "/echo"),
            echo(Some("Basic dXNlcjpwdw==".into()), None, "/echo"),
        ),
    ];
    for strip in [false, true] {
        let guard = RequireApiKey::new(k.store.clone())
            .extractor(every_place())
            .strip_credentials(strip);
        let cached = RequireApiKey::new(CachedVerifier::new(k.store.clone()))
            .extractor(every_place())
            .strip_credentials(strip);
        // The store answers at once; the cache answers the second request of each row from
        // its digest fast path.
        let apps = [
            ("store", routes().layer(guard)),
            ("cache", routes().layer(cached)),
        ];
        for (verifier, app) in &apps {
            for (name, uri, headers, kept, stripped) in &rows {
                let expected = if strip { stripped } else { kept };
                for attempt in ["first", "second"] {
                    send(app, uri, headers).await.assert_outcome(
                        &Outcome::Ok(expected.clone()),
                        &format!("{name}, strip_credentials({strip}), {verifier}, {attempt}"),
                    );
                }
            }
        }
    }
}
