//! The log audit's capture. With `KEYGATE_LOG_AUDIT_DIR` set, every `tracing` event and `log`
//! record of the process, at TRACE, from every crate (keygate and its dependencies), is appended
//! as plain text (span fields included, span openings and closings too) to
//! `<dir>/<test binary>.<pid>.log`; `.ci/log-audit` then scans those files for keys. Unset,
//! nothing is installed and nothing is written.
//!
//! The global subscriber is installed before `main` (the `ctor` crate's `.init_array` /
//! `__mod_init_func` entry), so it covers every test of the binary, not
//! only the ones that call a helper. A test that installs a scoped subscriber hides the global
//! one on its thread: it adds [`layer`] to it (as `LogCapture` does), and so tees into the file.
//! The lib's unit tests include this file too (`#[path]` in src/lib.rs).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use tracing::Subscriber;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, FmtSpan, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The variable naming the directory the audit writes to.
pub const DIR_VAR: &str = "KEYGATE_LOG_AUDIT_DIR";

/// A line the scan fails on: the capture could not be set up as it should.
const BROKEN: &str = "KEYGATE-LOG-AUDIT-BROKEN";

/// This process's audit file, opened on first use; `None` when the audit is off.
fn file() -> Option<Arc<File>> {
    static FILE: OnceLock<Option<Arc<File>>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::var_os(DIR_VAR)?;
        let exe = std::env::current_exe().ok();
        let name = exe
            .as_deref()
            .and_then(Path::file_name)
            .map_or_else(|| "unknown".into(), |n| n.to_string_lossy());
        let path = Path::new(&dir).join(format!("{name}.{}.log", std::process::id()));
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => Some(Arc::new(file)),
            Err(error) => {
                // The scan fails on the binary's missing file.
                eprintln!("{BROKEN}: cannot open {}: {error}", path.display());
                None
            }
        }
    })
    .clone()
}

/// The layer writing every event to the audit file; `None` (a no-op layer) when the audit is
/// off. Add it to any subscriber a test installs itself.
pub fn layer<S>() -> Option<impl Layer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let file = file()?;
    Some(
        tracing_subscriber::fmt::layer()
            .fmt_fields(AuditFields::default())
            .with_writer(file)
            .with_ansi(false)
            // Span timings and formatted fields live in the span's extensions, shared with any
            // other `fmt` layer on the same subscriber (`LogCapture`'s): without timings here,
            // and with fields of a type of its own, the audit changes nothing a test reads.
            .without_time()
            .with_thread_names(true)
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE),
    )
}

/// `DefaultFields` under a type of its own: `fmt` layers cache a span's formatted fields in the
/// span's extensions by formatter type, so two layers with the same type would write the fields
/// twice into one entry.
#[derive(Default)]
struct AuditFields(DefaultFields);

impl<'w> FormatFields<'w> for AuditFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

/// Installs the global subscriber (TRACE, every target, `log` records bridged) when the audit
/// is on. Runs once, before `main`.
fn install() {
    let Some(layer) = layer() else { return };
    if let Err(error) = tracing_subscriber::registry().with(layer).try_init() {
        if let Some(mut file) = file().as_deref() {
            // Best effort: the scan also fails when a binary's file is missing.
            let _ = writeln!(file, "{BROKEN}: no global subscriber: {error}");
        }
    }
}

// `unsafe` is ctor's acknowledgement that this runs before `main`, so it must not rely on
// anything `main` sets up: `install` only reads a variable, opens a file and sets the subscriber.
#[ctor::ctor(unsafe)]
fn install_at_start() {
    install();
}
