//! Shared pieces of the fuzz targets: an independent model of the key format, and structured
//! inputs (JSON bodies, header values) that reach past the first check of each parser.

use arbitrary::Arbitrary;
use keygate::key::{ApiKey, Deployment, KeyKind, KEY_LEN, MARKER};
use uuid::Uuid;

/// Crockford base32, lowercase: the secret's alphabet.
pub const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// What the model reads from a well-formed key.
#[derive(Debug, PartialEq, Eq)]
pub struct Model {
    /// `pk_`.
    pub is_public: bool,
    /// The 45-character secret.
    pub secret: String,
    /// The key id.
    pub key_id: Uuid,
    /// User or team.
    pub kind: KeyKind,
    /// Scanner flag, 0-3.
    pub flag: u8,
}

/// The key format, written from its description (not from `keygate::key::format`): `Some` iff
/// `s` is a well-formed key.
pub fn model(s: &str) -> Option<Model> {
    let b = s.as_bytes();
    if b.len() != KEY_LEN {
        return None;
    }
    let is_public = match &b[..3] {
        b"sk_" => false,
        b"pk_" => true,
        _ => return None,
    };
    if !b[3..48].iter().all(|c| CROCKFORD.contains(c)) {
        return None;
    }
    if !b[48..80].iter().all(|c| HEX.contains(c)) {
        return None;
    }
    let key_id = Uuid::parse_str(&s[48..80]).ok()?;
    let kind = match &b[80..84] {
        b"user" => KeyKind::User,
        b"team" => KeyKind::Team,
        _ => return None,
    };
    let flag = match b[84] {
        c @ b'0'..=b'3' => c - b'0',
        _ => return None,
    };
    if (flag >= 2) != is_public || &s[85..94] != MARKER {
        return None;
    }
    if !b[94..].iter().all(|c| HEX.contains(c)) {
        return None;
    }
    let crc = u32::from_str_radix(&s[94..], 16).ok()?;
    if crc != crc32fast::hash(&b[..94]) {
        return None;
    }
    Some(Model {
        is_public,
        secret: s[3..48].to_owned(),
        key_id,
        kind,
        flag,
    })
}

/// Writes a key from its parts by the generation rules, with its CRC.
pub fn serialise(is_public: bool, secret: &str, key_id: Uuid, kind: KeyKind, flag: u8) -> String {
    let mut key = format!(
        "{}_{secret}{}{}{}{MARKER}",
        if is_public { "pk" } else { "sk" },
        key_id.simple(),
        kind.as_str(),
        flag
    );
    let crc = crc32fast::hash(key.as_bytes());
    key.push_str(&format!("{crc:08x}"));
    key
}

/// A key-shaped string built from fuzz bytes: each part mostly in its alphabet, sometimes not,
/// and the CRC right unless `bad_crc`. Reaches every rule of the parser, which random bytes
/// (a 1-in-2^32 checksum) never would.
#[derive(Arbitrary, Debug)]
pub struct Shaped {
    public: bool,
    secret: [u8; 45],
    id: [u8; 32],
    kind: u8,
    flag: u8,
    marker_typo: Option<(u8, u8)>,
    bad_crc: Option<u32>,
}

impl Shaped {
    /// The key string.
    pub fn build(&self) -> String {
        // A byte above 0xf0 (about 1 in 17) stands for itself, masked to ASCII.
        let pick = |b: u8, alphabet: &[u8]| {
            char::from(if b > 0xf0 {
                b & 0x7f
            } else {
                alphabet[usize::from(b) % alphabet.len()]
            })
        };
        let mut s = String::with_capacity(KEY_LEN);
        s.push_str(if self.public { "pk_" } else { "sk_" });
        s.extend(self.secret.iter().map(|&b| pick(b, CROCKFORD)));
        s.extend(self.id.iter().map(|&b| pick(b, HEX)));
        s.push_str(["user", "team", "usr_", "Team"][usize::from(self.kind % 4)]);
        s.push(char::from(b'0' + self.flag % 5));
        let mut marker = MARKER.as_bytes().to_vec();
        if let Some((at, c)) = self.marker_typo {
            let at = usize::from(at) % marker.len();
            marker[at] = c & 0x7f;
        }
        s.push_str(&String::from_utf8_lossy(&marker));
        let crc = crc32fast::hash(s.as_bytes()) ^ self.bad_crc.unwrap_or(0);
        s.push_str(&format!("{crc:08x}"));
        s
    }
}

/// One key of each sort, minted once (the OS RNG is too slow to call per input).
pub fn keys() -> &'static [ApiKey; 4] {
    static KEYS: std::sync::OnceLock<[ApiKey; 4]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mint = |kind, public| {
            ApiKey::generate(
                Uuid::from_u128(0x1234),
                kind,
                public,
                Deployment::SelfHosted,
            )
            .expect("OS RNG")
        };
        [
            mint(KeyKind::User, false),
            mint(KeyKind::Team, false),
            mint(KeyKind::User, true),
            mint(KeyKind::Team, true),
        ]
    })
}

/// A JSON value from a small grammar: the field names and values the protocol's bodies use,
/// plus arbitrary ones.
#[derive(Arbitrary, Debug)]
pub enum JsonValue {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// One of the strings the protocol uses.
    Known(u8),
    /// Any string.
    Str(String),
    /// An array.
    Array(Vec<JsonValue>),
    /// An object.
    Object(Vec<(FieldName, JsonValue)>),
}

/// A field name: mostly the protocol's.
#[derive(Arbitrary, Debug)]
pub enum FieldName {
    /// One of [`FIELDS`].
    Known(u8),
    /// Any name.
    Other(String),
}

/// The fields of the protocol's bodies.
pub const FIELDS: &[&str] = &[
    "is_valid",
    "id",
    "user_id",
    "team_id",
    "is_public",
    "expires_at_millis",
    "manually_revoked_at_millis",
    "created_at_millis",
    "type",
    "value",
    "last_four",
    "description",
    "code",
    "error",
    "details",
    "api_key",
    "revoked",
];

/// Strings the protocol uses (codes, kinds, ids, keys).
pub fn known_strings() -> Vec<String> {
    let mut strings: Vec<String> = [
        "user",
        "team",
        "API_KEY_NOT_FOUND",
        "WRONG_API_KEY_TYPE",
        "API_KEY_REVOKED",
        "API_KEY_EXPIRED",
        "INVALID_PROJECT_AUTHENTICATION",
        "INSUFFICIENT_ACCESS_TYPE",
        "SCHEMA_ERROR",
        "00000000-0000-0000-0000-000000001234",
        "user-1",
        "team-1",
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    strings.extend(keys().iter().map(|k| k.expose_secret().to_owned()));
    strings
}

impl JsonValue {
    /// As `serde_json`.
    pub fn to_json(&self, known: &[String]) -> serde_json::Value {
        use serde_json::Value;
        match self {
            JsonValue::Null => Value::Null,
            JsonValue::Bool(b) => Value::Bool(*b),
            JsonValue::Int(i) => Value::from(*i),
            JsonValue::Float(f) => Value::from(*f),
            JsonValue::Known(i) => Value::from(known[usize::from(*i) % known.len()].clone()),
            JsonValue::Str(s) => Value::from(s.clone()),
            JsonValue::Array(items) => {
                Value::Array(items.iter().map(|v| v.to_json(known)).collect())
            }
            JsonValue::Object(fields) => object_json(fields, known),
        }
    }
}

/// A request or response body: raw bytes, or JSON from the grammar.
#[derive(Arbitrary, Debug)]
pub enum Body {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A JSON object of the protocol's fields.
    Object(Vec<(FieldName, JsonValue)>),
}

impl Body {
    /// The bytes.
    pub fn bytes(&self, known: &[String]) -> Vec<u8> {
        match self {
            Body::Raw(bytes) => bytes.clone(),
            Body::Object(fields) => {
                serde_json::to_vec(&object_json(fields, known)).unwrap_or_default()
            }
        }
    }
}

fn object_json(fields: &[(FieldName, JsonValue)], known: &[String]) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .iter()
            .map(|(name, v)| {
                let name = match name {
                    FieldName::Known(i) => FIELDS[usize::from(*i) % FIELDS.len()].to_owned(),
                    FieldName::Other(s) => s.clone(),
                };
                (name, v.to_json(known))
            })
            .collect(),
    )
}
