//! `keygate`: Stack Auth API keys checked at the edge.
//!
//! - `keygate serve`: a forward-auth service for nginx `auth_request`, Traefik `ForwardAuth`,
//!   Caddy `forward_auth` and Envoy `ext_authz` (HTTP mode), with the key API, `/healthz`,
//!   `/readyz` and `/metrics`.
//! - `keygate keys …`: create, list, revoke and check keys in the same database.
//!
//! Every flag is also an environment variable (`--help` names it). Exit codes: 0 success,
//! 1 a negative answer (key invalid, key id unknown), 2 bad usage or configuration, 3 a failure
//! at run time (database unreachable, listener lost).

/// The log audit's capture, shared with the library's and the integration tests (see
/// `.ci/log-audit`): the binary's unit tests are audited too.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../tests/common/audit.rs"]
mod test_audit;

mod duration;
mod keys;
mod ops;
mod serve;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Stack Auth API keys checked at the edge: a forward-auth service and a key-admin CLI.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `serve` has many flags; the enum is built once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the forward-auth service (and the key API, health and metrics endpoints).
    Serve(serve::ServeArgs),
    /// Create, list, revoke and check API keys in the database.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// Why the binary stopped, and the exit code that says so.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A negative answer: the key is not valid, the key id is unknown. Exit code 1.
    Refused(String),
    /// Bad usage or configuration, found before anything ran. Exit code 2.
    Config(String),
    /// A failure while running: the database is unreachable, the listener failed. Exit code 3.
    Runtime(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Refused(_) => ExitCode::from(1),
            Failure::Config(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(3),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Config(m) | Failure::Runtime(m) => m,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keygate: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Keys(command) => keys::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("keygate: {}", failure.message());
            failure.exit_code()
        }
    }
}
