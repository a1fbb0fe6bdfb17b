//! `keygate keys …` as a child process: `keys(db_url, args, stdin)` runs one subcommand on a
//! database (given as `KEYGATE_DATABASE_URL`) to completion, bounded in time; `create_key`,
//! `check_key` and `revoke_key` are the common calls. `CliDb` is a database for them: a temp
//! SQLite file, or a fresh PostgreSQL schema (dropped afterwards) named in the URL itself.
//!
//! ```ignore
//! let db = common::cli::CliDb::sqlite();
//! let key = common::cli::create_key(&db.url, "--user", USER, &[]);
//! assert_eq!(common::cli::code(&common::cli::keys(&db.url, &["check"], Some(&key))), 0);
//! ```

use std::io::{Read, Write};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use keygate::ApiKey;

use super::keygate_bin::command;

/// How long one `keygate keys …` may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `keygate keys ARGS…` on the database `db_url`, with `stdin` (or an empty stdin), to
/// completion within 30 s (a panic otherwise). Returns its status and output.
pub fn keys(db_url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut argv = vec!["keys"];
    argv.extend_from_slice(args);
    let mut child = command(&argv, &[("KEYGATE_DATABASE_URL", db_url)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keygate");
    let mut input = child.stdin.take().expect("stdin pipe");
    let text = stdin.unwrap_or_default().to_owned();
    // The child may exit before reading: a broken pipe here is its answer, not ours.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout pipe")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr pipe")));
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for keygate") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keygate keys {args:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The exit code (-1 if killed by a signal).
pub fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `keygate keys create OWNER_FLAG OWNER_ID EXTRA…` with stdout piped: the key printed (and
/// only the key). Panics unless it exits 0.
pub fn create_key(db_url: &str, owner_flag: &str, owner_id: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", owner_flag, owner_id];
    args.extend_from_slice(extra);
    let output = keys(db_url, &args, None);
    assert_eq!(code(&output), 0, "keys create: {}", stderr(&output));
    let key = stdout(&output)
        .strip_suffix('\n')
        .expect("the key and a newline")
        .to_owned();
    assert!(!key.contains('\n'), "more than the key on stdout");
    key
}

/// The key id embedded in `key`.
pub fn key_id(key: &str) -> String {
    ApiKey::parse(key)
        .expect("a well-formed key")
        .key_id()
        .to_string()
}

/// `keygate keys check ARGS…` with `key` and a newline on stdin.
pub fn check_key(db_url: &str, key: &str, args: &[&str]) -> Output {
    let mut argv = vec!["check"];
    argv.extend_from_slice(args);
    keys(db_url, &argv, Some(&format!("{key}\n")))
}

/// `keygate keys revoke KEY_ID`; panics unless it exits 0.
pub fn revoke_key(db_url: &str, key_id: &str) -> Output {
    let output = keys(db_url, &["revoke", key_id], None);
    assert_eq!(code(&output), 0, "keys revoke: {}", stderr(&output));
    output
}

/// A database for the CLI, removed when dropped.
pub struct CliDb {
    /// The `--database-url` to give `keygate`.
    pub url: String,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<super::store_suite::PgSchema>,
}

impl CliDb {
    /// A SQLite file in a new temp dir (not created yet: `keys create` creates it).
    pub fn sqlite() -> CliDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        CliDb {
            url,
            _sqlite: Some(dir),
            _postgres: None,
        }
    }

    /// A fresh schema in `DATABASE_URL`'s database, named in the URL
    /// (`?options=-c search_path=…`), or `None` (skipped) without `DATABASE_URL`.
    pub fn postgres() -> Option<CliDb> {
        let base = super::store_suite::database_url()?;
        let name = super::store_suite::fresh_schema();
        super::store_suite::execute_detached(&base, format!("CREATE SCHEMA \"{name}\""));
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
        Some(CliDb {
            url,
            _sqlite: None,
            _postgres: Some(super::store_suite::PgSchema { url: base, name }),
        })
    }
}
