//! The files that `twid api fetch x509|wit --write DIR` keeps in a directory.
//!
//! Each file is replaced atomically with a mode set exactly, whatever the caller's umask: a
//! program that reloads its certificates never reads half a file, and a key is never readable
//! by others. Files of an earlier fetch whose SVID was not returned again are removed, so that
//! the directory holds only current identities.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;

/// Mode of certificates and bundles, which are public.
pub(crate) const PUBLIC: u32 = 0o644;
/// Mode of private keys and tokens.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode of a directory that `--write` creates. Its keys stay private by their own mode.
const DIRECTORY: u32 = 0o755;

/// The names of the files written into a directory and of those removed from it.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub(crate) files: Vec<String>,
    pub(crate) removed: Vec<String>,
}

impl Written {
    /// Writes `contents` to `name` in `dir` with `mode`, and records the name.
    pub(crate) fn write(
        &mut self,
        dir: &Path,
        name: String,
        contents: &[u8],
        mode: u32,
    ) -> anyhow::Result<()> {
        write_file(&dir.join(&name), contents, mode)?;
        self.files.push(name);
        Ok(())
    }

    /// Removes the files in `dir` that `is_ours` recognizes as written by an earlier fetch
    /// and that this fetch did not write.
    pub(crate) fn remove_stale(
        &mut self,
        dir: &Path,
        is_ours: fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))?;
        let mut stale = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let regular = entry.file_type().is_ok_and(|kind| kind.is_file());
            if regular && is_ours(&name) && !self.files.contains(&name) {
                stale.push(name);
            }
        }
        stale.sort();
        for name in stale {
            let path = dir.join(&name);
            std::fs::remove_file(&path)
                .with_context(|| format!("failed to remove the stale file {}", path.display()))?;
            self.removed.push(name);
        }
        Ok(())
    }

    /// Prints which files were written to `dir` and which were removed.
    pub(crate) fn print(&self, dir: &Path) {
        println!("Wrote {} to {}", self.files.join(", "), dir.display());
        if !self.removed.is_empty() {
            println!(
                "Removed {}, left from an earlier fetch of an SVID that was not returned again",
                self.removed.join(", ")
            );
        }
    }
}

/// Creates the output directory and its parents, or returns an error that names a path
/// that exists but is not a directory.
pub(crate) fn create_dir(dir: &Path) -> anyhow::Result<()> {
    if let Ok(metadata) = std::fs::metadata(dir)
        && !metadata.is_dir()
    {
        anyhow::bail!(
            "--write {} names an existing file, not a directory; pass a directory path",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIRECTORY)
        .create(dir)
        .with_context(|| format!("failed to create the directory {}", dir.display()))
}

/// Writes `contents` to `path` with exactly `mode`, replacing any previous file atomically.
/// The temporary file is created with mode 0600, so a private key is never readable by
/// others, even briefly.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    // A hidden sibling in the same directory, so that the rename is atomic and never
    // replaces another file.
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let temp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE)
        .open(&temp)
        .with_context(|| format!("failed to create {}", temp.display()))?;
    // The mode given to open is reduced by the umask, so set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to set the mode of {}", temp.display()))?;
    file.write_all(contents)
        .with_context(|| format!("failed to write {}", temp.display()))?;
    file.sync_all()
        .with_context(|| format!("failed to write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("failed to write {}", path.display()))
}

/// Returns whether `name` is `{prefix}{n}.{m}...{suffix}` with `numbers` decimal numbers,
/// as the file names of `--write` are.
pub(crate) fn is_indexed_name(name: &str, prefix: &str, numbers: usize, suffix: &str) -> bool {
    let Some(middle) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
    else {
        return false;
    };
    let parts: Vec<&str> = middle.split('.').collect();
    parts.len() == numbers
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::{PRIVATE, PUBLIC, Written, create_dir, is_indexed_name};

    fn is_svid_file(name: &str) -> bool {
        is_indexed_name(name, "svid.", 1, ".pem") || is_indexed_name(name, "bundle.", 1, ".pem")
    }

    #[test]
    fn indexed_names() {
        assert!(is_indexed_name("svid.0.pem", "svid.", 1, ".pem"));
        assert!(is_indexed_name("svid.12.pem", "svid.", 1, ".pem"));
        assert!(is_indexed_name(
            "federated_bundle.1.3.pem",
            "federated_bundle.",
            2,
            ".pem"
        ));
        assert!(!is_indexed_name("svid..pem", "svid.", 1, ".pem"));
        assert!(!is_indexed_name("svid.a.pem", "svid.", 1, ".pem"));
        assert!(!is_indexed_name("svid.1.2.pem", "svid.", 1, ".pem"));
        assert!(!is_indexed_name("svid.0.pem.bak", "svid.", 1, ".pem"));
        assert!(!is_indexed_name("my.svid.0.pem", "svid.", 1, ".pem"));
    }

    #[test]
    fn modes_set_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        create_dir(&out).unwrap();
        let mut written = Written::default();
        written
            .write(&out, "svid.0.pem".into(), b"cert", PUBLIC)
            .unwrap();
        written
            .write(&out, "svid.0.key".into(), b"key", PRIVATE)
            .unwrap();
        let mode = |name: &str| {
            std::fs::metadata(out.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("svid.0.pem"), PUBLIC);
        assert_eq!(mode("svid.0.key"), PRIVATE);
        assert_eq!(written.files, ["svid.0.pem", "svid.0.key"]);
    }

    #[test]
    fn stale_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for name in [
            "svid.0.pem",
            "svid.1.pem",
            "bundle.1.pem",
            "notes.txt",
            "svid.x.pem",
        ] {
            std::fs::write(out.join(name), b"old").unwrap();
        }
        std::fs::create_dir(out.join("svid.2.pem")).unwrap();
        let mut written = Written::default();
        written
            .write(out, "svid.0.pem".into(), b"new", PUBLIC)
            .unwrap();
        written.remove_stale(out, is_svid_file).unwrap();
        assert_eq!(written.removed, ["bundle.1.pem", "svid.1.pem"]);
        assert!(out.join("svid.0.pem").exists());
        assert!(out.join("notes.txt").exists(), "other files stay");
        assert!(
            out.join("svid.x.pem").exists(),
            "names outside the pattern stay"
        );
        assert!(out.join("svid.2.pem").is_dir(), "directories stay");
    }

    #[test]
    fn file_path_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("taken");
        std::fs::write(&file, b"").unwrap();
        let error = create_dir(&file).unwrap_err().to_string();
        assert!(error.contains("not a directory"), "{error}");
    }
}
