//! The one table of what differs between user keys and team keys. Tests that hold for both run
//! over [`KINDS`].

use keygate::key::{ApiKey, KeyKind};
use keygate::Owner;
use serde_json::{json, Value};
use uuid::Uuid;

use super::keys::generated;

#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub kind: KeyKind,
    /// `type` on the wire, and the key's type segment.
    pub name: &'static str,
    /// `user_id` or `team_id`.
    pub owner_field: &'static str,
    /// Stack Auth's collection route (`…/check` is the check route).
    pub base: &'static str,
    /// Stack Auth's plain-text 400 when this kind is disabled.
    pub disabled: &'static str,
    /// The route of [`app::routes`](super::app::routes) whose extractor takes this kind.
    pub route: &'static str,
}

pub const USER: Kind = Kind {
    kind: KeyKind::User,
    name: "user",
    owner_field: "user_id",
    base: "/api/v1/user-api-keys",
    disabled: "User API keys are not enabled for this project.",
    route: "/me",
};

pub const TEAM: Kind = Kind {
    kind: KeyKind::Team,
    name: "team",
    owner_field: "team_id",
    base: "/api/v1/team-api-keys",
    disabled: "Team API keys are not enabled for this project.",
    route: "/team",
};

pub const KINDS: [Kind; 2] = [USER, TEAM];

impl Kind {
    /// The row of a key kind.
    pub fn of(kind: KeyKind) -> Kind {
        match kind {
            KeyKind::User => USER,
            _ => TEAM,
        }
    }

    pub fn other(self) -> Kind {
        match self.kind {
            KeyKind::User => TEAM,
            _ => USER,
        }
    }

    pub fn other_field(self) -> &'static str {
        self.other().owner_field
    }

    pub fn owner(self, id: &str) -> Owner {
        match self.kind {
            KeyKind::User => Owner::user(id),
            _ => Owner::team(id),
        }
    }

    /// A fresh owner (Stack Auth's ids are UUIDs, and the key server insists on them).
    pub fn new_owner(self) -> Owner {
        self.owner(&Uuid::new_v4().to_string())
    }

    /// A well-formed secret key of this kind that no server ever issued.
    pub fn unknown_key(self) -> ApiKey {
        generated(self.kind, false)
    }

    /// `GET` list URI.
    pub fn list(self, owner: &str) -> String {
        format!("{}?{}={owner}", self.base, self.owner_field)
    }

    /// `GET` / `PATCH` item URI, with the owner query Stack's SDK always sends.
    pub fn item(self, id: &str, owner: &str) -> String {
        format!("{}/{id}?{}={owner}", self.base, self.owner_field)
    }

    /// The check route.
    pub fn check(self) -> String {
        format!("{}/check", self.base)
    }

    /// A create body: the owner, a description and `expires_at_millis`, plus `extra` fields.
    pub fn create_body(
        self,
        owner: &str,
        description: &str,
        expires: Value,
        extra: Value,
    ) -> Value {
        let mut body = json!({
            self.owner_field: owner,
            "description": description,
            "expires_at_millis": expires,
        });
        if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
            map.extend(extra);
        }
        body
    }

    /// Stack Auth's Read body for `key` (of this kind), owned by `owner`, as `…/check` answers
    /// a valid key.
    pub fn key_object(self, key: &ApiKey, owner: &str) -> Value {
        json!({
            "id": key.key_id().to_string(),
            "description": "scripted",
            "created_at_millis": 1_745_000_000_000_i64,
            "is_public": false,
            "value": { "last_four": key.last_four() },
            "type": self.name,
            self.owner_field: owner,
        })
    }
}
