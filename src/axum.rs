//! axum extractors (feature `axum`, on by default).
//!
//! [`AuthenticatedUser`], [`AuthenticatedTeam`] and [`Principal`] implement `FromRequestParts`
//! and `OptionalFromRequestParts`, so a handler takes them, or `Option<…>` of them, directly.
//!
//! - On a route the layer does not guard, asking for one gets **401** `API_KEY_MISSING` in the
//!   same JSON style as the layer's refusals, never a 500.
//! - Asking for `AuthenticatedUser` on a request authenticated with a team key (or the reverse)
//!   gets **403** `INSUFFICIENT_SCOPE`.
//! - Refusals are [`ExtractRejection`]s: the layer's realm, the default JSON body.
//! - `Option<…>` never rejects: `None` when there is no such principal (use it with
//!   [`RequireApiKey::optional`](crate::RequireApiKey::optional)).
//!
//! ```
//! use axum::{routing::get, Router};
//! use keygate::{AuthenticatedTeam, AuthenticatedUser, MemoryKeyStore, RequireApiKey};
//!
//! async fn hello(user: Option<AuthenticatedUser>) -> String {
//!     match user {
//!         Some(user) => format!("hello, {}", user.user_id),
//!         None => "hello, stranger".to_owned(),
//!     }
//! }
//!
//! async fn team(team: AuthenticatedTeam) -> String {
//!     team.team_id.to_string()
//! }
//!
//! let app: Router = Router::new()
//!     .route("/hello", get(hello))
//!     .route("/team", get(team))
//!     .layer(RequireApiKey::new(MemoryKeyStore::new()).optional());
//! ```

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::key::KeyKind;
use crate::layer::Challenge;
use crate::principal::{AuthenticatedTeam, AuthenticatedUser, Principal};
use crate::reject::{DefaultResponder, Rejection, RejectionResponder};

/// Why an extractor refused: the [`Rejection`], answered with the guarding layer's realm.
#[derive(Clone, Debug)]
pub struct ExtractRejection {
    rejection: Rejection,
    responder: DefaultResponder,
}

impl ExtractRejection {
    /// What was refused.
    pub fn rejection(&self) -> &Rejection {
        &self.rejection
    }

    /// The refusal, without its realm.
    pub fn into_rejection(self) -> Rejection {
        self.rejection
    }
}

impl std::fmt::Display for ExtractRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.rejection.fmt(f)
    }
}

impl std::error::Error for ExtractRejection {}

impl IntoResponse for ExtractRejection {
    fn into_response(self) -> Response {
        self.responder.respond(&self.rejection)
    }
}

/// The refusal when `wanted` is not in the extensions: 403 if another kind of principal is, 401
/// otherwise.
fn absent(parts: &Parts, wanted: Option<KeyKind>) -> ExtractRejection {
    let rejection = match (parts.extensions.get::<Principal>(), wanted) {
        (Some(p), Some(wanted)) if p.kind() != wanted => Rejection::WrongKind { required: wanted },
        _ => Rejection::Missing,
    };
    let responder = parts
        .extensions
        .get::<Challenge>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    ExtractRejection {
        rejection,
        responder,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthenticatedUser {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| absent(parts, Some(KeyKind::User)))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for AuthenticatedUser {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthenticatedTeam {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| absent(parts, Some(KeyKind::Team)))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for AuthenticatedTeam {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| absent(parts, None))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}
