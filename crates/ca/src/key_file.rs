//! Private key files: one unencrypted PKCS#8 `PRIVATE KEY` PEM block, mode 0600, replaced
//! atomically on write.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::{CaError, PrivateKey};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
/// Larger than any PEM key of the supported types (an RSA 4096 key is about 3.3 KiB).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

impl PrivateKey {
    /// Reads a key from a PEM file holding one unencrypted PKCS#8 `PRIVATE KEY` block.
    ///
    /// # Errors
    /// Returns [`CaError::InsecureKeyFile`] when the file's mode grants group or others any
    /// access. The check is `mode & 0o077 != 0`, which is stricter than read access alone.
    /// Returns [`CaError::InvalidKeyFile`] when the path is not a regular file or contains no
    /// valid key, and [`CaError::Io`] when the file cannot be read.
    pub fn read_pem_file(path: &Path) -> Result<Self, CaError> {
        let file = File::open(path).map_err(|e| CaError::io("open", path, e))?;

        // The checks use the opened file, so a rename between check and read cannot swap it.
        let metadata = file.metadata().map_err(|e| CaError::io("stat", path, e))?;
        if !metadata.is_file() {
            return Err(invalid_file(path, "not a regular file"));
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CaError::InsecureKeyFile {
                path: path.to_path_buf(),
                mode,
            });
        }

        if metadata.len() > MAX_KEY_FILE_BYTES {
            return Err(invalid_file(
                path,
                &format!("larger than {MAX_KEY_FILE_BYTES} bytes"),
            ));
        }

        // Reserving the full size up front keeps the buffer from reallocating, which would
        // leave unzeroized copies of the key behind.
        let capacity = usize::try_from(metadata.len()).unwrap_or(0) + 1;
        let mut pem = Zeroizing::new(Vec::with_capacity(capacity));
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_end(&mut pem)
            .map_err(|e| CaError::io("read", path, e))?;

        let der = decode_pkcs8_pem(&pem).map_err(|reason| invalid_file(path, reason))?;
        let key = Self::from_pkcs8_der(&der).map_err(|e| invalid_file(path, &e.to_string()))?;
        tracing::debug!(path = %path.display(), key_type = %key.key_type(), "read private key file");
        Ok(key)
    }

    /// Writes the key as a PKCS#8 PEM file with mode 0600, replacing `path` atomically.
    ///
    /// The key goes to a new temporary file in the same directory (created 0600), which is
    /// synced, renamed over `path`, and followed by a sync of the directory. On failure the
    /// temporary file is removed and `path` is left as it was.
    ///
    /// # Errors
    /// Returns [`CaError::Io`] naming the step and file that failed.
    pub fn write_pem_file(&self, path: &Path) -> Result<(), CaError> {
        let file_name = path
            .file_name()
            .ok_or_else(|| invalid_file(path, "the path has no file name"))?;
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            file_name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let pem = self.to_pem();
        let result = write_new_file(&temp, pem.as_bytes())
            .and_then(|()| fs::rename(&temp, path).map_err(|e| CaError::io("rename", &temp, e)))
            .and_then(|()| sync_dir(dir));
        if result.is_err() {
            // After a successful rename the temporary name no longer exists; ignore that.
            let _ = fs::remove_file(&temp);
        }
        result?;
        tracing::debug!(path = %path.display(), key_type = %self.key_type(), "wrote private key file");
        Ok(())
    }

    /// Encodes the key as a PKCS#8 `PRIVATE KEY` PEM block with 64-character lines.
    fn to_pem(&self) -> Zeroizing<String> {
        let der = self.pkcs8_der();
        // Exact capacities keep the strings from reallocating and leaving key copies behind.
        let mut body = Zeroizing::new(String::with_capacity(der.len().div_ceil(3) * 4));
        STANDARD.encode_string(der, &mut body);
        let lines = body.len().div_ceil(64);
        let mut pem = Zeroizing::new(String::with_capacity(
            PEM_BEGIN.len() + PEM_END.len() + body.len() + lines + 2,
        ));
        pem.push_str(PEM_BEGIN);
        pem.push('\n');
        for chunk in body.as_bytes().chunks(64) {
            // Base64 output is ASCII, so every chunk is valid UTF-8.
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        pem
    }
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CaError::io("create", path, e))?;
    file.write_all(bytes)
        .map_err(|e| CaError::io("write", path, e))?;
    file.sync_all().map_err(|e| CaError::io("sync", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), CaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CaError::io("sync directory", dir, e))
}

fn invalid_file(path: &Path, reason: &str) -> CaError {
    CaError::InvalidKeyFile {
        path: PathBuf::from(path),
        reason: reason.to_owned(),
    }
}

/// Decodes the single `PRIVATE KEY` block of a PEM file.
fn decode_pkcs8_pem(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let text = std::str::from_utf8(pem).map_err(|_| "the file is not UTF-8 text")?;
    let Some(begin) = text.find(PEM_BEGIN) else {
        return Err(missing_block_reason(text));
    };
    let body_start = begin + PEM_BEGIN.len();
    let body_len = text[body_start..]
        .find(PEM_END)
        .ok_or("the PRIVATE KEY block has no END line")?;
    if text[body_start + body_len..].contains(PEM_BEGIN) {
        return Err("the file holds more than one PRIVATE KEY block");
    }
    let body = &text[body_start..body_start + body_len];
    let mut compact = Zeroizing::new(Vec::with_capacity(body.len()));
    compact.extend(body.bytes().filter(|b| !b.is_ascii_whitespace()));
    let mut der = Zeroizing::new(vec![0; base64::decoded_len_estimate(compact.len())]);
    let len = STANDARD
        .decode_slice(&compact, &mut der)
        .map_err(|_| "the PRIVATE KEY block is not valid base64")?;
    der.truncate(len);
    Ok(der)
}

fn missing_block_reason(text: &str) -> &'static str {
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        "encrypted PKCS#8 keys are not supported; decrypt with `openssl pkcs8 -in FILE -out FILE2`"
    } else if text.contains("-----BEGIN EC PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----")
    {
        "found a SEC1 or PKCS#1 key; convert it with `openssl pkcs8 -topk8 -nocrypt -in FILE -out FILE2`"
    } else {
        "no `-----BEGIN PRIVATE KEY-----` (PKCS#8) block found"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyType;

    #[test]
    fn pem_round_trips() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        let der = decode_pkcs8_pem(pem.as_bytes()).unwrap();
        assert_eq!(&*der, key.pkcs8_der());
    }

    #[test]
    fn decode_names_other_key_formats() {
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(
            decode_pkcs8_pem(sec1.as_bytes())
                .unwrap_err()
                .contains("SEC1")
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            decode_pkcs8_pem(encrypted.as_bytes())
                .unwrap_err()
                .contains("encrypted")
        );
        assert!(decode_pkcs8_pem(b"hello").unwrap_err().contains("no `"));
    }

    #[test]
    fn decode_rejects_two_keys_and_bad_base64() {
        let single = PrivateKey::generate(KeyType::EcP256).unwrap().to_pem();
        let two = format!("{}{}", single.as_str(), single.as_str());
        assert!(
            decode_pkcs8_pem(two.as_bytes())
                .unwrap_err()
                .contains("more than one")
        );
        let bad = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
        assert!(
            decode_pkcs8_pem(bad.as_bytes())
                .unwrap_err()
                .contains("base64")
        );
        let open = "-----BEGIN PRIVATE KEY-----\nAAAA\n";
        assert!(
            decode_pkcs8_pem(open.as_bytes())
                .unwrap_err()
                .contains("END")
        );
    }
}
