//! The agent's state on disk in `data_dir`: its private key (`agent_svid.key`, PKCS#8 PEM,
//! 0600), its SVID chain (`agent_svid.der`, concatenated DER, leaf first) and the trust bundle
//! (`bundle.der`, concatenated DER CA certificates).
//!
//! Every file is written to a temporary sibling, synced and renamed into place, so a crash
//! leaves either the old or the new content of each file, never a mix. The key and the SVID
//! are two files, so a crash between their renames leaves a key that does not match the SVID;
//! [`load`] detects that and reports the state as invalid.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use twid_spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::AgentError;

/// File name of the agent's private key.
pub(crate) const KEY_FILE: &str = "agent_svid.key";
/// File name of the agent's SVID chain.
pub(crate) const SVID_FILE: &str = "agent_svid.der";
/// File name of the local trust bundle.
pub(crate) const BUNDLE_FILE: &str = "bundle.der";

/// The agent's own identity: key, SVID chain and the local bundle.
pub(crate) struct AgentState {
    pub(crate) key: KeyPair,
    /// DER certificates, leaf first.
    pub(crate) chain: Vec<Vec<u8>>,
    /// DER CA certificates of the local trust domain.
    pub(crate) bundle: Vec<Vec<u8>>,
}

impl AgentState {
    /// Returns the leaf's validity as Unix seconds `(not_before, not_after)`.
    pub(crate) fn validity(&self) -> Result<(i64, i64), AgentError> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| AgentError::InvalidSvid("the agent SVID chain is empty".to_owned()))?;
        validity(leaf)
    }

    /// Checks that the chain is an X.509-SVID whose leaf matches the key, and returns its
    /// SPIFFE ID.
    pub(crate) fn check(&self) -> Result<SpiffeId, AgentError> {
        let chain = self.certificates();
        let svid = X509Svid::from_parts(chain, self.private_key_der())
            .map_err(|e| AgentError::InvalidSvid(format!("agent SVID: {e}")))?;
        Ok(svid.spiffe_id().clone())
    }

    /// Checks the SVID as [`AgentState::check`] does, and that its SPIFFE ID is in
    /// `trust_domain` and its chain verifies against the state's own bundle now.
    pub(crate) fn verify(&self, trust_domain: &TrustDomain) -> Result<SpiffeId, AgentError> {
        let spiffe_id = self.check()?;
        if spiffe_id.trust_domain() != trust_domain {
            return Err(AgentError::InvalidSvid(format!(
                "agent SVID {spiffe_id} is not in trust domain {trust_domain}"
            )));
        }
        let authorities = self
            .bundle
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let bundle = X509Bundle::from_authorities(trust_domain.clone(), authorities)
            .map_err(|e| AgentError::InvalidSvid(format!("bundle: {e}")))?;
        let mut bundles = X509BundleSet::new();
        bundles.insert(bundle);
        twid_spiffe::verify_x509_svid(&self.certificates(), &bundles, SystemTime::now()).map_err(
            |e| {
                AgentError::InvalidSvid(format!(
                    "agent SVID {spiffe_id} does not verify against the bundle: {e}"
                ))
            },
        )?;
        Ok(spiffe_id)
    }

    /// Returns the chain as rustls certificates.
    pub(crate) fn certificates(&self) -> Vec<CertificateDer<'static>> {
        self.chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect()
    }

    /// Returns the private key as PKCS#8 DER.
    pub(crate) fn private_key_der(&self) -> PrivatePkcs8KeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der())
    }
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is left out on purpose: Debug output may reach logs.
        f.debug_struct("AgentState")
            .field("certificates", &self.chain.len())
            .field("bundle_certificates", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

/// Returns a certificate's validity as Unix seconds `(not_before, not_after)`.
pub(crate) fn validity(der: &[u8]) -> Result<(i64, i64), AgentError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| AgentError::InvalidSvid(format!("malformed certificate: {e}")))?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Generates a fresh ECDSA P-256 key.
pub(crate) fn generate_key() -> Result<KeyPair, AgentError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Crypto(format!("key generation failed: {e}")))
}

/// Builds a DER PKCS#10 request for `key`; the server takes only its public key.
pub(crate) fn build_csr(key: &KeyPair) -> Result<Vec<u8>, AgentError> {
    let params = rcgen::CertificateParams::default();
    let csr = params
        .serialize_request(key)
        .map_err(|e| AgentError::Crypto(format!("CSR creation failed: {e}")))?;
    Ok(csr.der().to_vec())
}

/// Splits concatenated DER certificates.
pub(crate) fn split_chain(concat: &[u8]) -> Result<Vec<Vec<u8>>, AgentError> {
    let certs = twid_spiffe::split_der_certificates(concat)
        .map_err(|e| AgentError::InvalidSvid(e.to_string()))?;
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// Loads the stored state, or `None` when the key or the SVID file is missing.
///
/// A missing or empty bundle file loads as an empty bundle; the caller then needs another
/// source of trust for the server.
pub(crate) fn load(data_dir: &Path) -> Result<Option<AgentState>, AgentError> {
    let (Some(key), Some(chain)) = (
        read_optional(&data_dir.join(KEY_FILE))?,
        read_optional(&data_dir.join(SVID_FILE))?,
    ) else {
        return Ok(None);
    };
    let invalid = |reason: String| {
        AgentError::InvalidSvid(format!(
            "stored agent state in {} is unusable: {reason}",
            data_dir.display()
        ))
    };
    let pem = String::from_utf8(key).map_err(|_| invalid(format!("{KEY_FILE} is not PEM")))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| invalid(format!("{KEY_FILE}: {e}")))?;
    let chain = split_chain(&chain).map_err(|e| invalid(format!("{SVID_FILE}: {e}")))?;
    let bundle = match read_optional(&data_dir.join(BUNDLE_FILE))? {
        Some(bytes) if !bytes.is_empty() => {
            split_chain(&bytes).map_err(|e| invalid(format!("{BUNDLE_FILE}: {e}")))?
        }
        _ => Vec::new(),
    };
    let state = AgentState { key, chain, bundle };
    state.check().map_err(|e| invalid(e.to_string()))?;
    Ok(Some(state))
}

/// Stores key, SVID and bundle. All three temporary files are written and synced before the
/// first rename, so a failed write leaves the stored state as it was, and only a crash between
/// the renames can leave a key that does not match the SVID.
pub(crate) fn save(data_dir: &Path, state: &AgentState) -> Result<(), AgentError> {
    let files = [
        (KEY_FILE, state.key.serialize_pem().into_bytes()),
        (SVID_FILE, state.chain.concat()),
        (BUNDLE_FILE, state.bundle.concat()),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (name, contents) in &files {
        let path = data_dir.join(name);
        match write_temporary(&path, contents) {
            Ok(temporary) => written.push((temporary, path)),
            Err(error) => {
                for (temporary, _) in &written {
                    let _ = std::fs::remove_file(temporary);
                }
                return Err(error);
            }
        }
    }
    for (temporary, path) in &written {
        rename_into_place(temporary, path)?;
    }
    Ok(())
}

/// Stores the bundle alone, after a sync changed it.
pub(crate) fn save_bundle(data_dir: &Path, bundle: &[Vec<u8>]) -> Result<(), AgentError> {
    write_atomic(&data_dir.join(BUNDLE_FILE), &bundle.concat())
}

/// Creates `path` (and missing parents) with mode 0700; an existing directory keeps its mode.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| AgentError::Io {
            path: path.to_owned(),
            source,
        })
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, AgentError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `contents` with mode 0600 through a temporary file, fsync and a rename.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    let temporary = write_temporary(path, contents)?;
    rename_into_place(&temporary, path)
}

/// Writes `contents` with mode 0600 to the temporary sibling of `path`, syncs it, and returns
/// the temporary path.
fn write_temporary(path: &Path, contents: &[u8]) -> Result<PathBuf, AgentError> {
    let io = |source| AgentError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = temporary_path(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io)?;
    // `mode` applies only when the file is created; a stale temporary file keeps its mode.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(temporary)
}

/// Renames `temporary` to `path` and syncs the folder.
fn rename_into_place(temporary: &Path, path: &Path) -> Result<(), AgentError> {
    std::fs::rename(temporary, path).map_err(|source| AgentError::Io {
        path: path.to_owned(),
        source,
    })?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        // Makes the rename itself durable; failing here loses nothing already written.
        let _ = dir.sync_all();
    }
    Ok(())
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a CA and an agent SVID signed by it, for `spiffe://example.org/spire/agent/test`.
    pub(crate) fn test_state() -> AgentState {
        let ca = crate::test_support::TestCa::new("example.org");
        let key = generate_key().expect("agent key");
        let leaf = ca.leaf(&key, "spiffe://example.org/spire/agent/test");
        AgentState {
            key,
            chain: vec![leaf],
            bundle: vec![ca.der],
        }
    }

    #[test]
    fn missing_files_load_as_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(load(dir.path()).expect("load").is_none());
    }

    #[test]
    fn saved_state_loads_back_with_mode_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = test_state();
        save(dir.path(), &state).expect("save");
        let loaded = load(dir.path()).expect("load").expect("present");
        assert_eq!(loaded.chain, state.chain);
        assert_eq!(loaded.bundle, state.bundle);
        assert_eq!(loaded.key.serialize_der(), state.key.serialize_der());
        assert_eq!(
            loaded.check().expect("valid").to_string(),
            "spiffe://example.org/spire/agent/test"
        );
        for file in [KEY_FILE, SVID_FILE, BUNDLE_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .expect("stored file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        for file in [KEY_FILE, SVID_FILE, BUNDLE_FILE] {
            assert!(!dir.path().join(format!("{file}.tmp")).exists(), "{file}");
        }
    }

    #[test]
    fn failed_save_keeps_stored_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = test_state();
        save(dir.path(), &first).expect("save");
        // A folder in place of the bundle's temporary file makes its write fail after the
        // key and SVID temporaries were written.
        std::fs::create_dir(dir.path().join(format!("{BUNDLE_FILE}.tmp"))).expect("blocker");
        let second = test_state();
        assert!(save(dir.path(), &second).is_err());
        let loaded = load(dir.path()).expect("load").expect("present");
        assert_eq!(loaded.chain, first.chain);
        assert_eq!(loaded.key.serialize_der(), first.key.serialize_der());
        assert!(!dir.path().join(format!("{KEY_FILE}.tmp")).exists());
        assert!(!dir.path().join(format!("{SVID_FILE}.tmp")).exists());
    }

    #[test]
    fn verify_checks_trust_domain_and_chain() {
        let state = test_state();
        let example = TrustDomain::new("example.org").expect("trust domain");
        let other = TrustDomain::new("other.test").expect("trust domain");
        assert_eq!(
            state.verify(&example).expect("verifies").to_string(),
            "spiffe://example.org/spire/agent/test"
        );
        assert!(state.verify(&other).is_err());
        let foreign_ca = crate::test_support::TestCa::new("example.org");
        let unrelated = AgentState {
            bundle: vec![foreign_ca.der],
            ..test_state()
        };
        let error = unrelated.verify(&example).expect_err("wrong CA");
        assert!(error.to_string().contains("does not verify"), "{error}");
    }

    #[test]
    fn key_not_matching_svid_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut state = test_state();
        save(dir.path(), &state).expect("save");
        state.key = generate_key().expect("other key");
        write_atomic(
            &dir.path().join(KEY_FILE),
            state.key.serialize_pem().as_bytes(),
        )
        .expect("overwrite key");
        let error = load(dir.path()).expect_err("mismatch must be reported");
        assert!(matches!(error, AgentError::InvalidSvid(_)), "{error}");
    }

    #[test]
    fn stale_temporary_file_gets_mode_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join(KEY_FILE);
        let stale = temporary_path(&target);
        std::fs::write(&stale, b"old").expect("stale file");
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&target, b"new").expect("write");
        let mode = std::fs::metadata(&target)
            .expect("target")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
    }

    #[test]
    fn csr_is_der() {
        let key = generate_key().expect("key");
        let csr = build_csr(&key).expect("csr");
        assert_eq!(csr.first(), Some(&0x30));
    }
}
