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
use http::{HeaderName, Request};

use crate::key::{parse_structure, FormatError};
use crate::reject::{BadRequest, Rejection};

use self::bearer::{all_b64token, bearer_scheme, bearer_token, Scheme};
use self::query::{query_values, without_query_param};

mod bearer;
mod query;
#[cfg(test)]
mod tests;

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
