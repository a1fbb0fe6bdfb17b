//! The one request/response helper: build a request from raw headers, send it to any tower
//! service, read the whole response into a [`Reply`], and check refusals against the design's
//! error table (RFC 6750 challenges, `Retry-After`, the JSON `{code, error}` body).

use std::convert::Infallible;
use std::fmt::Debug;

use axum::body::{Body, HttpBody};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

/// The custom header some routes read keys from.
pub const X_KEY: &str = "x-stack-api-key";

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A header as raw bytes, so that rows can carry values that are not visible ASCII.
pub type Hdr = (&'static str, Vec<u8>);

/// `Authorization: <value>`.
pub fn auth(value: impl Into<Vec<u8>>) -> Hdr {
    ("authorization", value.into())
}

/// `Authorization: Bearer <key>`.
pub fn bearer(key: &str) -> Hdr {
    auth(format!("Bearer {key}"))
}

/// The key in the [`X_KEY`] header.
pub fn x_key(value: impl Into<Vec<u8>>) -> Hdr {
    (X_KEY, value.into())
}

/// `GET uri` with `headers`, in order (repeated names are appended).
pub fn request<B: Default>(uri: &str, headers: &[Hdr]) -> Request<B> {
    let mut request = Request::get(uri).body(B::default()).expect("request");
    for (name, value) in headers {
        let value = HeaderValue::from_bytes(value).expect("valid header value");
        request
            .headers_mut()
            .append(HeaderName::from_static(name), value);
    }
    request
}

/// `GET uri` with `headers`, sent to `app`.
pub async fn send(app: &Router, uri: &str, headers: &[Hdr]) -> Reply {
    let what = format!("GET {uri}");
    send_request(app, request::<Body>(uri, headers), what).await
}

/// `GET /principal` with `Authorization: Bearer <key>`: the route answers the key's id.
pub async fn call(app: &Router, key: &str) -> Reply {
    send(app, "/principal", &[bearer(key)]).await
}

/// Any request, sent to `app`; `what` names it in assertion messages.
pub async fn send_request(app: &Router, request: Request<Body>, what: String) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e: Infallible| match e {});
    Reply::read(what, response).await
}

/// `method uri` with string headers and an optional raw body, sent to `app`.
pub async fn send_raw<N: AsRef<str>, V: AsRef<str>>(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(N, V)],
    body: Option<&str>,
) -> Reply {
    let mut request = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in headers {
        request = request.header(name.as_ref(), value.as_ref());
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    send_request(app, request, format!("{method} {uri}")).await
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// The request, for assertion messages.
    pub what: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads the whole of `response`.
    pub async fn read<B>(what: String, response: Response<B>) -> Self
    where
        B: HttpBody,
        B::Error: Debug,
    {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Self {
            what,
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A header as text (panics on a value that is not visible ASCII).
    pub fn header(&self, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("visible ASCII header"))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.text()))
    }

    /// The JSON body's `code`, or `""` for a body without one.
    pub fn code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
            .unwrap_or_default()
    }

    /// The handler ran: 200 with a JSON body, which is returned.
    #[track_caller]
    pub fn assert_ok(&self, ctx: &str) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{ctx}: body {:?}", self.text());
        self.json()
    }

    /// The handler ran for the key with id `key_id` (a route that answers `key_id`).
    #[track_caller]
    pub fn assert_admitted(&self, key_id: Uuid, ctx: &str) {
        let body = self.assert_ok(ctx);
        assert_eq!(body["key_id"], key_id.to_string(), "{ctx}: {body}");
    }

    /// A refusal exactly as the error table says.
    #[track_caller]
    pub fn assert_rejected(&self, expect: &Expect, ctx: &str) {
        assert_eq!(self.status, expect.status, "{ctx}: body {:?}", self.text());
        assert_eq!(
            self.header(WWW_AUTHENTICATE),
            expect.challenge,
            "{ctx}: WWW-Authenticate"
        );
        assert_eq!(
            self.header(RETRY_AFTER),
            expect.retry_after,
            "{ctx}: Retry-After"
        );
        self.assert_refusal_body(expect.code, ctx);
    }

    /// 503 `VERIFIER_UNAVAILABLE`, a numeric `Retry-After` of at least one second, and no
    /// challenge (the caller's key is not to blame). Returns the `Retry-After` seconds.
    #[track_caller]
    pub fn assert_unavailable(&self, ctx: &str) -> u64 {
        assert_eq!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{ctx}: {:?}",
            self.text()
        );
        assert_eq!(
            self.header(WWW_AUTHENTICATE),
            None,
            "{ctx}: WWW-Authenticate"
        );
        self.assert_refusal_body(UNAVAILABLE.code, ctx);
        let secs = self
            .header(RETRY_AFTER)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{ctx}: no numeric Retry-After"));
        assert!(secs >= 1, "{ctx}: Retry-After {secs}");
        secs
    }

    /// 429 `RATE_LIMITED` from a bucket of `limit`: `x-ratelimit-limit`, `x-ratelimit-remaining:
    /// 0`, `x-ratelimit-after`, and a numeric `Retry-After` of 1 to `max_wait` seconds, no
    /// smaller than `x-ratelimit-after`. Returns the `Retry-After` seconds.
    #[track_caller]
    pub fn assert_rate_limited(&self, limit: u32, max_wait: u64, ctx: &str) -> u64 {
        assert_eq!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{ctx}: {:?}",
            self.text()
        );
        self.assert_refusal_body("RATE_LIMITED", ctx);
        let number = |name: &str| {
            self.header(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{ctx}: no numeric {name} in {:?}", self.headers))
        };
        assert_eq!(number("x-ratelimit-limit"), u64::from(limit), "{ctx}");
        assert_eq!(number("x-ratelimit-remaining"), 0, "{ctx}");
        let secs = number("retry-after");
        assert!((1..=max_wait).contains(&secs), "{ctx}: Retry-After {secs}");
        assert!(
            number("x-ratelimit-after") <= secs,
            "{ctx}: x-ratelimit-after"
        );
        secs
    }

    /// `x-ratelimit-remaining` on a response let through a limit.
    #[track_caller]
    pub fn remaining(&self, ctx: &str) -> u64 {
        self.header("x-ratelimit-remaining")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no x-ratelimit-remaining in {:?}", self.headers))
    }

    /// `content-type`, `cache-control` and a body of exactly `code` and a human `error`.
    #[track_caller]
    fn assert_refusal_body(&self, code: &str, ctx: &str) {
        assert_eq!(
            self.header(CONTENT_TYPE),
            Some("application/json"),
            "{ctx}: content-type"
        );
        assert_eq!(
            self.header(CACHE_CONTROL),
            Some("no-store"),
            "{ctx}: cache-control"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{ctx}: body {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{ctx}: no human message in {body}");
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "{ctx}: body has exactly `code` and `error`: {body}"
        );
    }

    /// The handler's JSON, or the refusal, that `outcome` names.
    #[track_caller]
    pub fn assert_outcome(&self, outcome: &Outcome, ctx: &str) {
        match outcome {
            Outcome::Ok(expected) => assert_eq!(&self.assert_ok(ctx), expected, "{ctx}"),
            Outcome::Rejected(expect) => self.assert_rejected(expect, ctx),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The error table (RFC 6750 + Stack Auth body style)
// ---------------------------------------------------------------------------------------------

/// One row of the error table.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub status: StatusCode,
    pub challenge: Option<&'static str>,
    pub retry_after: Option<&'static str>,
    pub code: &'static str,
}

/// No key: 401 with a bare challenge.
pub const MISSING: Expect = Expect {
    status: StatusCode::UNAUTHORIZED,
    challenge: Some(r#"Bearer realm="api""#),
    retry_after: None,
    code: "API_KEY_MISSING",
};

/// Malformed, unknown, revoked or expired: one uniform 401.
pub const INVALID: Expect = Expect {
    status: StatusCode::UNAUTHORIZED,
    challenge: Some(r#"Bearer realm="api", error="invalid_token""#),
    retry_after: None,
    code: "API_KEY_INVALID",
};

/// Two keys, or bad header syntax: 400.
pub const BAD_REQUEST: Expect = Expect {
    status: StatusCode::BAD_REQUEST,
    challenge: Some(r#"Bearer error="invalid_request""#),
    retry_after: None,
    code: "INVALID_REQUEST",
};

/// A key of a kind the route refuses: 403.
pub const SCOPE: Expect = Expect {
    status: StatusCode::FORBIDDEN,
    challenge: Some(r#"Bearer error="insufficient_scope""#),
    retry_after: None,
    code: "INSUFFICIENT_SCOPE",
};

/// The verifier cannot answer: 503 with the default `Retry-After`.
pub const UNAVAILABLE: Expect = Expect {
    status: StatusCode::SERVICE_UNAVAILABLE,
    challenge: None,
    retry_after: Some("1"),
    code: "VERIFIER_UNAVAILABLE",
};

/// What a request should come to.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The handler ran and answered this JSON.
    Ok(Value),
    /// The request was refused as this row of the error table says.
    Rejected(Expect),
}
