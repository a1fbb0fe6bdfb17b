//! Where keys come from: `Authorization: Bearer`, a configured header, or (opt-in) a query
//! parameter.
//!
//! - `Authorization: Bearer <key>`: the scheme is case-insensitive, one or more spaces follow it,
//!   and the token must follow RFC 6750's `b64token` syntax. A value whose scheme is `Bearer` in
//!   any other form (`Bearer` alone, a tab or a comma after it) is refused with 400
//!   `invalid_request`: never taken for another scheme, so never let through unchecked.
//!   Whitespace around the whole value is not part of it (RFC 9110 §5.5) and is ignored. Other
//!   schemes (`Basic`, …, and `Bearerxyz`, a scheme of its own) are not keys and are left alone.
//! - A configured header (Stack Auth's docs suggest `X-Stack-Api-Key`) carries the bare key.
//! - A query parameter only when enabled: RFC 6750 §2.3 says URLs end up in logs.
//! - Two *different* keys in one request are refused with 400; the same key twice is fine.
//! - Before anything is scanned, a value longer than the cap (default 512 bytes) is refused.
//!
//! ```
//! use keygate::{KeyExtractor, MemoryKeyStore, RequireApiKey};
//!
//! let extractor = KeyExtractor::new()
//!     .header(http::HeaderName::from_static("x-stack-api-key"))
//!     .query_param("api_key");
//! let layer = RequireApiKey::new(MemoryKeyStore::new()).extractor(extractor);
//! # let _ = layer;
//! ```

use std::fmt;

use http::header::AUTHORIZATION;
use http::{HeaderName, Request, Uri};

use crate::key::{parse_structure, FormatError};
use crate::reject::{BadRequest, Rejection};

/// The default cap on a presented key's length, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 512;

/// Where the layer looks for a key. Bearer only, by default.
#[derive(Clone, Debug)]
pub struct KeyExtractor {
    bearer: bool,
    headers: Vec<HeaderName>,
    query: Option<String>,
    max_len: usize,
}

impl Default for KeyExtractor {
    fn default() -> Self {
        Self::new()
    }
}

/// A key found in a request, borrowed from it. Its `Debug` never shows the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found<'a> {
    /// The key as sent, not yet checked against the key format. A header value is visible
    /// ASCII and a query parameter UTF-8; a bearer token's syntax is checked by
    /// [`check_syntax`](Self::check_syntax).
    pub(crate) key: &'a [u8],
    /// Whether the key is a bearer token, whose `b64token` syntax is left to `check_syntax`.
    bearer: bool,
}

/// Shows a key-shaped value as `sk_…6e6f` (its prefix and last four), anything else by its
/// length only: the key is a secret, and a short value's last four would be most of it.
impl fmt::Debug for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Found");
        match parse_structure(self.key) {
            Ok(parts) => debug.field("key", &format_args!("{parts}")),
            Err(_) => debug.field("key", &format_args!("<{} bytes>", self.key.len())),
        };
        debug.field("bearer", &self.bearer).finish()
    }
}

impl Found<'_> {
    /// A bearer token's RFC 6750 `b64token` syntax (400 `invalid_request` if broken).
    ///
    /// Left out of [`KeyExtractor::extract`] so that a cache hit, whose digest vouches for every
    /// byte of the key, does not scan the token again; the layer calls it before it refuses a
    /// malformed key or looks further than the cache.
    pub(crate) fn check_syntax(&self) -> Result<(), Rejection> {
        if !self.bearer {
            return Ok(());
        }
        // `b64token` characters, then only `=` padding.
        let padding = self.key.iter().rev().take_while(|&&c| c == b'=').count();
        let body = &self.key[..self.key.len() - padding];
        if body.is_empty() || !all_b64token(body) {
            return Err(Rejection::BadRequest(BadRequest::MalformedHeader));
        }
        Ok(())
    }
}

impl KeyExtractor {
    /// `Authorization: Bearer` only, with the default length cap.
    pub fn new() -> Self {
        Self {
            bearer: true,
            headers: Vec::new(),
            query: None,
            max_len: DEFAULT_MAX_KEY_LEN,
        }
    }

    /// Whether to read `Authorization: Bearer` (default `true`).
    pub fn bearer(mut self, enabled: bool) -> Self {
        self.bearer = enabled;
        self
    }

    /// Also reads the bare key from this header (e.g. `x-stack-api-key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        self
    }

    /// Also reads the key from this query parameter. Off by default: URLs end up in logs,
    /// browser history and `Referer` headers.
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.query = Some(name.into());
        self
    }

    /// The longest value looked at (default 512 bytes); longer ones are refused unscanned.
    pub fn max_key_len(mut self, max: usize) -> Self {
        self.max_len = max;
        self
    }

    /// Finds the one key in `request`, if any.
    pub(crate) fn extract<'a, B>(
        &self,
        request: &'a Request<B>,
    ) -> Result<Option<Found<'a>>, Rejection> {
        let mut found = None;
        match self.scan(request, &mut found) {
            Ok(()) => Ok(found),
            // A bearer token read before the error is checked first, as if when it was read: a
            // malformed credential is a 400 whatever comes after it.
            Err(rejection) => {
                if let Some(found) = &found {
                    found.check_syntax()?;
                }
                Err(rejection)
            }
        }
    }

    fn scan<'a, B>(
        &self,
        request: &'a Request<B>,
        found: &mut Option<Found<'a>>,
    ) -> Result<(), Rejection> {
        let mut offer = |key: &'a [u8], bearer: bool| -> Result<(), Rejection> {
            if key.len() > self.max_len {
                return Err(Rejection::Malformed(FormatError::TooLong {
                    max: self.max_len,
                }));
            }
            match found {
                Some(previous) if previous.key != key => {
                    Found { key, bearer }.check_syntax()?;
                    Err(Rejection::BadRequest(BadRequest::MultipleKeys))
                }
                // The same key in several places: its syntax is checked if any is a bearer token.
                Some(previous) => {
                    previous.bearer |= bearer;
                    Ok(())
                }
                None => {
                    *found = Some(Found { key, bearer });
                    Ok(())
                }
            }
        };
        if self.bearer {
            for value in request.headers().get_all(AUTHORIZATION) {
                if let Some(token) = bearer_token(value.as_bytes(), self.max_len)? {
                    offer(token, true)?;
                }
            }
        }
        for name in &self.headers {
            for value in request.headers().get_all(name) {
                if value.len() > self.max_len {
                    return Err(Rejection::Malformed(FormatError::TooLong {
                        max: self.max_len,
                    }));
                }
                let value = value
                    .to_str()
                    .map_err(|_| Rejection::BadRequest(BadRequest::MalformedHeader))?
                    .trim_matches([' ', '\t']);
                if !value.is_empty() {
                    offer(value.as_bytes(), false)?;
                }
            }
        }
        if let Some(param) = &self.query {
            for value in query_values(request.uri(), param) {
                offer(value.as_bytes(), false)?;
            }
        }
        Ok(())
    }

    /// Removes every credential this extractor reads from `request`, so the inner service never
    /// sees the key: every `Authorization` header if any of them is a bearer credential (in any
    /// form [`bearer_token`] recognises, well-formed or not), every configured header, the query
    /// parameter.
    pub(crate) fn strip<B>(&self, request: &mut Request<B>) {
        if self.bearer {
            let has_bearer = request
                .headers()
                .get_all(AUTHORIZATION)
                .iter()
                .any(|v| !matches!(bearer_scheme(v.as_bytes()), Scheme::Other));
            if has_bearer {
                request.headers_mut().remove(AUTHORIZATION);
            }
        }
        for name in &self.headers {
            request.headers_mut().remove(name);
        }
        if let Some(param) = &self.query {
            if let Some(uri) = without_query_param(request.uri(), param) {
                *request.uri_mut() = uri;
            }
        }
    }
}

/// Whether byte `c` may appear in a `b64token` before its `=` padding. Comparisons rather than
/// a table, so that [`all_b64token`] compiles to vector code.
#[inline(always)]
fn is_b64token(c: u8) -> bool {
    let digit = c.wrapping_sub(b'0') < 10;
    let letter = (c | 0x20).wrapping_sub(b'a') < 26;
    let symbol = (c == b'-') | (c == b'.') | (c == b'_') | (c == b'~') | (c == b'+') | (c == b'/');
    digit | letter | symbol
}

/// Whether every byte of `bytes` is a `b64token` character: sixteen at a time, with no branch
/// inside a block, so the compiler checks each block with vector compares.
fn all_b64token(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(16);
    let mut ok = true;
    for block in &mut blocks {
        let mut block_ok = true;
        for &c in block {
            block_ok &= is_b64token(c);
        }
        ok &= block_ok;
    }
    ok && blocks.remainder().iter().all(|&c| is_b64token(c))
}

/// How an `Authorization` value stands to the `Bearer` scheme.
#[derive(Debug, PartialEq, Eq)]
enum Scheme<'a> {
    /// Another scheme (its name is not `bearer`), or no scheme at all.
    Other,
    /// `Bearer`, then what follows its spaces: the token, not yet checked (maybe empty).
    Bearer(&'a [u8]),
    /// A scheme named `bearer` followed by something other than a space (a tab, a comma, …).
    Loose,
}

/// Where `value` stands to the `Bearer` scheme, once the whitespace around it is dropped (RFC
/// 9110 §5.5: it is not part of a field value; hyper drops it, other stacks may not).
///
/// The scheme is a `token` (RFC 9110 §5.6.2), so `Bearerabc` is a scheme of its own, while
/// `Bearer` followed by anything that cannot continue a token is this scheme, well-formed or not.
fn bearer_scheme(value: &[u8]) -> Scheme<'_> {
    let value = trim_ows(value);
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"bearer") {
        return Scheme::Other;
    }
    match value.get(6) {
        None => Scheme::Bearer(&value[6..]),
        Some(b' ') => {
            let spaces = value[6..].iter().take_while(|&&c| c == b' ').count();
            Scheme::Bearer(&value[6 + spaces..])
        }
        Some(&c) if is_tchar(c) => Scheme::Other,
        Some(_) => Scheme::Loose,
    }
}

/// `value` without the spaces and tabs around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = value.iter().position(|c| !is_ows(c)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|c| !is_ows(c))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// RFC 9110 §5.6.2 `tchar`: what may continue a scheme's name.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The token of a `Bearer` credential; `None` for another scheme.
///
/// `credentials = auth-scheme [ 1*SP token68 ]` (RFC 9110 §11.4) with RFC 6750's
/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`. A bearer credential
/// in any other form (no token, a tab instead of the spaces) is a 400.
fn bearer_token(value: &[u8], max_len: usize) -> Result<Option<&[u8]>, Rejection> {
    fn malformed() -> Rejection {
        Rejection::BadRequest(BadRequest::MalformedHeader)
    }
    let token = match bearer_scheme(value) {
        Scheme::Other => return Ok(None),
        Scheme::Loose => return Err(malformed()),
        Scheme::Bearer(token) => token,
    };
    if token.len() > max_len {
        return Err(Rejection::Malformed(FormatError::TooLong { max: max_len }));
    }
    if token.is_empty() {
        return Err(malformed());
    }
    // The `b64token` syntax is checked by `Found::check_syntax`.
    Ok(Some(token))
}

fn query_values<'a, 'n>(
    uri: &'a Uri,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name && !v.is_empty()).then_some(v)
        })
}

/// `uri` without the parameter `name`; `None` if it has no such parameter.
fn without_query_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_other = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) != name;
    if query.split('&').all(|pair| is_other(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(is_other).collect();
    let path = uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn extract(e: &KeyExtractor, r: &Request<()>) -> Result<Option<String>, String> {
        e.extract(r)
            .and_then(|f| match f {
                Some(f) => f
                    .check_syntax()
                    .map(|()| Some(String::from_utf8_lossy(f.key).into_owned())),
                None => Ok(None),
            })
            .map_err(|r| r.code().to_owned())
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_allows_several_spaces() {
        let e = KeyExtractor::new();
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR    abc"] {
            assert_eq!(
                extract(&e, &req(&[("authorization", v)], "/")),
                Ok(Some("abc".into())),
                "{v}"
            );
        }
    }

    #[test]
    fn other_schemes_are_not_keys() {
        let e = KeyExtractor::new();
        assert_eq!(
            extract(&e, &req(&[("authorization", "Basic dXNlcjpwdw==")], "/")),
            Ok(None)
        );
        assert_eq!(
            extract(&e, &req(&[("authorization", "Bearerabc")], "/")),
            Ok(None)
        );
        assert_eq!(extract(&e, &req(&[], "/")), Ok(None));
    }

    #[test]
    fn malformed_bearer_is_a_bad_request() {
        let e = KeyExtractor::new();
        for v in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\tb",
            "Bearer =abc",
            "Bearer ab=c",
            "Bearer a,b",
        ] {
            assert_eq!(
                extract(&e, &req(&[("authorization", v)], "/")),
                Err("INVALID_REQUEST".into()),
                "{v:?}"
            );
        }
        let mut r = req(&[], "/");
        r.headers_mut().insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xffabc").expect("obs-text"),
        );
        assert_eq!(extract(&e, &r), Err("INVALID_REQUEST".into()));
    }

    #[test]
    fn a_bearer_scheme_in_any_other_form_is_a_bad_request_not_another_scheme() {
        let e = KeyExtractor::new();
        for v in [
            "Bearer\tabc",
            "bearer\tabc",
            "Bearer\t",
            "Bearer \tabc",
            "Bearer,abc",
            "Bearer:abc",
            "Bearer=abc",
            " Bearer\tabc",
        ] {
            assert_eq!(
                extract(&e, &req(&[("authorization", v)], "/")),
                Err("INVALID_REQUEST".into()),
                "{v:?}"
            );
        }
        // A scheme whose name merely starts with `bearer` is another scheme.
        for v in ["Bearerabc", "Bearer.abc abc", "Bearer_x abc"] {
            assert_eq!(
                extract(&e, &req(&[("authorization", v)], "/")),
                Ok(None),
                "{v:?}"
            );
        }
    }

    #[test]
    fn whitespace_around_the_value_is_not_part_of_it() {
        let e = KeyExtractor::new();
        for v in [" Bearer abc", "Bearer abc ", "\t Bearer  abc \t"] {
            assert_eq!(
                extract(&e, &req(&[("authorization", v)], "/")),
                Ok(Some("abc".into())),
                "{v:?}"
            );
        }
    }

    #[test]
    fn found_debug_never_shows_the_key() {
        let key = "sk_abcdefghjkmnpqrstvwxyz0123456789abcdefghjkmn03241a28583294d698f3d316e08cf140cuser1574ck4u7hf5356e6f";
        let shown = format!(
            "{:?}",
            Found {
                key: key.as_bytes(),
                bearer: true
            }
        );
        assert_eq!(shown, "Found { key: sk_…6e6f, bearer: true }");
        let shown = format!(
            "{:?}",
            Found {
                key: b"hunter2-secret",
                bearer: false
            }
        );
        assert_eq!(shown, "Found { key: <14 bytes>, bearer: false }");
    }

    #[test]
    fn b64token_padding_is_allowed() {
        let e = KeyExtractor::new();
        assert_eq!(
            extract(&e, &req(&[("authorization", "Bearer ab+/c==")], "/")),
            Ok(Some("ab+/c==".into()))
        );
    }

    #[test]
    fn two_different_keys_are_refused_and_the_same_key_twice_is_not() {
        let e = KeyExtractor::new().header(HeaderName::from_static("x-stack-api-key"));
        let two = req(
            &[("authorization", "Bearer aaa"), ("x-stack-api-key", "bbb")],
            "/",
        );
        assert_eq!(extract(&e, &two), Err("INVALID_REQUEST".into()));
        let same = req(
            &[("authorization", "Bearer aaa"), ("x-stack-api-key", "aaa")],
            "/",
        );
        assert_eq!(extract(&e, &same), Ok(Some("aaa".into())));
        let two_auth = req(
            &[
                ("authorization", "Bearer aaa"),
                ("authorization", "Bearer ccc"),
            ],
            "/",
        );
        assert_eq!(extract(&e, &two_auth), Err("INVALID_REQUEST".into()));
    }

    #[test]
    fn configured_header_instead_of_bearer() {
        let e = KeyExtractor::new()
            .bearer(false)
            .header(HeaderName::from_static("x-stack-api-key"));
        assert_eq!(
            extract(&e, &req(&[("authorization", "Bearer aaa")], "/")),
            Ok(None)
        );
        assert_eq!(
            extract(&e, &req(&[("x-stack-api-key", " aaa ")], "/")),
            Ok(Some("aaa".into()))
        );
    }

    #[test]
    fn query_only_when_enabled() {
        let off = KeyExtractor::new();
        assert_eq!(extract(&off, &req(&[], "/x?api_key=aaa")), Ok(None));
        let on = KeyExtractor::new().query_param("api_key");
        assert_eq!(
            extract(&on, &req(&[], "/x?a=1&api_key=aaa")),
            Ok(Some("aaa".into()))
        );
        assert_eq!(
            extract(
                &on,
                &req(&[("authorization", "Bearer bbb")], "/x?api_key=aaa")
            ),
            Err("INVALID_REQUEST".into())
        );
    }

    #[test]
    fn overlong_values_are_refused_before_scanning() {
        let e = KeyExtractor::new().max_key_len(10);
        let long = format!("Bearer {}", "a".repeat(11));
        assert_eq!(
            extract(&e, &req(&[("authorization", &long)], "/")),
            Err("API_KEY_INVALID".into())
        );
        let long_bad = format!("Bearer {}", " a".repeat(20));
        assert_eq!(
            extract(&e, &req(&[("authorization", &long_bad)], "/")),
            Err("API_KEY_INVALID".into())
        );
    }

    #[test]
    fn strip_removes_every_credential() {
        let e = KeyExtractor::new()
            .header(HeaderName::from_static("x-stack-api-key"))
            .query_param("api_key");
        let mut r = req(
            &[
                ("authorization", "Bearer aaa"),
                ("x-stack-api-key", "aaa"),
                ("x-other", "1"),
            ],
            "/p?a=1&api_key=aaa&b=2",
        );
        e.strip(&mut r);
        assert!(r.headers().get(AUTHORIZATION).is_none());
        assert!(r.headers().get("x-stack-api-key").is_none());
        assert_eq!(r.headers()["x-other"], "1");
        assert_eq!(r.uri().to_string(), "/p?a=1&b=2");

        for loose in ["Bearer\taaa", " bearer aaa", "Bearer", "Bearer,aaa"] {
            let mut r = req(&[("authorization", loose)], "/p");
            e.strip(&mut r);
            assert!(r.headers().get(AUTHORIZATION).is_none(), "{loose:?}");
        }

        let mut basic = req(&[("authorization", "Basic xyz")], "/p?api_key=aaa");
        e.strip(&mut basic);
        assert_eq!(basic.headers()[AUTHORIZATION], "Basic xyz");
        assert_eq!(basic.uri().to_string(), "/p");
    }
}
