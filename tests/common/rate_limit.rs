//! Rate-limited routers (feature `governor`): the test routes behind `RequireApiKey` with a
//! per-key or per-owner `GovernorLayer` inside it, or a `RefusalLimitLayer` outside it; and
//! requests from a given client address.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use keygate::rate_limit::{error_response, ClientIp, PrincipalKey, Quota, RefusalLimitLayer};
use keygate::{KeyVerifier, RequireApiKey};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

use super::app::routes;
use super::http::{request, send_request, Hdr, Reply};

/// The replenish period of every test limit: long enough that no bucket refills during a test.
pub const PERIOD: Duration = Duration::from_secs(60);

/// `GovernorLayer` with `extractor`, `burst` requests then one per [`PERIOD`], the
/// `x-ratelimit-*` headers, and keygate's JSON 429s.
pub fn governor(
    extractor: PrincipalKey,
    burst: u32,
) -> GovernorLayer<PrincipalKey, governor::middleware::StateInformationMiddleware, Body> {
    let config = GovernorConfigBuilder::default()
        .period(PERIOD)
        .burst_size(burst)
        .key_extractor(extractor)
        .use_headers()
        .finish()
        .expect("non-zero period and burst");
    GovernorLayer::new(config).error_handler(error_response)
}

/// The test routes, `guard` outside, `limit` inside: the limit sees the principal.
pub fn limited<V: KeyVerifier>(
    guard: RequireApiKey<V>,
    extractor: PrincipalKey,
    burst: u32,
) -> Router {
    routes().layer(governor(extractor, burst)).layer(guard)
}

/// `burst` refusals, then one per `period`.
pub fn quota(burst: u32, period: Duration) -> Quota {
    Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("non-zero burst"))
}

/// The test routes behind `guard`, with `refusals` outside it.
pub fn refusal_limited<V: KeyVerifier>(
    guard: RequireApiKey<V>,
    refusals: RefusalLimitLayer<ClientIp>,
) -> Router {
    routes().layer(guard).layer(refusals)
}

/// `GET uri` with `headers` from `client` (an `ip:port`), as axum's `ConnectInfo` says.
pub async fn send_from(app: &Router, client: &str, uri: &str, headers: &[Hdr]) -> Reply {
    let addr: SocketAddr = client.parse().expect("client address");
    let mut req: Request<Body> = request(uri, headers);
    req.extensions_mut().insert(ConnectInfo(addr));
    send_request(app, req, format!("GET {uri} from {client}")).await
}
