//! A tap on a TCP hop: a loopback proxy that forwards every connection to a target unchanged,
//! counts the connections it accepted, and records the bytes the client side sent. Put between a
//! proxy and the auth service, it shows how many connections the proxy opened (keep-alive) and
//! exactly what the auth service was sent (method, headers, and whether any body followed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running tap. Stops accepting when dropped.
pub struct Tap {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    sent: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Tap {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = listener.local_addr().expect("tap address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (count, record) = (Arc::clone(&accepted), Arc::clone(&sent));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(pipe(client, target, Arc::clone(&record)));
            }
        });
        Tap {
            addr,
            accepted,
            sent,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Everything clients sent through it so far (all connections, in arrival order per read).
    pub fn sent(&self) -> String {
        let bytes = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one connection both ways until either side closes.
async fn pipe(client: TcpStream, target: SocketAddr, record: Arc<Mutex<Vec<u8>>>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return; // The client sees the connection close: like a refused upstream, one hop later.
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&buf[..n]);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
