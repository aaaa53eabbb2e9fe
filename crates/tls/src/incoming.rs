//! Accepted TLS connections as a stream for `tonic::transport::Server::serve_with_incoming`.
//!
//! Each TLS handshake runs in its own task, so a client that stalls or fails its handshake
//! delays no other client. Failed handshakes are logged at debug level and dropped, and the
//! stream never ends on its own. At most [`MAX_CONNECTIONS`] connections, handshaking or
//! established, are open at once, because each takes a slot until it is dropped.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_util::sync::PollSemaphore;
use tonic::transport::server::Connected;
use twid_spiffe::SpiffeId;

use crate::verify::peer_spiffe_id;

/// The default time limit for a client to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of handshakes that may run at once. Past it, no further TCP connection
/// is accepted until one finishes, so pending clients wait in the listen backlog.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The default number of connections, handshaking or established, that may be open at once.
/// Past it, no further TCP connection is accepted until one closes, so new clients wait in the
/// listen backlog. This bounds the file descriptors and memory that clients without a
/// certificate (allowed for agent attestation) can hold, because established connections
/// have no idle timeout at this layer.
pub const MAX_CONNECTIONS: usize = 4096;

/// The pause after an accept error other than a failed single connection, such as running out
/// of file descriptors, so the listener is not retried in a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Connection details that request handlers read with
/// `request.extensions().get::<TlsConnectInfo>()`.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The client's certificate chain, leaf first, or `None` when it sent no certificate
    /// (possible only with [`crate::ClientAuth::Optional`] or [`crate::ClientAuth::None`]).
    /// A chain present here passed the server configuration's verifier.
    pub peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

impl TlsConnectInfo {
    /// Returns the SPIFFE ID of the client's leaf certificate, if it sent one.
    pub fn peer_spiffe_id(&self) -> Option<SpiffeId> {
        self.peer_certificates.as_deref().and_then(peer_spiffe_id)
    }
}

/// One accepted connection whose TLS handshake has completed.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TlsConnectInfo,
    /// The connection's [`MAX_CONNECTIONS`] slot, freed when the connection is dropped.
    _slot: OwnedSemaphorePermit,
}

impl TlsConnection {
    /// Returns the connection details that handlers see.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// Returns the underlying TLS stream.
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.stream
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A stream of TLS connections accepted on a TCP listener, for
/// `tonic::transport::Server::serve_with_incoming`.
///
/// Handshakes run as tasks on the current tokio runtime, each limited to the handshake
/// timeout. Dropping the stream closes the listener and aborts the handshakes in flight. The
/// stream yields no errors and ends only when dropped.
pub struct TlsIncoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    max_pending: usize,
    handshakes: JoinSet<Option<TlsConnection>>,
    accept_backoff: Option<Pin<Box<Sleep>>>,
    max_connections: usize,
    /// One permit per open connection; the permit moves into the handshake task and then
    /// into the [`TlsConnection`].
    connection_slots: PollSemaphore,
    /// A slot taken for the next accepted connection.
    next_slot: Option<OwnedSemaphorePermit>,
    /// Whether every connection slot is taken, so the limit is logged once per episode.
    at_connection_limit: bool,
}

impl fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIncoming")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending", &self.max_pending)
            .field("pending", &self.handshakes.len())
            .field("max_connections", &self.max_connections)
            .field(
                "free_connection_slots",
                &self.connection_slots.available_permits(),
            )
            .finish_non_exhaustive()
    }
}

impl TlsIncoming {
    /// Wraps `listener`, running the server handshake with `config` on each connection, with
    /// [`HANDSHAKE_TIMEOUT`], [`MAX_PENDING_HANDSHAKES`] and [`MAX_CONNECTIONS`].
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self {
            listener,
            acceptor: TlsAcceptor::from(config),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_pending: MAX_PENDING_HANDSHAKES,
            handshakes: JoinSet::new(),
            accept_backoff: None,
            max_connections: MAX_CONNECTIONS,
            connection_slots: PollSemaphore::new(Arc::new(Semaphore::new(MAX_CONNECTIONS))),
            next_slot: None,
            at_connection_limit: false,
        }
    }

    /// Sets the time limit for a client to complete its handshake.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how many handshakes may run at once (at least one).
    #[must_use]
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Sets how many connections, handshaking or established, may be open at once (at least
    /// one). Call it before the stream is first polled.
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, Semaphore::MAX_PERMITS);
        self.connection_slots = PollSemaphore::new(Arc::new(Semaphore::new(self.max_connections)));
        self.next_slot = None;
        self
    }

    /// Returns the address the listener is bound to.
    ///
    /// # Errors
    /// Returns the error of [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts every TCP connection that is ready and starts its handshake. Returns with the
    /// listener registered for wake-up, or with the backoff timer, the handshake limit or the
    /// connection limit holding further accepts back.
    fn accept_ready(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some(backoff) = self.accept_backoff.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.accept_backoff = None;
            }
            // The join set wakes this stream when a handshake finishes and frees a slot.
            if self.handshakes.len() >= self.max_pending {
                return;
            }
            // The semaphore wakes this stream when a connection closes and frees a slot.
            let slot = match self.next_slot.take() {
                Some(slot) => slot,
                None => match self.connection_slots.poll_acquire(cx) {
                    Poll::Ready(Some(slot)) => {
                        if self.at_connection_limit {
                            self.at_connection_limit = false;
                            tracing::info!("connection slots free again; accepting connections");
                        }
                        slot
                    }
                    Poll::Pending => {
                        if !self.at_connection_limit {
                            self.at_connection_limit = true;
                            tracing::warn!(
                                max_connections = self.max_connections,
                                "connection limit reached; new connections wait until one closes"
                            );
                        }
                        return;
                    }
                    // The semaphore is never closed.
                    Poll::Ready(None) => return,
                },
            };
            match self.listener.poll_accept(cx) {
                Poll::Pending => {
                    self.next_slot = Some(slot);
                    return;
                }
                Poll::Ready(Ok((tcp, remote_addr))) => {
                    self.start_handshake(tcp, remote_addr, slot);
                }
                Poll::Ready(Err(error)) if is_connection_error(&error) => {
                    self.next_slot = Some(slot);
                    tracing::debug!(%error, "failed to accept a TCP connection");
                }
                Poll::Ready(Err(error)) => {
                    self.next_slot = Some(slot);
                    tracing::warn!(
                        %error,
                        backoff_ms = ACCEPT_ERROR_BACKOFF.as_millis(),
                        "failed to accept TCP connections; retrying after a pause",
                    );
                    self.accept_backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
                }
            }
        }
    }

    fn start_handshake(
        &mut self,
        tcp: TcpStream,
        remote_addr: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%remote_addr, %error, "failed to set TCP_NODELAY");
        }
        let acceptor = self.acceptor.clone();
        let timeout = self.handshake_timeout;
        self.handshakes
            .spawn(handshake(acceptor, tcp, remote_addr, timeout, slot));
    }
}

/// Returns whether an accept error concerns only the one connection being accepted.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Runs the server handshake; returns `None`, after logging why, when it fails or times out.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    timeout: Duration,
    slot: OwnedSemaphorePermit,
) -> Option<TlsConnection> {
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%remote_addr, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(
                %remote_addr,
                timeout_ms = timeout.as_millis(),
                "TLS handshake timed out"
            );
            return None;
        }
    };
    let peer_certificates = stream.get_ref().1.peer_certificates().map(|chain| {
        chain
            .iter()
            .map(|cert| cert.clone().into_owned())
            .collect::<Vec<_>>()
    });
    let info = TlsConnectInfo {
        remote_addr,
        peer_certificates,
    };
    tracing::debug!(
        %remote_addr,
        peer_spiffe_id = ?info.peer_spiffe_id().as_ref().map(SpiffeId::as_str),
        "TLS handshake completed"
    );
    Some(TlsConnection {
        stream,
        info,
        _slot: slot,
    })
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConnection, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            this.accept_ready(cx);
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(connection)))) => {
                    return Poll::Ready(Some(Ok(connection)));
                }
                // A failed handshake freed a slot, so accepting may resume.
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "TLS handshake task failed");
                }
                // With no handshake in flight, the listener or the backoff timer has
                // registered the wake-up.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
