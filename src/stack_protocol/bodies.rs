//! The JSON bodies of the `user-api-keys` and `team-api-keys` endpoints.
//!
//! Timestamps are milliseconds since the epoch. Optional timestamps are left out when unset (as
//! Stack Auth does) and accepted as absent or `null`. Unknown fields are ignored when reading.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::key::KeyKind;
use crate::store::KeyRecord;
use crate::verify::{KeyInfo, Owner};

/// `value`: the full key in a create response, `{"last_four": …}` everywhere else.
/// `Debug` never prints a full key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyValue {
    /// The full key (create response only).
    Full(String),
    /// The last four characters.
    LastFour {
        /// The last four characters of the key.
        last_four: String,
    },
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Full(key) => {
                let end = key.get(key.len().saturating_sub(4)..).unwrap_or_default();
                let start = key.get(..2).unwrap_or_default();
                write!(f, "Full({start}_…{end})")
            }
            KeyValue::LastFour { last_four } => write!(f, "LastFour({last_four})"),
        }
    }
}

/// An API key object: Stack Auth's Read (and, with a full `value`, FirstView) body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApiKeyObject {
    /// The key id (a UUID, dashed).
    pub id: Uuid,
    /// The description.
    #[serde(default)]
    pub description: String,
    /// Creation time, ms since the epoch.
    pub created_at_millis: i64,
    /// Expiry, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_millis: Option<i64>,
    /// Revocation time, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manually_revoked_at_millis: Option<i64>,
    /// A public (`pk_`) key.
    #[serde(default)]
    pub is_public: bool,
    /// The key's value: full (create only) or last four.
    pub value: KeyValue,
    /// `user` or `team`.
    #[serde(rename = "type")]
    pub kind: KeyKind,
    /// The owning user, for user keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The owning team, for team keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
}

impl ApiKeyObject {
    /// The body for `record`, with `value` set to its last four characters.
    pub fn from_record(record: &KeyRecord) -> Self {
        let (user_id, team_id) = match &record.owner {
            Owner::User(id) => (Some(id.to_string()), None),
            Owner::Team(id) => (None, Some(id.to_string())),
        };
        Self {
            id: record.id,
            description: record.description.clone(),
            created_at_millis: to_millis(record.created_at),
            expires_at_millis: record.expires_at.map(to_millis),
            manually_revoked_at_millis: record.revoked_at.map(to_millis),
            is_public: record.is_public,
            value: KeyValue::LastFour {
                last_four: record.last_four.clone(),
            },
            kind: record.kind(),
            user_id,
            team_id,
        }
    }

    /// The owner named by `user_id` / `team_id`, consistent with `type`.
    pub fn owner(&self) -> Option<Owner> {
        match (self.kind, &self.user_id, &self.team_id) {
            (KeyKind::User, Some(id), _) => Some(Owner::user(id)),
            (KeyKind::Team, _, Some(id)) => Some(Owner::team(id)),
            _ => None,
        }
    }

    /// The record this body describes; `None` if it names no owner of its `type`.
    pub fn to_record(&self) -> Option<KeyRecord> {
        let last_four = match &self.value {
            KeyValue::LastFour { last_four } => last_four.clone(),
            KeyValue::Full(key) => key
                .get(key.len().saturating_sub(4)..)
                .unwrap_or_default()
                .to_owned(),
        };
        Some(KeyRecord {
            id: self.id,
            owner: self.owner()?,
            description: self.description.clone(),
            created_at: from_millis(self.created_at_millis),
            expires_at: self.expires_at_millis.and_then(nonzero).map(from_millis),
            revoked_at: self.manually_revoked_at_millis.map(from_millis),
            is_public: self.is_public,
            last_four,
        })
    }

    /// What a verifier knows about the key, if it names an owner.
    pub fn to_key_info(&self) -> Option<KeyInfo> {
        Some(
            KeyInfo::new(self.id, self.owner()?, self.is_public)
                .with_expires_at(self.expires_at_millis.and_then(nonzero).map(from_millis))
                .with_description(&self.description),
        )
    }
}

/// Stack Auth treats an expiry of 0 as "never".
fn nonzero(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

/// The body of `GET …-api-keys?user_id=…` / `?team_id=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApiKeyList {
    /// The keys, newest first.
    pub items: Vec<ApiKeyObject>,
    /// Always `false`: the list is not paginated.
    #[serde(default)]
    pub is_paginated: bool,
}

impl ApiKeyList {
    /// A list body.
    pub fn new(items: Vec<ApiKeyObject>) -> Self {
        Self {
            items,
            is_paginated: false,
        }
    }
}

/// The body of `POST …-api-keys/check`.
#[derive(Serialize, Deserialize)]
pub struct CheckRequest {
    /// The full key.
    pub api_key: String,
}

impl std::fmt::Debug for CheckRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckRequest").finish_non_exhaustive()
    }
}

/// The body of a create request (`POST …-api-keys`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CreateRequest {
    /// The description (required).
    pub description: String,
    /// Expiry in ms since the epoch; must be present, `null` (or 0) for never.
    pub expires_at_millis: Option<i64>,
    /// A public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// The owning user (user keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The owning team (team keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
}

impl CreateRequest {
    /// A create body for a key owned by `owner`; `expires_at_millis` `None` means never.
    pub fn new(
        owner: &Owner,
        description: impl Into<String>,
        expires_at_millis: Option<i64>,
        is_public: bool,
    ) -> Self {
        let (user_id, team_id) = match owner {
            Owner::User(id) => (Some(id.to_string()), None),
            Owner::Team(id) => (None, Some(id.to_string())),
        };
        Self {
            description: description.into(),
            expires_at_millis,
            is_public: Some(is_public),
            user_id,
            team_id,
        }
    }
}

/// The body of an update request (`PATCH …-api-keys/{id}`): only these two fields are allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpdateRequest {
    /// A new description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Some(true)` revokes the key, for good. `false` is not accepted by Stack Auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
}

impl UpdateRequest {
    /// An update that sets the description.
    pub fn description(description: impl Into<String>) -> Self {
        Self {
            description: Some(description.into()),
            revoked: None,
        }
    }

    /// An update that revokes the key.
    pub fn revoke() -> Self {
        Self {
            description: None,
            revoked: Some(true),
        }
    }
}

/// Milliseconds since the epoch (negative before it, saturating).
pub fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The instant `ms` milliseconds after the epoch (before it when negative).
pub fn from_millis(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_timestamps_are_left_out_and_accepted_as_null() {
        let obj: ApiKeyObject = serde_json::from_str(
            r#"{"id":"3241a285-8329-4d69-8f3d-316e08cf140c","description":"d","created_at_millis":1,
                "expires_at_millis":null,"manually_revoked_at_millis":null,"is_public":true,
                "value":{"last_four":"6e6f"},"type":"team","team_id":"t"}"#,
        )
        .expect("parses");
        assert_eq!(obj.expires_at_millis, None);
        assert_eq!(obj.owner(), Some(Owner::team("t")));
        let text = serde_json::to_string(&obj).expect("serialises");
        assert!(!text.contains("expires_at_millis"), "{text}");
        assert!(!text.contains("user_id"), "{text}");
        assert!(text.contains(r#""type":"team""#), "{text}");
    }

    #[test]
    fn full_value_is_a_string() {
        let v: KeyValue = serde_json::from_str(r#""sk_abc""#).expect("parses");
        assert_eq!(v, KeyValue::Full("sk_abc".into()));
    }

    #[test]
    fn owner_must_match_type() {
        let obj: ApiKeyObject = serde_json::from_str(
            r#"{"id":"3241a285-8329-4d69-8f3d-316e08cf140c","created_at_millis":1,
                "value":{"last_four":"6e6f"},"type":"user","team_id":"t"}"#,
        )
        .expect("parses");
        assert_eq!(obj.owner(), None);
        assert!(obj.to_key_info().is_none());
    }

    #[test]
    fn millis_round_trip() {
        for ms in [0, 1, 1_745_000_000_000, -5] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
    }
}
