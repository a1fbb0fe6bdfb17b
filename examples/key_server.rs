//! A Stack Auth-compatible key server whose keys survive a restart (features `server`, `sqlite`).
//!
//! ```text
//! cargo run --example key_server --features server,sqlite            # PORT=8102 by default
//! KEYGATE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example key_server --features server,sqlite,postgres
//! ```
//!
//! `KEYGATE_DATABASE_URL` picks the store: a SQLite file path or `sqlite:` URL (default: the file
//! `keygate.db` in the working directory, created on first start), or a `postgres://` URL
//! (feature `postgres`). Either way the schema is created or migrated at start-up.
//!
//! `STACK_PROJECT_ID` and `STACK_SECRET_SERVER_KEY` set the credentials callers must present
//! (defaults: `7f3c2a10-5b4e-4d6a-9c8b-1e2f3a4b5c6d`, `ssk_local_development_key`); an empty or short secret (under 16
//! characters) stops the example with a message. The start-up lines print curl commands that
//! create a key and check it. Requests may use Stack Auth's `x-stack-*` header names or
//! Hexclave's `x-hexclave-*` ones.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use keygate::server::{key_server, KeyServerConfig};
use keygate::SqliteKeyStore;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let port: u16 = env("PORT", "8102")
        .parse()
        .map_err(|_| "PORT is not a port")?;
    let project = env("STACK_PROJECT_ID", "7f3c2a10-5b4e-4d6a-9c8b-1e2f3a4b5c6d");
    let secret = env("STACK_SECRET_SERVER_KEY", "ssk_local_development_key");

    // An empty or short secret would let (nearly) anyone in: refuse to start.
    let config = match KeyServerConfig::new(&project, &secret) {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "key_server: {error}. Set STACK_SECRET_SERVER_KEY to a secret of at least {} characters and STACK_PROJECT_ID to the project id, or unset both for the development defaults.",
                KeyServerConfig::MIN_SECRET_SERVER_KEY_LEN
            );
            std::process::exit(2);
        }
    };
    let database = env("KEYGATE_DATABASE_URL", "keygate.db");
    let app = match store_app(&database, config).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("key_server: {error}");
            std::process::exit(2);
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    let h = format!(
        "-H 'x-stack-access-type: server' -H 'x-stack-project-id: {project}' -H 'x-stack-secret-server-key: {secret}' -H 'content-type: application/json'"
    );
    println!("key server listening on http://{addr}/api/v1");
    println!(
        "STACK_API_URL=http://{addr} STACK_PROJECT_ID={project} STACK_SECRET_SERVER_KEY={secret}"
    );
    println!();
    println!("# create a user key (the response's \"value\" is the key, shown this once):");
    println!(
        "curl -s {h} -d '{{\"user_id\":\"0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c\",\"description\":\"CLI\",\"expires_at_millis\":null}}' http://{addr}/api/v1/user-api-keys"
    );
    println!("# check it:");
    println!(
        "curl -s {h} -d '{{\"api_key\":\"<value>\"}}' http://{addr}/api/v1/user-api-keys/check"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The key server over the store `database` names.
async fn store_app(database: &str, config: KeyServerConfig) -> Result<Router, String> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            let store = keygate::PostgresKeyStore::connect(database)
                .await
                .map_err(|e| with_cause("cannot use KEYGATE_DATABASE_URL", &e))?;
            println!("keys are stored in PostgreSQL");
            return Ok(key_server(store, config));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(
            "KEYGATE_DATABASE_URL is a PostgreSQL URL: run with --features server,sqlite,postgres"
                .into(),
        );
    }
    let store = SqliteKeyStore::open(database)
        .await
        .map_err(|e| with_cause(&format!("cannot open SQLite database {database:?}"), &e))?;
    println!("keys are stored in SQLite: {database}");
    Ok(key_server(store, config))
}

fn with_cause(what: &str, error: &keygate::store::StoreError) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{what}: {error}: {cause}"),
        None => format!("{what}: {error}"),
    }
}
