//! The soak's body: setup, clients, revocations, the fault schedule, the final checks, the report.

use super::*;

struct Schedule {
    phases: BTreeMap<&'static str, u64>,
}

/// Cycles the upstream through faults until 90 % of the run, then leaves it healthy.
async fn faults(proxy: Arc<Proxy>, ks: Arc<KeyServer>, start: Instant, dur: Duration) -> Schedule {
    let scale = (dur.as_secs_f64() / 120.0).clamp(0.125, 1.0);
    let plan: [(&str, f64); 8] = [
        ("up", 6.0),
        ("slow", 5.0),
        ("up", 4.0),
        ("failing 500", 3.0),
        ("up", 4.0),
        ("reset", 3.0),
        ("up", 4.0),
        ("restart (down)", 2.0),
    ];
    let stop = start + dur.mul_f64(0.9);
    let mut phases = BTreeMap::new();
    'outer: loop {
        for (name, secs) in plan {
            if Instant::now() >= stop {
                break 'outer;
            }
            let len = Duration::from_secs_f64(secs * scale);
            if name != "up" {
                *phases.entry(name).or_default() += 1;
            }
            match name {
                "slow" => proxy.set(Mode::Slow),
                "failing 500" => proxy.set(Mode::Failing),
                "reset" => proxy.set(Mode::Reset),
                "restart (down)" => {
                    proxy.set(Mode::Up);
                    ks.stop().await;
                    proxy.cut_all();
                    tokio::time::sleep(len).await;
                    ks.restart().await;
                    proxy.faults.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => proxy.set(Mode::Up),
            }
            tokio::time::sleep(len).await;
        }
    }
    proxy.set(Mode::Up);
    Schedule { phases }
}

/// Sets the instants of one revocation around `revoke`, retrying until it succeeds or `until`.
async fn revoke_one<F, Fut, E>(
    r: &Revocable,
    start: Instant,
    until: Instant,
    revoke: F,
) -> Result<(), E>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    r.started
        .store(nanos(start, Instant::now()), Ordering::SeqCst);
    loop {
        match revoke().await {
            Ok(()) => {
                r.returned
                    .store(nanos(start, Instant::now()), Ordering::SeqCst);
                return Ok(());
            }
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Asks for every key once more, with the upstream healthy: valid → 200, the rest → 401
/// (valid keys get up to 5 s for the breaker to close).
async fn final_probe(sc: &Scenario, http: &reqwest::Client, tally: &mut Tally) {
    let get = |key: &str| {
        let req = http
            .get(&sc.url)
            .header("authorization", format!("Bearer {key}"));
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    for (i, k) in sc.valid.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = get(k).await;
        while status != 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            status = get(k).await;
        }
        if status != 200 {
            tally.violation(format!("{} final: valid #{i} got {status}", sc.name));
        }
    }
    tokio::time::sleep(TTL_B + TICK).await;
    let rest = sc.revoked.iter().map(|r| (Class::Revoked, r.key.as_str()));
    let rest = rest.chain(sc.expired.iter().map(|(k, _)| (Class::Expired, k.as_str())));
    let rest = rest.chain(
        sc.unknown
            .iter()
            .take(20)
            .map(|k| (Class::Unknown, k.as_str())),
    );
    let rest = rest.chain(sc.malformed.iter().map(|k| (Class::Malformed, k.as_str())));
    for (class, k) in rest {
        let status = get(k).await;
        if status != 401 {
            tally.violation(format!("{} final: {class:?} key got {status}", sc.name));
        }
    }
}

pub async fn run() -> i32 {
    let dur = Duration::from_secs(secs_env("SOAK_SECS", 120).max(5));
    let n_clients = secs_env("SOAK_CLIENTS", 8).max(1) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("keygate.log");
    watch::log_to(&log_path);
    let panics = watch::count_panics();

    let setup_margin = Duration::from_secs(3);
    let start_sys = SystemTime::now() + setup_margin;
    // Scenario (a): SQLite store behind the cache.
    let store_a = SqliteKeyStore::open(dir.path().join("a.db"))
        .await
        .expect("open a");
    let (valid, revoked, expired) = make_pools(&store_a, start_sys, dur, |_| Duration::ZERO).await;
    let (unknown, malformed) = strangers(&valid).await;
    let cached_a = CachedVerifier::new(store_a.clone());
    let app_a = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireApiKey::new(cached_a.clone()));
    let sc_a = Arc::new(Scenario {
        name: "sqlite",
        url: serve_guarded(app_a).await,
        valid,
        revoked,
        expired,
        unknown,
        malformed,
    });

    // Scenario (b): StackAuthVerifier → fault proxy → key_server(SqliteKeyStore).
    let store_b = SqliteKeyStore::open(dir.path().join("b.db"))
        .await
        .expect("open b");
    let bound_b = |i: usize| {
        if i.is_multiple_of(2) {
            Duration::ZERO
        } else {
            TTL_B + TICK
        }
    };
    let (valid, revoked, expired) = make_pools(&store_b, start_sys, dur, bound_b).await;
    let (unknown, malformed) = strangers(&valid).await;
    let config = KeyServerConfig::new(PROJECT, SECRET).expect("key server config");
    let ks = Arc::new(KeyServer::start(key_server(store_b.clone(), config)).await);
    let proxy = Arc::new(Proxy::start(ks.addr).await);
    let upstream_http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let verifier = StackAuthVerifier::builder(
        StackAuthConfig::new(PROJECT, SECRET).base_url(format!("http://{}", proxy.addr)),
    )
    .client(upstream_http)
    .attempt_timeout(Duration::from_millis(800))
    .deadline(Duration::from_secs(2))
    .circuit_breaker(5, Duration::from_secs(2))
    .build()
    .expect("verifier");
    let cached_b = CachedVerifier::builder(verifier)
        .ttl(TTL_B)
        .negative_ttl(Duration::from_secs(1))
        .build();
    let admin: StackAuthClient = cached_b
        .get_ref()
        .admin_client()
        .timeout(Duration::from_secs(3));
    let app_b = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireApiKey::new(cached_b.clone()));
    let sc_b = Arc::new(Scenario {
        name: "stack-auth",
        url: serve_guarded(app_b).await,
        valid,
        revoked,
        expired,
        unknown,
        malformed,
    });

    // Go.
    let wait = start_sys
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    let start = Instant::now();
    let until = start + dur;
    let samples = watch::sample_rss(start, until);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut clients = Vec::new();
    for (s, sc) in [&sc_a, &sc_b].into_iter().enumerate() {
        for c in 0..n_clients {
            let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul((s * 100 + c + 1) as u64);
            clients.push(tokio::spawn(client(
                Arc::clone(sc),
                http.clone(),
                seed,
                start,
                until,
            )));
        }
    }
    let revoker_a = {
        let (sc, cached) = (Arc::clone(&sc_a), cached_a.clone());
        tokio::spawn(async move {
            let mut failed = 0u64;
            for (i, r) in sc.revoked.iter().enumerate() {
                tokio::time::sleep_until(revoke_at(start, dur, i, sc.revoked.len()).into()).await;
                let store = cached.get_ref();
                let res = revoke_one(r, start, until, || async {
                    store.revoke(r.id).await.map(drop)
                })
                .await;
                failed += u64::from(res.is_err());
            }
            failed
        })
    };
    let revoker_b = {
        let (sc, store) = (Arc::clone(&sc_b), store_b.clone());
        tokio::spawn(async move {
            let (owner, mut failed) = (Owner::user(OWNER), 0u64);
            for (i, r) in sc.revoked.iter().enumerate() {
                tokio::time::sleep_until(revoke_at(start, dur, i, sc.revoked.len()).into()).await;
                let res = if i.is_multiple_of(2) {
                    let through_admin = || async {
                        admin
                            .revoke(&owner, r.id)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    };
                    revoke_one(r, start, until, through_admin).await
                } else {
                    let direct = || async {
                        store
                            .revoke(r.id)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    };
                    revoke_one(r, start, until, direct).await
                };
                failed += u64::from(res.is_err());
            }
            failed
        })
    };
    let schedule = faults(Arc::clone(&proxy), Arc::clone(&ks), start, dur).await;

    let mut tally = Tally::default();
    for c in clients {
        match c.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.violation(format!("client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    for (name, r) in [("sqlite", revoker_a.await), ("stack-auth", revoker_b.await)] {
        match r {
            Ok(0) => {}
            Ok(n) => tally.violation(format!("{name}: {n} revocations never returned Ok")),
            Err(e) => tally.violation(format!("{name}: revoker failed: {e}")),
        }
    }
    final_probe(&sc_a, &http, &mut tally).await;
    final_probe(&sc_b, &http, &mut tally).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let samples = samples.lock().expect("samples").clone();
    // The log scan must be able to fail: a planted key is found.
    let planted = dir.path().join("planted.log");
    let key = sc_a.valid[0].clone();
    std::fs::write(&planted, format!("x\nlevel=DEBUG key {}…\ny\n", &key[..30])).expect("plant");
    assert_eq!(
        watch::scan_log(&planted, &[key]).0,
        1,
        "the log scan finds a planted key"
    );
    report(&ReportIn {
        tally,
        elapsed,
        dur,
        n_clients,
        schedule,
        proxy: &proxy,
        samples,
        panics: panics.load(Ordering::SeqCst),
        log_path: &log_path,
        keys: [&sc_a, &sc_b].iter().flat_map(|s| all_keys(s)).collect(),
        stats: [
            format!("{:?}", cached_a.stats()),
            format!("{:?}", cached_b.stats()),
        ],
    })
}

fn all_keys(sc: &Scenario) -> Vec<String> {
    let mut keys = sc.valid.clone();
    keys.extend(sc.revoked.iter().map(|r| r.key.clone()));
    keys.extend(sc.expired.iter().map(|e| e.0.clone()));
    keys.extend(sc.unknown.iter().cloned());
    keys
}

struct ReportIn<'a> {
    tally: Tally,
    elapsed: Duration,
    dur: Duration,
    n_clients: usize,
    schedule: Schedule,
    proxy: &'a Proxy,
    samples: Vec<(f64, u64)>,
    panics: u64,
    log_path: &'a std::path::Path,
    keys: Vec<String>,
    stats: [String; 2],
}

fn report(r: &ReportIn<'_>) -> i32 {
    let mut tally = Tally {
        counts: r.tally.counts.clone(),
        violations: r.tally.violations,
        shown: r.tally.shown.clone(),
    };
    println!(
        "soak: {:.1} s, {} clients per server",
        r.elapsed.as_secs_f64(),
        r.n_clients
    );
    for name in ["sqlite", "stack-auth"] {
        let rows: Vec<_> = tally
            .counts
            .iter()
            .filter(|((n, _, _), _)| *n == name)
            .collect();
        let total: u64 = rows.iter().map(|(_, v)| **v).sum();
        println!(
            "\n[{name}] {total} requests ({:.0}/s)",
            total as f64 / r.elapsed.as_secs_f64()
        );
        println!("| class | requests | 200 | 401 | 503 | other |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for class in [
            Class::Valid,
            Class::Revoked,
            Class::Expired,
            Class::Unknown,
            Class::Malformed,
        ] {
            let get = |s: u16| tally.counts.get(&(name, class, s)).copied().unwrap_or(0);
            let all: u64 = rows
                .iter()
                .filter(|((_, c, _), _)| *c == class)
                .map(|(_, v)| **v)
                .sum();
            let other = all - get(200) - get(401) - get(503);
            println!(
                "| {class:?} | {all} | {} | {} | {} | {other} |",
                get(200),
                get(401),
                get(503)
            );
        }
    }
    let f = &r.proxy.faults;
    println!("\nfaults (phases): {:?}", r.schedule.phases);
    println!(
        "faults (upstream requests or connections hit): slowed {}, answered 500 {}, reset {}, \
         connections cut by a restart {}, connections refused while down {}, restarts {}",
        f.slowed.load(Ordering::Relaxed),
        f.failed_500.load(Ordering::Relaxed),
        f.reset.load(Ordering::Relaxed),
        f.cut.load(Ordering::Relaxed),
        f.refused.load(Ordering::Relaxed),
        f.restarts.load(Ordering::Relaxed),
    );
    println!(
        "cache stats: sqlite {}\ncache stats: stack-auth {}",
        r.stats[0], r.stats[1]
    );

    // RSS.
    let warm_end = r.dur.as_secs_f64() * 0.2;
    let warm = r
        .samples
        .iter()
        .filter(|(t, _)| *t <= warm_end)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let after = r
        .samples
        .iter()
        .filter(|(t, _)| *t > warm_end)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let last = r.samples.last().map(|s| s.1).unwrap_or(0);
    let margin = (16 * 1024).max(warm / 5);
    println!(
        "RSS: warm-up peak {:.1} MiB, peak after warm-up {:.1} MiB, last {:.1} MiB, allowed {:.1} MiB \
         ({} samples)",
        warm as f64 / 1024.0,
        after as f64 / 1024.0,
        last as f64 / 1024.0,
        (warm + margin) as f64 / 1024.0,
        r.samples.len()
    );
    if after > warm + margin {
        tally.violation(format!("RSS grew from {warm} KiB to {after} KiB"));
    }
    if r.panics > 0 {
        tally.violation(format!("{} panics", r.panics));
    }
    let (hits, shown) = watch::scan_log(r.log_path, &r.keys);
    println!(
        "log: {} lines at DEBUG, {hits} with a key",
        watch::log_lines(r.log_path)
    );
    if hits > 0 {
        tally.violation(format!("a key in the log: {hits} lines ({shown:?})"));
    }
    println!("panics: {}", r.panics);
    println!("violations: {}", tally.violations);
    for v in &tally.shown {
        println!("  - {v}");
    }
    i32::from(tally.violations > 0)
}
