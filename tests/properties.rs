//! Property tests: the key format against its generation rules, extraction and parsing on any
//! input, and the layer's answer as a function of (key, kind, policy) alone.

mod common;

use axum::http::StatusCode;
use axum::Router;
use common::app::{every_place, routes};
use common::http::{self as h, auth, bearer, send, x_key, Hdr, INVALID, MISSING, SCOPE};
use common::keys::{mint, secret, with_bad_checksum};
use common::verifier::CountingVerifier;
use keygate::key::{parse, ApiKey, Deployment, FormatError, KeyKind, KEY_LEN, MARKER};
use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, Mode, NewKey, Owner, RequireApiKey};
use proptest::prelude::*;
use uuid::Uuid;

const CROCKFORD: &str = "0123456789abcdefghjkmnpqrstvwxyz";

// ---------------------------------------------------------------------------------------------
// The key format
// ---------------------------------------------------------------------------------------------

/// The parts a key is written from, and at most one rule broken on purpose.
#[derive(Clone, Debug)]
struct Written {
    is_public: bool,
    secret: String,
    key_id: Uuid,
    kind: KeyKind,
    deployment: Deployment,
    broken: Option<Broken>,
}

/// A rule of the format, broken.
#[derive(Clone, Debug)]
enum Broken {
    /// The character at this offset of the secret is outside the alphabet.
    Secret(usize, char),
    /// An uppercase hex digit in the key id.
    KeyIdCase(usize),
    /// The type segment is something else.
    Kind(&'static str),
    /// The scanner flag disagrees with the prefix.
    Flag,
    /// The marker has a typo.
    Marker(usize),
    /// The checksum is off by this (nonzero) XOR.
    Crc(u32),
    /// A character added at the end.
    Longer,
}

fn kind() -> impl Strategy<Value = KeyKind> {
    prop_oneof![Just(KeyKind::User), Just(KeyKind::Team)]
}

fn written() -> impl Strategy<Value = Written> {
    let broken = prop_oneof![
        3 => Just(None),
        1 => (0..45usize, prop::sample::select(vec!['i', 'l', 'o', 'u', 'A', '_', '-', ' ']))
            .prop_map(|(at, c)| Some(Broken::Secret(at, c))),
        1 => (0..32usize).prop_map(|at| Some(Broken::KeyIdCase(at))),
        1 => prop::sample::select(vec!["User", "usr_", "tean", "    "]).prop_map(|k| Some(Broken::Kind(k))),
        1 => Just(Some(Broken::Flag)),
        1 => (0..MARKER.len()).prop_map(|at| Some(Broken::Marker(at))),
        1 => (1..=u32::MAX).prop_map(|x| Some(Broken::Crc(x))),
        1 => Just(Some(Broken::Longer)),
    ];
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(CROCKFORD.as_bytes().to_vec()), 45),
        any::<u128>(),
        kind(),
        any::<bool>(),
        broken,
    )
        .prop_map(|(is_public, secret, id, kind, cloud, broken)| Written {
            is_public,
            secret: String::from_utf8(secret).expect("ascii"),
            key_id: Uuid::from_u128(id),
            kind,
            deployment: if cloud {
                Deployment::Cloud
            } else {
                Deployment::SelfHosted
            },
            broken,
        })
}

impl Written {
    /// The key, by the generation rules (and the broken rule, if any).
    fn text(&self) -> String {
        let mut secret = self.secret.clone();
        let mut id = self.key_id.simple().to_string();
        let mut kind = self.kind.as_str();
        let mut flag =
            u8::from(self.deployment == Deployment::SelfHosted) + 2 * u8::from(self.is_public);
        let mut marker = MARKER.to_owned();
        match &self.broken {
            Some(Broken::Secret(at, c)) => secret.replace_range(*at..=*at, &c.to_string()),
            Some(Broken::KeyIdCase(at)) => {
                // A digit has no uppercase: make it a letter first.
                id.replace_range(*at..=*at, "F");
            }
            Some(Broken::Kind(k)) => kind = k,
            Some(Broken::Flag) => flag ^= 2,
            Some(Broken::Marker(at)) => marker.replace_range(*at..=*at, "x"),
            Some(Broken::Crc(_) | Broken::Longer) | None => {}
        }
        let prefix = if self.is_public { "pk" } else { "sk" };
        let mut key = format!("{prefix}_{secret}{id}{kind}{flag}{marker}");
        let mut crc = crc32fast::hash(key.as_bytes());
        if let Some(Broken::Crc(x)) = self.broken {
            crc ^= x;
        }
        key.push_str(&format!("{crc:08x}"));
        if let Some(Broken::Longer) = self.broken {
            key.push('0');
        }
        key
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A key written by the generation rules parses, to the parts it was written from; a key
    /// with any one rule broken does not, and the error names that rule.
    #[test]
    fn parse_accepts_exactly_the_generated_keys(w in written()) {
        let text = w.text();
        let parsed = parse(&text);
        match &w.broken {
            None => {
                let parts = parsed.expect("a generated key parses");
                prop_assert_eq!(text.len(), KEY_LEN);
                prop_assert_eq!(parts.is_public, w.is_public);
                prop_assert_eq!(parts.kind, w.kind);
                prop_assert_eq!(parts.key_id, w.key_id);
                prop_assert_eq!(parts.deployment, w.deployment);
                prop_assert_eq!(parts.last_four(), &text[KEY_LEN - 4..]);
                let key = ApiKey::parse(&text).expect("ApiKey::parse agrees");
                prop_assert_eq!(key.expose_secret(), text.as_str());
                prop_assert_eq!(key.parts(), &parts);
            }
            Some(broken) => {
                let error = parsed.expect_err("a key with a broken rule is refused");
                let expected = match broken {
                    Broken::Secret(at, _) => matches!(error, FormatError::Secret { at: a } if a == 3 + at),
                    Broken::KeyIdCase(at) => matches!(error, FormatError::KeyId { at: a } if a == 48 + at),
                    Broken::Kind(_) => error == FormatError::KeyType,
                    Broken::Flag => error == FormatError::ScannerFlag,
                    Broken::Marker(_) => error == FormatError::Marker,
                    Broken::Crc(_) => error == FormatError::Checksum,
                    Broken::Longer => error == FormatError::Length { found: KEY_LEN + 1 },
                };
                prop_assert!(expected, "{:?} refused as {:?}", broken, error);
                prop_assert!(ApiKey::parse(&text).is_err());
            }
        }
    }

    /// Minted keys parse to what they were minted as.
    #[test]
    fn minted_keys_round_trip(id in any::<u128>(), kind in kind(), public in any::<bool>(), cloud in any::<bool>()) {
        let deployment = if cloud { Deployment::Cloud } else { Deployment::SelfHosted };
        let key = ApiKey::generate(Uuid::from_u128(id), kind, public, deployment).expect("OS RNG");
        let parts = parse(key.expose_secret()).expect("a minted key parses");
        prop_assert_eq!(&parts, key.parts());
        prop_assert_eq!((parts.key_id, parts.kind, parts.is_public, parts.deployment), (Uuid::from_u128(id), kind, public, deployment));
    }

    /// Parsing never panics, and accepts nothing of the wrong length.
    #[test]
    fn parse_never_panics(s in ".{0,120}", bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        for s in [s, String::from_utf8_lossy(&bytes).into_owned()] {
            if let Ok(parts) = parse(&s) {
                prop_assert_eq!(s.len(), KEY_LEN);
                prop_assert!(ApiKey::parse(&s).is_ok_and(|k| k.parts() == &parts));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction, through the layer
// ---------------------------------------------------------------------------------------------

/// A header value: raw bytes, or a credential-shaped one.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (
            prop::sample::select(vec![
                "Bearer ", "bearer  ", "Bearer", "Bearer\t", "Basic ", "", " Bearer "
            ]),
            "[ -~]{0,30}",
        )
            .prop_map(|(scheme, rest)| format!("{scheme}{rest}").into_bytes()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<Hdr>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["authorization", h::X_KEY, "x-other"]),
            header_value(),
        ),
        0..4,
    )
    .prop_map(|headers| {
        headers
            .into_iter()
            .filter(|(_, v)| axum::http::HeaderValue::from_bytes(v).is_ok())
            .collect()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// No header set or query makes the layer panic; it answers only the statuses of its error
    /// table (the store knows no key, so nothing is let through).
    #[test]
    fn extraction_never_panics(headers in headers(), query in "[ -~]{0,40}") {
        let app: Router = routes().layer(RequireApiKey::new(MemoryKeyStore::new()).extractor(every_place()));
        let uri = format!("/principal?{}", query.replace(['#', ' '], ""));
        let uri = if uri.parse::<axum::http::Uri>().is_ok() { uri } else { "/principal".to_owned() };
        let reply = runtime().block_on(send(&app, &uri, &headers));
        prop_assert!(
            [StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED].contains(&reply.status),
            "{uri} {headers:?}: {}", reply.status
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The layer's answer is a function of (key, kind, policy)
// ---------------------------------------------------------------------------------------------

/// What the presented key is to the store.
#[derive(Clone, Copy, Debug)]
enum State {
    Valid,
    Revoked,
    Unknown,
    BadChecksum,
    Missing,
}

/// The route's policy.
#[derive(Clone, Copy, Debug)]
struct Policy {
    only: Option<KeyKind>,
    allow_public: bool,
    mode: Mode,
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(None),
            Just(Some(KeyKind::User)),
            Just(Some(KeyKind::Team))
        ],
        any::<bool>(),
        prop_oneof![Just(Mode::Required), Just(Mode::Optional)],
    )
        .prop_map(|(only, allow_public, mode)| Policy {
            only,
            allow_public,
            mode,
        })
}

fn state() -> impl Strategy<Value = State> {
    prop::sample::select(vec![
        State::Valid,
        State::Revoked,
        State::Unknown,
        State::BadChecksum,
        State::Missing,
    ])
}

/// The answer the design's table gives: `None` for "the handler runs with the key".
fn expected(state: State, kind: KeyKind, public: bool, policy: Policy) -> Option<h::Expect> {
    match state {
        State::Missing => (policy.mode == Mode::Required).then_some(MISSING),
        State::BadChecksum => Some(INVALID),
        _ if policy.only.is_some_and(|only| only != kind) => Some(SCOPE),
        _ if public && !policy.allow_public => Some(SCOPE),
        State::Valid => None,
        State::Revoked | State::Unknown => Some(INVALID),
    }
}

/// The layer over `verifier` with `policy`.
fn guarded<V: keygate::KeyVerifier>(verifier: V, policy: Policy) -> Router {
    let mut layer = RequireApiKey::new(verifier)
        .allow_public_keys(policy.allow_public)
        .mode(policy.mode);
    layer = match policy.only {
        Some(KeyKind::User) => layer.users_only(),
        Some(_) => layer.teams_only(),
        None => layer.any_principal(),
    };
    routes().layer(layer.extractor(every_place()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// For random (state, kind, public, policy, where the key is sent), each of the three ways a
    /// verifier answers (at once, cached, asynchronously) gives the design's answer, twice in a
    /// row; a refusal read from the key alone never calls the verifier.
    #[test]
    fn layer_answer_is_a_function_of_key_kind_and_policy(
        state in state(),
        kind in kind(),
        public in any::<bool>(),
        policy in policy(),
        place in 0..3u8,
    ) {
        runtime().block_on(async move {
            let store = MemoryKeyStore::new();
            let owner = match kind { KeyKind::User => Owner::user("owner-1"), _ => Owner::team("owner-1") };
            let created = mint(&store, owner, NewKey::new("prop").public(public)).await;
            let presented = match state {
                State::Valid | State::Missing => secret(&created),
                State::Revoked => {
                    store.revoke(created.record.id).await.expect("revoke");
                    secret(&created)
                }
                State::Unknown => common::keys::generated(kind, public).expose_secret().to_owned(),
                State::BadChecksum => with_bad_checksum(&secret(&created)),
            };
            let (uri, headers): (String, Vec<Hdr>) = match (state, place) {
                (State::Missing, _) => ("/maybe".into(), vec![]),
                (_, 0) => ("/principal".into(), vec![bearer(&presented)]),
                (_, 1) => ("/principal".into(), vec![x_key(presented.clone())]),
                _ => (format!("/principal?api_key={presented}"), vec![auth("Basic abc")]),
            };
            let counting = CountingVerifier::over(store.clone());
            let variants = [
                ("memory store", guarded(store.clone(), policy)),
                ("cached store", guarded(CachedVerifier::new(store.clone()), policy)),
                ("async verifier", guarded(counting.clone(), policy)),
            ];
            let expect = expected(state, kind, public, policy);
            for (name, app) in &variants {
                for round in 0..2 {
                    let ctx = format!("{name}, round {round}: {state:?} {kind:?} public={public} {policy:?}");
                    let reply = send(app, &uri, &headers).await;
                    match (&expect, state) {
                        (None, State::Missing) => {
                            assert_eq!(reply.assert_ok(&ctx)["user_id"], serde_json::Value::Null, "{ctx}");
                        }
                        (None, _) => reply.assert_admitted(created.record.id, &ctx),
                        (Some(expect), _) => reply.assert_rejected(expect, &ctx),
                    }
                }
            }
            // The counting verifier was asked only about well-formed keys the policy allows.
            let asked = matches!(state, State::Valid | State::Revoked | State::Unknown)
                && policy.only.is_none_or(|only| only == kind)
                && (policy.allow_public || !public);
            assert_eq!(counting.calls(), if asked { 2 } else { 0 }, "verifier calls");
        });
    }
}
