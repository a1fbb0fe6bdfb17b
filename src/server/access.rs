//! The access check: server access for this project with this secret, then the feature switch,
//! in Stack Auth's order.
//!
//! Every header is read under both names, the `x-hexclave-*` value winning over the `x-stack-*`
//! one (as the backend copies each `x-hexclave-*` header onto its `x-stack-*` name). As in Stack
//! Auth, a header with an empty value counts as absent. Messages name the `x-stack-*` header,
//! in Stack Auth's wording.

use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::config::KeyServerConfig;
use super::errors::{ApiError, ApiResult};
use crate::key::KeyKind;
use crate::stack_protocol::headers::{
    HeaderTwin, ACCESS_TYPE, CREDENTIALS, PROJECT_ID, SECRET_SERVER_KEY,
};
use crate::stack_protocol::KnownErrorCode;

/// The value of `twin` (Hexclave's name first), unless absent or empty.
fn value<'a>(headers: &'a HeaderMap, twin: &HeaderTwin) -> Option<&'a [u8]> {
    twin.get(headers)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
}

/// Admits server access for the configured project with the configured secret, to a kind of
/// key that is enabled; refuses everything else with Stack Auth's error.
pub(super) fn admit(config: &KeyServerConfig, headers: &HeaderMap, kind: KeyKind) -> ApiResult<()> {
    let access = match value(headers, &ACCESS_TYPE) {
        // A project key without an access type is its own error in Stack Auth.
        None if CREDENTIALS
            .iter()
            .any(|twin| value(headers, twin).is_some()) =>
        {
            return Err(ApiError::known(
                KnownErrorCode::ProjectKeyWithoutAccessType,
                format!(
                    "Either an API key or an admin access token was provided, but the {} header is missing. Set it to 'client', 'server', or 'admin' as appropriate.",
                    ACCESS_TYPE.stack()
                ),
            ));
        }
        None => {
            return Err(ApiError::known(
                KnownErrorCode::AccessTypeRequired,
                format!(
                    "You must specify an access level for this Stack project. Set the {} header to 'client', 'server', or 'admin'.",
                    ACCESS_TYPE.stack()
                ),
            ));
        }
        Some(b"client") => "client",
        Some(b"server") => "server",
        Some(b"admin") => "admin",
        Some(_) => {
            return Err(ApiError::known(
                KnownErrorCode::InvalidAccessType,
                "Invalid access type. Must be one of 'client', 'server', or 'admin'.",
            ));
        }
    };
    let Some(project_id) = value(headers, &PROJECT_ID) else {
        return Err(ApiError::known(
            KnownErrorCode::AccessTypeWithoutProjectId,
            format!(
                "The {} header was given, but the {} header was not.",
                ACCESS_TYPE.stack(),
                PROJECT_ID.stack()
            ),
        ));
    };
    let project_id = String::from_utf8_lossy(project_id);
    if project_id != config.project_id {
        return Err(ApiError::detailed(
            KnownErrorCode::CurrentProjectNotFound,
            "The current project does not exist.",
            json!({ "project_id": project_id }),
        ));
    }
    if access != "server" {
        return Err(ApiError::detailed(
            KnownErrorCode::InsufficientAccessType,
            format!(
                "The {} header must be 'server', but was '{access}'.",
                ACCESS_TYPE.stack()
            ),
            json!({
                "actual_access_type": access,
                "allowed_access_types": ["server"],
            }),
        ));
    }
    let Some(secret) = value(headers, &SECRET_SERVER_KEY) else {
        return Err(ApiError::known(
            KnownErrorCode::ServerAuthenticationRequired,
            "The secret server key must be provided.",
        ));
    };
    if !config.secret_matches(secret) {
        return Err(ApiError::detailed(
            KnownErrorCode::InvalidSecretServerKey,
            "The secret server key is not valid for this project.",
            json!({ "project_id": project_id }),
        ));
    }
    let (enabled, name) = match kind {
        KeyKind::User => (config.user_keys, "User"),
        KeyKind::Team => (config.team_keys, "Team"),
    };
    if !enabled {
        return Err(ApiError::Plain(
            StatusCode::BAD_REQUEST,
            format!("{name} API keys are not enabled for this project."),
        ));
    }
    Ok(())
}
