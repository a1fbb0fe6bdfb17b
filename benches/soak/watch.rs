//! What the soak watches besides statuses: RSS, panics, and the log (for keys).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The process's resident set, in KiB, from `/proc/self/status`.
pub fn rss_kib() -> u64 {
    let mut s = String::new();
    if File::open("/proc/self/status")
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return 0;
    }
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// RSS samples, one a second: (seconds since start, KiB).
pub type Samples = Arc<Mutex<Vec<(f64, u64)>>>;

pub fn sample_rss(start: Instant, until: Instant) -> Samples {
    let samples: Samples = Arc::default();
    let out = Arc::clone(&samples);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let kib = rss_kib();
            out.lock()
                .expect("samples")
                .push((start.elapsed().as_secs_f64(), kib));
            if Instant::now() >= until {
                break;
            }
        }
    });
    samples
}

/// Counts panics in any thread or task (and still prints them).
pub fn count_panics() -> Arc<AtomicU64> {
    let panics = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    panics
}

/// keygate's log, at DEBUG, into `path`.
pub fn log_to(path: &Path) {
    let file = File::create(path).expect("log file");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,keygate=debug"))
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
}

/// Every place the log shows a key: the marker `574ck4u7h` next to a letter or digit (as in a
/// key, `…user` + one flag digit + `574ck4u7h` + eight hex digits), or the 24 characters that
/// follow the prefix of any of `keys`. Returns (lines with a hit, a note on the first few).
pub fn scan_log(path: &Path, keys: &[String]) -> (u64, Vec<String>) {
    let Ok(file) = File::open(path) else {
        return (1, vec!["no log".to_owned()]);
    };
    let needles: std::collections::HashSet<&str> = keys
        .iter()
        .filter_map(|k| k.get(3..27))
        .filter(|n| n.len() == 24)
        .collect();
    let mut hits = 0;
    let mut shown = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        let bytes = line.as_bytes();
        let marker = line.match_indices("574ck4u7h").any(|(i, m)| {
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let after = bytes.get(i + m.len()).copied();
            before.is_some_and(|b| b.is_ascii_alphanumeric())
                || after.is_some_and(|b| b.is_ascii_alphanumeric())
        });
        let verbatim = line
            .match_indices('_')
            .any(|(i, _)| line.get(i + 1..i + 25).is_some_and(|n| needles.contains(n)));
        if marker || verbatim {
            hits += 1;
            if shown.len() < 3 {
                // The line may hold a key: show only where it is.
                shown.push(format!("log line of {} bytes", line.len()));
            }
        }
    }
    (hits, shown)
}

/// Lines in the log.
pub fn log_lines(path: &Path) -> usize {
    File::open(path)
        .map(|f| BufReader::new(f).lines().count())
        .unwrap_or(0)
}
