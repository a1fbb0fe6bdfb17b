//! Entry points for the fuzz targets in `fuzz/` and nothing else (feature `fuzzing`, off by
//! default, hidden from the docs, no stability promise).
//!
//! The credential extractor and the Stack Auth answer classifier are crate-private: their
//! callers are the layer and the verifier, and their types are implementation details. A fuzz
//! target is another crate, so it needs a door; this module is that door, kept narrow (thin
//! wrappers, owned results) rather than making the internals themselves public.

#[cfg(feature = "stack-auth")]
use std::time::{Duration, SystemTime};

use http::Request;
#[cfg(feature = "stack-auth")]
use http::{HeaderMap, StatusCode};

#[cfg(feature = "stack-auth")]
use crate::key::ApiKey;
use crate::reject::Rejection;
#[cfg(feature = "stack-auth")]
use crate::verify::Verdict;
use crate::KeyExtractor;

/// What [`extract`] found: the key as sent, and its bearer syntax check (as the layer runs it
/// before it refuses a malformed key or asks a verifier).
#[derive(Debug)]
pub struct Extracted<'a> {
    /// The key's bytes, borrowed from the request.
    pub key: &'a [u8],
    /// `Found::check_syntax`: `Ok` for a non-bearer key or a well-formed `b64token`.
    pub syntax: Result<(), Rejection>,
}

/// Runs the layer's extractor on `request`.
pub fn extract<'a, B>(
    extractor: &KeyExtractor,
    request: &'a Request<B>,
) -> Result<Option<Extracted<'a>>, Rejection> {
    Ok(extractor.extract(request)?.map(|found| Extracted {
        key: found.key,
        syntax: found.check_syntax(),
    }))
}

/// Runs the layer's credential stripping on `request`.
pub fn strip<B>(extractor: &KeyExtractor, request: &mut Request<B>) {
    extractor.strip(request);
}

/// The classifier's answer, with the crate-private type flattened.
#[cfg(feature = "stack-auth")]
#[derive(Debug)]
pub enum Classification {
    /// A verdict about the key.
    Verdict(Verdict),
    /// The verifier's configuration was refused.
    Misconfigured,
    /// An answer that makes no sense.
    Upstream,
    /// A failure that may pass, with the `Retry-After` it named.
    Transient(Option<Duration>),
}

/// Classifies one answer of the check route for `key` at `now`.
#[cfg(feature = "stack-auth")]
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: &ApiKey,
    now: SystemTime,
) -> Classification {
    use crate::stack_auth::classify::Classified;
    match crate::stack_auth::classify::classify(status, headers, body, key, now) {
        Classified::Verdict(v) => Classification::Verdict(v),
        Classified::Misconfigured { .. } => Classification::Misconfigured,
        Classified::Upstream(_) => Classification::Upstream,
        Classified::Transient { retry_after, .. } => Classification::Transient(retry_after),
    }
}

/// The status the classifier goes by: the actual-status header's, else `status`.
#[cfg(feature = "stack-auth")]
pub fn actual_status(status: StatusCode, headers: &HeaderMap) -> StatusCode {
    crate::stack_auth::classify::actual_status(status, headers)
}

/// The cap on a `Retry-After` the classifier passes on.
#[cfg(feature = "stack-auth")]
pub const MAX_RETRY_AFTER: Duration = crate::stack_auth::classify::MAX_RETRY_AFTER;
