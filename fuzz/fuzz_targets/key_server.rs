//! The key server's router, driven in process on a current-thread runtime with arbitrary
//! methods, paths, queries, headers and bodies (raw bytes, or JSON objects of the protocol's
//! fields that may name the keys the store holds). Invariants: no 5xx ever (the memory store
//! cannot fail, so a 5xx is the server's fault); every answer carries `cache-control` and one
//! request id under both names; a 200 that is not an overridden 4xx needs the right server
//! credentials; with the override header no answer is a 4xx.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body as AxumBody;
use http::{HeaderValue, Method, Request, StatusCode};
use keygate::server::{key_server, KeyServerConfig};
use keygate::stack_protocol::headers::{
    ACCESS_TYPE, ACTUAL_STATUS, OVERRIDE_ERROR_STATUS, PROJECT_ID, REQUEST_ID, SECRET_SERVER_KEY,
};
use keygate::{KeyStore, MemoryKeyStore, NewKey, Owner};
use keygate_fuzz::{known_strings, Body};
use libfuzzer_sys::{arbitrary, fuzz_target};
use tower::ServiceExt as _;

const PROJECT: &str = "fuzz-project";
const SECRET: &str = "ssk_fuzz_secret_server_key";

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    method: u8,
    team: bool,
    path: PathTail,
    query: Vec<(u8, u8)>,
    raw_query: Option<String>,
    access: Access,
    hexclave_names: bool,
    override_errors: bool,
    content_type: u8,
    body: Body,
}

#[derive(arbitrary::Arbitrary, Debug)]
enum PathTail {
    Collection,
    Check,
    /// The id of a key in the store (0: user key, 1: team key) or a fresh UUID.
    Id(u8),
    Other(String),
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Access {
    Server,
    WrongSecret,
    WrongProject,
    OtherType(String),
    Nothing,
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::PUT,
];
const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|input: Input| runtime().block_on(run(input)));

async fn run(input: Input) {
    let store = MemoryKeyStore::new();
    let user = store
        .create(Owner::user("user-1"), NewKey::new("u"))
        .await
        .expect("create");
    let team = store
        .create(Owner::team("team-1"), NewKey::new("t"))
        .await
        .expect("create");
    let config = KeyServerConfig::new(PROJECT, SECRET).expect("config");
    let app = key_server(store, config);

    let mut known = vec![
        user.key.expose_secret().to_owned(),
        team.key.expose_secret().to_owned(),
        user.record.id.to_string(),
        team.record.id.to_string(),
    ];
    known.extend(known_strings());

    let base = if input.team {
        "/api/v1/team-api-keys"
    } else {
        "/api/v1/user-api-keys"
    };
    let mut uri = match &input.path {
        PathTail::Collection => base.to_owned(),
        PathTail::Check => format!("{base}/check"),
        PathTail::Id(i) => match i % 3 {
            0 => format!("{base}/{}", user.record.id),
            1 => format!("{base}/{}", team.record.id),
            _ => format!("{base}/00000000-0000-0000-0000-000000001234"),
        },
        PathTail::Other(tail) => format!("{base}/{tail}"),
    };
    let mut pairs: Vec<String> = input
        .query
        .iter()
        .map(|(field, value)| {
            let field = ["user_id", "team_id", "x", "user_id[]"][usize::from(field % 4)];
            format!("{field}={}", known[usize::from(*value) % known.len()])
        })
        .collect();
    if let Some(raw) = &input.raw_query {
        pairs.push(raw.clone());
    }
    if !pairs.is_empty() {
        uri = format!("{uri}?{}", pairs.join("&"));
    }

    let twin = |t: &keygate::stack_protocol::headers::HeaderTwin| {
        if input.hexclave_names {
            t.hexclave().clone()
        } else {
            t.stack().clone()
        }
    };
    let mut builder = Request::builder()
        .method(METHODS[usize::from(input.method) % METHODS.len()].clone())
        .uri(uri);
    let (access, project, secret) = match &input.access {
        Access::Server => ("server", PROJECT, SECRET),
        Access::WrongSecret => ("server", PROJECT, "ssk_fuzz_secret_server_kez"),
        Access::WrongProject => ("server", "other", SECRET),
        Access::OtherType(a) => (a.as_str(), PROJECT, SECRET),
        Access::Nothing => ("", "", ""),
    };
    let authorised = matches!(input.access, Access::Server);
    for (name, value) in [
        (twin(&ACCESS_TYPE), access),
        (twin(&PROJECT_ID), project),
        (twin(&SECRET_SERVER_KEY), secret),
    ] {
        if let (false, Ok(value)) = (value.is_empty(), HeaderValue::from_str(value)) {
            builder = builder.header(name, value);
        }
    }
    if input.override_errors {
        builder = builder.header(twin(&OVERRIDE_ERROR_STATUS), "true");
    }
    let content_type = CONTENT_TYPES[usize::from(input.content_type) % CONTENT_TYPES.len()];
    if !content_type.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, content_type);
    }
    let Ok(request) = builder.body(AxumBody::from(input.body.bytes(&known))) else {
        return;
    };

    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers();
    assert!(
        !status.is_server_error(),
        "the key server answered {status}"
    );
    assert_eq!(
        headers
            .get(http::header::CACHE_CONTROL)
            .map(HeaderValue::as_bytes),
        Some(&b"no-store, max-age=0"[..]),
        "{status} without cache-control"
    );
    let id_stack = headers.get(REQUEST_ID.stack());
    let id_hexclave = headers.get(REQUEST_ID.hexclave());
    assert!(id_stack.is_some() && id_stack == id_hexclave, "request ids");
    let actual = ACTUAL_STATUS.get(headers);
    if input.override_errors {
        assert!(
            !status.is_client_error(),
            "{status} despite the override header"
        );
    }
    if status == StatusCode::OK && actual.is_none() {
        assert!(authorised, "200 without the server credentials");
    }
}
