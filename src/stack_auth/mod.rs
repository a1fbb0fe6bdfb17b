//! Stack Auth (feature `stack-auth`): [`StackAuthVerifier`] checks keys through
//! `POST /api/v1/{user,team}-api-keys/check`; [`StackAuthClient`] manages keys.
//!
//! Both use one injected (or one built) `reqwest::Client`, never one per request, and send the
//! server headers `x-stack-access-type: server`, `x-stack-project-id` and
//! `x-stack-secret-server-key`. They never send `x-stack-override-error-status`, but honour
//! `x-stack-actual-status` if a proxy adds it.
//!
//! ```no_run
//! use keygate::stack_auth::{StackAuthConfig, StackAuthVerifier};
//! use keygate::{CachedVerifier, RequireApiKey};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // STACK_API_URL (optional), STACK_PROJECT_ID, STACK_SECRET_SERVER_KEY
//! let verifier = StackAuthVerifier::builder(StackAuthConfig::from_env()?).build()?;
//! let client = verifier.admin_client(); // revoking through it empties the cache below
//! let layer = RequireApiKey::new(CachedVerifier::new(verifier)).users_only();
//! # let _ = (layer, client);
//! # Ok(())
//! # }
//! ```

mod breaker;
mod client;
mod verifier;

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

pub use client::{StackAuthClient, StackAuthError};
pub use verifier::{StackAuthVerifier, StackAuthVerifierBuilder};

/// The public Stack Auth API.
pub const DEFAULT_BASE_URL: &str = "https://api.stack-auth.com";

/// Where Stack Auth is and how to authenticate to it as a server.
#[derive(Clone)]
pub struct StackAuthConfig {
    base_url: String,
    project_id: String,
    secret_server_key: SecretString,
}

/// The configuration is incomplete or unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// A value cannot be sent in a header or used as a URL.
    #[error("{0} is not valid: {1}")]
    Invalid(&'static str, String),
    /// The HTTP client could not be built.
    #[error("HTTP client could not be built: {0}")]
    Client(String),
}

impl StackAuthConfig {
    /// Configuration for the public API (`https://api.stack-auth.com`).
    pub fn new(project_id: impl Into<String>, secret_server_key: impl Into<String>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            project_id: project_id.into(),
            secret_server_key: SecretString::from(secret_server_key.into()),
        }
    }

    /// Reads `STACK_PROJECT_ID`, `STACK_SECRET_SERVER_KEY` and, if set, `STACK_API_URL`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::MissingEnv(name))
        };
        let mut config = Self::new(var("STACK_PROJECT_ID")?, var("STACK_SECRET_SERVER_KEY")?);
        if let Ok(url) = var("STACK_API_URL") {
            config = config.base_url(url);
        }
        Ok(config)
    }

    /// Points at another Stack Auth (self-hosted, or a keygate key server).
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into().trim_end_matches('/').to_owned();
        self
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base_url
    }

    /// The project id.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// `{base}/api/v1/{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base_url)
    }

    /// The server headers, built once.
    pub(crate) fn headers(&self) -> Result<HeaderMap, ConfigError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(ConfigError::Invalid(
                "STACK_API_URL",
                "must start with http:// or https://".into(),
            ));
        }
        let value = |name: &'static str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| ConfigError::Invalid(name, "not a header value".into()))
        };
        let mut secret = value(
            "STACK_SECRET_SERVER_KEY",
            self.secret_server_key.expose_secret(),
        )?;
        secret.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-stack-access-type"),
            HeaderValue::from_static("server"),
        );
        headers.insert(
            HeaderName::from_static("x-stack-project-id"),
            value("STACK_PROJECT_ID", &self.project_id)?,
        );
        headers.insert(HeaderName::from_static("x-stack-secret-server-key"), secret);
        Ok(headers)
    }
}

impl fmt::Debug for StackAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackAuthConfig")
            .field("base_url", &self.base_url)
            .field("project_id", &self.project_id)
            .field("secret_server_key", &"[redacted]")
            .finish()
    }
}

/// The default HTTP client: rustls, no proxy from the environment (the server key must not
/// reach a proxy nobody chose for it; inject a client to use one), modest pool.
pub(crate) fn default_client() -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .no_proxy()
        // A redirect would resend the key and the server key to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| ConfigError::Client(e.to_string()))
}
