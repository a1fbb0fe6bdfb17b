//! Key parsing: `keygate::key::parse` and `ApiKey::parse` agree with an independent model of
//! the format on every input, and an accepted key re-serialises to itself from its parts.
#![no_main]

use keygate::key::{parse, ApiKey, Deployment, KeyDigest};
use keygate_fuzz::{model, serialise, Shaped};
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
enum Input<'a> {
    /// Any string.
    Raw(&'a str),
    /// A key-shaped string (see `Shaped`).
    Shaped(Shaped),
}

fuzz_target!(|input: Input| {
    let owned;
    let s = match input {
        Input::Raw(s) => s,
        Input::Shaped(shaped) => {
            owned = shaped.build();
            owned.as_str()
        }
    };
    let parsed = parse(s);
    let expected = model(s);
    assert_eq!(
        parsed.is_ok(),
        expected.is_some(),
        "parse and the model disagree on {s:?}: {parsed:?}"
    );
    let api_key = ApiKey::parse(s);
    assert_eq!(
        api_key.is_ok(),
        parsed.is_ok(),
        "ApiKey::parse disagrees with parse"
    );
    let (Ok(parts), Some(m), Ok(key)) = (parsed, expected, api_key) else {
        return;
    };
    // The parts are the model's.
    assert_eq!(parts.is_public, m.is_public);
    assert_eq!(parts.kind, m.kind);
    assert_eq!(parts.key_id, m.key_id);
    let deployment = if m.flag % 2 == 0 {
        Deployment::Cloud
    } else {
        Deployment::SelfHosted
    };
    assert_eq!(parts.deployment, deployment);
    assert_eq!(parts.last_four(), &s[s.len() - 4..]);
    // Re-serialised from its parts by the generation rules, the key is itself.
    let flag =
        u8::from(parts.deployment == Deployment::SelfHosted) + if parts.is_public { 2 } else { 0 };
    assert_eq!(
        serialise(parts.is_public, &m.secret, parts.key_id, parts.kind, flag),
        s
    );
    // The ApiKey keeps the key, its digest and parts, and never shows the secret.
    assert_eq!(key.expose_secret(), s);
    assert_eq!(key.parts(), &parts);
    assert!(key.digest() == &KeyDigest::of(s));
    let shown = format!("{key} {key:?}");
    assert!(!shown.contains(&m.secret), "the secret leaked into {shown}");
});
