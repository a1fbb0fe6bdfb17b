//! `keygate::forward_auth`'s logs: the original request, without its query or the key. A test
//! binary of its own: a log capture is per thread, and a callsite that another test's thread
//! registers concurrently could miss it.

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use common::http::send_request;
use common::keys::Keys;
use keygate::forward_auth::ForwardAuth;
use keygate::CachedVerifier;

async fn ask(app: &axum::Router, uri: &str, peer: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = Request::builder().method(Method::GET).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    let addr: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    send_request(app, request, format!("GET {uri} from {peer}"))
        .await
        .status
}

#[tokio::test]
async fn logs_name_the_original_request_without_its_query_or_the_key() {
    let logs = common::logs::LogCapture::start();
    let keys = Keys::new().await;
    let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone())).router();
    let user = format!("Bearer {}", keys.user.key.expose_secret());
    let nginx = [
        ("authorization", user.as_str()),
        ("x-original-method", "POST"),
        ("x-original-uri", "/api/orders?token=secret-query"),
    ];
    assert_eq!(
        ask(&app, "/v1/authz", "127.0.0.1:40000", &nginx).await,
        StatusCode::OK
    );
    let stranger = ask(&app, "/v1/authz/own/path", "198.51.100.7:40000", &nginx).await;
    assert_eq!(stranger, StatusCode::OK);
    let text = logs.text();
    assert!(
        text.contains("original_method=POST original_uri=/api/orders trusted_peer=true"),
        "{text}"
    );
    assert!(
        text.contains("original_method=GET original_uri=/own/path trusted_peer=false"),
        "{text}"
    );
    assert!(!text.contains("secret-query"), "{text}");
    assert!(!text.contains("574ck4u7h"), "{text}");
}
