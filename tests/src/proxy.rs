//! A TCP proxy that delays every byte by a fixed time in each direction, keeping order: a slow
//! network between an edge and its control plane, for the scenarios that must hold on one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Listens on a free loopback port and forwards each connection to `target` with `delay` added
/// one way (so a round trip costs twice that). Stops (closing every connection) when dropped.
pub struct DelayProxy {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(target: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let accept = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue; // the target is down: the client sees its connection close
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.extend(forward(client_read, server_write, delay));
                connections.extend(forward(server_read, client_write, delay));
                connections.retain(|task: &AbortOnDrop| !task.0.is_finished());
            }
        });
        DelayProxy { addr, accept }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its list of connection tasks, which aborts them.
        self.accept.abort();
    }
}

/// Aborts a connection task when the list of them drops it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One direction: a reader stamps each chunk with its due time, a writer sends it then (and
/// closes its side once the reader saw the end and everything due was sent).
fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) -> [AbortOnDrop; 2] {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    [AbortOnDrop(reader), AbortOnDrop(writer)]
}
