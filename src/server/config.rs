//! [`KeyServerConfig`]: who may call the key server, and which key kinds it serves.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Who may call the server and which key kinds it serves.
///
/// Built with [`KeyServerConfig::new`], which refuses an empty project id and a secret server
/// key that is empty, shorter than [`MIN_SECRET_SERVER_KEY_LEN`](Self::MIN_SECRET_SERVER_KEY_LEN)
/// characters, or not sendable in a header. Only the SHA-256 digest of the secret is kept; a
/// presented secret is compared digest to digest, in constant time, so neither its content nor
/// its length shows in the timing.
#[derive(Clone)]
pub struct KeyServerConfig {
    pub(super) project_id: String,
    secret_digest: [u8; 32],
    pub(super) user_keys: bool,
    pub(super) team_keys: bool,
}

/// Why a [`KeyServerConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyServerConfigError {
    /// The project id is empty (or only whitespace).
    #[error("the key server's project id is empty")]
    EmptyProjectId,
    /// The secret server key is empty (or only whitespace): anyone could call the server.
    #[error("the key server's secret server key is empty")]
    EmptySecretServerKey,
    /// The secret server key is shorter than `min` characters.
    #[error("the key server's secret server key is too short: it needs at least {min} characters")]
    SecretServerKeyTooShort {
        /// The minimum length, [`KeyServerConfig::MIN_SECRET_SERVER_KEY_LEN`].
        min: usize,
    },
    /// The secret server key has surrounding whitespace or characters other than visible ASCII,
    /// so no caller could present it in a header.
    #[error(
        "the key server's secret server key cannot be sent in a header \
         (surrounding whitespace or characters other than visible ASCII)"
    )]
    UnsendableSecretServerKey,
}

impl KeyServerConfig {
    /// The shortest secret server key accepted, in characters. Stack Auth's own `ssk_…` keys
    /// are much longer; use one of those, or any long random string.
    pub const MIN_SECRET_SERVER_KEY_LEN: usize = 16;

    /// A server for `project_id`, accepting `secret_server_key`, with both key kinds enabled.
    ///
    /// # Errors
    ///
    /// [`KeyServerConfigError`] if the project id is empty, or the secret is empty, shorter
    /// than [`MIN_SECRET_SERVER_KEY_LEN`](Self::MIN_SECRET_SERVER_KEY_LEN) characters, or not
    /// sendable in a header.
    ///
    /// ```
    /// use keygate::server::{KeyServerConfig, KeyServerConfigError};
    ///
    /// assert!(KeyServerConfig::new("my-project", "ssk_my_secret_server_key").is_ok());
    /// assert_eq!(
    ///     KeyServerConfig::new("my-project", "").err(),
    ///     Some(KeyServerConfigError::EmptySecretServerKey)
    /// );
    /// ```
    pub fn new(
        project_id: impl Into<String>,
        secret_server_key: impl Into<String>,
    ) -> Result<Self, KeyServerConfigError> {
        let project_id = project_id.into();
        let secret = Zeroizing::new(secret_server_key.into());
        if project_id.trim().is_empty() {
            return Err(KeyServerConfigError::EmptyProjectId);
        }
        if secret.trim().is_empty() {
            return Err(KeyServerConfigError::EmptySecretServerKey);
        }
        if secret.trim() != secret.as_str()
            || !secret
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        {
            return Err(KeyServerConfigError::UnsendableSecretServerKey);
        }
        if secret.chars().count() < Self::MIN_SECRET_SERVER_KEY_LEN {
            return Err(KeyServerConfigError::SecretServerKeyTooShort {
                min: Self::MIN_SECRET_SERVER_KEY_LEN,
            });
        }
        Ok(Self {
            project_id,
            secret_digest: digest(&secret),
            user_keys: true,
            team_keys: true,
        })
    }

    /// Enables or disables user keys. Disabled, every user-key route answers Stack Auth's
    /// plain-text 400 "User API keys are not enabled for this project.".
    pub fn user_keys(mut self, enabled: bool) -> Self {
        self.user_keys = enabled;
        self
    }

    /// Enables or disables team keys.
    pub fn team_keys(mut self, enabled: bool) -> Self {
        self.team_keys = enabled;
        self
    }

    /// Whether `presented` is the secret server key: digests compared in constant time.
    pub(super) fn secret_matches(&self, presented: &[u8]) -> bool {
        bool::from(digest(presented).ct_eq(&self.secret_digest))
    }
}

fn digest(secret: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(secret.as_ref()).into()
}

impl std::fmt::Debug for KeyServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServerConfig")
            .field("project_id", &self.project_id)
            .field("secret_server_key", &"[redacted]")
            .field("user_keys", &self.user_keys)
            .field("team_keys", &self.team_keys)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_admit_everyone_or_no_one() {
        let refused = [
            (
                "",
                "ssk_long_enough_secret",
                KeyServerConfigError::EmptyProjectId,
            ),
            (
                " ",
                "ssk_long_enough_secret",
                KeyServerConfigError::EmptyProjectId,
            ),
            ("p", "", KeyServerConfigError::EmptySecretServerKey),
            ("p", " \t ", KeyServerConfigError::EmptySecretServerKey),
            (
                "p",
                "ssk_short",
                KeyServerConfigError::SecretServerKeyTooShort { min: 16 },
            ),
            (
                "p",
                "ssk_long_enough_secret\n",
                KeyServerConfigError::UnsendableSecretServerKey,
            ),
            (
                "p",
                " ssk_long_enough_secret",
                KeyServerConfigError::UnsendableSecretServerKey,
            ),
            (
                "p",
                "ssk_long_enough_sécret",
                KeyServerConfigError::UnsendableSecretServerKey,
            ),
        ];
        for (project, secret, error) in refused {
            assert_eq!(
                KeyServerConfig::new(project, secret).err(),
                Some(error),
                "{project:?} {secret:?}"
            );
        }
        assert!(KeyServerConfig::new("p", "0123456789abcdef").is_ok());
    }

    #[test]
    fn compares_the_whole_secret_and_debug_hides_it() {
        let config = KeyServerConfig::new("p", "ssk_long_enough_secret").expect("valid");
        assert!(config.secret_matches(b"ssk_long_enough_secret"));
        for wrong in [
            &b""[..],
            b"ssk_long_enough_secre",
            b"ssk_long_enough_secret_",
            b"ssk_long_enough_secreT",
        ] {
            assert!(!config.secret_matches(wrong));
        }
        let debug = format!("{config:?}");
        assert!(!debug.contains("long_enough"), "{debug}");
    }
}
