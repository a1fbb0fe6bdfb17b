//! Credential extraction: the layer's extractor over arbitrary header sets and query strings.
//! It never panics; a key it returns is non-empty, within the length cap and taken from the
//! request; it is deterministic; and after the layer strips the credentials it finds nothing.
#![no_main]

use http::{HeaderName, HeaderValue, Request, Uri};
use keygate::__fuzz::{extract, strip};
use keygate::reject::Rejection;
use keygate::KeyExtractor;
use keygate_fuzz::keys;
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    bearer: bool,
    custom_header: bool,
    query_param: bool,
    max_len: Option<u16>,
    headers: Vec<(Name, Value)>,
    query: Vec<u8>,
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Name {
    Authorization,
    Custom,
    Other(Vec<u8>),
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Value {
    /// A scheme (from a few), spaces, and a token: a key or any bytes.
    Credential {
        scheme: u8,
        spaces: u8,
        key: Option<u8>,
        rest: Vec<u8>,
    },
    Raw(Vec<u8>),
}

const SCHEMES: &[&str] = &[
    "Bearer", "bearer", "BEARER", "Basic", "Bearerx", "Bearer\t", " Bearer", "",
];

fn value_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::Raw(bytes) => bytes.clone(),
        Value::Credential {
            scheme,
            spaces,
            key,
            rest,
        } => {
            let mut v = SCHEMES[usize::from(*scheme) % SCHEMES.len()]
                .as_bytes()
                .to_vec();
            v.extend(std::iter::repeat_n(b' ', usize::from(spaces % 4)));
            if let Some(k) = key {
                v.extend(keys()[usize::from(*k) % 4].expose_secret().as_bytes());
            }
            v.extend(rest);
            v
        }
    }
}

const CUSTOM: &str = "x-stack-api-key";

fuzz_target!(|input: Input| {
    let mut extractor = KeyExtractor::new().bearer(input.bearer);
    if input.custom_header {
        extractor = extractor.header(HeaderName::from_static(CUSTOM));
    }
    if input.query_param {
        extractor = extractor.query_param("api_key");
    }
    let max_len = input.max_len.map_or(512, |m| usize::from(m % 1024));
    extractor = extractor.max_key_len(max_len);

    let query = String::from_utf8_lossy(&input.query);
    let uri = Uri::try_from(format!("/p?{query}")).unwrap_or_else(|_| Uri::from_static("/p"));
    let mut builder = Request::builder().uri(uri);
    for (name, value) in &input.headers {
        let name = match name {
            Name::Authorization => http::header::AUTHORIZATION,
            Name::Custom => HeaderName::from_static(CUSTOM),
            Name::Other(bytes) => match HeaderName::from_bytes(bytes) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(&value_bytes(value)) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };

    let first = extract(&extractor, &request);
    let again = extract(&extractor, &request);
    assert_eq!(
        format!("{first:?}"),
        format!("{again:?}"),
        "extraction is not deterministic"
    );
    let configured_values = || {
        request
            .headers()
            .get_all(CUSTOM)
            .iter()
            .filter(|_| input.custom_header)
            .map(|v| v.as_bytes())
    };
    match &first {
        Ok(Some(found)) => {
            assert!(!found.key.is_empty(), "an empty key");
            assert!(found.key.len() <= max_len, "a key above the cap");
            let in_headers = request.headers().values().any(|v| {
                v.as_bytes()
                    .windows(found.key.len())
                    .any(|w| w == found.key)
            });
            let in_query = request
                .uri()
                .query()
                .is_some_and(|q| q.contains(&*String::from_utf8_lossy(found.key)));
            assert!(in_headers || in_query, "a key the request does not hold");
        }
        Ok(None) => {
            // A configured header with a non-blank value is a key (or an error), never nothing.
            assert!(
                configured_values().all(|v| v.iter().all(|&c| c == b' ' || c == b'\t')),
                "a configured header's key was missed"
            );
        }
        Err(Rejection::Malformed(_)) => {
            let longest = request
                .headers()
                .values()
                .map(HeaderValue::len)
                .max()
                .unwrap_or(0);
            let query_len = request.uri().query().map_or(0, str::len);
            assert!(longest.max(query_len) > max_len, "too long, but nothing is");
        }
        Err(Rejection::BadRequest(_)) => {}
        Err(other) => panic!("extraction answered {other:?}"),
    }

    // What the layer strips leaves no credential behind.
    let before = format!("{first:?}");
    let mut stripped = request.clone();
    strip(&extractor, &mut stripped);
    let after = extract(&extractor, &stripped);
    assert!(
        matches!(after, Ok(None)),
        "after strip: {after:?} (before: {before})"
    );
});
