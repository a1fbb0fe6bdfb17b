//! Route policies (users only, teams only, public keys refused): a key of a kind the route
//! refuses gets 403 from the key itself, before any cache read or verifier call; and a verifier
//! (or a cached verdict) that contradicts the key is not believed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::app::{principal_json, routes};
use common::http::{bearer, send, Expect, Outcome, BAD_REQUEST, INVALID, SCOPE};
use common::keys::{generated, secret, with_bad_checksum, with_char, Keys};
use common::verifier::{CountingVerifier, Describe};
use keygate::key::{ApiKey, KeyKind};
use keygate::store::CreatedKey;
use keygate::verify::{KeyInfo, VerifyError};
use keygate::{CachedVerifier, KeyVerifier, MemoryKeyStore, Owner, RequireApiKey, Verdict};
use serde_json::json;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

type Policy = fn(RequireApiKey<MemoryKeyStore>) -> RequireApiKey<MemoryKeyStore>;

#[tokio::test]
async fn route_policies_refuse_keys_of_the_wrong_kind_with_403() {
    let k = Keys::new().await;
    let users_only: Policy = |l| l.users_only();
    let teams_only: Policy = |l| l.teams_only();
    let no_public: Policy = |l| l.allow_public_keys(false);
    let default: Policy = |l| l;
    let reset: Policy = |l| l.users_only().any_principal();
    let rows: Vec<(&str, Policy, &CreatedKey, Option<Expect>)> = vec![
        ("team key, users only", users_only, &k.team, Some(SCOPE)),
        ("user key, teams only", teams_only, &k.user, Some(SCOPE)),
        (
            "public team key, users only",
            users_only,
            &k.public_team,
            Some(SCOPE),
        ),
        (
            "public user key, public refused",
            no_public,
            &k.public_user,
            Some(SCOPE),
        ),
        (
            "public team key, public refused",
            no_public,
            &k.public_team,
            Some(SCOPE),
        ),
        ("user key, users only", users_only, &k.user, None),
        ("team key, teams only", teams_only, &k.team, None),
        (
            "public team key, teams only",
            teams_only,
            &k.public_team,
            None,
        ),
        ("secret key, public refused", no_public, &k.user, None),
        ("public user key, default", default, &k.public_user, None),
        ("team key, back to any principal", reset, &k.team, None),
    ];
    for (name, policy, key, refusal) in rows {
        let app = routes().layer(policy(RequireApiKey::new(k.store.clone())));
        let outcome = match refusal {
            Some(expect) => Outcome::Rejected(expect),
            None => Outcome::Ok(principal_json(key)),
        };
        send(&app, "/principal", &[bearer(&secret(key))])
            .await
            .assert_outcome(&outcome, name);
    }
}

// ---------------------------------------------------------------------------------------------
// Verifiers and cached verdicts are checked against the key
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_verifier_that_contradicts_the_key_is_not_believed() {
    let honest: Describe = |key| KeyInfo::new(key.key_id(), Owner::user("u"), key.is_public());
    let other_kind: Describe = |key| KeyInfo::new(key.key_id(), Owner::team("t"), key.is_public());
    let other_id: Describe = |key| KeyInfo::new(Uuid::new_v4(), Owner::user("u"), key.is_public());
    let expired: Describe = |key| {
        KeyInfo::new(key.key_id(), Owner::user("u"), key.is_public())
            .with_expires_at(Some(SystemTime::now() - Duration::from_secs(1)))
    };
    let says_secret: Describe = |key| KeyInfo::new(key.key_id(), Owner::user("u"), false);
    let says_public: Describe = |key| KeyInfo::new(key.key_id(), Owner::user("u"), true);
    let secret_key = generated(KeyKind::User, false);
    let public_key = generated(KeyKind::User, true);
    let admitted = |key: &ApiKey| {
        Outcome::Ok(json!({"kind": "user", "owner_id": "u", "key_id": key.key_id().to_string()}))
    };
    let rows: Vec<(&str, Describe, &ApiKey, Outcome)> = vec![
        (
            "honest, secret key",
            honest,
            &secret_key,
            admitted(&secret_key),
        ),
        (
            "honest, public key refused",
            honest,
            &public_key,
            Outcome::Rejected(SCOPE),
        ),
        (
            "claims a team owns a user key",
            other_kind,
            &secret_key,
            Outcome::Rejected(INVALID),
        ),
        (
            "claims another key id",
            other_id,
            &secret_key,
            Outcome::Rejected(INVALID),
        ),
        (
            "claims an expired key is valid",
            expired,
            &secret_key,
            Outcome::Rejected(INVALID),
        ),
        // The key's own `pk_` prefix wins over a verifier that calls it secret.
        (
            "claims a public key is secret",
            says_secret,
            &public_key,
            Outcome::Rejected(SCOPE),
        ),
        // A verifier may add what the key does not say.
        (
            "claims a secret key is public",
            says_public,
            &secret_key,
            Outcome::Rejected(SCOPE),
        ),
    ];
    for (name, describe, key, outcome) in &rows {
        let verifier = CountingVerifier::saying_valid(*describe);
        let app = routes().layer(RequireApiKey::new(verifier).allow_public_keys(false));
        send(&app, "/principal", &[bearer(key.expose_secret())])
            .await
            .assert_outcome(outcome, name);
        // Behind a cache, the second request is answered from the cached verdict (the digest
        // fast path), which the layer must check against the key just the same.
        let verifier = CountingVerifier::saying_valid(*describe);
        let cached = CachedVerifier::new(verifier.clone());
        let app = routes().layer(RequireApiKey::new(cached).allow_public_keys(false));
        for attempt in ["first", "cached"] {
            send(&app, "/principal", &[bearer(key.expose_secret())])
                .await
                .assert_outcome(outcome, &format!("{name}, behind a cache, {attempt}"));
        }
        // A `pk_` key is refused from its prefix, before any lookup. An expired verdict is
        // never cached, so both requests reach the verifier.
        let calls = if key.is_public() {
            0
        } else if describe(key).is_expired() {
            2
        } else {
            1
        };
        assert_eq!(verifier.calls(), calls, "{name}: calls behind the cache");
    }
}

/// A verifier that answers every digest from its "cache" with one fixed verdict, and counts
/// how often each path is asked.
struct FastPathOnly {
    verdict: Verdict,
    cached_asks: AtomicUsize,
    calls: AtomicUsize,
}

impl KeyVerifier for FastPathOnly {
    async fn verify(&self, _key: &ApiKey) -> Result<Verdict, VerifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Verdict::Invalid(keygate::verify::InvalidReason::NotFound))
    }

    fn __cached_verdict(&self, _digest: &keygate::key::KeyDigest) -> Option<Verdict> {
        self.cached_asks.fetch_add(1, Ordering::SeqCst);
        Some(self.verdict.clone())
    }
}

#[tokio::test]
async fn the_cached_verdict_fast_path_is_checked_like_any_other_answer() {
    let key = generated(KeyKind::User, false);
    let structurally_broken = {
        // The marker is part of the structure the layer checks before it hashes anything.
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        bytes[90] = b'x';
        String::from_utf8(bytes).expect("ascii")
    };
    let admitted =
        Outcome::Ok(json!({"kind": "user", "owner_id": "u", "key_id": key.key_id().to_string()}));
    // (name, verdict the fast path gives, key sent, outcome, fast path asked, verify calls)
    let rows: Vec<(&str, Verdict, &str, Outcome, usize)> = vec![
        (
            "a matching verdict is taken without a verifier call",
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::user("u"), false)),
            key.expose_secret(),
            admitted,
            1,
        ),
        (
            "a verdict for another key id is refused",
            Verdict::valid(KeyInfo::new(Uuid::new_v4(), Owner::user("u"), false)),
            key.expose_secret(),
            Outcome::Rejected(INVALID),
            1,
        ),
        (
            "a verdict naming a team for a user key is refused",
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::team("t"), false)),
            key.expose_secret(),
            Outcome::Rejected(INVALID),
            1,
        ),
        (
            "an expired verdict is refused",
            Verdict::valid(
                KeyInfo::new(key.key_id(), Owner::user("u"), false)
                    .with_expires_at(Some(SystemTime::now() - Duration::from_secs(1))),
            ),
            key.expose_secret(),
            Outcome::Rejected(INVALID),
            1,
        ),
        (
            "a structurally malformed key is refused before the fast path is asked",
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::user("u"), false)),
            &structurally_broken,
            Outcome::Rejected(INVALID),
            0,
        ),
    ];
    for (name, verdict, sent, outcome, asked) in rows {
        let verifier = Arc::new(FastPathOnly {
            verdict,
            cached_asks: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let app = routes().layer(RequireApiKey::from_arc(Arc::clone(&verifier)));
        send(&app, "/principal", &[bearer(sent)])
            .await
            .assert_outcome(&outcome, name);
        assert_eq!(verifier.cached_asks.load(Ordering::SeqCst), asked, "{name}");
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 0, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// A key of a kind the route refuses: refused from the key itself (issue 9, defect 2)
// ---------------------------------------------------------------------------------------------

/// A route's policy, for any verifier.
#[derive(Clone, Copy, Debug)]
enum Route {
    UsersOnly,
    TeamsOnly,
    NoPublicKeys,
}

impl Route {
    /// The policy on `layer`, in optional mode if asked.
    fn apply<V: KeyVerifier>(self, layer: RequireApiKey<V>, optional: bool) -> RequireApiKey<V> {
        let layer = match self {
            Route::UsersOnly => layer.users_only(),
            Route::TeamsOnly => layer.teams_only(),
            Route::NoPublicKeys => layer.allow_public_keys(false),
        };
        if optional {
            layer.optional()
        } else {
            layer
        }
    }
}

#[tokio::test]
async fn a_key_of_a_refused_kind_costs_no_cache_read_and_no_verifier_call() {
    let k = Keys::new().await;
    let minted = |kind, public| generated(kind, public).expose_secret().to_owned();
    let team_key = minted(KeyKind::Team, false);
    let public_key = minted(KeyKind::User, true);
    // (name, route, key sent, refusal)
    let rows: Vec<(&str, Route, String, Expect)> = vec![
        (
            "known team key, users only",
            Route::UsersOnly,
            secret(&k.team),
            SCOPE,
        ),
        (
            "freshly minted team key, users only",
            Route::UsersOnly,
            team_key.clone(),
            SCOPE,
        ),
        (
            "freshly minted public team key, users only",
            Route::UsersOnly,
            minted(KeyKind::Team, true),
            SCOPE,
        ),
        (
            "known user key, teams only",
            Route::TeamsOnly,
            secret(&k.user),
            SCOPE,
        ),
        (
            "freshly minted user key, teams only",
            Route::TeamsOnly,
            minted(KeyKind::User, false),
            SCOPE,
        ),
        (
            "known public user key, public keys refused",
            Route::NoPublicKeys,
            secret(&k.public_user),
            SCOPE,
        ),
        (
            "freshly minted public key, public keys refused",
            Route::NoPublicKeys,
            public_key.clone(),
            SCOPE,
        ),
        // A key that breaks the format is malformed on every route, whatever kind it claims:
        // the whole format is checked before the policy, which still costs no I/O.
        (
            "team key with a bad checksum, users only",
            Route::UsersOnly,
            with_bad_checksum(&team_key),
            INVALID,
        ),
        (
            "public key with a bad checksum, public keys refused",
            Route::NoPublicKeys,
            with_bad_checksum(&public_key),
            INVALID,
        ),
        (
            "team key with a secret outside Crockford base32, users only",
            Route::UsersOnly,
            with_char(&team_key, 10, 'U'),
            INVALID,
        ),
        (
            "team key with a character outside b64token, users only",
            Route::UsersOnly,
            with_char(&team_key, 10, '!'),
            BAD_REQUEST,
        ),
    ];
    for (name, route, key, expect) in &rows {
        for optional in [false, true] {
            let ctx = |verifier: &str| format!("{name}, optional: {optional}, {verifier}");

            // Behind a cache, over a store: no cache read (no hit, no miss), no verifier call.
            let counting = CountingVerifier::over(k.store.clone());
            let cache = CachedVerifier::new(counting.clone());
            let app = routes().layer(route.apply(RequireApiKey::new(cache.clone()), optional));
            send(&app, "/principal", &[bearer(key)])
                .await
                .assert_rejected(expect, &ctx("cached store"));
            let stats = cache.stats();
            assert_eq!(
                (
                    stats.hits,
                    stats.negative_hits,
                    stats.misses,
                    stats.verifier_calls
                ),
                (0, 0, 0, 0),
                "{}: {stats:?}",
                ctx("cached store")
            );
            assert_eq!(counting.calls(), 0, "{}", ctx("cached store"));

            // A verifier whose digest fast path would answer: it is never asked.
            let fast = Arc::new(FastPathOnly {
                verdict: Verdict::Invalid(keygate::verify::InvalidReason::NotFound),
                cached_asks: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
            });
            let app =
                routes().layer(route.apply(RequireApiKey::from_arc(Arc::clone(&fast)), optional));
            send(&app, "/principal", &[bearer(key)])
                .await
                .assert_rejected(expect, &ctx("fast path"));
            let asked = (
                fast.cached_asks.load(Ordering::SeqCst),
                fast.calls.load(Ordering::SeqCst),
            );
            assert_eq!(asked, (0, 0), "{}: (cache asks, calls)", ctx("fast path"));

            // A verifier that is down: the refusal is still the route's 403, not a 503.
            let down = CountingVerifier::failing(None);
            let app = routes().layer(route.apply(RequireApiKey::new(down.clone()), optional));
            send(&app, "/principal", &[bearer(key)])
                .await
                .assert_rejected(expect, &ctx("verifier down"));
            assert_eq!(down.calls(), 0, "{}", ctx("verifier down"));
        }
    }
}

/// The scenario: behind Stack Auth, a project without team keys answers every team key
/// with a failure for the verifier's circuit breaker, so five minted team keys on a user route
/// could open it for user keys. No team key may reach the verifier at all.
#[tokio::test]
async fn minted_team_keys_on_a_user_route_cannot_trip_the_verifier_for_user_keys() {
    let k = Keys::new().await;
    let verifier = CountingVerifier::over(k.store.clone());
    let app =
        routes().layer(RequireApiKey::new(CachedVerifier::new(verifier.clone())).users_only());
    for i in 1..=5 {
        let minted = generated(KeyKind::Team, false);
        send(&app, "/me", &[bearer(minted.expose_secret())])
            .await
            .assert_rejected(&SCOPE, &format!("minted team key {i}"));
    }
    assert_eq!(verifier.calls(), 0, "no team key went upstream");
    // A valid user key nobody has used yet (so not cached) still gets in.
    send(&app, "/me", &[bearer(&secret(&k.user))])
        .await
        .assert_ok("an uncached user key after five team keys");
    assert_eq!(verifier.calls(), 1, "the user key was checked");
}
