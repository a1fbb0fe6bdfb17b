//! A Stack Auth-compatible key server on the in-memory store (feature `server`).
//!
//! ```text
//! cargo run --example key_server --features server     # PORT=8102 by default
//! ```
//!
//! `STACK_PROJECT_ID` and `STACK_SECRET_SERVER_KEY` set the credentials callers must present
//! (defaults: `7f3c2a10-5b4e-4d6a-9c8b-1e2f3a4b5c6d`, `ssk_local_development_key`); an empty or short secret (under 16
//! characters) stops the example with a message. The start-up lines print curl commands that
//! create a key and check it. Requests may use Stack Auth's `x-stack-*` header names or
//! Hexclave's `x-hexclave-*` ones.

use std::net::{Ipv4Addr, SocketAddr};

use keygate::server::{key_server, KeyServerConfig};
use keygate::MemoryKeyStore;
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
    let app = key_server(MemoryKeyStore::new(), config);
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
