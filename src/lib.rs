#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(not(test), forbid(unsafe_code))]
// The unit tests' log audit (tests/common/audit.rs) holds the one exception, allowed there.
#![cfg_attr(test, deny(unsafe_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
pub mod cache;
pub mod extract;
// Fuzz-target entry points to crate-private functions; see the module's comment.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
pub mod fleet;
#[cfg(feature = "forward-auth")]
pub mod forward_auth;
pub mod key;
pub mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod principal;
#[cfg(feature = "governor")]
pub mod rate_limit;
pub mod reject;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "stack-auth")]
pub mod stack_auth;
#[cfg(any(feature = "stack-auth", feature = "server"))]
pub mod stack_protocol;
pub mod store;
pub mod verify;

/// The log audit's capture, shared with the integration tests (see `.ci/log-audit`).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/common/audit.rs"]
mod test_audit;

pub use cache::{CacheStats, CachedVerifier};
pub use extract::KeyExtractor;
pub use key::{ApiKey, KeyKind};
pub use layer::{Mode, RequireApiKey, RequireApiKeyService};
pub use principal::{AuthenticatedTeam, AuthenticatedUser, Principal};
pub use reject::{DefaultResponder, Rejection, RejectionResponder};
#[cfg(feature = "postgres")]
pub use store::PostgresKeyStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteKeyStore;
pub use store::{KeyStore, MemoryKeyStore, NewKey};
pub use verify::{KeyVerifier, Owner, Verdict};
