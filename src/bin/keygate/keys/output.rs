//! What `keygate keys …` prints: the created key (once), the key table, timestamps.
//!
//! The full key is written in exactly one place, [`print_created`], and only to stdout:
//!
//! - stdout a terminal: a block with the key, its id, type, owner and expiry;
//! - stdout piped: the key and a newline, nothing else (`KEY=$(keygate keys create …)`), with the
//!   summary (never the key) on stderr;
//! - `--json`: Stack Auth's create response (`value` holds the key).

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate::key::MARKER;
use keygate::stack_protocol::{ApiKeyObject, KeyValue};
use keygate::store::{CreatedKey, KeyRecord, WhyInvalid};
use keygate::verify::Owner;
use zeroize::Zeroize;

/// How to print a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// For a person at a terminal.
    Human,
    /// For a script capturing stdout: bare values only.
    Piped,
    /// JSON on stdout.
    Json,
}

impl Mode {
    /// `--json`, else whether stdout is a terminal.
    pub(crate) fn detect(json: bool) -> Self {
        if json {
            Mode::Json
        } else if io::stdout().is_terminal() {
            Mode::Human
        } else {
            Mode::Piped
        }
    }
}

/// Prints a key just created: the one time its full value is shown.
pub(crate) fn print_created(created: &CreatedKey, mode: Mode) -> io::Result<()> {
    write_created(&mut io::stdout().lock(), &mut io::stderr(), created, mode)
}

/// [`print_created`] to `out` (stdout) and `err` (stderr, which never gets the key).
fn write_created(
    out: &mut impl Write,
    err: &mut impl Write,
    created: &CreatedKey,
    mode: Mode,
) -> io::Result<()> {
    let record = &created.record;
    match mode {
        Mode::Json => {
            let mut object = ApiKeyObject::from_record(record);
            object.value = KeyValue::Full(created.key.expose_secret().to_owned());
            let written = serde_json::to_writer_pretty(&mut *out, &object).map_err(io::Error::from);
            if let KeyValue::Full(key) = &mut object.value {
                key.zeroize();
            }
            written?;
            writeln!(out)?;
        }
        Mode::Piped => {
            writeln!(out, "{}", created.key.expose_secret())?;
            out.flush()?;
            // The key is out; a summary that cannot be written is no reason to fail.
            let _ = writeln!(
                err,
                "keygate: created {}, {}; the key went to stdout and will not be shown again",
                summary(record),
                expires(record.expires_at, SystemTime::now()),
            );
        }
        Mode::Human => {
            writeln!(
                out,
                "New API key, shown once: store it now, it cannot be shown again."
            )?;
            writeln!(out)?;
            writeln!(out, "    {}", created.key.expose_secret())?;
            writeln!(out)?;
            writeln!(out, "  id:          {}", record.id)?;
            writeln!(
                out,
                "  type:        {} key, {}",
                record.kind(),
                visibility(record)
            )?;
            writeln!(out, "  owner:       {}", owner(&record.owner))?;
            writeln!(
                out,
                "  expires:     {}",
                expiry(record.expires_at, SystemTime::now())
            )?;
            if !record.description.is_empty() {
                writeln!(out, "  description: {}", clean(&record.description))?;
            }
        }
    }
    out.flush()
}

/// Prints an owner's keys: a table, or `--json` (Stack Auth's list body, plus `status`).
pub(crate) fn print_list(who: &Owner, records: &[KeyRecord], json: bool) -> io::Result<()> {
    let now = SystemTime::now();
    let mut out = io::stdout().lock();
    if json {
        let items: Vec<serde_json::Value> = records
            .iter()
            .map(|record| {
                let mut item = serde_json::to_value(ApiKeyObject::from_record(record))?;
                if let Some(fields) = item.as_object_mut() {
                    fields.insert("status".into(), status(record, now).into());
                }
                Ok(item)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        let body = serde_json::json!({ "items": items, "is_paginated": false });
        serde_json::to_writer_pretty(&mut out, &body)?;
        writeln!(out)?;
        return out.flush();
    }
    if records.is_empty() {
        drop(out);
        eprintln!("keygate: {} has no keys in this database", owner(who));
        return Ok(());
    }
    let mut rows = vec![[
        "ID",
        "TYPE",
        "STATUS",
        "KIND",
        "KEY",
        "CREATED",
        "EXPIRES",
        "DESCRIPTION",
    ]
    .map(String::from)];
    rows.extend(records.iter().map(|r| {
        [
            r.id.to_string(),
            r.kind().to_string(),
            status(r, now).to_owned(),
            visibility(r).to_owned(),
            format!("{}_…{}", if r.is_public { "pk" } else { "sk" }, r.last_four),
            timestamp(r.created_at),
            r.expires_at.map_or_else(|| "never".to_owned(), timestamp),
            clean(&r.description),
        ]
    }));
    write_table(&mut out, &rows)?;
    out.flush()
}

/// Writes rows as left-aligned columns two spaces apart (the last column unpadded).
fn write_table<const N: usize>(out: &mut impl Write, rows: &[[String; N]]) -> io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                let pad = width - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `valid`, `revoked` or `expired` at `now`.
pub(crate) fn status(record: &KeyRecord, now: SystemTime) -> &'static str {
    match record.why_invalid_at(now) {
        None => "valid",
        Some(WhyInvalid::ManuallyRevoked) => "revoked",
        Some(WhyInvalid::Expired) => "expired",
        Some(_) => "invalid",
    }
}

/// `public` (`pk_`) or `secret` (`sk_`).
fn visibility(record: &KeyRecord) -> &'static str {
    if record.is_public {
        "public"
    } else {
        "secret"
    }
}

/// `user 0b1d…` / `team 0b1d…`.
pub(crate) fn owner(owner: &Owner) -> String {
    format!("{} {}", owner.kind(), owner.id())
}

/// `a user key (secret) for user …, id …`: a created key without its value.
pub(crate) fn summary(record: &KeyRecord) -> String {
    format!(
        "a {} key ({}) for {}, id {}",
        record.kind(),
        visibility(record),
        owner(&record.owner),
        record.id
    )
}

/// `2026-12-31T07:09:16Z (in 30d)` or `never`.
fn expiry(at: Option<SystemTime>, now: SystemTime) -> String {
    match at {
        None => "never".to_owned(),
        Some(at) => format!("{} ({})", timestamp(at), relative(at, now)),
    }
}

/// `expires 2026-12-31T07:09:16Z (in 30d)` or `never expires`.
pub(crate) fn expires(at: Option<SystemTime>, now: SystemTime) -> String {
    match at {
        None => "never expires".to_owned(),
        Some(_) => format!("expires {}", expiry(at, now)),
    }
}

/// A description fit for one terminal line: control characters escaped.
pub(crate) fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A value from the command line, quoted for an error message, unless it looks like an API
/// key: those are never printed.
pub(crate) fn shown(text: &str) -> String {
    if text.contains(MARKER) || text.len() > 80 {
        "(a value that looks like an API key; not shown)".to_owned()
    } else {
        format!("{text:?}")
    }
}

/// RFC 3339 in UTC to the second: `2026-12-01T07:09:16Z`.
pub(crate) fn timestamp(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `in 30d`, `in 1h 30m`, `5m ago`: the two largest units, to the nearest second.
pub(crate) fn relative(at: SystemTime, now: SystemTime) -> String {
    let (span, future) = match at.duration_since(now) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let text = span_text(span);
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn span_text(span: Duration) -> String {
    let secs = (span + Duration::from_millis(500)).as_secs();
    let units = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let parts: Vec<String> = units
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use keygate::store::{KeyStore as _, NewKey};

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64| timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
    }

    #[test]
    fn spans_show_two_units() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = |s: u64, ms: u64| now + Duration::from_secs(s) - Duration::from_millis(ms);
        assert_eq!(relative(later(30 * 86_400, 3), now), "in 30d");
        assert_eq!(relative(later(5400, 0), now), "in 1h 30m");
        assert_eq!(relative(later(86_400 + 59, 0), now), "in 1d");
        assert_eq!(relative(later(0, 0), now), "in 0s");
        assert_eq!(relative(now - Duration::from_secs(300), now), "5m ago");
    }

    #[test]
    fn descriptions_and_values_are_safe_to_print() {
        assert_eq!(clean("CI\n\x1b[31mred"), "CI\\n\\u{1b}[31mred");
        assert_eq!(clean("déploiement"), "déploiement");
        assert_eq!(shown("abc"), "\"abc\"");
        assert!(!shown(&format!("sk_x{MARKER}y")).contains(MARKER));
    }

    /// stdout and stderr of `write_created` for a fresh user key, and the key.
    async fn created(mode: Mode, new: NewKey) -> (String, String, String) {
        let store = keygate::MemoryKeyStore::new();
        let owner = Owner::user("0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c");
        let created = store.create(owner, new).await.unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        write_created(&mut out, &mut err, &created, mode).unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let key = created.key.expose_secret().to_owned();
        (text(out), text(err), key)
    }

    #[tokio::test]
    async fn a_created_key_is_printed_once_on_stdout() {
        let (out, err, key) = created(Mode::Piped, NewKey::new("CI")).await;
        assert_eq!(out, format!("{key}\n"));
        assert!(
            err.contains("user key (secret)") && err.contains("never expires"),
            "{err}"
        );
        assert!(!err.contains(MARKER));

        let new = NewKey::new("CI")
            .public(true)
            .expires_in(Duration::from_secs(3600));
        let (out, err, key) = created(Mode::Human, new).await;
        assert_eq!(out.matches(&key).count(), 1, "{out}");
        assert!(out.contains("shown once"));
        assert!(out.contains("user key, public"), "{out}");
        assert!(out.contains("(in 1h)"), "{out}");
        assert!(out.contains("description: CI"), "{out}");
        assert_eq!(err, "");

        let (out, err, key) = created(Mode::Json, NewKey::new("")).await;
        let body: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(body["value"], key.as_str());
        assert_eq!(out.matches(&key).count(), 1);
        assert_eq!(err, "");
    }

    #[test]
    fn tables_align_on_characters() {
        let rows = [
            ["A".to_owned(), "sk_…abcd".to_owned(), "x".to_owned()],
            ["long".to_owned(), "b".to_owned(), String::new()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     sk_…abcd  x\nlong  b\n"
        );
    }
}
