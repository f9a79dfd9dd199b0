//! A TCP proxy the scenario puts between one node and Redis, to partition them without iptables:
//! `blackhole(true)` stops forwarding in both directions without closing anything, as a network
//! that drops packets does (TCP connections stay open, nothing arrives, new connections get no
//! answer); `blackhole(false)` heals it and what was held flows again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    holes: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a port the kernel picks) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("proxy bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let (holes, _) = watch::channel(false);
        let blackholed = holes.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let blackholed = blackholed.clone();
                tokio::spawn(async move {
                    // A connection made during a partition waits, unanswered, until it heals.
                    let mut gate = blackholed.clone();
                    if gate.wait_for(|b| !*b).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, blackholed.clone()) => {}
                        _ = pump(server_read, client_write, blackholed) => {}
                    }
                });
            }
        });
        Ok(Proxy { port, holes })
    }

    pub fn blackhole(&self, on: bool) {
        self.holes.send_replace(on);
    }
}

/// Copies one direction while the link is up; holds still (reads nothing) while it is blackholed.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut blackholed: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if blackholed.wait_for(|b| !*b).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Cut off mid-wait: go back to holding.
            _ = blackholed.changed() => continue,
        };
        // Bytes read just before the partition still go out; a real network may have them in flight.
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
