//! The Stack Auth answer classifier on arbitrary statuses, headers and bodies (raw bytes, or
//! JSON objects of the protocol's fields). Invariants: only an actual 200 with a JSON content
//! type is ever a valid verdict, for an owner of the key's kind, unexpired at `now`; only an
//! actual 5xx or 429 is transient, with a `Retry-After` within the cap; same input, same answer.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use keygate::__fuzz::{actual_status, classify, Classification, MAX_RETRY_AFTER};
use keygate::Verdict;
use keygate_fuzz::{keys, known_strings, Body};
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    status: u16,
    key: u8,
    now_offset: i32,
    headers: Vec<(u8, Value)>,
    body: Body,
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Value {
    Json,
    Status(u16),
    Code(u8),
    /// An HTTP date, seconds from `now`.
    Date(i32),
    Seconds(u32),
    Raw(Vec<u8>),
}

const NAMES: &[&str] = &[
    "content-type",
    "x-stack-actual-status",
    "x-hexclave-actual-status",
    "x-stack-known-error",
    "x-hexclave-known-error",
    "retry-after",
];

fuzz_target!(|input: Input| {
    let known = known_strings();
    let key = &keys()[usize::from(input.key) % 4];
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let now = if input.now_offset >= 0 {
        now + Duration::from_secs(input.now_offset.unsigned_abs().into())
    } else {
        now - Duration::from_secs(input.now_offset.unsigned_abs().into())
    };
    let Ok(status) = StatusCode::from_u16(100 + input.status % 900) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        let bytes = match value {
            Value::Json => b"application/json; charset=utf-8".to_vec(),
            Value::Status(s) => s.to_string().into_bytes(),
            Value::Code(i) => known[usize::from(*i) % known.len()].clone().into_bytes(),
            Value::Date(offset) => {
                let at = now.checked_add(Duration::from_secs(offset.unsigned_abs().into()));
                let at = if *offset >= 0 {
                    at
                } else {
                    now.checked_sub(Duration::from_secs(offset.unsigned_abs().into()))
                };
                httpdate_of(at.unwrap_or(now)).into_bytes()
            }
            Value::Seconds(s) => s.to_string().into_bytes(),
            Value::Raw(bytes) => bytes.clone(),
        };
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            headers.append(name, value);
        }
    }
    let body = input.body.bytes(&known);

    let answer = classify(status, &headers, &body, key, now);
    let again = classify(status, &headers, &body, key, now);
    assert_eq!(
        format!("{answer:?}"),
        format!("{again:?}"),
        "not deterministic"
    );
    let actual = actual_status(status, &headers);
    match &answer {
        Classification::Verdict(Verdict::Valid(info)) => {
            assert_eq!(actual, StatusCode::OK, "valid on an actual {actual}");
            let content_type = headers
                .get("content-type")
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            assert!(
                String::from_utf8_lossy(content_type)
                    .to_ascii_lowercase()
                    .contains("json"),
                "valid without a JSON content type"
            );
            assert_eq!(
                info.owner.kind(),
                key.kind(),
                "valid for an owner of the other kind"
            );
            assert!(
                info.expires_at.is_none_or(|at| at > now),
                "valid, yet expired"
            );
        }
        Classification::Verdict(_) => {
            assert!(
                actual == StatusCode::OK || actual.is_client_error(),
                "a verdict on {actual}"
            );
        }
        Classification::Transient(retry_after) => {
            assert!(actual.is_server_error() || actual == StatusCode::TOO_MANY_REQUESTS);
            assert!(
                retry_after.is_none_or(|d| d <= MAX_RETRY_AFTER),
                "{retry_after:?}"
            );
        }
        Classification::Misconfigured => {
            assert!(actual.is_client_error(), "misconfigured on {actual}")
        }
        Classification::Upstream => {}
    }
    if actual.is_server_error() || actual == StatusCode::TOO_MANY_REQUESTS {
        assert!(
            matches!(answer, Classification::Transient(_)),
            "{actual}: {answer:?}"
        );
    }
});

/// RFC 9110 IMF-fixdate of `at`.
fn httpdate_of(at: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {d:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}
