//! Binding the Unix socket, accepting connections with their peer credentials, and the
//! connection type tonic serves.
//!
//! Every accepted connection is wrapped in [`AuthorityRepair`] and carries the kernel's view
//! of the peer (SO_PEERCRED), read once at accept time.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
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

/// Accepts connections from `listener` for `Server::serve_with_incoming`.
///
/// Failures that concern one connection (aborted before accept, peer credentials unreadable,
/// out of file descriptors or memory) are logged at debug and skipped. Any other accept error
/// is yielded, which makes tonic stop serving.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<UdsConnection>> {
    futures::stream::unfold(listener, |listener| async move {
        let item = accept_one(&listener).await;
        Some((item, listener))
    })
}

async fn accept_one(listener: &UnixListener) -> io::Result<UdsConnection> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _addr)) => stream,
            Err(err) if is_per_connection_error(&err) => {
                tracing::debug!(error = %err, "accept failed, continuing");
                if is_resource_exhaustion(&err) {
                    tokio::time::sleep(RESOURCE_BACKOFF).await;
                }
                continue;
            }
            Err(err) => return Err(err),
        };
        match UdsConnection::new(stream) {
            Ok(connection) => return Ok(connection),
            Err(err) => tracing::debug!(error = %err, "reading peer credentials failed, dropping"),
        }
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
/// Creates the parent directory (with the process umask) when it is missing, and removes a
/// stale socket file left by a process that is gone. Must be called inside a Tokio runtime.
///
/// # Errors
///
/// Fails when `path` exists and is not a socket, when a process still accepts connections on
/// it (`AddrInUse`), or when creating, binding or chmod fails; the message names the path.
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Some(parent) = parent_dir(path)
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .create(parent)
            .map_err(|err| with_path("failed to create directory", parent, err))?;
    }
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).map_err(|err| with_path("failed to bind", path, err))?;
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|err| with_path("failed to set the mode of", path, err))?;
    tracing::debug!(path = %path.display(), mode = format_args!("{mode:o}"), "bound unix socket");
    Ok(listener)
}

/// Binds a Unix socket with mode 0600 in a directory that only its owner can enter.
///
/// A missing parent directory is created with mode 0700. An existing one must belong to the
/// effective user, not be sticky (like `/tmp`) and give group and others no access; it is
/// never chmodded.
///
/// # Errors
///
/// Fails as [`bind`] does, or with `PermissionDenied` when the parent directory belongs to
/// another user, is sticky or is open to group or others.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = parent_dir(path) {
        ensure_private_dir(parent)?;
    }
    bind(path, 0o600)
}

fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            // Directories created on the way get 0700 too; they hold nothing else.
            return DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| with_path("failed to create directory", dir, err));
        }
        Err(err) => return Err(with_path("failed to read", dir, err)),
    };
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid || metadata.mode() & 0o1000 != 0 {
        let message = format!(
            "directory {} must belong to uid {euid} and not be shared (owner uid {}, mode {:o})",
            dir.display(),
            metadata.uid(),
            metadata.mode() & 0o7777,
        );
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, message));
    }
    // An existing directory is never chmodded: it may be a home directory or a checkout that
    // holds other files, so widening or narrowing it is the operator's call.
    if metadata.mode() & 0o077 != 0 {
        let message = format!(
            "directory {} is open to other users (mode {:o}); use a socket path in a directory \
             only its owner can enter, for example {}",
            dir.display(),
            metadata.mode() & 0o7777,
            dir.join("private/api.sock").display(),
        );
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, message));
    }
    Ok(())
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

#[cfg(test)]
mod tests;
