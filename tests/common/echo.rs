//! The echo upstream: an axum server on `127.0.0.1:0` that stands in for the application behind
//! a proxy. It answers every request with 200 and a JSON description of what it received
//! (`method`, `uri`, `headers`, `body`) and counts the requests it served, so a test can assert
//! both what reached the application and whether anything did.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::Json;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running echo upstream. Stops when dropped.
pub struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    /// Starts one on a free loopback port.
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .fallback(echo)
            .with_state(Arc::clone(&hits));
        let task = tokio::spawn(async move {
            // Ends only when the task is aborted (on drop).
            let _ = axum::serve(listener, app).await;
        });
        Echo { addr, hits, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `{"method", "uri", "headers": {name: [values…]}, "body"}` of the request.
async fn echo(
    State(hits): State<Arc<AtomicUsize>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut seen = Map::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match seen
            .entry(name.as_str().to_owned())
            .or_insert_with(|| json!([]))
        {
            Value::Array(values) => values.push(Value::String(value)),
            _ => unreachable!("every entry is an array"),
        }
    }
    Json(json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": seen,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// What the echo upstream saw, parsed from its JSON answer.
#[derive(Debug)]
pub struct Seen(pub Value);

impl Seen {
    /// Parses an echo answer.
    pub fn parse(body: &str) -> Seen {
        Seen(serde_json::from_str(body).unwrap_or_else(|e| panic!("echo JSON ({e}): {body}")))
    }

    /// The request method.
    pub fn method(&self) -> &str {
        self.0["method"].as_str().expect("method")
    }

    /// The request URI (path and query).
    pub fn uri(&self) -> &str {
        self.0["uri"].as_str().expect("uri")
    }

    /// The request body, as text.
    pub fn body(&self) -> &str {
        self.0["body"].as_str().expect("body")
    }

    /// Every value of header `name` (lowercase), in order; empty when absent.
    pub fn headers(&self, name: &str) -> Vec<String> {
        match &self.0["headers"][name] {
            Value::Array(values) => values
                .iter()
                .map(|v| v.as_str().expect("header value").to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The single value of header `name`, `None` when absent; panics when it came twice.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut values = self.headers(name);
        assert!(
            values.len() <= 1,
            "{name} arrived {} times: {values:?}",
            values.len()
        );
        values.pop()
    }
}
