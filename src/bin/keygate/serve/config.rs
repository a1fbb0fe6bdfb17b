//! The checks behind `keygate serve`'s flags: every mistake is one line and exit code 2,
//! found before anything runs.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use keygate::forward_auth::{Require, TrustedProxies};
use keygate::rate_limit::{PrincipalKey, Quota};
use keygate::server::KeyServerConfig;
use keygate::stack_auth::StackAuthConfig;
use keygate::KeyExtractor;

use super::ServeArgs;
use crate::duration::parse_duration;
use crate::store::parse_location;
use crate::Failure;

/// Where keys are checked.
pub(super) enum Backend {
    /// The database of `--database-url` (checked, not yet opened).
    Database,
    StackAuth(StackAuthConfig),
}

/// Everything checked before anything runs.
pub(super) struct Config {
    pub(super) listen: SocketAddr,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) backend: Backend,
    pub(super) poll_interval: Duration,
    pub(super) key_api: Option<KeyServerConfig>,
    pub(super) cache_ttl: Duration,
    pub(super) negative_cache_ttl: Duration,
    /// The forward-auth router's settings, minus the verifier.
    pub(super) policy: Policy,
}

pub(super) struct Policy {
    pub(super) require: Require,
    pub(super) allow_public_keys: bool,
    pub(super) allow_preflight: bool,
    pub(super) refusal_bodies: bool,
    pub(super) extractor: KeyExtractor,
    pub(super) trusted: TrustedProxies,
    pub(super) rate_limit: Option<(NonZeroU32, NonZeroU32, PrincipalKey)>,
    pub(super) refusal_limit: Option<Quota>,
    pub(super) limit_status: axum::http::StatusCode,
}

pub(super) fn config_error(message: String) -> Failure {
    Failure::Config(message)
}

fn address(flag: &str, text: &str) -> Result<SocketAddr, Failure> {
    text.trim().parse().map_err(|_| {
        config_error(format!(
            "{flag} {text:?} is not an address: write IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
        ))
    })
}

fn duration(flag: &str, text: &str) -> Result<Duration, Failure> {
    parse_duration(text).map_err(|e| config_error(format!("{flag}: {e}")))
}

fn positive(flag: &str, text: &str) -> Result<NonZeroU32, Failure> {
    text.trim()
        .parse()
        .map_err(|_| config_error(format!("{flag} {text:?} is not a whole number above 0")))
}

impl ServeArgs {
    /// Checks every flag; the first problem is a one-line [`Failure::Config`].
    pub(super) fn config(&self) -> Result<Config, Failure> {
        let listen = address("--listen", &self.listen)?;
        let admin_listen = match &self.admin_listen {
            Some(text) => Some(address("--admin-listen", text)?),
            None => None,
        };
        let backend =
            match (&self.stack_project_id, &self.stack_secret_server_key) {
                (Some(project), Some(secret))
                    if !project.trim().is_empty() && !secret.trim().is_empty() =>
                {
                    if self.secret_server_key.is_some() {
                        return Err(config_error(
                        "--secret-server-key serves the key API over the database, which Stack \
                         Auth mode does not use: drop it, or drop --stack-project-id"
                            .into(),
                    ));
                    }
                    Backend::StackAuth(
                        StackAuthConfig::new(project.trim(), secret.trim())
                            .base_url(self.stack_api_url.trim()),
                    )
                }
                (None, None) => {
                    parse_location(&self.database.database_url)?;
                    Backend::Database
                }
                (Some(_), _) => return Err(config_error(
                    "Stack Auth mode needs both --stack-project-id and --stack-secret-server-key \
                     (STACK_SECRET_SERVER_KEY); set the secret, or unset the project id"
                        .into(),
                )),
                (None, Some(_)) => return Err(config_error(
                    "--stack-secret-server-key is set but --stack-project-id (STACK_PROJECT_ID) \
                     is not: set both for Stack Auth mode, or neither"
                        .into(),
                )),
            };
        let key_api = match &self.secret_server_key {
            Some(secret) => Some(
                KeyServerConfig::new(self.project_id.clone(), secret.clone())
                    .map_err(|e| config_error(format!("--secret-server-key: {e}")))?,
            ),
            None => None,
        };
        let require: Require = self
            .require
            .parse()
            .map_err(|e| config_error(format!("--require: {e}")))?;
        let extractor = match &self.key_header {
            Some(name) => {
                let name =
                    axum::http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                        config_error(format!("--key-header {name:?} is not a header name"))
                    })?;
                KeyExtractor::new().bearer(false).header(name)
            }
            None => KeyExtractor::new(),
        };
        let trusted = TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| config_error(format!("--trusted-proxies: {e}")))?;
        let by = match self.rate_limit_by.trim() {
            "key" => PrincipalKey::per_key(),
            "owner" => PrincipalKey::per_owner(),
            other => {
                return Err(config_error(format!(
                    "--rate-limit-by {other:?}: expected key or owner"
                )))
            }
        };
        let rate_limit = match &self.rate_limit {
            Some(rate) => {
                let rate = positive("--rate-limit", rate)?;
                let burst = match &self.rate_limit_burst {
                    Some(burst) => positive("--rate-limit-burst", burst)?,
                    None => rate,
                };
                Some((rate, burst, by))
            }
            None if self.rate_limit_burst.is_some() => {
                return Err(config_error(
                    "--rate-limit-burst needs --rate-limit (requests per second per key)".into(),
                ))
            }
            None => None,
        };
        let refusal_limit = match &self.refusal_limit {
            Some(n) => Some(Quota::per_minute(positive("--refusal-limit", n)?)),
            None => None,
        };
        let limit_status = match self.limit_status.trim() {
            "429" => axum::http::StatusCode::TOO_MANY_REQUESTS,
            "403" => axum::http::StatusCode::FORBIDDEN,
            other => {
                return Err(config_error(format!(
                    "--limit-status {other:?}: expected 429 or 403"
                )))
            }
        };
        Ok(Config {
            listen,
            admin_listen,
            backend,
            poll_interval: duration("--revocation-poll-interval", &self.revocation_poll_interval)?,
            key_api,
            cache_ttl: duration("--cache-ttl", &self.cache_ttl)?,
            negative_cache_ttl: duration("--negative-cache-ttl", &self.negative_cache_ttl)?,
            policy: Policy {
                require,
                allow_public_keys: self.allow_public_keys,
                allow_preflight: self.allow_preflight,
                refusal_bodies: self.refusal_bodies,
                extractor,
                trusted,
                rate_limit,
                refusal_limit,
                limit_status,
            },
        })
    }
}
