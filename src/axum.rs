//! axum extractors (feature `axum`, on by default).
//!
//! [`AuthenticatedUser`], [`AuthenticatedTeam`] and [`Principal`] implement `FromRequestParts`
//! and `OptionalFromRequestParts`, so a handler takes them, or `Option<…>` of them, directly.
//!
//! - On a route the layer does not guard, asking for one gets **401** `API_KEY_MISSING` in the
//!   same JSON style as the layer's refusals, never a 500.
//! - Asking for `AuthenticatedUser` on a request authenticated with a team key (or the reverse)
//!   gets **403** `INSUFFICIENT_SCOPE`.
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
use http::request::Parts;

use crate::key::KeyKind;
use crate::principal::{AuthenticatedTeam, AuthenticatedUser, Principal};
use crate::reject::Rejection;

/// The refusal when `wanted` is not in the extensions: 403 if another kind of principal is, 401
/// otherwise.
fn absent(parts: &Parts, wanted: KeyKind) -> Rejection {
    match parts.extensions.get::<Principal>() {
        Some(p) if p.kind() != wanted => Rejection::WrongKind { required: wanted },
        _ => Rejection::Missing,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthenticatedUser {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| absent(parts, KeyKind::User))
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
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| absent(parts, KeyKind::Team))
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
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(Rejection::Missing)
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
