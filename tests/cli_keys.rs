//! `keygate keys …` end to end: the built binary run as a child process on a temp SQLite file
//! (and on PostgreSQL, in a fresh schema, when `DATABASE_URL` is set): create prints the key
//! once, list never shows it, check and revoke answer with their exit codes (0 yes, 1 no,
//! 2 bad usage or configuration, 3 database failure).
//!
//! `keys check` with an empty stdin exits 2: no key is a usage mistake, not a negative answer.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cli::{check_key, code, create_key, key_id, keys, revoke_key, stderr, stdout, CliDb};
use common::keygate_bin::KeygateServe;
use common::keys::{unknown_secret, with_bad_checksum};
use keygate::key::{ApiKey, KeyKind, MARKER};
use serde_json::Value;
use uuid::Uuid;

/// A user id of its own for each test, so that tests sharing a database cannot collide.
fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// Everything a run wrote, stdout then stderr.
fn all_output(output: &std::process::Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    i64::try_from(ms).unwrap()
}

// ---- The flows, over any database ----------------------------------------------------------

/// create → list → check → revoke → check → revoke again, as a script would run them.
fn full_flow(db: &str) {
    let user = new_id();
    let output = keys(
        db,
        &["create", "--user", &user, "--description", "CI deploys"],
        None,
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let out = stdout(&output);
    let key = out.strip_suffix('\n').expect("the key and a newline");
    assert_eq!(key.len(), 102);
    assert!(key.contains(MARKER));
    assert_eq!(all_output(&output).matches(key).count(), 1, "printed once");
    let parsed = ApiKey::parse(key).expect("a well-formed key");
    assert_eq!(parsed.kind(), KeyKind::User);
    assert!(!parsed.is_public());
    let id = parsed.key_id().to_string();
    assert!(stderr(&output).contains(&id), "the summary names the id");

    let listed = keys(db, &["list", "--user", &user], None);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let table = stdout(&listed);
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .expect("the key's row");
    assert!(
        row.contains(&format!("sk_…{}", parsed.last_four())),
        "{row}"
    );
    assert!(row.contains("valid") && row.contains("CI deploys"), "{row}");
    assert!(
        !all_output(&listed).contains(MARKER),
        "no full key in a list"
    );

    let checked = check_key(db, key, &[]);
    assert_eq!(code(&checked), 0, "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains(&format!("valid user key {id} of user {user}")),
        "{}",
        stdout(&checked)
    );
    assert!(
        !all_output(&checked).contains(MARKER),
        "check never echoes the key"
    );

    let revoked = revoke_key(db, &id);
    assert_eq!(stdout(&revoked), format!("revoked {id}\n"));

    let checked = check_key(db, key, &[]);
    assert_eq!(code(&checked), 1);
    assert!(stderr(&checked).contains("revoked"), "{}", stderr(&checked));
    assert!(!all_output(&checked).contains(MARKER));

    let again = revoke_key(db, &id);
    assert!(
        stdout(&again).contains(&format!("{id} was already revoked at ")),
        "{}",
        stdout(&again)
    );

    let listed = keys(db, &["list", "--user", &user, "--json"], None);
    assert_eq!(code(&listed), 0);
    let body: Value = serde_json::from_slice(&listed.stdout).expect("JSON list");
    let item = &body["items"][0];
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["status"], "revoked");
    assert!(item["manually_revoked_at_millis"].as_i64().is_some());
    assert_eq!(item["value"]["last_four"], parsed.last_four());
}

/// A public team key that expires in 30 days, as `--json` and `list --json` describe it.
fn team_public_expiring(db: &str) {
    let team = new_id();
    let before = now_ms();
    let output = keys(
        db,
        &[
            "create",
            "--team",
            &team,
            "--public",
            "--expires-in",
            "30d",
            "--json",
        ],
        None,
    );
    let after = now_ms();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let created: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let key = created["value"].as_str().expect("the key in `value`");
    assert_eq!(all_output(&output).matches(key).count(), 1, "printed once");
    let parsed = ApiKey::parse(key).expect("a well-formed key");
    assert!(key.starts_with("pk_") && parsed.is_public());
    assert_eq!(parsed.kind(), KeyKind::Team);
    assert_eq!(created["type"], "team");
    assert_eq!(created["team_id"], team.as_str());
    assert_eq!(created["id"], parsed.key_id().to_string().as_str());
    let month = 30 * 86_400_000;
    let expires = created["expires_at_millis"].as_i64().expect("an expiry");
    assert!(
        (before + month..=after + month).contains(&expires),
        "{expires}"
    );

    let listed = keys(db, &["list", "--team", &team, "--json"], None);
    let body: Value = serde_json::from_slice(&listed.stdout).expect("JSON list");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["is_public"], true);
    assert_eq!(items[0]["status"], "valid");
    assert_eq!(items[0]["expires_at_millis"], expires);

    assert_eq!(code(&check_key(db, key, &["--team", &team])), 0);
    assert_eq!(code(&check_key(db, key, &["--team"])), 0);
    let wrong_kind = check_key(db, key, &["--user"]);
    assert_eq!(code(&wrong_kind), 1);
    assert!(stderr(&wrong_kind).contains("a team key, not a user key"));
    let other_team = check_key(db, key, &["--team", &new_id()]);
    assert_eq!(code(&other_team), 1);
    assert!(stderr(&other_team).contains("another team"));
}

/// A key created with `--expires-in 1s` is refused as expired once the second has passed.
fn expired_key(db: &str) {
    let key = create_key(db, "--user", &new_id(), &["--expires-in", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let checked = check_key(db, &key, &[]);
        if code(&checked) != 0 {
            break checked;
        }
        assert!(Instant::now() < deadline, "still valid after 15 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code(&refused), 1, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("expired"), "{}", stderr(&refused));
}

/// `GET /v1/authz` on `addr` with `key` as a bearer token: the status and `X-Keygate-Reason`.
fn authz(addr: SocketAddr, key: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /v1/authz HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let reason = response
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-keygate-reason")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, reason)
}

/// A key revoked with `keygate keys revoke` is refused by a `keygate serve` already running on
/// the same database, although that service cached it as valid for an hour.
fn revocation_reaches_a_running_service(db: &str) {
    let key = create_key(db, "--user", &new_id(), &[]);
    let server = KeygateServe::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db,
            "--cache-ttl",
            "1h",
            "--revocation-poll-interval",
            "100ms",
        ],
        &[],
    );
    assert_eq!(authz(server.addr(), &key), (200, String::new()));
    revoke_key(db, &key_id(&key));
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let answer = authz(server.addr(), &key);
        if answer.0 != 200 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "still accepted 15 s after `keys revoke`; logs:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(refused, (401, "API_KEY_INVALID".to_owned()));
    let logs = server.stderr();
    assert_eq!(server.stop().code(), Some(0), "{logs}");
    assert!(!logs.contains(MARKER), "a key in the logs:\n{logs}");
}

// ---- SQLite ------------------------------------------------------------------------------

#[test]
fn sqlite_revocation_reaches_a_running_service() {
    let db = CliDb::sqlite();
    revocation_reaches_a_running_service(&db.url);
}

#[test]
fn sqlite_create_list_check_revoke() {
    full_flow(&CliDb::sqlite().url);
}

#[test]
fn sqlite_team_public_expiring_key() {
    let db = CliDb::sqlite();
    team_public_expiring(&db.url);
}

#[test]
fn sqlite_expired_key_is_refused() {
    let db = CliDb::sqlite();
    expired_key(&db.url);
}

#[test]
fn the_database_url_flag_works_like_the_variable() {
    let db = CliDb::sqlite();
    let user = new_id();
    let key = create_key(&db.url, "--user", &user, &[]);
    let elsewhere = CliDb::sqlite();
    let checked = keys(
        &elsewhere.url,
        &["check", "--database-url", &db.url],
        Some(&key),
    );
    assert_eq!(code(&checked), 0, "{}", stderr(&checked));
    assert!(stdout(&checked).contains(&key_id(&key)));
}

#[test]
fn check_refuses_tampered_and_unknown_keys() {
    let db = CliDb::sqlite();
    let key = create_key(&db.url, "--user", &new_id(), &[]);
    let tampered = check_key(&db.url, &with_bad_checksum(&key), &[]);
    assert_eq!(code(&tampered), 1);
    assert!(
        stderr(&tampered).contains("malformed"),
        "{}",
        stderr(&tampered)
    );
    let unknown = check_key(&db.url, &unknown_secret(), &[]);
    assert_eq!(code(&unknown), 1);
    assert!(
        stderr(&unknown).contains("not found"),
        "{}",
        stderr(&unknown)
    );
    for output in [&tampered, &unknown] {
        assert!(!all_output(output).contains(MARKER), "a key echoed");
    }
    // Without a trailing newline, and with a CRLF, the key is the same key.
    assert_eq!(code(&keys(&db.url, &["check"], Some(&key))), 0);
    assert_eq!(
        code(&keys(&db.url, &["check"], Some(&format!("{key}\r\n")))),
        0
    );
    // Only one newline is forgiven.
    assert_eq!(
        code(&keys(&db.url, &["check"], Some(&format!("{key}\n\n")))),
        1
    );
}

#[test]
fn check_with_empty_stdin_is_a_usage_error() {
    let db = CliDb::sqlite();
    create_key(&db.url, "--user", &new_id(), &[]);
    for input in [None, Some(""), Some("\n")] {
        let output = keys(&db.url, &["check"], input);
        assert_eq!(code(&output), 2, "{input:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("no key on stdin"));
    }
}

#[test]
fn revoke_answers_unknown_ids_and_bad_ids() {
    let db = CliDb::sqlite();
    let key = create_key(&db.url, "--user", &new_id(), &[]);
    let unknown = keys(&db.url, &["revoke", &Uuid::new_v4().to_string()], None);
    assert_eq!(code(&unknown), 1);
    assert!(stderr(&unknown).contains("no key has the id"));
    let bad = keys(&db.url, &["revoke", "not-a-uuid"], None);
    assert_eq!(code(&bad), 2);
    // A key given where its id belongs is refused without being echoed.
    let misplaced = keys(&db.url, &["revoke", &key], None);
    assert_eq!(code(&misplaced), 2);
    assert!(!all_output(&misplaced).contains(MARKER), "a key echoed");
    // The key is still valid: nothing was revoked by mistake.
    assert_eq!(code(&check_key(&db.url, &key, &[])), 0);
}

#[test]
fn list_shows_each_owners_keys_only() {
    let db = CliDb::sqlite();
    let (alice, bob) = (new_id(), new_id());
    let first = create_key(&db.url, "--user", &alice, &[]);
    let second = create_key(&db.url, "--user", &alice, &["--public"]);
    let bobs = create_key(&db.url, "--user", &bob, &[]);
    let listed = keys(&db.url, &["list", "--user", &alice], None);
    assert_eq!(code(&listed), 0);
    let table = stdout(&listed);
    assert_eq!(table.lines().count(), 3, "a header and two rows:\n{table}");
    for key in [&first, &second] {
        let parsed = ApiKey::parse(key).unwrap();
        let prefix = if parsed.is_public() { "pk" } else { "sk" };
        let row = table
            .lines()
            .find(|l| l.contains(&key_id(key)))
            .expect("row");
        assert!(
            row.contains(&format!("{prefix}_…{}", parsed.last_four())),
            "{row}"
        );
    }
    assert!(!table.contains(&key_id(&bobs)));
    assert!(!all_output(&listed).contains(MARKER));
    // An owner without keys: nothing on stdout, exit 0.
    let nobody = keys(&db.url, &["list", "--team", &new_id()], None);
    assert_eq!(code(&nobody), 0);
    assert_eq!(stdout(&nobody), "");
}

#[test]
fn owner_flags_are_checked() {
    let db = CliDb::sqlite();
    let id = new_id();
    for args in [
        vec!["create", "--user", &id, "--team", &id],
        vec!["create"],
        vec!["list", "--user", &id, "--team", &id],
        vec!["create", "--user", "me"],
        vec!["create", "--team", "alice"],
        vec!["create", "--user", &id, "--expires-in", "30"],
        vec!["create", "--user", &id, "--expires-in", "0"],
    ] {
        let output = keys(&db.url, &args, None);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
        assert!(stdout(&output).is_empty(), "{args:?}: no key printed");
    }
}

#[test]
fn bad_database_urls_are_configuration_errors() {
    let id = new_id();
    let unknown_scheme = keys("mysql://127.0.0.1/keys", &["list", "--user", &id], None);
    assert_eq!(code(&unknown_scheme), 2, "{}", stderr(&unknown_scheme));
    assert!(stderr(&unknown_scheme).contains("postgres://"));
    // Reading keys from a SQLite file that does not exist: a mistyped path, not an empty list.
    let missing = CliDb::sqlite();
    let output = keys(&missing.url, &["list", "--user", &id], None);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(stderr(&output).contains("no key database"));
    let unwritable = keys(
        "sqlite:///nonexistent-dir/keys.db",
        &["create", "--user", &id],
        None,
    );
    assert_eq!(code(&unwritable), 2, "{}", stderr(&unwritable));
}

#[test]
fn an_unreachable_postgres_is_a_runtime_failure() {
    // Port 1 on loopback: nothing listens there; `keys` bounds the wait itself (30 s at most).
    let output = keys(
        "postgres://postgres@127.0.0.1:1/keys",
        &["list", "--user", &new_id()],
        None,
    );
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("PostgreSQL"),
        "{}",
        stderr(&output)
    );
}

// ---- PostgreSQL (skipped without DATABASE_URL) --------------------------------------------

#[test]
fn postgres_create_list_check_revoke() {
    let Some(db) = CliDb::postgres() else { return };
    full_flow(&db.url);
}

#[test]
fn postgres_team_public_expiring_key() {
    let Some(db) = CliDb::postgres() else { return };
    team_public_expiring(&db.url);
}

#[test]
fn postgres_expired_key_is_refused() {
    let Some(db) = CliDb::postgres() else { return };
    expired_key(&db.url);
}

#[test]
fn postgres_revocation_reaches_a_running_service() {
    let Some(db) = CliDb::postgres() else { return };
    revocation_reaches_a_running_service(&db.url);
}

#[test]
fn postgres_keys_stay_in_their_schema() {
    let Some(one) = CliDb::postgres() else { return };
    let Some(other) = CliDb::postgres() else {
        return;
    };
    let key = create_key(&one.url, "--user", &new_id(), &[]);
    let elsewhere = check_key(&other.url, &key, &[]);
    assert_eq!(code(&elsewhere), 1, "{}", stderr(&elsewhere));
    assert!(stderr(&elsewhere).contains("not found"));
}
