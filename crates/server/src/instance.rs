//! The server's instance ID, which names this replica among the servers that share one
//! database.
//!
//! The ID is a random UUID generated on the first start and kept in `<data_dir>/server_instance_id`
//! (mode 0600), so it survives restarts and moves with the data directory. It is not derived
//! from the host name or an address, because replicas in containers often share those, and a
//! restored backup of a data directory should keep its authorities. Two servers must therefore
//! never share a data directory.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::ServerError;

/// The file name of the instance ID inside the data directory.
pub(crate) const INSTANCE_ID_FILE: &str = "server_instance_id";

/// Maximum length of an instance ID read from the file.
const MAX_INSTANCE_ID_LEN: usize = 64;

/// Reads the instance ID from `data_dir`, or generates and stores one when the file is missing.
///
/// # Errors
/// Returns the file failure, or [`ServerError::Corrupt`] when the file does not contain an ID
/// of 1 to 64 ASCII letters, digits and hyphens.
pub(crate) fn load_or_create(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse(&path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(ServerError::io(&path, error)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    // The ID goes to a temporary file first and is then hard-linked into place, which fails if
    // the file exists, so a concurrent start never reads a partly written ID.
    let temp = data_dir.join(format!(".{INSTANCE_ID_FILE}.{id}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(format!("{id}\n").as_bytes())?;
            file.sync_all()
        });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(ServerError::io(&temp, error));
    }
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::info!(instance_id = %id, path = %path.display(), "server instance ID created");
            Ok(id)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let text =
                std::fs::read_to_string(&path).map_err(|error| ServerError::io(&path, error))?;
            parse(&path, &text)
        }
        Err(error) => Err(ServerError::io(&path, error)),
    }
}

fn parse(path: &Path, text: &str) -> Result<String, ServerError> {
    let id = text.trim();
    let valid = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID_LEN
        && id
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '-');
    if !valid {
        return Err(ServerError::Corrupt(format!(
            "{} contains {id:?}, not a server instance ID of 1 to {MAX_INSTANCE_ID_LEN} ASCII \
             letters, digits and hyphens; delete it to generate a new ID, which starts new \
             CA authorities for this server",
            path.display()
        )));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn instance_id_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first, second);
        let mode = std::fs::metadata(dir.path().join(INSTANCE_ID_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), first);
    }

    #[test]
    fn instance_id_invalid_file_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTANCE_ID_FILE), "../etc\n").unwrap();
        let error = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(error.contains("server instance ID"), "{error}");
    }
}
