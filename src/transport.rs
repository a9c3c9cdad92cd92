//! How connections reach a service and how a service reaches another: TLS with certificates that reload
//! without a restart, and limits on connections themselves.
//!
//! Serving ([`Transport`], used by [`crate::server::serve`]): one task accepts TCP connections and hands
//! each to tonic, after, for TLS, a handshake in a task of its own bounded by the handshake timeout (so a
//! client that connects and says nothing holds nothing but its own task, and only until the timeout).
//! Every accepted connection holds one of `max_connections` permits until it closes; past the cap new
//! connections are closed at once. A connection is asked to go away (HTTP/2 GOAWAY, calls in flight
//! finish) after `max_connection_age`, by tonic, and closed [`MAX_CONNECTION_AGE_GRACE`] later if it is
//! still open (a stream that never ends), by [`Conn`].
//!
//! tonic's own TLS (`ServerTlsConfig`) loads a certificate once and cannot reload it, so TLS is terminated
//! here with rustls ([`tls`]), whose certificate resolver hands each new handshake the key pair currently on
//! disk ([`reload`]). Clients reach TLS services through [`client::ClientTls`], whose client certificate
//! reloads the same way.
//!
//! rustls uses the `ring` provider only: [`install_crypto_provider`] makes it the process default (each
//! binary calls it first), and every configuration built here names it explicitly anyway.

pub mod client;
mod pem;
pub mod reload;
pub mod tls;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

pub use self::{
    client::ClientTls,
    pem::{open_private, read_private},
    tls::{ServerTls, TlsError},
};

/// `--tls-handshake-timeout` default: a slow mobile client finishes a handshake well within it.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `--max-connections` default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `--max-connection-age` default: long enough that reconnecting costs nothing noticeable, short enough
/// that a new replica gets its share of the load within half an hour.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);

/// `--tls-handshake-timeout`: below 100 ms a healthy client on a slow link fails; above a minute a stalled
/// one holds a connection slot for nothing.
pub const TLS_HANDSHAKE_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);
/// `--max-connections`: at least one; a million is past what one process's file descriptors allow.
pub const MAX_CONNECTIONS: RangeInclusive<u64> = 1..=1_000_000;
/// `--max-connection-age`: below 10 s a connection barely outlives its handshake; 30 days is as good as
/// never.
pub const MAX_CONNECTION_AGE: RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(30 * 24 * 3600);

/// How long a connection past its age may take to drain before it is closed: no unary call lives longer
/// than [`crate::server::REQUEST_TIMEOUT`], so only endless streams (WatchRevocations) are cut, and their
/// clients reconnect.
pub const MAX_CONNECTION_AGE_GRACE: Duration = crate::server::REQUEST_TIMEOUT;

/// Accepted connections waiting for tonic to take them. tonic takes each at once; this only decouples
/// the accept task from it.
const ACCEPTED_QUEUE: usize = 64;

/// After an accept error that is not about one connection (e.g. out of file descriptors), wait this long
/// before accepting again, instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Makes rustls's `ring` provider the process default, so any crate that asks rustls for the default
/// provider gets ring, and none can panic because two providers are compiled in. Call it first thing in
/// `main`; later calls (and a provider already installed) change nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The crypto provider every configuration here is built with.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a service serves its port: TLS or not, and the limits on connections.
#[derive(Clone)]
pub struct Transport {
    tls: Option<ServerTls>,
    handshake_timeout: Duration,
    max_connections: usize,
    max_connection_age: Duration,
    max_connection_age_grace: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connection_age", &self.max_connection_age)
            .finish()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self::plaintext()
    }
}

impl Transport {
    /// Plain HTTP/2 with the default limits.
    pub fn plaintext() -> Self {
        Self {
            tls: None,
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            max_connection_age_grace: MAX_CONNECTION_AGE_GRACE,
        }
    }

    /// TLS only (1.2 and 1.3, ALPN `h2` and `http/1.1`), with the default limits.
    pub fn tls(tls: ServerTls) -> Self {
        Self {
            tls: Some(tls),
            ..Self::plaintext()
        }
    }

    /// A handshake not finished within `timeout` is abandoned and its connection closed.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// At most `max` connections open at once (handshakes included); more are closed as they arrive.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Connections are asked to go away after `age` and closed [`MAX_CONNECTION_AGE_GRACE`] later.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.max_connection_age = age;
        self
    }

    /// How long a connection past its age may drain before it is closed; [`MAX_CONNECTION_AGE_GRACE`]
    /// unless set (the services always use that).
    pub fn max_connection_age_grace(mut self, grace: Duration) -> Self {
        self.max_connection_age_grace = grace;
        self
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn server_tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// The age after which tonic sends GOAWAY; give it to the server builder
    /// (`Server::max_connection_age`), as [`crate::server::builder_for`] does.
    pub fn connection_age(&self) -> Duration {
        self.max_connection_age
    }

    fn limits(&self) -> Limits {
        Limits {
            permits: Arc::new(Semaphore::new(self.max_connections)),
            max: self.max_connections,
            full: Arc::new(AtomicBool::new(false)),
            close_after: self.max_connection_age + self.max_connection_age_grace,
        }
    }

    /// Plaintext connections accepted on `listener`.
    pub fn plaintext_incoming(&self, listener: TcpListener) -> ReceiverStream<io::Result<Conn<TcpStream>>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(
            listener,
            self.limits(),
            tx,
            |stream, _peer, conn, tx| async move {
                let _ = tx.send(Ok(conn(stream))).await;
            },
        ));
        ReceiverStream::new(rx)
    }

    /// TLS connections accepted on `listener`, each handshake in a task of its own. Panics if this
    /// transport has no TLS (see [`Transport::is_tls`]).
    pub fn tls_incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>> {
        let acceptor = self.tls.as_ref().expect("a TLS transport").acceptor();
        let timeout = self.handshake_timeout;
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(
            listener,
            self.limits(),
            tx,
            move |stream, peer, conn, tx| {
                let acceptor = acceptor.clone();
                async move {
                    // A task per handshake: a client that stalls mid-handshake delays nobody else.
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(conn(tls))).await;
                            }
                            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                            Err(_elapsed) => tracing::debug!(%peer, ?timeout, "TLS handshake timed out"),
                        }
                    });
                }
            },
        ));
        ReceiverStream::new(rx)
    }
}

/// Connection limits shared by the accept loop and its connections.
struct Limits {
    permits: Arc<Semaphore>,
    max: usize,
    /// Set while connections are being refused, so the refusal is logged once per episode, not per
    /// connection.
    full: Arc<AtomicBool>,
    close_after: Duration,
}

/// Accepts connections until the receiving end (tonic's accept loop) is gone, then drops the listener so
/// the port stops accepting at once. `handle` gets each connection with its permit; it hands the finished
/// connection (made by the `conn` function it is given) to `tx`.
async fn accept_loop<IO, H, Fut>(
    listener: TcpListener,
    limits: Limits,
    tx: mpsc::Sender<io::Result<Conn<IO>>>,
    handle: H,
) where
    H: Fn(
        TcpStream,
        SocketAddr,
        Box<dyn FnOnce(IO) -> Conn<IO> + Send>,
        mpsc::Sender<io::Result<Conn<IO>>>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()>,
    IO: Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limits.permits).try_acquire_owned() else {
            if !limits.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = limits.max,
                    "--max-connections reached: closing new connections until some close"
                );
            }
            drop(stream);
            continue;
        };
        if limits.full.swap(false, Ordering::Relaxed) {
            tracing::info!("below --max-connections again: accepting connections");
        }
        configure_socket(&stream);
        let close_at = Instant::now() + limits.close_after;
        let conn = Box::new(move |io: IO| Conn::new(io, permit, close_at));
        handle(stream, peer, conn, tx.clone()).await;
    }
}

/// Errors that concern one connection (it was reset before we took it) rather than the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// As tonic's `TcpIncoming` would: no Nagle delay for small gRPC frames, and TCP keepalive so dead peers
/// are noticed below HTTP/2.
fn configure_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(crate::server::TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// An accepted connection: holds its place under `--max-connections` until dropped, and fails every read
/// and write once it is past its age and the drain that follows, so hyper closes it.
pub struct Conn<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    close: Pin<Box<Sleep>>,
}

impl<IO> Conn<IO> {
    fn new(io: IO, permit: OwnedSemaphorePermit, close_at: Instant) -> Self {
        Self {
            io,
            _permit: permit,
            close: Box::pin(tokio::time::sleep_until(close_at)),
        }
    }

    fn past_age(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.close.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection outlived --max-connection-age and its drain",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

use std::future::Future as _;

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper always has a read pending on a live connection, so this registers the wake-up.
        this.past_age(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.past_age(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.past_age(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// The connection's own info (TcpConnectInfo, or TlsConnectInfo<TcpConnectInfo> with the peer's
// certificates), so `Request::remote_addr` and `Request::peer_certs` work as without this wrapper.
impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Refuses to serve plaintext on anything but loopback, unless `insecure_listen` says a TLS-terminating
/// sidecar or mesh is in front. The message names the flags that fix it.
pub fn check_listen(addr: SocketAddr, tls: bool, insecure_listen: bool) -> Result<(), String> {
    if tls || insecure_listen || is_loopback(addr.ip()) {
        return Ok(());
    }
    Err(format!(
        "refusing to serve plaintext on {addr}, which is not a loopback address: give --tls-cert and \
         --tls-key, or --insecure-listen if a TLS-terminating proxy or mesh sits in front"
    ))
}

/// Whether `ip` is loopback, counting IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether `host` (from a URL: a name, an IPv4 address or a bracketed IPv6 address) is this machine's
/// loopback. `localhost` counts (RFC 6761 reserves it); any other name might resolve anywhere.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_unless_tls_or_insecure_listen() {
        for addr in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1", "127.1.2.3:0"] {
            assert_eq!(
                check_listen(addr.parse().unwrap(), false, false),
                Ok(()),
                "{addr}"
            );
        }
        for addr in ["0.0.0.0:1", "[::]:1", "10.0.0.1:50051", "[2001:db8::1]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let error = check_listen(addr, false, false).unwrap_err();
            assert!(
                error.contains("--tls-cert") && error.contains("--insecure-listen"),
                "{error}"
            );
            assert_eq!(check_listen(addr, true, false), Ok(()));
            assert_eq!(check_listen(addr, false, true), Ok(()));
        }
    }

    #[test]
    fn loopback_hosts_are_localhost_and_loopback_addresses_only() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "[::1]",
            "::1",
            "127.0.0.53",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "auth.internal",
            "localhost.example.com",
            "10.0.0.1",
            "[2001:db8::1]",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
