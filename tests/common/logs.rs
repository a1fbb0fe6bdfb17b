//! The one log capture: every event on this thread, at TRACE, as plain text.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;

/// An in-memory writer for `tracing_subscriber::fmt`, installed as this thread's default
/// subscriber for as long as it lives. Under `#[tokio::test]` (a current-thread runtime) every
/// task of the test, the server's included, runs on this thread.
pub struct LogCapture {
    buf: Writer,
    _guard: DefaultGuard,
}

#[derive(Clone, Default)]
struct Writer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing: no ANSI colours, no timestamps (each line starts with its level).
    pub fn start() -> Self {
        Self::with_span_events(FmtSpan::NONE)
    }

    /// Like [`start`](Self::start), and each span's close is a line too, with the span's
    /// fields in the order they were recorded (`… keygate.verify{outcome="pass" …}: close …`).
    pub fn with_span_closes() -> Self {
        Self::with_span_events(FmtSpan::CLOSE)
    }

    fn with_span_events(events: FmtSpan) -> Self {
        let buf = Writer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(events)
            .with_ansi(false)
            .without_time()
            .finish()
            // Hiding the global subscriber on this thread must not hide these events from the
            // log audit.
            .with(super::audit::layer());
        Self {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.0.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }
}
