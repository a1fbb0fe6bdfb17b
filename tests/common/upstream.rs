//! The scripted upstream: a loopback server that stands in for Stack Auth. It either follows a
//! [`Script`] over raw TCP (answer after a delay, never answer, reset mid-body, refuse the
//! connection, …) or serves an axum `Router` (keygate's own key server). Either way it records
//! and counts every complete HTTP request it reads.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream does with every connection.
#[derive(Clone)]
pub enum Script {
    /// Nothing listens: the port was bound, then released.
    Refused,
    /// Reads the request, waits `delay`, writes `bytes` (a whole response) and closes.
    Reply { delay: Duration, bytes: Arc<[u8]> },
    /// Reads the request and never writes a byte; holds the connection until the client drops it.
    Silent,
    /// Reads the request, writes `bytes` (a head promising more body than follows), then resets
    /// the connection.
    ResetAfter(Arc<[u8]>),
    /// The client is told to speak TLS (`https://`); the upstream answers the handshake with
    /// plain HTTP at once and closes. No HTTP request is ever read.
    PlainToTls,
    /// Connection `n` (from 0, in accept order) gets script `n`; later ones get the last.
    Each(Arc<[Script]>),
    /// The request's path decides: the script of the first prefix it starts with (`Silent` if
    /// none). Only `Reply`, `Silent` and `ResetAfter` may be chosen this way.
    ByPath(Arc<[(&'static str, Script)]>),
}

/// One request as the upstream read it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    /// Empty for requests to a served `Router`.
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

pub struct Upstream {
    base_url: String,
    calls: Arc<AtomicUsize>,
    requests: Log,
}

impl Upstream {
    fn new(scheme: &str, addr: SocketAddr) -> Self {
        Self {
            base_url: format!("{scheme}://{addr}"),
            calls: Arc::default(),
            requests: Arc::default(),
        }
    }

    /// Follows `script` on a loopback port.
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let scheme = match script {
            Script::PlainToTls => "https",
            _ => "http",
        };
        let upstream = Self::new(scheme, addr);
        if let Script::Refused = script {
            drop(listener);
            return upstream;
        }
        let (calls, requests) = (upstream.calls.clone(), upstream.requests.clone());
        tokio::spawn(async move {
            let mut accepted = 0usize;
            while let Ok((stream, _)) = listener.accept().await {
                let script = match &script {
                    Script::Each(scripts) => scripts
                        .get(accepted.min(scripts.len().saturating_sub(1)))
                        .cloned()
                        .unwrap_or(Script::Silent),
                    other => other.clone(),
                };
                accepted += 1;
                let (calls, requests) = (calls.clone(), requests.clone());
                // I/O errors only mean the client went away first (an oversized body, a timeout).
                tokio::spawn(async move {
                    let _ = serve(stream, script, calls, requests).await;
                });
            }
        });
        upstream
    }

    /// Serves `app` on a loopback port, recording every request (without its body).
    pub async fn serve(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = Self::new("http", listener.local_addr().expect("local addr"));
        let (calls, requests) = (upstream.calls.clone(), upstream.requests.clone());
        let app = app.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let recorded = Recorded {
                    method: request.method().to_string(),
                    path: request
                        .uri()
                        .path_and_query()
                        .map_or_else(String::new, ToString::to_string),
                    headers: request
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                };
                record(&calls, &requests, recorded);
                next.run(request)
            },
        ));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("upstream server") });
        upstream
    }

    /// `http://127.0.0.1:<port>` (`https://` for [`Script::PlainToTls`]).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Complete HTTP requests read so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Requests so far whose path (without the query) ends with `suffix`.
    pub fn calls_to(&self, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.path
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .ends_with(suffix)
            })
            .count()
    }

    /// Every request so far, in the order they were read.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Polls until the upstream has read `n` requests; panics after 5 s.
    pub async fn wait_for_calls(&self, n: usize) {
        for _ in 0..5_000 {
            if self.calls() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "the upstream never read {n} requests (read {})",
            self.calls()
        );
    }
}

fn record(calls: &AtomicUsize, requests: &Log, request: Recorded) {
    requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request);
    calls.fetch_add(1, Ordering::SeqCst);
}

async fn serve(
    mut stream: TcpStream,
    script: Script,
    calls: Arc<AtomicUsize>,
    requests: Log,
) -> io::Result<()> {
    if let Script::PlainToTls = script {
        let answer = http_response(400, &[("content-type", "text/plain")], b"not TLS");
        stream.write_all(&answer).await?;
        return stream.shutdown().await;
    }
    let Some(request) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let script = match script {
        Script::ByPath(routes) => routes
            .iter()
            .find(|(prefix, _)| request.path.starts_with(prefix))
            .map_or(Script::Silent, |(_, script)| script.clone()),
        other => other,
    };
    record(&calls, &requests, request);
    match script {
        Script::Refused | Script::PlainToTls | Script::Each(_) | Script::ByPath(_) => {
            unreachable!("handled above")
        }
        Script::Reply { delay, bytes } => {
            tokio::time::sleep(delay).await;
            stream.write_all(&bytes).await?;
            stream.shutdown().await?;
        }
        Script::Silent => {
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? != 0 {}
        }
        Script::ResetAfter(bytes) => {
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            // Let the client read the head and the first bytes of the body, then RST.
            tokio::time::sleep(Duration::from_millis(50)).await;
            stream.set_zero_linger()?;
            drop(stream);
        }
    }
    Ok(())
}

/// Reads one request: the head up to `\r\n\r\n`, then `Content-Length` bytes of body. `None` if
/// the client closed first.
async fn read_request(stream: &mut TcpStream) -> io::Result<Option<Recorded>> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| invalid(&e))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, v)) => v.parse::<usize>().map_err(|e| invalid(&e))?,
        None => 0,
    };
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(Recorded {
        method,
        path,
        headers,
        body,
    }))
}

// ---------------------------------------------------------------------------------------------
// Scripted answers
// ---------------------------------------------------------------------------------------------

pub const JSON_UTF8: (&str, &str) = ("content-type", "application/json; charset=utf-8");
pub const TEXT: (&str, &str) = ("content-type", "text/plain");

/// A whole HTTP/1.1 response with `Content-Length` and `Connection: close`.
pub fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Whatever");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nconnection: close\r\n");
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let _ = write!(head, "content-length: {}\r\n", body.len());
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Answers at once.
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Script {
    slow_reply(Duration::ZERO, status, headers, body)
}

/// Answers after `delay`.
pub fn slow_reply(
    delay: Duration,
    status: u16,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Script {
    Script::Reply {
        delay,
        bytes: http_response(status, headers, body.as_ref()).into(),
    }
}

/// A plain-text 500.
pub fn boom() -> Script {
    reply(500, &[TEXT], "boom")
}

pub fn json_reply(status: u16, body: &Value) -> Script {
    reply(status, &[JSON_UTF8], body.to_string())
}

/// A Stack Auth known error, the way `KnownError.toDescriptiveJson` and `smart-response` send it.
pub fn known_error(status: u16, code: &str, message: &str) -> Script {
    known_error_with(status, code, message, &[("x-stack-known-error", code)])
}

/// A known error with the body `{code, error: message}` and exactly the `extra` headers (the
/// known-error and actual-status headers, under either name).
pub fn known_error_with(status: u16, code: &str, message: &str, extra: &[(&str, &str)]) -> Script {
    let mut headers = vec![JSON_UTF8];
    headers.extend_from_slice(extra);
    reply(
        status,
        &headers,
        json!({ "code": code, "error": message }).to_string(),
    )
}

/// `base` with `extra`'s fields added (or replaced).
pub fn with(base: &Value, extra: &Value) -> Value {
    let mut merged = base.clone();
    if let (Some(merged), Some(extra)) = (merged.as_object_mut(), extra.as_object()) {
        merged.extend(extra.clone());
    }
    merged
}
