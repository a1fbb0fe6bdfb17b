//! The seven hot-path variants (see `hot_path.rs` for what each one is), shared by `hot_path` and
//! `alloc_count` so both measure the same routers.

// tower-http's `ValidateRequest` returns `Result<(), Response>`: the shape is theirs.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keygate::{CachedVerifier, RequireApiKey};
use tower::ServiceExt;
use tower_http::auth::{AsyncAuthorizeRequest, AsyncRequireAuthorizationLayer};
use tower_http::validate_request::ValidateRequestHeaderLayer;

use super::{handler, request, Fixture};

fn unauthorized() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

fn bearer_token(request: &Request<Body>) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Who a hand-rolled layer says the caller is (inserted like keygate's principal, read by no one here).
#[derive(Clone)]
#[allow(dead_code)]
struct Caller(Arc<str>);

/// The hand-rolled layer: a moka lookup in a boxed future.
#[derive(Clone)]
struct MokaAuth(moka::future::Cache<String, Arc<str>>);

impl AsyncAuthorizeRequest<Body> for MokaAuth {
    type RequestBody = Body;
    type ResponseBody = Body;
    type Future = Pin<Box<dyn Future<Output = Result<Request<Body>, Response<Body>>> + Send>>;

    fn authorize(&mut self, mut request: Request<Body>) -> Self::Future {
        let cache = self.0.clone();
        Box::pin(async move {
            let token = bearer_token(&request).map(str::to_owned);
            match token {
                Some(token) => match cache.get(&token).await {
                    Some(user) => {
                        request.extensions_mut().insert(Caller(user));
                        Ok(request)
                    }
                    None => Err(unauthorized()),
                },
                None => Err(unauthorized()),
            }
        })
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// The variants, each with the header it is sent and the status it must answer, and the runtime.
pub struct Variants {
    pub rt: tokio::runtime::Runtime,
    pub list: Vec<(&'static str, Router, HeaderValue, StatusCode)>,
}

pub fn variants() -> Variants {
    let fixture = Fixture::new();
    let key = fixture.key().to_owned();
    let Fixture {
        rt,
        store,
        bearer,
        malformed,
        ..
    } = fixture;

    let bare = Router::new().route("/", get(handler));

    let table: Arc<HashMap<String, Arc<str>>> =
        Arc::new(HashMap::from([(key.clone(), Arc::from("user-1"))]));
    let floor = Router::new()
        .route("/", get(handler))
        .layer(ValidateRequestHeaderLayer::custom(
            move |request: &mut Request<Body>| {
                let user = bearer_token(request).and_then(|t| table.get(t)).cloned();
                match user {
                    Some(user) => {
                        request.extensions_mut().insert(Caller(user));
                        Ok(())
                    }
                    None => Err(unauthorized()),
                }
            },
        ));

    let moka = moka::future::Cache::new(10_000);
    rt.block_on(moka.insert(key.clone(), Arc::from("user-1")));
    let handrolled = Router::new()
        .route("/", get(handler))
        .layer(AsyncRequireAuthorizationLayer::new(MokaAuth(moka)));

    let secret = b"bench-secret-bench-secret-bench-secret";
    let jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: "user-1".into(),
            exp: 4_000_000_000,
        },
        &EncodingKey::from_secret(secret),
    )
    .expect("jwt");
    let jwt_bearer = HeaderValue::from_str(&format!("Bearer {jwt}")).expect("header");
    let decoding = DecodingKey::from_secret(secret);
    let validation = Validation::new(Algorithm::HS256);
    let jwt_router =
        Router::new()
            .route("/", get(handler))
            .layer(ValidateRequestHeaderLayer::custom(
                move |request: &mut Request<Body>| {
                    let claims = bearer_token(request).and_then(|t| {
                        jsonwebtoken::decode::<Claims>(t, &decoding, &validation).ok()
                    });
                    match claims {
                        Some(data) => {
                            request
                                .extensions_mut()
                                .insert(Caller(Arc::from(data.claims.sub)));
                            Ok(())
                        }
                        None => Err(unauthorized()),
                    }
                },
            ));

    let cached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(CachedVerifier::new(store.clone())));
    let uncached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(store.clone()));

    // Finalised once, as `axum::serve` does, so no variant pays for per-request route setup.
    let list = vec![
        (
            "bare_router",
            bare.with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "floor_validate_header_hashmap",
            floor.with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "handrolled_async_moka",
            handrolled.with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "jwt_hs256",
            jwt_router.with_state(()),
            jwt_bearer,
            StatusCode::OK,
        ),
        (
            "keygate_cache_hit",
            cached.clone().with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "keygate_memory_store_no_cache",
            uncached.with_state(()),
            bearer,
            StatusCode::OK,
        ),
        (
            "keygate_malformed_rejected",
            cached.with_state(()),
            malformed,
            StatusCode::UNAUTHORIZED,
        ),
    ];

    // Every variant must do what it claims before it is timed (and warms the cache).
    for (name, router, header, expected) in &list {
        let status = rt
            .block_on(router.clone().oneshot(request(header)))
            .map(|r| r.status())
            .expect("infallible");
        assert_eq!(status, *expected, "{name}");
    }
    Variants { rt, list }
}
