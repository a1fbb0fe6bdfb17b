//! `keygate keys …`: create, list, revoke and check API keys in the key database.
//!
//! Every subcommand acts on the database named by `--database-url` (`KEYGATE_DATABASE_URL`),
//! the one `keygate serve` reads, so a key revoked here is refused by every running service on
//! that database within its revocation bound (pushed by PostgreSQL, polled on a SQLite file).
//!
//! ```text
//! $ export KEYGATE_DATABASE_URL=postgres://keygate@db/keys
//! $ KEY=$(keygate keys create --user 0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c --expires-in 30d)
//! $ printf '%s\n' "$KEY" | keygate keys check      # exit 0: valid
//! $ keygate keys list --user 0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c
//! $ keygate keys revoke 7c5e4f8e-9a43-4d2e-8f4a-5b6c0b1d5a52
//! ```
//!
//! Exit codes: 0 done (or valid), 1 a negative answer (key not valid, key id unknown), 2 bad
//! usage or configuration (including an empty stdin for `check`), 3 the database failed.

mod output;

use std::io::{self, BufRead, IsTerminal, Read};
use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use keygate::key::{ApiKey, KeyKind};
use keygate::store::{KeyRecord, KeyStore, NewKey, StoreError, WhyInvalid};
use keygate::verify::Owner;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::duration::parse_duration;
use crate::store::{error_chain, parse_location, DatabaseArgs, Location, Store};
use crate::Failure;
use output::{shown, timestamp, Mode};

/// Runs `$body` with `$s` bound to the open store, whichever backend it is.
macro_rules! with_store {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Sqlite($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key for a user or a team and print it (the only time it is shown).
    #[command(
        long_about = "Create a key for a user or a team and print it: the only time \
it is shown, as the database keeps only its digest.\n\n\
At a terminal, prints the key with its id, type, owner and expiry. When stdout is piped, prints \
the key and a newline only (KEY=$(keygate keys create --user ID)), with the summary on stderr."
    )]
    Create(CreateArgs),
    /// List a user's or a team's keys: id, status, last four characters, dates.
    List(ListArgs),
    /// Revoke a key by its id, for good.
    #[command(
        long_about = "Revoke a key by its id, for good. Every `keygate serve` on the \
same database refuses it within its revocation bound (PostgreSQL pushes the revocation; on a \
SQLite file each service polls, every --revocation-poll-interval).\n\n\
Exit 0 when revoked (or already revoked), 1 when no key has this id, 2 when KEY_ID is not a \
UUID, 3 when the database fails."
    )]
    Revoke(RevokeArgs),
    /// Check a key read from stdin: exit 0 if valid, 1 if not.
    #[command(
        long_about = "Check a key read from stdin (one trailing newline is ignored), so \
that it stays out of your shell history and the process list:\n\n    \
printf '%s\\n' \"$KEY\" | keygate keys check --user\n\n\
Exit 0 and one line (kind, key id, owner) when the key is valid; 1 with the reason when it is \
malformed, unknown, of the other kind or owner, revoked or expired; 2 when stdin is empty; 3 \
when the database fails. The key is never printed."
    )]
    Check(CheckArgs),
}

/// Whose keys: exactly one of `--user` / `--team`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct OwnerArgs {
    /// The user who owns the keys: a Stack Auth user id (a UUID).
    #[arg(long, value_name = "USER_ID")]
    user: Option<String>,
    /// The team that owns the keys: a Stack Auth team id (a UUID).
    #[arg(long, value_name = "TEAM_ID")]
    team: Option<String>,
}

impl OwnerArgs {
    fn owner(&self) -> Result<Owner, Failure> {
        match (&self.user, &self.team) {
            (Some(id), None) => owner_id(KeyKind::User, id),
            (None, Some(id)) => owner_id(KeyKind::Team, id),
            _ => Err(Failure::Config(
                "give exactly one of --user or --team".into(),
            )),
        }
    }
}

/// Flags of `keygate keys create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// What the key is for; `keys list` shows it.
    #[arg(long, default_value = "")]
    description: String,
    /// Make the key expire this long from now: a number and a unit (ms, s, m, h, d), e.g.
    /// 90m, 12h, 30d, 3600s. Without it the key never expires.
    #[arg(long, env = "KEYGATE_KEY_EXPIRES_IN", value_name = "DURATION")]
    expires_in: Option<String>,
    /// Create a public key (pk_…): one that secret scanners do not report, for code that
    /// ships to clients. `keygate serve` refuses public keys unless --allow-public-keys.
    #[arg(long)]
    public: bool,
    /// Print Stack Auth's create response as JSON (the key in its `value`) instead.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Flags of `keygate keys list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// Print JSON (Stack Auth's list body, each key with a `status`) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Flags of `keygate keys revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The key's id (a UUID), as `keys create`, `keys list` and `keys check` show it.
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Flags of `keygate keys check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Accept only a user key; with an id, only a key of that user.
    #[arg(long, value_name = "USER_ID", num_args = 0..=1, conflicts_with = "team")]
    user: Option<Option<String>>,
    /// Accept only a team key; with an id, only a key of that team.
    #[arg(long, value_name = "TEAM_ID", num_args = 0..=1)]
    team: Option<Option<String>>,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// What `check` accepts: any key, a kind, or one owner's keys.
enum Expected {
    Any,
    Kind(KeyKind),
    Owner(Owner),
}

impl CheckArgs {
    fn expected(&self) -> Result<Expected, Failure> {
        Ok(match (&self.user, &self.team) {
            (None, None) => Expected::Any,
            (Some(None), None) => Expected::Kind(KeyKind::User),
            (None, Some(None)) => Expected::Kind(KeyKind::Team),
            (Some(Some(id)), None) => Expected::Owner(owner_id(KeyKind::User, id)?),
            (None, Some(Some(id))) => Expected::Owner(owner_id(KeyKind::Team, id)?),
            (Some(_), Some(_)) => {
                return Err(Failure::Config(
                    "give at most one of --user or --team".into(),
                ))
            }
        })
    }
}

/// Runs one `keys` subcommand.
pub(crate) async fn run(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create(args) => create(args).await,
        KeysCommand::List(args) => list(args).await,
        KeysCommand::Revoke(args) => revoke(args).await,
        KeysCommand::Check(args) => check(args).await,
    }
}

async fn create(args: CreateArgs) -> Result<(), Failure> {
    let owner = args.owner.owner()?;
    let mut new = NewKey::new(args.description).public(args.public);
    if let Some(text) = &args.expires_in {
        let ttl = key_lifetime(text)?;
        let at = SystemTime::now()
            .checked_add(ttl)
            .ok_or_else(|| Failure::Config(format!("--expires-in {text} is too far away")))?;
        new = new.expires_at(at);
    }
    let mode = Mode::detect(args.json);
    if parse_location(&args.database.database_url)? == Location::SqliteMemory {
        eprintln!(
            "keygate: warning: sqlite::memory: forgets this key when the command exits; give \
             --database-url the database `keygate serve` reads"
        );
    }
    let store = args.database.open().await?;
    let created = with_store!(&store, s => s.create(owner, new).await)
        .map_err(|e| database_failed("creating the key", &e))?;
    output::print_created(&created, mode).map_err(|e| {
        Failure::Runtime(format!(
            "created {} but could not print it ({e}); revoke it with `keygate keys revoke {}` \
             and create another",
            output::summary(&created.record),
            created.record.id
        ))
    })
}

async fn list(args: ListArgs) -> Result<(), Failure> {
    let owner = args.owner.owner()?;
    let store = open_existing(&args.database).await?;
    let records = with_store!(&store, s => s.list(&owner).await)
        .map_err(|e| database_failed("listing the keys", &e))?;
    output::print_list(&owner, &records, args.json).map_err(print_failed)
}

async fn revoke(args: RevokeArgs) -> Result<(), Failure> {
    let key_id = key_id(&args.key_id)?;
    let store = open_existing(&args.database).await?;
    let before = with_store!(&store, s => s.get(key_id).await)
        .map_err(|e| database_failed("reading the key", &e))?;
    let unknown = || Failure::Refused(format!("no key has the id {key_id} in this database"));
    let before = before.ok_or_else(unknown)?;
    let line = match before.revoked_at {
        Some(at) => format!("{key_id} was already revoked at {}", timestamp(at)),
        None => {
            match with_store!(&store, s => s.revoke(key_id).await) {
                Ok(_) => {}
                Err(StoreError::NotFound) => return Err(unknown()),
                Err(e) => return Err(database_failed("revoking the key", &e)),
            }
            format!("revoked {key_id}")
        }
    };
    print_line(&line)
}

async fn check(args: CheckArgs) -> Result<(), Failure> {
    let expected = args.expected()?;
    parse_location(&args.database.database_url)?;
    let text = read_key(io::stdin())?;
    let key = ApiKey::parse(&text)
        .map_err(|e| Failure::Refused(format!("not a valid key: malformed ({e})")))?;
    drop(text);
    let store = open_existing(&args.database).await?;
    let record = with_store!(&store, s => s.find(&key).await)
        .map_err(|e| database_failed("looking the key up", &e))?
        .ok_or_else(|| Failure::Refused("not a valid key: not found in this database".into()))?;
    judge(&record, &expected, SystemTime::now())?;
    let visibility = if record.is_public { "public" } else { "secret" };
    print_line(&format!(
        "valid {} key {} of {}: {visibility}, {}",
        record.kind(),
        record.id,
        output::owner(&record.owner),
        output::expires(record.expires_at, SystemTime::now()),
    ))
}

/// Stack Auth's order: the wrong kind (here also the wrong owner), then revoked, then expired.
fn judge(record: &KeyRecord, expected: &Expected, now: SystemTime) -> Result<(), Failure> {
    let refuse = |why: String| Err(Failure::Refused(format!("not a valid key: {why}")));
    let kind = record.kind();
    match expected {
        Expected::Kind(want) if *want != kind => {
            return refuse(format!("a {kind} key, not a {want} key"))
        }
        Expected::Owner(want) if want.kind() != kind => {
            return refuse(format!("a {kind} key, not a {} key", want.kind()))
        }
        Expected::Owner(want) if want.id() != record.owner.id() => {
            return refuse(format!(
                "it belongs to another {kind}, not {}",
                output::owner(want)
            ))
        }
        _ => {}
    }
    match record.why_invalid_at(now) {
        None => Ok(()),
        Some(WhyInvalid::ManuallyRevoked) => refuse(format!(
            "revoked at {} (key {})",
            record.revoked_at.map_or_else(|| "?".into(), timestamp),
            record.id
        )),
        Some(WhyInvalid::Expired) => refuse(format!(
            "expired at {} (key {})",
            record.expires_at.map_or_else(|| "?".into(), timestamp),
            record.id
        )),
        Some(_) => refuse(format!("key {} is no longer valid", record.id)),
    }
}

/// The most `check` reads from stdin; a key is 102 bytes.
const MAX_INPUT: usize = 4096;

/// One key from `input`, without one trailing newline (`\n` or `\r\n`). From a terminal, one
/// line; otherwise everything up to end of file.
fn read_key(input: io::Stdin) -> Result<Zeroizing<String>, Failure> {
    let interactive = input.is_terminal();
    if interactive {
        eprint!("Paste the key and press Enter: ");
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(256));
    let limit = MAX_INPUT as u64 + 1;
    let read = if interactive {
        input.lock().take(limit).read_until(b'\n', &mut bytes)
    } else {
        input.lock().take(limit).read_to_end(&mut bytes)
    };
    read.map_err(|e| Failure::Runtime(format!("cannot read the key from stdin: {e}")))?;
    key_from_input(bytes)
}

/// The key in what was read from stdin (see [`read_key`]).
fn key_from_input(mut bytes: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, Failure> {
    if bytes.len() > MAX_INPUT {
        return Err(Failure::Refused(format!(
            "not a valid key: stdin holds more than {MAX_INPUT} bytes (one key is 102)"
        )));
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(Failure::Config(
            "no key on stdin: pipe one in, e.g. printf '%s\\n' \"$KEY\" | keygate keys check"
                .into(),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(Failure::Refused(
            "not a valid key: malformed (not UTF-8 text)".into(),
        )),
    }
}

/// An owner id as the key server accepts it: a UUID (Stack Auth's user and team ids), written
/// in its canonical lowercase form.
fn owner_id(kind: KeyKind, text: &str) -> Result<Owner, Failure> {
    if text == "me" {
        return Err(Failure::Config(format!(
            "--{kind} me names the signed-in user of a Stack Auth session; give the {kind}'s id \
             (a UUID)"
        )));
    }
    let id: Uuid = text.parse().map_err(|_| {
        Failure::Config(format!(
            "--{kind} {} is not a {kind} id: Stack Auth {kind} ids are UUIDs such as \
             0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c",
            shown(text)
        ))
    })?;
    Ok(match kind {
        KeyKind::User => Owner::user(id.to_string()),
        KeyKind::Team => Owner::team(id.to_string()),
    })
}

/// A key id, never echoed if it is in fact a key.
fn key_id(text: &str) -> Result<Uuid, Failure> {
    text.parse().map_err(|_| {
        Failure::Config(
            if ApiKey::parse(text).is_ok() || text.contains(keygate::key::MARKER) {
                "that is a key, not a key id: `keygate keys check` (the key on stdin) shows its id"
                    .into()
            } else {
                format!(
                    "{} is not a key id: key ids are UUIDs, as `keygate keys list` shows them",
                    shown(text)
                )
            },
        )
    })
}

/// `--expires-in`: a positive duration.
fn key_lifetime(text: &str) -> Result<Duration, Failure> {
    match parse_duration(text) {
        Ok(ttl) if ttl.is_zero() => Err(Failure::Config(
            "--expires-in 0 makes a key that is expired at once; give e.g. 30d, or leave it out \
             for a key that never expires"
                .into(),
        )),
        Ok(ttl) => Ok(ttl),
        Err(why) => Err(Failure::Config(format!("--expires-in: {why}"))),
    }
}

/// Opens the database for reading keys: a SQLite file must exist already (so that a mistyped
/// path is reported rather than created empty).
async fn open_existing(database: &DatabaseArgs) -> Result<Store, Failure> {
    if let Location::SqliteFile(path) = parse_location(&database.database_url)? {
        if !Path::new(path).exists() {
            return Err(Failure::Config(format!(
                "no key database at {path:?}: check --database-url (or KEYGATE_DATABASE_URL); \
                 `keygate keys create` creates the file"
            )));
        }
    }
    database.open().await
}

fn database_failed(doing: &str, error: &StoreError) -> Failure {
    Failure::Runtime(format!(
        "the key database failed while {doing}: {}",
        error_chain(error)
    ))
}

fn print_failed(error: io::Error) -> Failure {
    Failure::Runtime(format!("cannot write to stdout: {error}"))
}

fn print_line(line: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(print_failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(bytes: &[u8]) -> Result<Zeroizing<String>, Failure> {
        key_from_input(Zeroizing::new(bytes.to_vec()))
    }

    #[test]
    fn stdin_loses_one_trailing_newline_only() {
        assert_eq!(
            input(b"abc\n").ok().as_deref().map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            input(b"abc\r\n").ok().as_deref().map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            input(b"abc").ok().as_deref().map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            input(b"abc\n\n").ok().as_deref().map(String::as_str),
            Some("abc\n")
        );
        assert!(matches!(input(b""), Err(Failure::Config(_))));
        assert!(matches!(input(b"\n"), Err(Failure::Config(_))));
        assert!(matches!(input(&[0xff, b'\n']), Err(Failure::Refused(_))));
        assert!(matches!(
            input(&[b'a'; MAX_INPUT + 1]),
            Err(Failure::Refused(_))
        ));
    }

    #[test]
    fn owner_ids_are_uuids_as_stack_auth_takes_them() {
        let owner = owner_id(KeyKind::Team, "0B1D5A52-7C5E-4F8E-9A43-1D2E3F4A5B6C").ok();
        assert_eq!(
            owner,
            Some(Owner::team("0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c"))
        );
        for bad in ["me", "", "alice", "0b1d5a52-7c5e-4f8e-9a43"] {
            assert!(
                matches!(owner_id(KeyKind::User, bad), Err(Failure::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_key_given_as_key_id_is_not_echoed() {
        let key = format!("sk_{}{}", "a".repeat(80), keygate::key::MARKER);
        match key_id(&key) {
            Err(Failure::Config(message)) => assert!(!message.contains(keygate::key::MARKER)),
            other => panic!("{other:?}"),
        }
        assert!(key_id("7c5e4f8e-9a43-4d2e-8f4a-5b6c0b1d5a52").is_ok());
    }

    #[test]
    fn lifetimes_are_positive() {
        assert_eq!(key_lifetime("90m").ok(), Some(Duration::from_secs(5400)));
        assert_eq!(key_lifetime("3600s").ok(), Some(Duration::from_secs(3600)));
        assert!(key_lifetime("0").is_err());
        assert!(key_lifetime("30").is_err());
    }

    #[tokio::test]
    async fn check_refuses_in_stack_auths_order() {
        let now = SystemTime::now();
        let user = Owner::user("0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c");
        let store = keygate::MemoryKeyStore::new();
        let mut record = store
            .create(user.clone(), NewKey::new(""))
            .await
            .unwrap()
            .record;
        let reason = |r: &KeyRecord, e: &Expected| match judge(r, e, now) {
            Ok(()) => "valid".to_owned(),
            Err(Failure::Refused(m)) => m,
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(reason(&record, &Expected::Any), "valid");
        assert_eq!(reason(&record, &Expected::Owner(user.clone())), "valid");
        record.expires_at = Some(now - Duration::from_secs(1));
        assert!(reason(&record, &Expected::Any).contains("expired"));
        record.revoked_at = Some(now);
        assert!(reason(&record, &Expected::Any).contains("revoked"));
        assert!(
            reason(&record, &Expected::Kind(KeyKind::Team)).contains("a user key, not a team key")
        );
        let other = Owner::user("11111111-7c5e-4f8e-9a43-1d2e3f4a5b6c");
        assert!(reason(&record, &Expected::Owner(other)).contains("another user"));
    }
}
