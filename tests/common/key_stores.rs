//! The key server over every store: [`Store`] is one of memory, SQLite (a file, or
//! `sqlite::memory:`) and PostgreSQL (a fresh schema), and [`key_server_suite!`] runs each
//! listed test `async fn name(store: Store)` once per store, as `name::memory`,
//! `name::sqlite_file`, `name::sqlite_memory` and `name::postgres` (skipped without
//! `DATABASE_URL`, see [`database_url`](super::store_suite::database_url)).

// Binaries that run no key-server suite still compile this module.
#![allow(unused_macros)]

use std::any::Any;

use keygate::server::KeyServerConfig;
use keygate::store::{CreatedKey, KeyStore, NewKey};
use keygate::{MemoryKeyStore, Owner, SqliteKeyStore};

use super::key_api::{config, Api};
use super::store_suite;

/// Keeps a store's backing data alive for the test: a temp dir, a PostgreSQL schema.
pub type Guard = Box<dyn Any + Send>;

/// One store, behind every key server a test builds over it.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryKeyStore),
    Sqlite(SqliteKeyStore),
    #[cfg(feature = "postgres")]
    Postgres(keygate::PostgresKeyStore),
}

impl Store {
    pub async fn memory() -> Option<(Store, Guard)> {
        let (store, guard) = store_suite::memory().await?;
        Some((Store::Memory(store), Box::new(guard)))
    }

    pub async fn sqlite_file() -> Option<(Store, Guard)> {
        let (store, guard) = store_suite::sqlite_file().await?;
        Some((Store::Sqlite(store), Box::new(guard)))
    }

    pub async fn sqlite_memory() -> Option<(Store, Guard)> {
        let (store, guard) = store_suite::sqlite_memory().await?;
        Some((Store::Sqlite(store), Box::new(guard)))
    }

    /// `None` (skipped, with a note) without `DATABASE_URL`.
    #[cfg(feature = "postgres")]
    pub async fn postgres() -> Option<(Store, Guard)> {
        let (store, guard) = store_suite::postgres().await?;
        Some((Store::Postgres(store), Box::new(guard)))
    }

    /// The key server over this store, with the test config.
    pub fn api(&self) -> Api {
        self.api_with(config())
    }

    /// The key server over this store (shared with every other key server over it).
    pub fn api_with(&self, config: KeyServerConfig) -> Api {
        match self {
            Store::Memory(store) => Api::with(store.clone(), config),
            Store::Sqlite(store) => Api::with(store.clone(), config),
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => Api::with(store.clone(), config),
        }
    }

    /// A key made in the store directly, not through a key server.
    pub async fn create(&self, owner: Owner, new: NewKey) -> CreatedKey {
        match self {
            Store::Memory(store) => store.create(owner, new).await,
            Store::Sqlite(store) => store.create(owner, new).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.create(owner, new).await,
        }
        .expect("create in the store")
    }
}

/// Runs each listed `async fn name(store: Store)` over every store, as tests `name::memory`,
/// `name::sqlite_file`, `name::sqlite_memory` and `name::postgres`; the store's guard lives
/// until the test ends.
macro_rules! key_server_suite {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                key_server_suite!(@backend $test, memory);
                key_server_suite!(@backend $test, sqlite_file);
                key_server_suite!(@backend $test, sqlite_memory);
                #[cfg(feature = "postgres")]
                key_server_suite!(@backend $test, postgres);
            }
        )*
    };
    (@backend $test:ident, $backend:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $backend() {
            let Some((store, _guard)) = crate::common::key_stores::Store::$backend().await else {
                return;
            };
            super::$test(store).await;
        }
    };
}
