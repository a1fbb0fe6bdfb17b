//! The one test harness shared by every integration test binary: a counting verifier, one
//! request/response helper with the error-table assertions, router builders, the user/team
//! kinds table, key minting, log capture (and the log audit's, installed in every binary), the
//! echo upstream, a real nginx and a counting TCP tap (for the edge tests), and
//! (with their features) the rate-limited routers, the scripted loopback upstream, the Stack
//! Auth and key-server helpers, the store conformance suite, and the key
//! server over every store.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod app;
pub mod audit;
pub mod echo;
pub mod http;
pub mod keys;
pub mod kinds;
pub mod logs;
pub mod nginx;
#[cfg(feature = "governor")]
pub mod rate_limit;
#[cfg(feature = "metrics")]
pub mod recorded;
pub mod rng;
pub mod tap;
pub mod verifier;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "server")]
pub mod key_api;
#[cfg(feature = "cli")]
pub mod keygate_bin;
#[cfg(all(feature = "server", feature = "sqlite"))]
#[macro_use]
pub mod key_stores;
#[cfg(feature = "stack-auth")]
pub mod stack_auth;
#[cfg(feature = "sqlite")]
#[macro_use]
pub mod store_suite;
#[cfg(feature = "stack-auth")]
pub mod upstream;

/// Says that the running test skipped itself, and why, where `cargo test` shows it: straight to
/// the process's stderr, past libtest's capture of `eprintln!` (which would hide it for a
/// passing test).
pub fn skip_note(reason: &str) {
    use std::io::Write;
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    // Nothing to do if stderr is gone: the note is a courtesy.
    let line = format!("skipped: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
