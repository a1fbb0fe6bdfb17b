//! A bounded soak under faults, on loopback; it stops by itself and exits non-zero on any
//! violated assertion.
//!
//! ```text
//! SOAK_SECS=120 cargo bench --bench soak --all-features   # the default duration
//! SOAK_SECS=15 cargo bench --bench soak --all-features    # smoke
//! ```
//!
//! Two guarded axum servers run at once, each hammered by `SOAK_CLIENTS` (default 8) keep-alive
//! reqwest clients drawing valid, revoked, expired, unknown and malformed keys:
//! - `sqlite`: `RequireApiKey::new(CachedVerifier::new(SqliteKeyStore))`; keys revoked through
//!   the store (bound 0: no 200 for a request sent after `revoke` returned);
//! - `stack-auth`: `CachedVerifier` (TTL 2 s) over `StackAuthVerifier`, which reaches
//!   `key_server(SqliteKeyStore)` through a fault proxy (`soak/proxy.rs`, written for the soak)
//!   that is in turn slow, answers 500, resets connections, and restarts the key server on the
//!   same port. Even revoked keys go through the verifier's admin client (bound 0), odd ones
//!   straight to the key server's store (bound: the TTL).
//!
//! Asserted: every status is the one the README's error table allows for the key's state at that
//! instant (no 5xx but 503, every 503 with `Retry-After`, never a 401 for a valid key); no panic;
//! RSS after the warm-up (first 20 %) at most max(16 MiB, 20 %) above the warm-up's peak; no key
//! in keygate's DEBUG log; at the end, with the upstream healthy, every key gets its final answer.

#[path = "soak/proxy.rs"]
mod proxy;
#[path = "soak/watch.rs"]
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::get;
use axum::Router;
use keygate::server::{key_server, KeyServerConfig};
use keygate::stack_auth::{StackAuthClient, StackAuthConfig, StackAuthVerifier};
use keygate::{
    CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey, SqliteKeyStore,
};
use proxy::{KeyServer, Mode, Proxy};
use uuid::Uuid;

const PROJECT: &str = "soak-project";
const SECRET: &str = "ssk_soak_secret_server_key";
const OWNER: &str = "0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c";
/// The positive TTL of the Stack Auth-backed cache: the bound for revocations it does not see.
const TTL_B: Duration = Duration::from_secs(2);
/// One tick of keygate's coarse clock, and then some.
const TICK: Duration = Duration::from_millis(20);
const N_VALID: usize = 20;
const N_REVOKED: usize = 24;
const N_EXPIRED: usize = 12;
const N_UNKNOWN: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Valid,
    Revoked,
    Expired,
    Unknown,
    Malformed,
}

struct Revocable {
    key: String,
    id: Uuid,
    /// Nanoseconds since the start (+1) when revocation was first attempted / returned; 0: not yet.
    started: AtomicU64,
    returned: AtomicU64,
    bound: Duration,
}

struct Scenario {
    name: &'static str,
    url: String,
    valid: Vec<String>,
    revoked: Vec<Revocable>,
    expired: Vec<(String, SystemTime)>,
    unknown: Vec<String>,
    malformed: Vec<String>,
}

/// Counts by (scenario, class, status; 0 = transport error), and the violations.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<(&'static str, Class, u16), u64>,
    violations: u64,
    shown: Vec<String>,
}

impl Tally {
    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.shown.len() < 20 {
            self.shown.push(what);
        }
    }
    fn merge(&mut self, other: Tally) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        self.violations += other.violations;
        for s in other.shown {
            if self.shown.len() < 20 {
                self.shown.push(s);
            }
        }
    }
}

fn nanos(start: Instant, at: Instant) -> u64 {
    at.duration_since(start).as_nanos() as u64 + 1
}

fn secs_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn make_pools(
    store: &impl KeyStore,
    start_at: SystemTime,
    dur: Duration,
    bound: impl Fn(usize) -> Duration,
) -> (Vec<String>, Vec<Revocable>, Vec<(String, SystemTime)>) {
    let owner = Owner::user(OWNER);
    let mut valid = Vec::new();
    for _ in 0..N_VALID {
        let c = store
            .create(owner.clone(), NewKey::new("soak valid"))
            .await
            .expect("create");
        valid.push(c.key.expose_secret().to_owned());
    }
    let mut revoked = Vec::new();
    for i in 0..N_REVOKED {
        let c = store
            .create(owner.clone(), NewKey::new("soak revoked"))
            .await
            .expect("create");
        revoked.push(Revocable {
            key: c.key.expose_secret().to_owned(),
            id: c.record.id,
            started: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            bound: bound(i),
        });
    }
    let mut expired = Vec::new();
    for i in 0..N_EXPIRED {
        let at = start_at + dur.mul_f64(0.25 + 0.35 * i as f64 / N_EXPIRED as f64);
        let c = store
            .create(owner.clone(), NewKey::new("soak expiring").expires_at(at))
            .await
            .expect("create");
        let at = c.record.expires_at.expect("expiry kept");
        expired.push((c.key.expose_secret().to_owned(), at));
    }
    (valid, revoked, expired)
}

/// Well-formed keys that no store holds, and keys that break a format rule.
async fn strangers(valid: &[String]) -> (Vec<String>, Vec<String>) {
    let elsewhere = MemoryKeyStore::new();
    let mut unknown = Vec::new();
    for _ in 0..N_UNKNOWN {
        let c = elsewhere
            .create(Owner::user(OWNER), NewKey::new("never stored"))
            .await
            .expect("create");
        unknown.push(c.key.expose_secret().to_owned());
    }
    let mut malformed = vec![
        "sk_short".to_owned(),
        "not-a-key-at-all".to_owned(),
        "x".repeat(300),
    ];
    for k in valid.iter().take(8) {
        let mut bad = k.clone();
        let last = bad.pop().expect("non-empty key");
        bad.push(if last == '0' { '1' } else { '0' }); // bad checksum
        malformed.push(bad);
        malformed.push(k[..k.len() - 5].to_owned()); // truncated
        malformed.push(k.to_uppercase());
    }
    (unknown, malformed)
}

fn judge(
    sc: &Scenario,
    class: Class,
    idx: usize,
    (start, sent, recv): (Instant, Instant, Instant),
    (sent_sys, recv_sys): (SystemTime, SystemTime),
    status: u16,
    retry_after: bool,
) -> Option<String> {
    let at = format!(
        "{} {:?}#{idx} sent at {:.3}s",
        sc.name,
        class,
        sent.duration_since(start).as_secs_f64()
    );
    match status {
        503 if !retry_after => Some(format!("{at}: 503 without Retry-After")),
        503 if class == Class::Malformed => Some(format!("{at}: 503 for a malformed key")),
        503 => None,
        200 => match class {
            Class::Valid => None,
            Class::Unknown | Class::Malformed => Some(format!("{at}: 200")),
            Class::Expired => {
                let exp = sc.expired[idx].1;
                (sent_sys > exp + TICK).then(|| format!("{at}: 200 after expiry"))
            }
            Class::Revoked => {
                let r = &sc.revoked[idx];
                let returned = r.returned.load(Ordering::SeqCst);
                let limit = returned + r.bound.as_nanos() as u64;
                (returned != 0 && nanos(start, sent) > limit).then(|| {
                    format!("{at}: 200, {:.3}s after revoke returned", {
                        (nanos(start, sent) - returned) as f64 / 1e9
                    })
                })
            }
        },
        401 => match class {
            Class::Valid => Some(format!("{at}: 401 for a valid key")),
            Class::Expired => {
                let exp = sc.expired[idx].1;
                (recv_sys + TICK < exp).then(|| format!("{at}: 401 before expiry"))
            }
            Class::Revoked => {
                let started = sc.revoked[idx].started.load(Ordering::SeqCst);
                (started == 0 || nanos(start, recv) < started)
                    .then(|| format!("{at}: 401 before revocation"))
            }
            Class::Unknown | Class::Malformed => None,
        },
        0 => Some(format!("{at}: transport error")),
        other => Some(format!("{at}: status {other}")),
    }
}

async fn client(
    sc: Arc<Scenario>,
    http: reqwest::Client,
    seed: u64,
    start: Instant,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while Instant::now() < until {
        let r = next();
        let (class, pool_len) = match r % 100 {
            0..40 => (Class::Valid, sc.valid.len()),
            40..60 => (Class::Revoked, sc.revoked.len()),
            60..70 => (Class::Expired, sc.expired.len()),
            70..85 => (Class::Unknown, sc.unknown.len()),
            _ => (Class::Malformed, sc.malformed.len()),
        };
        let idx = (next() % pool_len as u64) as usize;
        let key = match class {
            Class::Valid => &sc.valid[idx],
            Class::Revoked => &sc.revoked[idx].key,
            Class::Expired => &sc.expired[idx].0,
            Class::Unknown => &sc.unknown[idx],
            Class::Malformed => &sc.malformed[idx],
        };
        let (sent, sent_sys) = (Instant::now(), SystemTime::now());
        let res = http
            .get(&sc.url)
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await;
        let (status, retry_after) = match res {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let ra = resp.headers().contains_key("retry-after");
                match resp.bytes().await {
                    Ok(_) => (status, ra),
                    Err(_) => (0, false),
                }
            }
            Err(_) => (0, false),
        };
        let (recv, recv_sys) = (Instant::now(), SystemTime::now());
        *tally.counts.entry((sc.name, class, status)).or_default() += 1;
        let times = (start, sent, recv);
        if let Some(v) = judge(
            &sc,
            class,
            idx,
            times,
            (sent_sys, recv_sys),
            status,
            retry_after,
        ) {
            tally.violation(v);
        }
    }
    tally
}

async fn serve_guarded(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

/// When revocation `i` of `n` happens: spread over 10–85 % of the run.
fn revoke_at(start: Instant, dur: Duration, i: usize, n: usize) -> Instant {
    start + dur.mul_f64(0.10 + 0.75 * i as f64 / n as f64)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run());
    drop(rt);
    std::process::exit(code);
}

#[path = "soak/run.rs"]
mod run_impl;
use run_impl::run;
