//! Stack Auth's known errors: the codes keygate sends or understands, each with its status, and
//! the `{"code", "error", "details"?}` body that carries one (together with the
//! [`KNOWN_ERROR`](super::headers::KNOWN_ERROR) header, which must equal `code`).

use http::StatusCode;
use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $status:ident;)*) => {
        /// A known-error code that keygate sends or interprets. Codes it does not know are kept
        /// as text in [`KnownError::code`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum KnownErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl KnownErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [KnownErrorCode] = &[$(KnownErrorCode::$variant,)*];

            /// The code as sent on the wire, e.g. `API_KEY_REVOKED`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(KnownErrorCode::$variant => $code,)*
                }
            }

            /// The status Stack Auth answers this code with.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(KnownErrorCode::$variant => StatusCode::$status,)*
                }
            }

            /// The code named `code`, if keygate knows it.
            pub fn parse(code: &str) -> Option<Self> {
                match code {
                    $($code => Some(KnownErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// No key with this value (check) or id (read, update) in the project.
    ApiKeyNotFound = "API_KEY_NOT_FOUND", NOT_FOUND;
    /// A team key sent to the user check, or the reverse.
    WrongApiKeyType = "WRONG_API_KEY_TYPE", BAD_REQUEST;
    /// The key was revoked.
    ApiKeyRevoked = "API_KEY_REVOKED", UNAUTHORIZED;
    /// The key has expired.
    ApiKeyExpired = "API_KEY_EXPIRED", UNAUTHORIZED;
    /// The request does not match the route's schema (`details.message` says how).
    SchemaError = "SCHEMA_ERROR", BAD_REQUEST;
    /// The body could not be parsed (not JSON, or an unsupported content type).
    BodyParsingError = "BODY_PARSING_ERROR", BAD_REQUEST;
    /// No access type header was sent.
    AccessTypeRequired = "ACCESS_TYPE_REQUIRED", BAD_REQUEST;
    /// The access type is not `client`, `server` or `admin`.
    InvalidAccessType = "INVALID_ACCESS_TYPE", BAD_REQUEST;
    /// A project key or token was sent without an access type.
    ProjectKeyWithoutAccessType = "PROJECT_KEY_WITHOUT_ACCESS_TYPE", BAD_REQUEST;
    /// An access type was sent without a project id.
    AccessTypeWithoutProjectId = "ACCESS_TYPE_WITHOUT_PROJECT_ID", BAD_REQUEST;
    /// The project id names no project.
    CurrentProjectNotFound = "CURRENT_PROJECT_NOT_FOUND", BAD_REQUEST;
    /// The route needs a higher access type (the check needs `server`).
    InsufficientAccessType = "INSUFFICIENT_ACCESS_TYPE", UNAUTHORIZED;
    /// Server access without a secret server key.
    ServerAuthenticationRequired = "SERVER_AUTHENTICATION_REQUIRED", UNAUTHORIZED;
    /// The secret server key is wrong for the project.
    InvalidSecretServerKey = "INVALID_SECRET_SERVER_KEY", UNAUTHORIZED;
    /// Client access to a route that needs a user session.
    UserAuthenticationRequired = "USER_AUTHENTICATION_REQUIRED", UNAUTHORIZED;
    /// The branch id names no branch.
    BranchDoesNotExist = "BRANCH_DOES_NOT_EXIST", BAD_REQUEST;
}

impl KnownErrorCode {
    /// Whether the code says the key itself is not valid (the SDK's `API_KEY_NOT_VALID`
    /// family), as opposed to a problem with the caller's request or credentials.
    pub const fn is_invalid_key(self) -> bool {
        matches!(
            self,
            KnownErrorCode::ApiKeyNotFound
                | KnownErrorCode::WrongApiKeyType
                | KnownErrorCode::ApiKeyRevoked
                | KnownErrorCode::ApiKeyExpired
        )
    }
}

impl std::fmt::Display for KnownErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Stack Auth known error: `{"code", "error", "details"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KnownError {
    /// The error code, e.g. `API_KEY_REVOKED`.
    pub code: String,
    /// The human-readable message.
    pub error: String,
    /// Structured details, when the error has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl KnownError {
    /// A known error without details.
    pub fn new(code: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            error: error.into(),
            details: None,
        }
    }

    /// A known error with one of keygate's codes.
    pub fn of(code: KnownErrorCode, error: impl Into<String>) -> Self {
        Self::new(code.as_str(), error)
    }

    /// Adds details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The code, if keygate knows it.
    pub fn known_code(&self) -> Option<KnownErrorCode> {
        KnownErrorCode::parse(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_has_a_client_error_status() {
        for &code in KnownErrorCode::ALL {
            assert_eq!(KnownErrorCode::parse(code.as_str()), Some(code));
            assert!(code.status().is_client_error(), "{code}");
        }
        assert_eq!(KnownErrorCode::parse("SOMETHING_NEW"), None);
    }

    #[test]
    fn the_invalid_key_family_is_404_400_401_401() {
        let family: Vec<_> = KnownErrorCode::ALL
            .iter()
            .filter(|c| c.is_invalid_key())
            .map(|c| (c.as_str(), c.status().as_u16()))
            .collect();
        assert_eq!(
            family,
            [
                ("API_KEY_NOT_FOUND", 404),
                ("WRONG_API_KEY_TYPE", 400),
                ("API_KEY_REVOKED", 401),
                ("API_KEY_EXPIRED", 401)
            ]
        );
    }

    #[test]
    fn the_body_leaves_out_absent_details() {
        let body = serde_json::to_string(&KnownError::of(
            KnownErrorCode::ApiKeyRevoked,
            "API key has been revoked.",
        ))
        .expect("serialises");
        assert_eq!(
            body,
            r#"{"code":"API_KEY_REVOKED","error":"API key has been revoked."}"#
        );
    }
}
