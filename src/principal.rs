//! Who a request is from: [`AuthenticatedUser`], [`AuthenticatedTeam`] and [`Principal`].
//!
//! [`RequireApiKey`](crate::RequireApiKey) inserts the principal and the matching user or team
//! value into the request extensions. With the `axum` feature, each of the three is an extractor
//! (and `Option<…>` of each is one too).
//!
//! ```
//! use keygate::{AuthenticatedUser, Principal};
//!
//! fn owner(p: &Principal) -> &str {
//!     match p {
//!         Principal::User(user) => &user.user_id,
//!         Principal::Team(team) => &team.team_id,
//!     }
//! }
//! # let _ = owner;
//! ```

use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use crate::key::KeyKind;
use crate::verify::{KeyInfo, Owner};

/// A request authenticated with a user API key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthenticatedUser {
    /// The user who owns the key.
    pub user_id: Arc<str>,
    /// The key's id (never the key itself).
    pub key_id: Uuid,
    /// Whether the key is a public (`pk_`) key.
    pub is_public: bool,
    /// When the key expires, if it does.
    pub expires_at: Option<SystemTime>,
}

/// A request authenticated with a team API key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthenticatedTeam {
    /// The team that owns the key.
    pub team_id: Arc<str>,
    /// The key's id (never the key itself).
    pub key_id: Uuid,
    /// Whether the key is a public (`pk_`) key.
    pub is_public: bool,
    /// When the key expires, if it does.
    pub expires_at: Option<SystemTime>,
}

/// Either kind of authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A user key.
    User(AuthenticatedUser),
    /// A team key.
    Team(AuthenticatedTeam),
}

impl Principal {
    /// Builds the principal a valid key stands for.
    pub fn from_key_info(info: &KeyInfo) -> Self {
        match &info.owner {
            Owner::User(user_id) => Principal::User(AuthenticatedUser {
                user_id: user_id.clone(),
                key_id: info.key_id,
                is_public: info.is_public,
                expires_at: info.expires_at,
            }),
            Owner::Team(team_id) => Principal::Team(AuthenticatedTeam {
                team_id: team_id.clone(),
                key_id: info.key_id,
                is_public: info.is_public,
                expires_at: info.expires_at,
            }),
        }
    }

    /// User or team.
    pub fn kind(&self) -> KeyKind {
        match self {
            Principal::User(_) => KeyKind::User,
            Principal::Team(_) => KeyKind::Team,
        }
    }

    /// The key's id.
    pub fn key_id(&self) -> Uuid {
        match self {
            Principal::User(u) => u.key_id,
            Principal::Team(t) => t.key_id,
        }
    }

    /// Whether the key is a public (`pk_`) key.
    pub fn is_public(&self) -> bool {
        match self {
            Principal::User(u) => u.is_public,
            Principal::Team(t) => t.is_public,
        }
    }

    /// The owner's id: the user id or the team id.
    pub fn owner_id(&self) -> &str {
        match self {
            Principal::User(u) => &u.user_id,
            Principal::Team(t) => &t.team_id,
        }
    }

    pub(crate) fn set_public(&mut self, is_public: bool) {
        match self {
            Principal::User(u) => u.is_public = is_public,
            Principal::Team(t) => t.is_public = is_public,
        }
    }

    /// Puts the principal and its user or team value into `extensions`.
    pub(crate) fn insert_into(self, extensions: &mut http::Extensions) {
        match &self {
            Principal::User(u) => {
                extensions.insert(u.clone());
            }
            Principal::Team(t) => {
                extensions.insert(t.clone());
            }
        }
        extensions.insert(self);
    }
}
