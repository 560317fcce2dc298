//! A TCP proxy in front of a MySQL server that, when armed, loses the server's reply to a
//! `COMMIT`: it forwards the `COMMIT` (so the server commits), drops the OK and closes the
//! client's connection, as a server crash, a failover or a network cut right after the commit
//! would. The client sees its connection lost during COMMIT and cannot know whether it
//! committed. Plain text only (the servers here run without TLS; use `ssl-mode=disabled`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// `COM_QUERY`: a text statement follows.
const COM_QUERY: u8 = 0x03;

pub struct LostCommitProxy {
    pub port: u16,
    /// Commits whose reply is still to be lost.
    armed: Arc<AtomicU32>,
    /// Commits whose reply was lost.
    lost: Arc<AtomicU32>,
    accept: JoinHandle<()>,
}

impl LostCommitProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:<server_port>`.
    pub async fn start(server_port: u16) -> LostCommitProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the lost-commit proxy");
        let port = listener.local_addr().expect("address").port();
        let armed = Arc::new(AtomicU32::new(0));
        let lost = Arc::new(AtomicU32::new(0));
        let (a, l) = (armed.clone(), lost.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, a.clone(), l.clone()));
            }
        });
        LostCommitProxy { port, armed, lost, accept }
    }

    /// `mysql://root@127.0.0.1:<port>` (TLS off, so the proxy can see the statements).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Loses the replies to the next `n` commits of transactions that sent at least
    /// [`LARGE_TRANSACTION`] bytes: a batch of events, not one of the small transactions a worker
    /// commits beside its batches all the time (heartbeats, sweeps, the relay's deletes), which
    /// took every armed commit when the machine was busy.
    pub fn arm(&self, n: u32) {
        self.armed.store(n, Ordering::SeqCst);
    }

    /// How many commit replies were lost.
    pub fn lost(&self) -> u32 {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LostCommitProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The bytes a transaction sends before its `COMMIT` for [`LostCommitProxy::arm`] to lose that
/// commit's reply (a batch of 20 events sends several times this in its multi-row inserts).
pub const LARGE_TRANSACTION: usize = 4096;

/// One connection: packets from the client are read whole (a 3-byte length, a sequence byte)
/// so a `COMMIT` is recognised; bytes from the server are copied, except the reply to a commit
/// chosen to be lost.
async fn relay(client: TcpStream, server: TcpStream, armed: Arc<AtomicU32>, lost: Arc<AtomicU32>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let cut = Arc::new(tokio::sync::Notify::new());
    let cutting = cut.clone();
    let upstream = async move {
        let mut header = [0u8; 4];
        // What the client sent since its last commit.
        let mut sent = 0usize;
        loop {
            if client_read.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let mut payload = vec![0u8; len];
            if client_read.read_exact(&mut payload).await.is_err() {
                return;
            }
            let commit = payload.first() == Some(&COM_QUERY)
                && std::str::from_utf8(&payload[1..]).is_ok_and(|q| q.trim().eq_ignore_ascii_case("commit"));
            let large = sent >= LARGE_TRANSACTION;
            sent = if commit { 0 } else { sent + len };
            let lose =
                commit && large && armed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if lose {
                // Told before the server can answer: its reply is read and dropped below, and
                // the client's connection closed.
                cutting.notify_one();
            }
            if server_write.write_all(&header).await.is_err() || server_write.write_all(&payload).await.is_err() {
                return;
            }
            if lose {
                return;
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                biased;
                _ = cut.notified() => {
                    // Wait for the server's answer (the commit happened), then drop it.
                    let _ = server_read.read(&mut buffer).await;
                    lost.fetch_add(1, Ordering::SeqCst);
                    let _ = client_write.shutdown().await;
                    return;
                }
                read = server_read.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if client_write.write_all(&buffer[..n]).await.is_err() { return; },
                },
            }
        }
    };
    // The server's side of the connection closes with the function: the server sees a client gone
    // after its commit.
    tokio::join!(upstream, downstream);
}
