//! The loopback fault proxy between `StackAuthVerifier` and the key server, and the key server
//! it can restart on the same port. Written for the soak (the tests' `Upstream` scripts whole
//! connections; this one switches what happens to each request while connections stay open).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with each request (each chunk the client writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards at once.
    Up = 0,
    /// Forwards after 100–1,300 ms.
    Slow = 1,
    /// Answers `500` itself and closes the connection.
    Failing = 2,
    /// Closes the connection without a byte.
    Reset = 3,
}

/// Counters of requests hit by each fault, and of key server restarts.
#[derive(Default)]
pub struct Faults {
    pub slowed: AtomicU64,
    pub failed_500: AtomicU64,
    pub reset: AtomicU64,
    /// Connections the proxy could not open because the key server was down.
    pub refused: AtomicU64,
    pub restarts: AtomicU64,
    /// Connections cut when the key server went down.
    pub cut: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    epoch: watch::Sender<u64>,
    pub faults: Arc<Faults>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let mode = Arc::new(AtomicU8::new(Mode::Up as u8));
        let (epoch, _) = watch::channel(0u64);
        let faults = Arc::new(Faults::default());
        let (m, e, f) = (Arc::clone(&mode), epoch.clone(), Arc::clone(&faults));
        tokio::spawn(async move {
            let mut seq = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                seq += 1;
                let (m, f, kill) = (Arc::clone(&m), Arc::clone(&f), e.subscribe());
                tokio::spawn(pipe(client, upstream, m, f, kill, seq));
            }
        });
        Proxy {
            addr,
            mode,
            epoch,
            faults,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Cuts every open connection (the upstream died).
    pub fn cut_all(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }
}

fn mode_of(m: &AtomicU8) -> Mode {
    match m.load(Ordering::SeqCst) {
        1 => Mode::Slow,
        2 => Mode::Failing,
        3 => Mode::Reset,
        _ => Mode::Up,
    }
}

enum End {
    Closed,
    Fail500,
}

async fn pipe(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: Arc<AtomicU8>,
    faults: Arc<Faults>,
    mut kill: watch::Receiver<u64>,
    seq: u64,
) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        faults.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = up.split();
    let forward = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut n_req = 0u64;
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            };
            n_req += 1;
            match mode_of(&mode) {
                Mode::Up => {}
                Mode::Slow => {
                    faults.slowed.fetch_add(1, Ordering::Relaxed);
                    let ms = 100 + (seq.wrapping_mul(7919) + n_req * 104_729) % 1_200;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Mode::Failing => {
                    faults.failed_500.fetch_add(1, Ordering::Relaxed);
                    return End::Fail500;
                }
                Mode::Reset => {
                    faults.reset.fetch_add(1, Ordering::Relaxed);
                    return End::Closed;
                }
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                return End::Closed;
            }
        }
    };
    let end = tokio::select! {
        end = forward => end,
        _ = tokio::io::copy(&mut ur, &mut cw) => End::Closed,
        _ = kill.changed() => {
            faults.cut.fetch_add(1, Ordering::Relaxed);
            End::Closed
        }
    };
    if let End::Fail500 = end {
        let body = br#"{"code":"INTERNAL","error":"injected"}"#;
        let head = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = cw.write_all(head.as_bytes()).await;
        let _ = cw.write_all(body).await;
    }
}

/// The key server on a fixed loopback port, which can be stopped and started again there.
pub struct KeyServer {
    pub addr: SocketAddr,
    app: Router,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl KeyServer {
    pub async fn start(app: Router) -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind key server");
        let addr = listener.local_addr().expect("key server addr");
        let server = KeyServer {
            addr,
            app,
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let app = self.app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Stops listening (the port is released).
    pub async fn stop(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let mut tries = 0;
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener),
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebind {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind the key server on {}: {e}", self.addr),
            }
        }
    }
}
