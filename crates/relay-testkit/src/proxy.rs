//! A TCP forwarder whose traffic can be blocked and unblocked, to simulate a network that
//! silently stops passing packets (the failure keep-alives exist for).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection to `upstream`; stops when dropped.
pub struct BlockableProxy {
    pub addr: SocketAddr,
    blocked: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BlockableProxy {
    pub async fn start(upstream: SocketAddr) -> BlockableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blocked, gate) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let gate = gate.clone();
                tokio::spawn(async move {
                    let mut open = gate.clone();
                    let _ = open.wait_for(|b| !b).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, gate.clone()), pipe(sr, cw, gate));
                });
            }
        });
        BlockableProxy {
            addr,
            blocked,
            task,
        }
    }

    /// Stops passing bytes in both directions; connections stay open.
    pub fn block(&self) {
        self.blocked.send_replace(true);
    }

    pub fn unblock(&self) {
        self.blocked.send_replace(false);
    }
}

impl Drop for BlockableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gate: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if gate.wait_for(|b| !b).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read while blocked are held back until the network "returns".
        if gate.wait_for(|b| !b).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
