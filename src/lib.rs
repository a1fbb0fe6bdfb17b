#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
pub mod cache;
pub mod extract;
#[cfg(any(feature = "postgres", feature = "redis"))]
pub mod fleet;
pub mod key;
pub mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod principal;
pub mod reject;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "stack-auth")]
pub mod stack_auth;
#[cfg(any(feature = "stack-auth", feature = "server"))]
pub mod stack_protocol;
pub mod store;
pub mod verify;

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
