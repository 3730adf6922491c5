//! A TCP proxy in front of one of the shared services, so that a test can make the service
//! fail for its own connections only: cut the link (every connection closed, new ones
//! refused), stall it (connections stay open, nothing flows either way: a service that has
//! become slow) and restore it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Flowing,
    Stalled,
    Cut,
}

/// The proxy; point a service at [`FaultProxy::address`] instead of the real one.
pub struct FaultProxy {
    address: SocketAddr,
    link: watch::Sender<Link>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (e.g.
    /// [`crate::services::POSTGRES`]).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let (link, _) = watch::channel(Link::Flowing);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (link, connections) = (link.clone(), connections.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *link.borrow() == Link::Cut {
                        continue; // dropped: refused
                    }
                    let task = tokio::spawn(forward(inbound, upstream, link.subscribe()));
                    connections.lock().expect("proxy lock").push(task);
                }
            }
        });
        FaultProxy {
            address,
            link,
            connections,
            accept,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every proxied connection and refuses new ones: the service went away.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
        for task in self.connections.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }

    /// Holds every byte in both directions, connections kept open: the service hangs.
    pub fn stall(&self) {
        self.link.send_replace(Link::Stalled);
    }

    /// Forwards again (what a stall held back first) and accepts new connections.
    pub fn restore(&self) {
        self.link.send_replace(Link::Flowing);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn forward(inbound: TcpStream, upstream: SocketAddr, link: watch::Receiver<Link>) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = inbound.into_split();
    let (service_read, service_write) = outbound.into_split();
    tokio::join!(
        pump(client_read, service_write, link.clone()),
        pump(service_read, client_write, link),
    );
}

/// Copies `from` to `to` while the link flows; a stall holds the bytes read so far.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !flowing(&mut link).await {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if !flowing(&mut link).await || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits out a stall; false once the link is cut.
async fn flowing(link: &mut watch::Receiver<Link>) -> bool {
    match link.wait_for(|state| *state != Link::Stalled).await {
        Ok(state) => *state == Link::Flowing,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server, the proxy in front of it, and one round trip through it.
    async fn echo_through() -> (FaultProxy, TcpStream) {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = echo.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let proxy = FaultProxy::start(&upstream).await;
        let mut client = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut client, b"one").await, Some(b"one".to_vec()));
        (proxy, client)
    }

    async fn round_trip(client: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
        client.write_all(bytes).await.ok()?;
        let mut answer = vec![0u8; bytes.len()];
        tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut answer))
            .await
            .ok()?
            .ok()?;
        Some(answer)
    }

    #[tokio::test]
    async fn a_stall_holds_the_bytes_until_restored() {
        let (proxy, mut client) = echo_through().await;
        proxy.stall();
        assert_eq!(round_trip(&mut client, b"two").await, None, "nothing flows");
        proxy.restore();
        let mut held = [0u8; 3];
        client.read_exact(&mut held).await.expect("held bytes");
        assert_eq!(&held, b"two");
    }

    #[tokio::test]
    async fn a_cut_closes_connections_and_refuses_new_ones_until_restored() {
        let (proxy, mut client) = echo_through().await;
        proxy.cut();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), client.read(&mut byte)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        let mut refused = TcpStream::connect(proxy.address()).await.expect("accepted");
        assert_eq!(round_trip(&mut refused, b"x").await, None);
        proxy.restore();
        let mut again = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(
            round_trip(&mut again, b"back").await,
            Some(b"back".to_vec())
        );
    }
}
