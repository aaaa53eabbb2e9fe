//! Binding the Unix socket, accepting connections with their peer credentials, and the
//! connection type tonic serves.
//!
//! Every accepted connection is wrapped in [`AuthorityRepair`] and carries the kernel's view
//! of the peer (SO_PEERCRED), read once at accept time.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

use crate::stream::AuthorityRepair;

/// Pause after an accept failure caused by exhausted resources, so the loop does not spin.
const RESOURCE_BACKOFF: Duration = Duration::from_millis(50);

/// Credentials of the process at the other end of a Unix socket, as the kernel reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Effective user id of the peer when it connected.
    pub uid: u32,
    /// Effective group id of the peer when it connected.
    pub gid: u32,
    /// Process id of the peer, when the kernel reports one.
    pub pid: Option<i32>,
}

/// Connection information tonic puts into every request's extensions.
///
/// Handlers read it with `request.extensions().get::<UdsConnectInfo>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdsConnectInfo {
    /// The peer's credentials, read when the connection was accepted.
    pub peer: PeerCredentials,
}

/// An accepted Unix socket connection with `:authority` repair and peer credentials.
#[derive(Debug)]
pub struct UdsConnection {
    io: AuthorityRepair<UnixStream>,
    info: UdsConnectInfo,
    /// The [`MAX_CONNECTIONS`] slot of a connection from [`incoming`], freed on drop.
    slot: Option<OwnedSemaphorePermit>,
}

impl UdsConnection {
    /// Wraps an accepted stream after reading its peer credentials.
    ///
    /// # Errors
    ///
    /// Returns the error of `getsockopt(SO_PEERCRED)` when the kernel cannot report the peer.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        let peer = PeerCredentials {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
        Ok(Self {
            io: AuthorityRepair::new(stream),
            info: UdsConnectInfo { peer },
            slot: None,
        })
    }

    /// Returns the peer's credentials.
    pub fn peer(&self) -> PeerCredentials {
        self.info.peer
    }
}

impl Connected for UdsConnection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for UdsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for UdsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Maximum number of connections [`incoming`] keeps open at once.
///
/// Each accepted connection takes one slot until it is dropped. At the limit, [`incoming`]
/// stops accepting, so further clients wait in the listen backlog (once it is full, `connect`
/// blocks or fails with `EAGAIN`) instead of using up the process's file descriptors and memory.
// Limit: the Workload API benchmark keeps 1,000 connections open at once, and 4096 leaves room
// above that. At 64 KiB of buffered header block each, the rewriters then buffer at most
// 256 MiB of header blocks in total.
pub const MAX_CONNECTIONS: usize = 4096;

/// Minimum time between two warnings about failing accepts.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Accepts connections from `listener` for `Server::serve_with_incoming`.
///
/// At most [`MAX_CONNECTIONS`] accepted connections are open at once; accepting resumes when
/// one is dropped. Failures that concern one connection (aborted before accept, peer
/// credentials unreadable) are logged at debug and skipped. Running out of file descriptors or
/// memory is logged at warn, at most once per second, and accepting pauses briefly. Any other
/// accept error is yielded, which makes tonic stop serving.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<UdsConnection>> {
    incoming_with_limit(listener, MAX_CONNECTIONS)
}

fn incoming_with_limit(
    listener: UnixListener,
    max_connections: usize,
) -> impl Stream<Item = io::Result<UdsConnection>> {
    let acceptor = Acceptor {
        listener,
        slots: Arc::new(Semaphore::new(max_connections)),
        warnings: WarningLimiter::new(ACCEPT_WARNING_INTERVAL),
    };
    futures::stream::unfold(acceptor, |mut acceptor| async move {
        let item = acceptor.accept_one().await;
        Some((item, acceptor))
    })
}

struct Acceptor {
    listener: UnixListener,
    /// One permit per open connection, moved into the [`UdsConnection`].
    slots: Arc<Semaphore>,
    warnings: WarningLimiter,
}

impl Acceptor {
    async fn accept_one(&mut self) -> io::Result<UdsConnection> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_closed| io::Error::other("connection limit semaphore closed"))?;
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _addr)) => stream,
                Err(err) if is_resource_exhaustion(&err) => {
                    if let Some(suppressed) = self.warnings.check(Instant::now()) {
                        tracing::warn!(
                            error = %err,
                            suppressed,
                            backoff_ms = RESOURCE_BACKOFF.as_millis(),
                            "accept failed for lack of resources; retrying after a pause",
                        );
                    }
                    tokio::time::sleep(RESOURCE_BACKOFF).await;
                    continue;
                }
                Err(err) if is_per_connection_error(&err) => {
                    tracing::debug!(error = %err, "accept failed, continuing");
                    continue;
                }
                Err(err) => return Err(err),
            };
            match UdsConnection::new(stream) {
                Ok(mut connection) => {
                    connection.slot = Some(slot);
                    return Ok(connection);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "reading peer credentials failed, dropping");
                }
            }
        }
    }
}

/// Lets a repeated warning through at most once per interval and counts the ones held back.
#[derive(Debug)]
struct WarningLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarningLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns the number of warnings suppressed since the last one when a warning may be
    /// logged at `now`, or `None` (and counts it) when it must be suppressed.
    fn check(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn is_per_connection_error(err: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || err.raw_os_error() == Some(libc::EPROTO)
        || is_resource_exhaustion(err)
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Binds a Unix socket at `path` and sets the socket file's mode to `mode`.
///
/// Before binding, checks every directory from the socket's parent up to `/`, including the
/// real paths of symbolic links on the way: each must belong to the effective user or root,
/// and one that group or others can write to must have the sticky bit. Missing directories are
/// created with mode 0755. A stale socket file left by a process that is gone is removed; a
/// symbolic link at `path` itself is never followed. Must be called inside a Tokio runtime.
///
/// # Errors
///
/// Fails with `PermissionDenied` naming the directory, its owner and mode when a directory
/// above the socket fails the check. Fails when `path` exists and is not a socket, when a
/// process still accepts connections on it (`AddrInUse`), or when creating, binding or chmod
/// fails; the message names the path.
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let path =
        std::path::absolute(path).map_err(|err| with_path("failed to resolve", path, err))?;
    if let Some(parent) = parent_dir(&path) {
        dirs::prepare_dir(parent, &path, dirs::SHARED_DIR_MODE)?;
    }
    bind_socket(&path, mode)
}

/// Binds a Unix socket with mode 0600 in a directory that only its owner can enter.
///
/// The directories above the socket are checked as in [`bind`]. A missing parent directory,
/// and any missing directory above it, is created with mode 0700. An existing parent must
/// belong to the effective user, not be sticky (like `/tmp`) and give group and others no
/// access; it is never chmodded.
///
/// # Errors
///
/// Fails as [`bind`] does, or with `PermissionDenied` when the parent directory belongs to
/// another user, is sticky or is open to group or others.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let path =
        std::path::absolute(path).map_err(|err| with_path("failed to resolve", path, err))?;
    if let Some(parent) = parent_dir(&path) {
        dirs::prepare_dir(parent, &path, dirs::PRIVATE_DIR_MODE)?;
        dirs::ensure_private_dir(parent)?;
    }
    bind_socket(&path, 0o600)
}

/// Binds at `path`, whose directories are already checked, and sets the socket's mode.
fn bind_socket(path: &Path, mode: u32) -> io::Result<UnixListener> {
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).map_err(|err| with_path("failed to bind", path, err))?;
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|err| with_path("failed to set the mode of", path, err))?;
    tracing::debug!(path = %path.display(), mode = format_args!("{mode:o}"), "bound unix socket");
    Ok(listener)
}

/// Removes a socket file that no process accepts connections on any more.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(with_path("failed to read", path, err)),
    };
    if !metadata.file_type().is_socket() {
        let message = format!(
            "{} exists and is not a socket, not removing it",
            path.display()
        );
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        let message = format!("{} is in use by a running process", path.display());
        return Err(io::Error::new(io::ErrorKind::AddrInUse, message));
    }
    tracing::debug!(path = %path.display(), "removing stale socket file");
    fs::remove_file(path).map_err(|err| with_path("failed to remove stale socket", path, err))
}

fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
}

fn with_path(action: &str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{action} {}: {err}", path.display()))
}

mod dirs;

#[cfg(test)]
mod tests;
