//! Heap allocations per request on the hot path, counted by a wrapping global allocator.
//!
//! ```text
//! cargo bench --bench alloc_count                  # every variant
//! cargo bench --bench alloc_count -- keygate_cache_hit   # one variant (for callgrind, say)
//! ```
//!
//! Counts are exact and repeatable, unlike times on a shared machine. Each variant sends the same
//! request through an axum `Router` with `oneshot`, as `hot_path` does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, StatusCode};
use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey};
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

#[global_allocator]
static GLOBAL: Counting = Counting;

async fn handler() -> &'static str {
    "ok"
}

fn request(bearer: &HeaderValue) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = http::Uri::from_static("/");
    request.headers_mut().insert(AUTHORIZATION, bearer.clone());
    request
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryKeyStore::new();
    let created = rt
        .block_on(store.create(Owner::user("user-1"), NewKey::new("bench")))
        .expect("create");
    let key = created.key.expose_secret().to_owned();
    let bearer = HeaderValue::from_str(&format!("Bearer {key}")).expect("header");
    let mut malformed_key = key.clone();
    malformed_key.replace_range(100.., "zz");
    let malformed = HeaderValue::from_str(&format!("Bearer {malformed_key}")).expect("header");

    let bare = Router::new().route("/", get(handler));
    let cached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(CachedVerifier::new(store.clone())));
    let uncached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(store.clone()));
    // Finalised once, as `axum::serve` does, so no variant pays for per-request route setup.
    let bare = bare.with_state(());
    let cached = cached.with_state(());
    let uncached = uncached.with_state(());
    let variants = [
        ("bare_router", &bare, &bearer, StatusCode::OK),
        ("keygate_cache_hit", &cached, &bearer, StatusCode::OK),
        (
            "keygate_memory_store_no_cache",
            &uncached,
            &bearer,
            StatusCode::OK,
        ),
        (
            "keygate_malformed_rejected",
            &cached,
            &malformed,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    const N: u64 = 20_000;
    println!("{:<32} {:>12} {:>12}", "variant", "allocs/req", "bytes/req");
    for (name, router, header, expected) in variants {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        // Warm up (fills the cache), then count.
        for _ in 0..100 {
            let status = rt
                .block_on(Router::clone(router).oneshot(request(header)))
                .map(|r| r.status())
                .expect("infallible");
            assert_eq!(status, expected, "{name}");
        }
        let (a0, b0) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        rt.block_on(async {
            for _ in 0..N {
                let response = Router::clone(router).oneshot(request(header)).await;
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
