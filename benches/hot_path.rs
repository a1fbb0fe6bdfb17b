//! The cost of an auth layer on the request path, in process: an axum `Router` driven with
//! `oneshot`, the same trivial handler in every variant, all in one criterion group so the
//! ratios come from one run.
//!
//! ```text
//! cargo bench --bench hot_path                    # criterion, one group
//! cargo bench --bench hot_path -- --interleaved   # the same variants in alternation (see below)
//! ```
//!
//! `--interleaved` runs every variant for a batch of requests in turn, round after round (the
//! order rotates each round), and reports each variant's overhead over the bare router *in the
//! same round*, as a median over rounds. On a shared machine whose speed drifts between
//! criterion's consecutive measurements, paired rounds keep the drift out of the ratios.
//! `ROUNDS` (default 60) and `BATCH` (requests per variant per round, default 5000) set its size;
//! `ONLY=<variant>` runs the bare router and that variant alone (to profile one of them).
//!
//! Variants:
//! - `bare_router`: no auth (the baseline);
//! - `floor_validate_header_hashmap`: tower-http `ValidateRequestHeaderLayer::custom` doing a
//!   synchronous `HashMap` lookup of the bearer token and inserting an extension (the cheapest
//!   layer that checks anything);
//! - `handrolled_async_moka`: tower-http `AsyncRequireAuthorizationLayer` with a moka lookup and an
//!   extension insert (what a user would write by hand);
//! - `jwt_hs256`: an HS256 JWT verified per request with `jsonwebtoken`;
//! - `keygate_cache_hit`: `RequireApiKey` over a warm `CachedVerifier<MemoryKeyStore>`;
//! - `keygate_memory_store_no_cache`: `RequireApiKey` straight over `MemoryKeyStore`;
//! - `keygate_malformed_rejected`: a key with a bad checksum, refused before any lookup.

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use tower::ServiceExt;

mod common;
use common::request;
use common::variants::{variants, Variants};

fn hot_path(c: &mut Criterion) {
    let Variants { rt, list } = variants();
    let mut group = c.benchmark_group("hot_path");
    for (name, router, header, _) in &list {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = router.clone().oneshot(request(header)).await;
                black_box(response.map(|r| r.status()))
            })
        });
    }
    group.finish();
}

/// The variants in alternation; prints a markdown table of per-round medians.
fn interleaved() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, batch) = (env("ROUNDS", 60), env("BATCH", 5000));
    let Variants { rt, mut list } = variants();
    // `ONLY=name` keeps the bare router and that variant (for a profiler).
    if let Ok(only) = std::env::var("ONLY") {
        list.retain(|(name, ..)| *name == "bare_router" || *name == only);
    }
    let n = list.len();
    // ns per request, by variant, by round.
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        // Round r runs variant r mod n first: the order rotates.
        for i in 0..n {
            let v = (round + i) % n;
            let (_, router, header, _) = &list[v];
            let started = std::time::Instant::now();
            rt.block_on(async {
                for _ in 0..batch {
                    let response = router.clone().oneshot(request(header)).await;
                    black_box(response.map(|r| r.status()).ok());
                }
            });
            times[v].push(started.elapsed().as_nanos() as f64 / batch as f64);
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        let mid = xs.len() / 2;
        if xs.len().is_multiple_of(2) {
            (xs[mid - 1] + xs[mid]) / 2.0
        } else {
            xs[mid]
        }
    };
    let overhead = |v: usize| median((0..rounds).map(|r| times[v][r] - times[0][r]).collect());
    let floor_at = list
        .iter()
        .position(|(name, ..)| *name == "floor_validate_header_hashmap");
    let floor = floor_at.map_or(f64::NAN, overhead);
    println!("{rounds} rounds x {batch} requests per variant, order rotating; medians\n");
    println!("| variant | time / request | overhead over bare (paired) | vs floor's overhead |");
    println!("| --- | ---: | ---: | ---: |");
    for (v, (name, ..)) in list.iter().enumerate() {
        let time = median(times[v].clone());
        if v == 0 {
            println!("| {name} | {time:.0} ns | — | — |");
        } else {
            let over = overhead(v);
            println!(
                "| {name} | {time:.0} ns | {over:.0} ns | {:.2}× |",
                over / floor
            );
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--interleaved") {
        interleaved();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, hot_path);
