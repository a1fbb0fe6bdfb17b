//! Heap allocations per request on the hot path, counted by a wrapping global allocator.
//!
//! ```text
//! cargo bench --bench alloc_count                  # every variant
//! cargo bench --bench alloc_count -- keygate_cache_hit   # one variant (for callgrind, say)
//! ```
//!
//! Counts are exact and repeatable, unlike times on a shared machine. The variants are
//! `hot_path`'s seven (the same routers, from `common::variants`), each sent the same request
//! through an axum `Router` with `oneshot`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use tower::ServiceExt;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

mod common;
use common::request;
use common::variants::{variants, Variants};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let Variants { rt, list } = variants();
    const N: u64 = 20_000;
    println!("{:<32} {:>12} {:>12}", "variant", "allocs/req", "bytes/req");
    for (name, router, header, expected) in &list {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        // Warm up (fills the caches), then count.
        for _ in 0..100 {
            let status = rt
                .block_on(router.clone().oneshot(request(header)))
                .map(|r| r.status())
                .expect("infallible");
            assert_eq!(status, *expected, "{name}");
        }
        let (a0, b0) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        rt.block_on(async {
            for _ in 0..N {
                let response = router.clone().oneshot(request(header)).await;
                std::hint::black_box(response.map(|r| r.status()).ok());
            }
        });
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - a0;
        let bytes = BYTES.load(Ordering::Relaxed) - b0;
        println!(
            "{name:<32} {:>12.2} {:>12.1}",
            allocs as f64 / N as f64,
            bytes as f64 / N as f64
        );
    }
}
