//! The error type of every attestor in this crate.

use std::io;
use std::path::PathBuf;

/// An error that kept an attestor from producing selectors for a caller.
///
/// Every variant that concerns a process names its pid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The peer credentials carry no process id, which the attestor needs.
    #[error("the {attestor} attestor needs the caller's pid, but the peer credentials carry none")]
    MissingPid {
        /// Name of the attestor that needs the pid.
        attestor: &'static str,
    },
    /// The pid is not a process id in this pid namespace. The kernel reports 0 for a peer in
    /// another pid namespace.
    #[error("invalid caller pid {pid}: the caller runs in another pid namespace or is unknown")]
    InvalidPid {
        /// The rejected pid.
        pid: i32,
    },
    /// The process does not exist (any more).
    #[error("process {pid} not found: it exited before attestation finished")]
    ProcessNotFound {
        /// Pid of the caller.
        pid: i32,
    },
    /// The process has exited and waits to be reaped (a zombie), so it has no executable or
    /// memory left to inspect.
    #[error("process {pid} has exited (state {state}) and cannot be attested")]
    ProcessExited {
        /// Pid of the caller.
        pid: i32,
        /// The state letter from `/proc/<pid>/stat` (`Z` or `X`).
        state: char,
    },
    /// Reading a procfs file or the executable failed.
    #[error("failed to read {} for process {pid}: {source}", path.display())]
    Read {
        /// Pid of the caller.
        pid: i32,
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A procfs file does not have the format the kernel documents.
    #[error("invalid {} for process {pid}: {reason}", path.display())]
    InvalidProcFile {
        /// Pid of the caller.
        pid: i32,
        /// The file that could not be parsed.
        path: PathBuf,
        /// Description of the problem with its content.
        reason: String,
    },
    /// The process start time changed while the attestor read it, so the pid now belongs to
    /// another process.
    #[error(
        "process {pid} was replaced during attestation: its start time changed from \
         {before} to {after} clock ticks after boot"
    )]
    ProcessReplaced {
        /// Pid of the caller.
        pid: i32,
        /// Start time read before collecting selectors.
        before: u64,
        /// Start time read after collecting selectors.
        after: u64,
    },
    /// The process runs as another user than the one the kernel recorded for the socket peer.
    #[error(
        "process {pid} runs as effective uid {process_uid} but connected as uid {peer_uid}: \
         it changed user after connecting or its pid was reused"
    )]
    UidMismatch {
        /// Pid of the caller.
        pid: i32,
        /// Effective uid of the peer when it connected (SO_PEERCRED).
        peer_uid: u32,
        /// Effective uid in `/proc/<pid>/status` now.
        process_uid: u32,
    },
    /// The executable is larger than `workload_size_limit`, so its hash is not computed.
    #[error(
        "executable {} of process {pid} is {size} bytes, over the workload size limit of \
         {limit} bytes; raise workload_size_limit, or set it to 0 for no limit",
        path.display()
    )]
    WorkloadTooLarge {
        /// Pid of the caller.
        pid: i32,
        /// The file that was measured.
        path: PathBuf,
        /// Size of the executable in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
}
