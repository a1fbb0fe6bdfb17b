//! Header names of Stack Auth's API, each with its Hexclave twin.
//!
//! Stack Auth is being renamed Hexclave with wire compatibility kept: every `x-stack-*` header
//! has an `x-hexclave-*` twin. A backend accepts both in requests and, when both are present,
//! uses the `x-hexclave-*` value; it sends both in responses, and clients read the
//! `x-hexclave-*` one first. [`HeaderTwin::get`] reads in that order; [`HeaderTwin::insert_both`]
//! writes both.

use http::{HeaderMap, HeaderName, HeaderValue};

/// One header under its two names: `x-stack-…` and `x-hexclave-…`.
#[derive(Clone, Debug)]
pub struct HeaderTwin {
    stack: HeaderName,
    hexclave: HeaderName,
}

impl HeaderTwin {
    const fn new(stack: &'static str, hexclave: &'static str) -> Self {
        Self {
            stack: HeaderName::from_static(stack),
            hexclave: HeaderName::from_static(hexclave),
        }
    }

    /// The `x-stack-*` name, the one every backend version understands.
    pub fn stack(&self) -> &HeaderName {
        &self.stack
    }

    /// The `x-hexclave-*` name.
    pub fn hexclave(&self) -> &HeaderName {
        &self.hexclave
    }

    /// The header's value: the `x-hexclave-*` one if present, else the `x-stack-*` one.
    pub fn get<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        headers
            .get(&self.hexclave)
            .or_else(|| headers.get(&self.stack))
    }

    /// Whether either name is present.
    pub fn is_present(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(&self.hexclave) || headers.contains_key(&self.stack)
    }

    /// Sets `value` under both names.
    pub fn insert_both(&self, headers: &mut HeaderMap, value: HeaderValue) {
        headers.insert(self.hexclave.clone(), value.clone());
        headers.insert(self.stack.clone(), value);
    }
}

/// `client`, `server` or `admin`.
pub const ACCESS_TYPE: HeaderTwin =
    HeaderTwin::new("x-stack-access-type", "x-hexclave-access-type");
/// The project's id.
pub const PROJECT_ID: HeaderTwin = HeaderTwin::new("x-stack-project-id", "x-hexclave-project-id");
/// The secret server key (`ssk_…`), for server access.
pub const SECRET_SERVER_KEY: HeaderTwin =
    HeaderTwin::new("x-stack-secret-server-key", "x-hexclave-secret-server-key");
/// The publishable client key (`pck_…`), for client access.
pub const PUBLISHABLE_CLIENT_KEY: HeaderTwin = HeaderTwin::new(
    "x-stack-publishable-client-key",
    "x-hexclave-publishable-client-key",
);
/// The super secret admin key, for admin access.
pub const SUPER_SECRET_ADMIN_KEY: HeaderTwin = HeaderTwin::new(
    "x-stack-super-secret-admin-key",
    "x-hexclave-super-secret-admin-key",
);
/// An admin's access token, for admin access.
pub const ADMIN_ACCESS_TOKEN: HeaderTwin = HeaderTwin::new(
    "x-stack-admin-access-token",
    "x-hexclave-admin-access-token",
);
/// A user's access token (JWT).
pub const ACCESS_TOKEN: HeaderTwin =
    HeaderTwin::new("x-stack-access-token", "x-hexclave-access-token");
/// Asks the backend to answer every 4xx as 200 with [`ACTUAL_STATUS`] (the SDK sends it;
/// keygate's clients do not).
pub const OVERRIDE_ERROR_STATUS: HeaderTwin = HeaderTwin::new(
    "x-stack-override-error-status",
    "x-hexclave-override-error-status",
);
/// Response: the real status of an error answered as 200.
pub const ACTUAL_STATUS: HeaderTwin =
    HeaderTwin::new("x-stack-actual-status", "x-hexclave-actual-status");
/// Response: the code of a known error; equals the body's `code`.
pub const KNOWN_ERROR: HeaderTwin =
    HeaderTwin::new("x-stack-known-error", "x-hexclave-known-error");
/// Response: the request's id.
pub const REQUEST_ID: HeaderTwin = HeaderTwin::new("x-stack-request-id", "x-hexclave-request-id");

/// Request headers that carry a project key or an admin token: a request with a non-empty one
/// of them but no access type is refused with `PROJECT_KEY_WITHOUT_ACCESS_TYPE`. A user's
/// [`ACCESS_TOKEN`] alone is not one of them (without an access type it is simply ignored).
pub const CREDENTIALS: [HeaderTwin; 4] = [
    SECRET_SERVER_KEY,
    PUBLISHABLE_CLIENT_KEY,
    SUPER_SECRET_ADMIN_KEY,
    ADMIN_ACCESS_TOKEN,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexclave_wins_and_stack_is_the_fallback() {
        let mut map = HeaderMap::new();
        assert!(ACCESS_TYPE.get(&map).is_none() && !ACCESS_TYPE.is_present(&map));
        map.insert("x-stack-access-type", HeaderValue::from_static("client"));
        assert_eq!(
            ACCESS_TYPE.get(&map),
            Some(&HeaderValue::from_static("client"))
        );
        map.insert("x-hexclave-access-type", HeaderValue::from_static("server"));
        assert_eq!(
            ACCESS_TYPE.get(&map),
            Some(&HeaderValue::from_static("server"))
        );
    }

    #[test]
    fn insert_both_writes_both_names() {
        let mut map = HeaderMap::new();
        KNOWN_ERROR.insert_both(&mut map, HeaderValue::from_static("API_KEY_NOT_FOUND"));
        assert_eq!(
            map.get("x-stack-known-error").map(|v| v.as_bytes()),
            Some(&b"API_KEY_NOT_FOUND"[..])
        );
        assert_eq!(
            map.get("x-hexclave-known-error").map(|v| v.as_bytes()),
            Some(&b"API_KEY_NOT_FOUND"[..])
        );
    }

    #[test]
    fn every_twin_pairs_the_same_suffix() {
        for twin in CREDENTIALS.iter().chain([
            &ACCESS_TOKEN,
            &ACCESS_TYPE,
            &PROJECT_ID,
            &OVERRIDE_ERROR_STATUS,
            &ACTUAL_STATUS,
            &KNOWN_ERROR,
            &REQUEST_ID,
        ]) {
            let stack = twin.stack().as_str().strip_prefix("x-stack-");
            let hexclave = twin.hexclave().as_str().strip_prefix("x-hexclave-");
            assert!(stack.is_some() && stack == hexclave, "{twin:?}");
        }
    }
}
