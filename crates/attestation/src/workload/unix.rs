//! The `unix` workload attestor: selectors from the caller's process, compatible with SPIRE's
//! `unix` plugin.
//!
//! | Selector | Value |
//! | --- | --- |
//! | `unix:uid:<n>` | effective user id |
//! | `unix:user:<name>` | its user name, when the user database resolves it |
//! | `unix:gid:<n>` | effective group id |
//! | `unix:group:<name>` | its group name, when the group database resolves it |
//! | `unix:supplementary_gid:<n>` | each supplementary group id (`Groups:` in `/proc/<pid>/status`) |
//! | `unix:supplementary_group:<name>` | its name, when resolvable |
//! | `unix:path:<path>` | the executable path (`/proc/<pid>/exe`), with `discover_workload_path` |
//! | `unix:sha256:<hex>` | SHA-256 of the executable, with `discover_workload_path` and a non-negative size limit |
//!
//! The process behind the pid is pinned by its start time: it is read before and after the
//! other files, and attestation fails if it changed or the process exited. Its effective uid
//! must also equal the uid the kernel recorded for the socket peer.

mod procfs;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use nix::unistd::{Gid, Group, Uid, User};

use self::procfs::{ProcStat, ProcStatus, parse_stat, parse_status};
use crate::AttestationError;
use crate::workload::{PeerCredentials, Selector, WorkloadAttestor};

/// Selector type and attestor name.
pub const SELECTOR_TYPE: &str = "unix";

/// Size of the read buffer used while hashing an executable.
const HASH_CHUNK_SIZE: usize = 64 * 1024;

/// Settings of the unix attestor, named and defaulted as SPIRE's plugin configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixAttestorOptions {
    /// Adds the `path` and `sha256` selectors. Reading another user's executable needs the
    /// agent to run as root or with `CAP_SYS_PTRACE`.
    pub discover_workload_path: bool,
    /// Maximum executable size in bytes for the `sha256` selector: 0 means no limit, and a
    /// negative value means the hash is never computed. An executable over the limit fails
    /// attestation.
    pub workload_size_limit: i64,
}

/// Maximum number of executable digests kept; the cache is emptied when it is full.
const DIGEST_CACHE_CAPACITY: usize = 4096;

/// The identity of an executable file's contents as `fstat` reports it. A file that is
/// rewritten in place gets a new ctime, which no user can set, and a replaced file gets a new
/// inode, so equal keys mean equal contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// The `unix` workload attestor. See the [module documentation](self) for its selectors.
///
/// SHA-256 digests of executables are cached by [`FileKey`], so a workload that calls the
/// Workload API often costs one `fstat` instead of reading its whole executable each time.
#[derive(Clone, Debug)]
pub struct UnixAttestor {
    options: UnixAttestorOptions,
    digests: Arc<Mutex<HashMap<FileKey, String>>>,
}

impl UnixAttestor {
    /// Creates an attestor that reads processes from `/proc`.
    pub fn new(options: UnixAttestorOptions) -> Self {
        Self {
            options,
            digests: Arc::default(),
        }
    }

    fn proc_path(&self, pid: i32, file: &str) -> PathBuf {
        Path::new("/proc").join(pid.to_string()).join(file)
    }

    fn read_stat(&self, pid: i32) -> Result<ProcStat, AttestationError> {
        let path = self.proc_path(pid, "stat");
        let text = read_proc_file(pid, &path)?;
        let stat = parse_stat(&text).map_err(|reason| AttestationError::InvalidProcFile {
            pid,
            path,
            reason,
        })?;
        if stat.has_exited() {
            let state = stat.state;
            return Err(AttestationError::ProcessExited { pid, state });
        }
        Ok(stat)
    }

    fn read_status(&self, pid: i32) -> Result<ProcStatus, AttestationError> {
        let path = self.proc_path(pid, "status");
        let text = read_proc_file(pid, &path)?;
        parse_status(&text).map_err(|reason| AttestationError::InvalidProcFile {
            pid,
            path,
            reason,
        })
    }

    /// Collects every selector; the caller checks afterwards that the process is unchanged.
    fn collect(&self, pid: i32, peer_uid: u32) -> Result<Vec<Selector>, AttestationError> {
        let status = self.read_status(pid)?;
        if status.effective_uid != peer_uid {
            return Err(AttestationError::UidMismatch {
                pid,
                peer_uid,
                process_uid: status.effective_uid,
            });
        }

        let mut selectors = Vec::with_capacity(6 + 2 * status.groups.len());
        let mut push = |name: &str, value: &dyn std::fmt::Display| {
            selectors.push(Selector::new(SELECTOR_TYPE, format!("{name}:{value}")));
        };
        push("uid", &status.effective_uid);
        if let Some(user) = user_name(status.effective_uid) {
            push("user", &user);
        }
        push("gid", &status.effective_gid);
        if let Some(group) = group_name(status.effective_gid) {
            push("group", &group);
        }
        for &gid in &status.groups {
            push("supplementary_gid", &gid);
            if let Some(group) = group_name(gid) {
                push("supplementary_group", &group);
            }
        }

        if self.options.discover_workload_path {
            let exe = self.proc_path(pid, "exe");
            let path = std::fs::read_link(&exe).map_err(|source| AttestationError::Read {
                pid,
                path: exe.clone(),
                source,
            })?;
            push("path", &path.display());
            // A negative limit disables hashing; `try_from` fails exactly for those.
            if let Ok(limit) = u64::try_from(self.options.workload_size_limit) {
                let hash = self.sha256_of_executable(pid, exe, limit)?;
                push("sha256", &hash);
            }
        }
        Ok(selectors)
    }

    /// Hashes the executable through `/proc/<pid>/exe`, which opens the file the process runs
    /// even when its path was deleted or replaced on disk.
    fn sha256_of_executable(
        &self,
        pid: i32,
        exe: PathBuf,
        limit: u64,
    ) -> Result<String, AttestationError> {
        let read_error = |path: &PathBuf, source| AttestationError::Read {
            pid,
            path: path.clone(),
            source,
        };
        let mut file = File::open(&exe).map_err(|source| read_error(&exe, source))?;
        let metadata = file.metadata().map_err(|source| read_error(&exe, source))?;
        let too_large = |size| AttestationError::WorkloadTooLarge {
            pid,
            path: exe.clone(),
            size,
            limit,
        };
        if limit > 0 && metadata.len() > limit {
            return Err(too_large(metadata.len()));
        }
        let key = FileKey::of(&metadata);
        if let Some(hash) = self.cached_digest(&key) {
            return Ok(hash);
        }

        let mut context = digest::Context::new(&digest::SHA256);
        let mut buffer = vec![0; HASH_CHUNK_SIZE];
        let mut total: u64 = 0;
        loop {
            let count = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(read_error(&exe, source)),
            };
            context.update(&buffer[..count]);
            total += count as u64;
            // The file may have grown since the size check.
            if limit > 0 && total > limit {
                return Err(too_large(total));
            }
        }
        let hash = hex::encode(context.finish());
        // Only a file that did not change while it was read is cached under its key.
        let after = file.metadata().map_err(|source| read_error(&exe, source))?;
        if FileKey::of(&after) == key {
            self.store_digest(key, hash.clone());
        }
        Ok(hash)
    }

    fn cached_digest(&self, key: &FileKey) -> Option<String> {
        let digests = self
            .digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        digests.get(key).cloned()
    }

    fn store_digest(&self, key: FileKey, hash: String) {
        let mut digests = self
            .digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if digests.len() >= DIGEST_CACHE_CAPACITY {
            digests.clear();
        }
        digests.insert(key, hash);
    }
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        SELECTOR_TYPE
    }

    // Limit: the start-time check only detects a pid reused while attestation runs. If the
    // caller exits after connecting and a process of the same uid gets its pid before
    // attestation starts, that new process is attested. A pidfd taken at accept time
    // (SO_PEERPIDFD, Linux 6.5) would close that gap.
    fn attest(&self, caller: &PeerCredentials) -> Result<Vec<Selector>, AttestationError> {
        let pid = caller.pid.ok_or(AttestationError::MissingPid {
            attestor: SELECTOR_TYPE,
        })?;
        if pid <= 0 {
            return Err(AttestationError::InvalidPid { pid });
        }

        let before = self.read_stat(pid)?;
        let selectors = self.collect(pid, caller.uid)?;
        let after = self.read_stat(pid)?;
        ensure_same_process(pid, before, after)?;

        tracing::debug!(
            pid,
            uid = caller.uid,
            selectors = selectors.len(),
            "attested workload"
        );
        Ok(selectors)
    }
}

fn ensure_same_process(
    pid: i32,
    before: ProcStat,
    after: ProcStat,
) -> Result<(), AttestationError> {
    if before.start_time != after.start_time {
        return Err(AttestationError::ProcessReplaced {
            pid,
            before: before.start_time,
            after: after.start_time,
        });
    }
    Ok(())
}

/// Reads a procfs file of `pid`, reporting a missing process as [`AttestationError::ProcessNotFound`].
fn read_proc_file(pid: i32, path: &Path) -> Result<String, AttestationError> {
    std::fs::read_to_string(path).map_err(|source| {
        // ESRCH comes from a file opened just before the process was reaped.
        let esrch = nix::errno::Errno::ESRCH as i32;
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(esrch) {
            AttestationError::ProcessNotFound { pid }
        } else {
            AttestationError::Read {
                pid,
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Returns the user name of `uid`, or `None` when the user database has no entry or the
/// lookup fails (SPIRE then omits the selector too).
fn user_name(uid: u32) -> Option<String> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(user) => user.map(|user| user.name),
        Err(err) => {
            tracing::debug!(uid, error = %err, "user lookup failed, omitting the user selector");
            None
        }
    }
}

/// Returns the group name of `gid`, or `None` as [`user_name`] does.
fn group_name(gid: u32) -> Option<String> {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(group) => group.map(|group| group.name),
        Err(err) => {
            tracing::debug!(gid, error = %err, "group lookup failed, omitting the group selector");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(digest::digest(&digest::SHA256, data))
    }

    #[test]
    fn digest_cache_follows_file_changes() {
        let dir = std::env::temp_dir().join(format!("twid-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("program");
        let attestor = UnixAttestor::new(UnixAttestorOptions::default());

        std::fs::write(&path, b"first contents").unwrap();
        let first = attestor.sha256_of_executable(1, path.clone(), 0).unwrap();
        assert_eq!(first, sha256_hex(b"first contents"));
        let cached = attestor.sha256_of_executable(1, path.clone(), 0).unwrap();
        assert_eq!(cached, first);

        // Same length, rewritten in place: the ctime changes, so the cache must not be used.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"other contents").unwrap();
        let second = attestor.sha256_of_executable(1, path.clone(), 0).unwrap();
        assert_eq!(second, sha256_hex(b"other contents"));

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_start_time_passes() {
        let stat = ProcStat {
            state: 'S',
            start_time: 100,
        };
        assert!(ensure_same_process(7, stat, stat).is_ok());
    }

    #[test]
    fn changed_start_time_fails() {
        let before = ProcStat {
            state: 'S',
            start_time: 100,
        };
        let after = ProcStat {
            state: 'R',
            start_time: 250,
        };
        let err = ensure_same_process(7, before, after).expect_err("must reject");
        assert!(
            matches!(
                err,
                AttestationError::ProcessReplaced {
                    pid: 7,
                    before: 100,
                    after: 250
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("process 7 was replaced"), "{message}");
    }

    #[test]
    fn non_positive_pid_is_rejected() {
        let attestor = UnixAttestor::new(UnixAttestorOptions::default());
        for pid in [0, -5] {
            let caller = PeerCredentials {
                uid: 0,
                gid: 0,
                pid: Some(pid),
            };
            let err = attestor.attest(&caller).expect_err("must reject");
            assert!(
                matches!(err, AttestationError::InvalidPid { pid: p } if p == pid),
                "{err}"
            );
        }
    }
}
