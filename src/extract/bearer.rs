//! The `Bearer` scheme of `Authorization` (RFC 9110 §11.4, RFC 6750 §2.1): which values are
//! bearer credentials, well-formed or loose, and the `b64token` syntax check.

use crate::key::FormatError;
use crate::reject::{BadRequest, Rejection};

/// Whether byte `c` may appear in a `b64token` before its `=` padding. Comparisons rather than
/// a table, so that [`all_b64token`] compiles to vector code.
#[inline(always)]
pub(super) fn is_b64token(c: u8) -> bool {
    let digit = c.wrapping_sub(b'0') < 10;
    let letter = (c | 0x20).wrapping_sub(b'a') < 26;
    let symbol = (c == b'-') | (c == b'.') | (c == b'_') | (c == b'~') | (c == b'+') | (c == b'/');
    digit | letter | symbol
}

/// Whether every byte of `bytes` is a `b64token` character: sixteen at a time, with no branch
/// inside a block, so the compiler checks each block with vector compares.
pub(super) fn all_b64token(bytes: &[u8]) -> bool {
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
pub(super) enum Scheme<'a> {
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
pub(super) fn bearer_scheme(value: &[u8]) -> Scheme<'_> {
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
pub(super) fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = value.iter().position(|c| !is_ows(c)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|c| !is_ows(c))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// RFC 9110 §5.6.2 `tchar`: what may continue a scheme's name.
pub(super) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The token of a `Bearer` credential; `None` for another scheme.
///
/// `credentials = auth-scheme [ 1*SP token68 ]` (RFC 9110 §11.4) with RFC 6750's
/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`. A bearer credential
/// in any other form (no token, a tab instead of the spaces) is a 400.
pub(super) fn bearer_token(value: &[u8], max_len: usize) -> Result<Option<&[u8]>, Rejection> {
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
