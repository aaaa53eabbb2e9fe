//! Checks on the directories above a socket path, so no other local user can replace the
//! socket or a directory on its path.
//!
//! Whoever can write to a directory can rename or replace anything in it, so every directory
//! from the socket's parent up to `/` must be owned by the effective user or root, and one that
//! group or others can write to must be sticky (like `/tmp`), which limits renames and
//! deletions to each entry's owner. Symbolic links are resolved and the directories of the real
//! path are checked too. The socket file itself is never followed.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::with_path;

/// Mode of the directories [`crate::bind`] creates.
pub(super) const SHARED_DIR_MODE: u32 = 0o755;
/// Mode of the directories [`crate::bind_private`] creates.
pub(super) const PRIVATE_DIR_MODE: u32 = 0o700;

const STICKY: u32 = 0o1000;
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// Checks the existing directories above `dir` and `dir` itself, creates the missing ones with
/// `mode`, and checks the whole chain again.
///
/// `dir` must be absolute. `socket` only names the socket in error messages.
pub(super) fn prepare_dir(dir: &Path, socket: &Path, mode: u32) -> io::Result<()> {
    check_ancestors(dir, socket)?;
    create_missing(dir, mode)?;
    // A directory created concurrently by someone else is caught here.
    check_ancestors(dir, socket)
}

/// Creates the missing directories of `dir`, outermost first, and sets each one's mode to
/// `mode` regardless of the umask.
fn create_missing(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    for ancestor in dir.ancestors() {
        match fs::symlink_metadata(ancestor) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => missing.push(ancestor),
            _ => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => fs::set_permissions(dir, Permissions::from_mode(mode))
                .map_err(|err| with_path("failed to set the mode of", dir, err))?,
            // Created by someone else in the meantime; the second check judges it.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(with_path("failed to create directory", dir, err)),
        }
    }
    Ok(())
}

/// Checks every existing directory from `dir` up to `/`, and for each one the directories of
/// its real path. Missing directories are skipped: [`create_missing`] creates them later.
pub(super) fn check_ancestors(dir: &Path, socket: &Path) -> io::Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let mut checked: HashSet<PathBuf> = HashSet::new();
    for ancestor in dir.ancestors() {
        let real = match fs::canonicalize(ancestor) {
            Ok(real) => real,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(with_path("failed to resolve", ancestor, err)),
        };
        for real_ancestor in real.ancestors() {
            if !checked.insert(real_ancestor.to_path_buf()) {
                continue;
            }
            let metadata = fs::metadata(real_ancestor)
                .map_err(|err| with_path("failed to read", real_ancestor, err))?;
            check_dir(real_ancestor, &metadata, socket, euid)?;
        }
    }
    Ok(())
}

fn check_dir(dir: &Path, metadata: &Metadata, socket: &Path, euid: u32) -> io::Result<()> {
    let mode = metadata.mode() & 0o7777;
    let owner_ok = metadata.uid() == euid || metadata.uid() == 0;
    let writable_by_others = mode & GROUP_OR_OTHER_WRITE != 0;
    if owner_ok && (!writable_by_others || mode & STICKY != 0) {
        return Ok(());
    }
    let message = format!(
        "directory {} (owner uid {}, mode {mode:o}) lets another user replace the socket {}. \
         Every directory above the socket must belong to uid {euid} or root, and a directory \
         that group or others can write to must have the sticky bit. Change the directory's \
         owner or mode, or choose a socket path below directories only root or uid {euid} can \
         write to",
        dir.display(),
        metadata.uid(),
        socket.display(),
    );
    Err(io::Error::new(io::ErrorKind::PermissionDenied, message))
}

/// Checks the immediate parent of a [`crate::bind_private`] socket: it must belong to the
/// effective user, not be sticky (like `/tmp`) and give group and others no access.
pub(super) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    let metadata = fs::metadata(dir).map_err(|err| with_path("failed to read", dir, err))?;
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid || metadata.mode() & STICKY != 0 {
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
