//! [`StackAuthClient`]: create, list, get, update and revoke user and team keys.

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method};
use uuid::Uuid;

use super::classify::{actual_status, known_error_header_mismatch};
use super::{default_client, ConfigError, StackAuthConfig};
use crate::key::{ApiKey, KeyKind};
use crate::stack_protocol::{
    to_millis, ApiKeyList, ApiKeyObject, CreateRequest, KeyValue, KnownError, UpdateRequest,
};
use crate::store::{CreatedKey, KeyRecord, NewKey};
use crate::verify::{Owner, RevocationListener, RevocationListeners};

/// Default time an admin call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Stack Auth's (now Hexclave's) key-management API, with server access. Cheap to clone.
///
/// Paths, queries and bodies are exactly Stack Auth's: `POST /api/v1/user-api-keys` (200, the
/// only response with the full key), `GET …?user_id=`, `GET`/`PATCH …/{id}` (team routes always
/// carry `?team_id=`), and revocation as `PATCH {"revoked": true}`. An error answered as 200
/// with an actual-status header is an error; a known error whose known-error header names
/// another code than its body is [`StackAuthError::InvalidResponse`]. Both headers are read
/// under their `x-hexclave-*` name first, then `x-stack-*`.
#[derive(Clone)]
pub struct StackAuthClient {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    config: StackAuthConfig,
    client: reqwest::Client,
    headers: HeaderMap,
    listeners: Arc<RevocationListeners>,
    timeout: Duration,
}

/// An admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackAuthError {
    /// Stack Auth answered with an error: a known error carries its `code`.
    #[error("Stack Auth answered {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The known error's code (`API_KEY_NOT_FOUND`, `SCHEMA_ERROR`, …), if it was one.
        code: Option<String>,
        /// The message (the known error's `error`, or the plain-text body).
        message: String,
        /// The known error's details.
        details: Option<serde_json::Value>,
    },
    /// Stack Auth could not be reached, or did not answer in time; the source says why.
    #[error("Stack Auth request failed")]
    Transport(#[source] reqwest::Error),
    /// Stack Auth answered something this client cannot read.
    #[error("Stack Auth's answer makes no sense: {message}")]
    InvalidResponse {
        /// What is wrong with the answer.
        message: String,
        /// The parse error behind it, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StackAuthError {
    /// The known error's code, if Stack Auth sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            StackAuthError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status, if Stack Auth answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StackAuthError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        StackAuthError::InvalidResponse {
            message: message.into(),
            source: None,
        }
    }

    fn invalid_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StackAuthError::InvalidResponse {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl StackAuthClient {
    /// A client with its own connection pool.
    pub fn new(config: StackAuthConfig) -> Result<Self, ConfigError> {
        Self::with_client(config, default_client()?)
    }

    /// A client on an existing `reqwest::Client`.
    pub fn with_client(
        config: StackAuthConfig,
        client: reqwest::Client,
    ) -> Result<Self, ConfigError> {
        let headers = config.headers()?;
        Ok(Self::from_parts(
            config,
            client,
            headers,
            Arc::new(RevocationListeners::default()),
        ))
    }

    pub(crate) fn from_parts(
        config: StackAuthConfig,
        client: reqwest::Client,
        headers: HeaderMap,
        listeners: Arc<RevocationListeners>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                client,
                headers,
                listeners,
                timeout: DEFAULT_TIMEOUT,
            }),
        }
    }

    /// The time each call may take, from sending the request to the end of the answer's body
    /// (default 10 s). `Duration::MAX` means no limit. Clones made before keep theirs.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).timeout = timeout;
        self
    }

    /// Tells `listener` of every key this client revokes (see
    /// [`CachedVerifier::revocation_listener`](crate::CachedVerifier::revocation_listener)).
    pub fn subscribe_revocations(&self, listener: RevocationListener) {
        self.inner.listeners.add(listener);
    }

    /// Creates a key for `owner`. The result holds the full key: Stack Auth never shows it again.
    pub async fn create(&self, owner: &Owner, new: &NewKey) -> Result<CreatedKey, StackAuthError> {
        let body = CreateRequest::new(
            owner,
            new.description.as_str(),
            new.expires_at.map(to_millis),
            new.is_public,
        );
        let object: ApiKeyObject = self
            .call(
                Method::POST,
                collection(owner.kind()),
                &[],
                Some(json_body(&body)?),
            )
            .await?;
        let KeyValue::Full(value) = &object.value else {
            return Err(StackAuthError::invalid(
                "the create response has no full key",
            ));
        };
        let key = ApiKey::parse(value)
            .map_err(|e| StackAuthError::invalid_because("the new key is malformed", e))?;
        let record = object
            .to_record()
            .ok_or_else(|| StackAuthError::invalid("the new key names no owner"))?;
        Ok(CreatedKey { key, record })
    }

    /// The owner's keys, newest first.
    pub async fn list(&self, owner: &Owner) -> Result<Vec<KeyRecord>, StackAuthError> {
        let list: ApiKeyList = self
            .call(
                Method::GET,
                collection(owner.kind()),
                &owner_query(owner),
                None,
            )
            .await?;
        list.items.iter().map(to_record).collect()
    }

    /// One key.
    pub async fn get(&self, owner: &Owner, key_id: Uuid) -> Result<KeyRecord, StackAuthError> {
        let object: ApiKeyObject = self
            .call(
                Method::GET,
                &item(owner.kind(), key_id),
                &owner_query(owner),
                None,
            )
            .await?;
        to_record(&object)
    }

    /// Replaces a key's description.
    pub async fn update_description(
        &self,
        owner: &Owner,
        key_id: Uuid,
        description: &str,
    ) -> Result<KeyRecord, StackAuthError> {
        self.patch(owner, key_id, &UpdateRequest::description(description))
            .await
    }

    /// Revokes a key, for good, and drops it from every subscribed cache at once.
    pub async fn revoke(&self, owner: &Owner, key_id: Uuid) -> Result<KeyRecord, StackAuthError> {
        let record = self.patch(owner, key_id, &UpdateRequest::revoke()).await?;
        self.inner.listeners.notify(key_id);
        Ok(record)
    }

    /// `PATCH …-api-keys/{id}?user_id=…|team_id=…` with `body`.
    async fn patch(
        &self,
        owner: &Owner,
        key_id: Uuid,
        body: &UpdateRequest,
    ) -> Result<KeyRecord, StackAuthError> {
        let object: ApiKeyObject = self
            .call(
                Method::PATCH,
                &item(owner.kind(), key_id),
                &owner_query(owner),
                Some(json_body(body)?),
            )
            .await?;
        to_record(&object)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<T, StackAuthError> {
        let mut request = self
            .inner
            .client
            .request(method, self.inner.config.url(path))
            .headers(self.inner.headers.clone())
            .timeout(self.inner.timeout)
            .query(query);
        if let Some(bytes) = body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(bytes);
        }
        let mut response = request.send().await.map_err(StackAuthError::Transport)?;
        // A proxy may have turned an error into a 200 the way Stack's SDK asks it to.
        let status = actual_status(response.status(), response.headers());
        let headers = std::mem::take(response.headers_mut());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(StackAuthError::Transport)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(StackAuthError::invalid("answer too large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                StackAuthError::invalid_because(format!("the {status} body cannot be read"), e)
            });
        }
        Err(match serde_json::from_slice::<KnownError>(&bytes) {
            Ok(known) => {
                if let Some(message) = known_error_header_mismatch(&headers, &known) {
                    return Err(StackAuthError::invalid(message));
                }
                StackAuthError::Api {
                    status: status.as_u16(),
                    code: Some(known.code),
                    message: known.error,
                    details: known.details,
                }
            }
            Err(_) => StackAuthError::Api {
                status: status.as_u16(),
                code: None,
                message: String::from_utf8_lossy(&bytes).trim().to_owned(),
                details: None,
            },
        })
    }
}

/// A request body as JSON.
fn json_body(body: &impl serde::Serialize) -> Result<Vec<u8>, StackAuthError> {
    serde_json::to_vec(body)
        .map_err(|e| StackAuthError::invalid_because("the request body cannot be serialised", e))
}

impl std::fmt::Debug for StackAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackAuthClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn collection(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::User => "user-api-keys",
        KeyKind::Team => "team-api-keys",
    }
}

fn item(kind: KeyKind, key_id: Uuid) -> String {
    format!("{}/{key_id}", collection(kind))
}

fn owner_query(owner: &Owner) -> Vec<(&'static str, String)> {
    match owner {
        Owner::User(id) => vec![("user_id", id.to_string())],
        Owner::Team(id) => vec![("team_id", id.to_string())],
    }
}

fn to_record(object: &ApiKeyObject) -> Result<KeyRecord, StackAuthError> {
    object
        .to_record()
        .ok_or_else(|| StackAuthError::invalid("a key object names no owner"))
}
