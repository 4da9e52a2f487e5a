//! The DNS server's sockets: one UDP socket and one TCP listener on the
//! same address, each question answered on its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::handler::{ClusterDns, Transport};

/// Questions answered at once over UDP; more are dropped (the client
/// retries), so a flood cannot grow tasks without bound.
const MAX_UDP_IN_FLIGHT: usize = 1024;
/// TCP connections served at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// How long a TCP connection may sit between two questions (RFC 7766
/// suggests seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The bound sockets of a DNS server.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr`. Port 0 picks a free UDP port, and TCP
    /// then takes the same number.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<DnsServer> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(DnsServer { udp, tcp })
    }

    /// The address both sockets listen on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until the task is dropped or a socket fails for good.
    pub async fn serve(self, dns: Arc<ClusterDns>) -> std::io::Result<()> {
        let udp = serve_udp(Arc::new(self.udp), dns.clone());
        let tcp = serve_tcp(self.tcp, dns);
        tokio::select! {
            result = udp => result,
            result = tcp => result,
        }
    }
}

/// Errors a socket reports for one peer (an ICMP error for an earlier
/// datagram, a connection reset by a client), not about itself.
fn transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionReset | ConnectionAborted | Interrupted | WouldBlock
    ) || error.raw_os_error().is_some_and(|code| {
        // EMFILE/ENFILE/ENOBUFS/ENOMEM pass: the next call may succeed.
        matches!(code, 23 | 24 | 105 | 12)
    })
}

async fn serve_udp(socket: Arc<UdpSocket>, dns: Arc<ClusterDns>) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if transient(&e) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS questions in flight; dropping one");
            continue;
        };
        let packet = buf[..len].to_vec();
        let (socket, dns) = (socket.clone(), dns.clone());
        tokio::spawn(async move {
            if let Some(answer) = dns.handle(&packet, Transport::Udp).await {
                if let Err(e) = socket.send_to(&answer, peer).await {
                    tracing::debug!(%peer, error = %e, "sending a DNS answer failed");
                }
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, dns: Arc<ClusterDns>) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if transient(&e) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS connections; closing one");
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, dns).await {
                tracing::debug!(%peer, error = %e, "DNS connection ended");
            }
            drop(permit);
        });
    }
}

/// Questions on one connection, answered in order, each framed by its
/// two-byte length (RFC 1035 4.2.2).
async fn serve_connection(mut stream: TcpStream, dns: Arc<ClusterDns>) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut request = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut request)).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        let Some(answer) = dns.handle(&request, Transport::Tcp).await else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}
