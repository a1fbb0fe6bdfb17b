//! Stack Auth (now Hexclave), feature `stack-auth`: [`StackAuthVerifier`] checks keys through
//! `POST /api/v1/{user,team}-api-keys/check`; [`StackAuthClient`] manages keys.
//!
//! Both use one injected (or one built) `reqwest::Client`, never one per request, and send the
//! server headers `x-stack-access-type: server`, `x-stack-project-id` and
//! `x-stack-secret-server-key`: the `x-stack-*` names are the ones every backend understands
//! (an older self-hosted one knows no others; a current one also accepts the `x-hexclave-*`
//! twins, and treats both alike). They never send `x-stack-override-error-status`, but honour
//! the actual-status header if a proxy adds it. Response headers (`actual-status`,
//! `known-error`) are read under their `x-hexclave-*` name first, then their `x-stack-*` one.
//! The protocol itself is written down in `docs/stack-auth-protocol.md` in the repository.
//!
//! ```no_run
//! use keygate::stack_auth::{StackAuthConfig, StackAuthVerifier};
//! use keygate::{CachedVerifier, RequireApiKey};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // HEXCLAVE_PROJECT_ID or STACK_PROJECT_ID, HEXCLAVE_SECRET_SERVER_KEY or
//! // STACK_SECRET_SERVER_KEY, and optionally HEXCLAVE_API_URL or STACK_API_URL
//! let verifier = StackAuthVerifier::builder(StackAuthConfig::from_env()?).build()?;
//! let client = verifier.admin_client(); // revoking through it empties the cache below
//! let layer = RequireApiKey::new(CachedVerifier::new(verifier)).users_only();
//! # let _ = (layer, client);
//! # Ok(())
//! # }
//! ```

mod breaker;
mod builder;
pub(crate) mod classify;
mod client;
mod verifier;

use std::ffi::OsString;
use std::fmt;

use http::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

pub use builder::StackAuthVerifierBuilder;
pub use client::{StackAuthClient, StackAuthError};
pub use verifier::StackAuthVerifier;

use crate::stack_protocol::headers::{ACCESS_TYPE, PROJECT_ID, SECRET_SERVER_KEY};

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
    /// A required environment variable is not set (or is empty). Names both variables that
    /// were looked for, e.g. `HEXCLAVE_PROJECT_ID or STACK_PROJECT_ID`.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// A value cannot be sent in a header or used as a URL, or an environment variable is not
    /// Unicode.
    #[error("{0} is not valid: {1}")]
    Invalid(&'static str, String),
    /// The HTTP client could not be built; the source says why.
    #[error("HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// One setting read from the environment: the Hexclave name wins over the Stack Auth one.
struct EnvVar {
    hexclave: &'static str,
    stack: &'static str,
    /// Both names, for [`ConfigError::MissingEnv`].
    either: &'static str,
}

const ENV_PROJECT_ID: EnvVar = EnvVar {
    hexclave: "HEXCLAVE_PROJECT_ID",
    stack: "STACK_PROJECT_ID",
    either: "HEXCLAVE_PROJECT_ID or STACK_PROJECT_ID",
};
const ENV_SECRET_SERVER_KEY: EnvVar = EnvVar {
    hexclave: "HEXCLAVE_SECRET_SERVER_KEY",
    stack: "STACK_SECRET_SERVER_KEY",
    either: "HEXCLAVE_SECRET_SERVER_KEY or STACK_SECRET_SERVER_KEY",
};
const ENV_API_URL: EnvVar = EnvVar {
    hexclave: "HEXCLAVE_API_URL",
    stack: "STACK_API_URL",
    either: "HEXCLAVE_API_URL or STACK_API_URL",
};

impl EnvVar {
    /// The first of the Hexclave and Stack Auth names that is set and not blank.
    fn read(
        &self,
        lookup: &impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<String>, ConfigError> {
        for name in [self.hexclave, self.stack] {
            let Some(value) = lookup(name) else {
                continue;
            };
            let value = value
                .into_string()
                .map_err(|_| ConfigError::Invalid(name, "not valid Unicode".into()))?;
            if !value.trim().is_empty() {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    fn require(&self, lookup: &impl Fn(&str) -> Option<OsString>) -> Result<String, ConfigError> {
        self.read(lookup)?
            .ok_or(ConfigError::MissingEnv(self.either))
    }
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

    /// Reads the project id, the secret server key and, if set, the API URL from the
    /// environment, under Hexclave's names or Stack Auth's:
    ///
    /// | setting | Hexclave (wins) | Stack Auth |
    /// | --- | --- | --- |
    /// | project id (required) | `HEXCLAVE_PROJECT_ID` | `STACK_PROJECT_ID` |
    /// | secret server key (required) | `HEXCLAVE_SECRET_SERVER_KEY` | `STACK_SECRET_SERVER_KEY` |
    /// | base URL (default [`DEFAULT_BASE_URL`]) | `HEXCLAVE_API_URL` | `STACK_API_URL` |
    ///
    /// Each setting is read on its own: when both of its names are set, the `HEXCLAVE_*` one
    /// wins, as the `x-hexclave-*` headers win over the `x-stack-*` ones. A blank variable
    /// counts as unset; one that is not Unicode is an error.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let mut config = Self::new(
            ENV_PROJECT_ID.require(&lookup)?,
            ENV_SECRET_SERVER_KEY.require(&lookup)?,
        );
        if let Some(url) = ENV_API_URL.read(&lookup)? {
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
                "the API URL",
                "must start with http:// or https://".into(),
            ));
        }
        let value = |name: &'static str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| ConfigError::Invalid(name, "not a header value".into()))
        };
        let mut secret = value(
            "the secret server key",
            self.secret_server_key.expose_secret(),
        )?;
        secret.set_sensitive(true);
        // Only the `x-stack-*` names: see the module docs.
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCESS_TYPE.stack().clone(),
            HeaderValue::from_static("server"),
        );
        headers.insert(
            PROJECT_ID.stack().clone(),
            value("the project id", &self.project_id)?,
        );
        headers.insert(SECRET_SERVER_KEY.stack().clone(), secret);
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
        .map_err(ConfigError::Client)
}

/// `error` and its sources, joined with `: ` (for messages that cannot carry a source).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ALL: [&str; 6] = [
        "HEXCLAVE_PROJECT_ID",
        "HEXCLAVE_SECRET_SERVER_KEY",
        "HEXCLAVE_API_URL",
        "STACK_PROJECT_ID",
        "STACK_SECRET_SERVER_KEY",
        "STACK_API_URL",
    ];

    fn from(vars: &[(&str, &str)]) -> Result<StackAuthConfig, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        StackAuthConfig::from_lookup(|name| map.get(name).cloned())
    }

    /// (project id, secret server key, base URL).
    fn parts(config: &StackAuthConfig) -> (&str, &str, &str) {
        (
            config.project_id(),
            config.secret_server_key.expose_secret(),
            config.base(),
        )
    }

    #[test]
    fn hexclave_names_win_each_setting_on_its_own() {
        let both = from(&[
            ("HEXCLAVE_PROJECT_ID", "hex-project"),
            ("HEXCLAVE_SECRET_SERVER_KEY", "ssk_hex"),
            ("HEXCLAVE_API_URL", "https://api.hexclave.com/"),
            ("STACK_PROJECT_ID", "stack-project"),
            ("STACK_SECRET_SERVER_KEY", "ssk_stack"),
            ("STACK_API_URL", "https://stack.example"),
        ])
        .expect("config");
        assert_eq!(
            parts(&both),
            ("hex-project", "ssk_hex", "https://api.hexclave.com")
        );

        let stack_only = from(&[
            ("STACK_PROJECT_ID", "stack-project"),
            ("STACK_SECRET_SERVER_KEY", "ssk_stack"),
            ("STACK_API_URL", "https://stack.example"),
        ])
        .expect("config");
        assert_eq!(
            parts(&stack_only),
            ("stack-project", "ssk_stack", "https://stack.example")
        );

        let hexclave_only = from(&[
            ("HEXCLAVE_PROJECT_ID", "hex-project"),
            ("HEXCLAVE_SECRET_SERVER_KEY", "ssk_hex"),
        ])
        .expect("config");
        assert_eq!(
            parts(&hexclave_only),
            ("hex-project", "ssk_hex", DEFAULT_BASE_URL)
        );

        // Mixed, and a blank Hexclave name falls back to the Stack Auth one.
        let mixed = from(&[
            ("HEXCLAVE_PROJECT_ID", "hex-project"),
            ("STACK_SECRET_SERVER_KEY", "ssk_stack"),
            ("HEXCLAVE_API_URL", "  "),
            ("STACK_API_URL", "http://127.0.0.1:8102"),
        ])
        .expect("config");
        assert_eq!(
            parts(&mixed),
            ("hex-project", "ssk_stack", "http://127.0.0.1:8102")
        );
    }

    #[test]
    fn missing_settings_name_both_variables() {
        let error = from(&[("STACK_SECRET_SERVER_KEY", "ssk")]).expect_err("no project");
        assert!(
            matches!(
                error,
                ConfigError::MissingEnv("HEXCLAVE_PROJECT_ID or STACK_PROJECT_ID")
            ),
            "{error:?}"
        );
        let error = from(&[
            ("HEXCLAVE_PROJECT_ID", "p"),
            ("STACK_SECRET_SERVER_KEY", " "),
        ])
        .expect_err("blank secret");
        assert_eq!(
            error.to_string(),
            "environment variable HEXCLAVE_SECRET_SERVER_KEY or STACK_SECRET_SERVER_KEY is not set"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_unicode_is_refused() {
        use std::os::unix::ffi::OsStringExt;
        let error = StackAuthConfig::from_lookup(|name| match name {
            "HEXCLAVE_PROJECT_ID" => Some(OsString::from_vec(vec![0xff, 0xfe])),
            "STACK_PROJECT_ID" | "STACK_SECRET_SERVER_KEY" => Some(OsString::from("x")),
            _ => None,
        })
        .expect_err("not Unicode");
        assert!(
            matches!(error, ConfigError::Invalid("HEXCLAVE_PROJECT_ID", _)),
            "{error:?}"
        );
    }

    /// Set only in the child processes of `from_env_reads_the_process_environment`.
    const ENV_PROBE: &str = "KEYGATE_STACK_AUTH_ENV_PROBE";

    /// Child half of `from_env_reads_the_process_environment`; does nothing otherwise.
    #[test]
    fn from_env_child() {
        if std::env::var_os(ENV_PROBE).is_none() {
            return;
        }
        match StackAuthConfig::from_env() {
            Ok(config) => {
                let (project, secret, url) = parts(&config);
                println!("from_env: {project} {secret} {url}");
            }
            Err(error) => println!("from_env: error {error}"),
        }
    }

    /// `from_env` on the real environment. The environment is only ever changed in child
    /// processes (this test binary, running only `from_env_child`), so no test races another.
    #[test]
    fn from_env_reads_the_process_environment() {
        let run = |vars: &[(&str, &str)]| {
            let mut child =
                std::process::Command::new(std::env::current_exe().expect("test binary"));
            child
                .args([
                    "--exact",
                    "stack_auth::tests::from_env_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV_PROBE, "1");
            for name in ALL {
                child.env_remove(name);
            }
            child.envs(vars.iter().copied());
            let output = child.output().expect("run the child");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(output.status.success(), "child failed: {stdout}");
            stdout
                .lines()
                .find_map(|l| l.split_once("from_env: ").map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("the child did not run: {stdout}"))
                .to_owned()
        };
        let stack = [
            ("STACK_PROJECT_ID", "stack-project"),
            ("STACK_SECRET_SERVER_KEY", "ssk_stack"),
            ("STACK_API_URL", "http://stack.example"),
        ];
        let hexclave = [
            ("HEXCLAVE_PROJECT_ID", "hex-project"),
            ("HEXCLAVE_SECRET_SERVER_KEY", "ssk_hex"),
            ("HEXCLAVE_API_URL", "http://hexclave.example"),
        ];
        assert_eq!(
            run(&[stack, hexclave].concat()),
            "hex-project ssk_hex http://hexclave.example"
        );
        assert_eq!(run(&stack), "stack-project ssk_stack http://stack.example");
        assert_eq!(
            run(&hexclave),
            "hex-project ssk_hex http://hexclave.example"
        );
        assert_eq!(
            run(&[]),
            "error environment variable HEXCLAVE_PROJECT_ID or STACK_PROJECT_ID is not set"
        );
    }
}
