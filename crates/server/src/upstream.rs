//! `UpstreamAuthority "disk"`: an existing CA, whose certificate and key are files, signs the
//! server's X.509 authorities, which become intermediate CAs under it.
//!
//! The trust bundle then contains the upstream roots instead of the server's own authorities,
//! and every X.509-SVID chain carries the server's intermediate and, when the upstream
//! certificate is an intermediate itself, the certificates between it and the root.
//!
//! As SPIRE's disk plugin does, the server reads the files again before it signs each new
//! authority, so a renewed upstream certificate takes effect at the next prepare without a
//! restart. When the files cannot be read then, the previously loaded upstream signs, and the
//! failure is logged.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self, VerificationAlgorithm};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use twid_ca::{CaError, PrivateKey, X509Authority};
use twid_config::UpstreamAuthorityDisk;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use zeroize::Zeroizing;

use crate::ServerError;

/// Larger than any PEM key of a supported type (an RSA 4096 key is about 3.3 KiB).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The certificates above one of the server's intermediates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UpstreamChain {
    /// The certificates that an X.509-SVID chain carries after the server's intermediate: the
    /// upstream certificate and the intermediates of `cert_file_path`, without a root. Empty
    /// when the upstream certificate is itself a root.
    pub(crate) intermediates: Vec<CertificateDer<'static>>,
    /// The roots that the trust bundle publishes.
    pub(crate) roots: Vec<CertificateDer<'static>>,
}

/// A loaded and checked upstream CA.
pub(crate) struct Upstream {
    /// The upstream certificate with its private key, which signs the server's intermediates.
    pub(crate) signer: X509Authority,
    pub(crate) chain: Arc<UpstreamChain>,
}

impl Upstream {
    /// Reads and checks the files of `config` at `now`.
    ///
    /// # Errors
    /// Returns [`ServerError::UpstreamAuthority`] naming the file and the problem. The
    /// problems are a key file that group or others may access, a key that does not match the
    /// certificate, a certificate that is not a CA or not valid at `now`, and a chain that does
    /// not reach a root of `bundle_file_path`.
    pub(crate) fn load(
        config: &UpstreamAuthorityDisk,
        now: SystemTime,
    ) -> Result<Self, ServerError> {
        let key = read_key(&config.key_file_path)?;
        let cert_error =
            |reason: String| file_error("cert_file_path", &config.cert_file_path, reason);
        let certs = read_certificates(&config.cert_file_path, "cert_file_path")?;
        let signer =
            X509Authority::from_parts(certs[0].clone(), key).map_err(|error| match error {
                CaError::KeyMismatch => file_error(
                    "key_file_path",
                    &config.key_file_path,
                    format!(
                        "the key does not match the first certificate of cert_file_path {}",
                        config.cert_file_path.display()
                    ),
                ),
                CaError::InvalidCertificate(reason) => cert_error(format!(
                    "the first certificate cannot sign CA certificates: {reason}"
                )),
                other => cert_error(other.to_string()),
            })?;

        let parsed = certs
            .iter()
            .map(|der| parse(der))
            .collect::<Result<Vec<_>, String>>()
            .map_err(cert_error)?;
        for (index, cert) in parsed.iter().enumerate() {
            check_validity(cert, now)
                .map_err(|reason| cert_error(format!("certificate {}: {reason}", index + 1)))?;
            check_ca(cert)
                .map_err(|reason| cert_error(format!("certificate {}: {reason}", index + 1)))?;
        }

        let roots = match &config.bundle_file_path {
            Some(path) => read_certificates(path, "bundle_file_path")?,
            None if is_self_signed(&parsed[0]) => vec![certs[0].clone()],
            None => {
                return Err(cert_error(
                    "the first certificate is not self-signed; set bundle_file_path to the root \
                     certificates it chains to"
                        .to_owned(),
                ));
            }
        };
        let intermediates = chain_to_roots(&certs, &parsed, &roots, now).map_err(|reason| {
            match &config.bundle_file_path {
                Some(path) => file_error("bundle_file_path", path, reason),
                None => cert_error(reason),
            }
        })?;
        Ok(Self {
            signer,
            chain: Arc::new(UpstreamChain {
                intermediates,
                roots,
            }),
        })
    }

    /// Returns the lifetime of a new intermediate: `ttl`, or less when the upstream
    /// certificate expires earlier. A capped lifetime is logged at WARN with both times.
    ///
    /// # Errors
    /// Returns [`ServerError::UpstreamAuthority`] when less than one second of the upstream
    /// certificate's validity remains.
    pub(crate) fn capped_ttl(
        &self,
        config: &UpstreamAuthorityDisk,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Duration, ServerError> {
        let upstream_not_after = self.signer.not_after();
        let remaining = upstream_not_after.duration_since(now).unwrap_or_default();
        let remaining = Duration::from_secs(remaining.as_secs());
        if remaining < Duration::from_secs(1) {
            return Err(file_error(
                "cert_file_path",
                &config.cert_file_path,
                format!(
                    "the upstream certificate expired at {}; replace it to sign new X.509 \
                     authorities",
                    crate::convert::unix_seconds(upstream_not_after)
                ),
            ));
        }
        if remaining >= ttl {
            return Ok(ttl);
        }
        tracing::warn!(
            requested_not_after = crate::convert::unix_seconds(now + ttl),
            upstream_not_after = crate::convert::unix_seconds(upstream_not_after),
            cert_file_path = %config.cert_file_path.display(),
            "the new X.509 authority expires with the upstream certificate, before ca_ttl ends; \
             renew the upstream certificate"
        );
        Ok(remaining)
    }
}

/// The configured upstream CA and the files it was last loaded from.
pub(crate) struct UpstreamSource {
    config: UpstreamAuthorityDisk,
    current: ArcSwap<Upstream>,
}

impl UpstreamSource {
    /// Loads and checks the upstream CA, as [`Upstream::load`] does.
    pub(crate) fn load(
        config: UpstreamAuthorityDisk,
        now: SystemTime,
    ) -> Result<Self, ServerError> {
        let upstream = Upstream::load(&config, now)?;
        tracing::info!(
            cert_file_path = %config.cert_file_path.display(),
            upstream_authority_id = %hex::encode(upstream.signer.key_id()),
            upstream_not_after = crate::convert::unix_seconds(upstream.signer.not_after()),
            roots = upstream.chain.roots.len(),
            "loaded the upstream authority"
        );
        Ok(Self {
            config,
            current: ArcSwap::from_pointee(upstream),
        })
    }

    pub(crate) fn config(&self) -> &UpstreamAuthorityDisk {
        &self.config
    }

    /// Returns the upstream CA that signed most recently, or that was loaded at start.
    pub(crate) fn current(&self) -> Arc<Upstream> {
        self.current.load_full()
    }

    /// Reads the files again and returns the upstream CA to sign with at `now`. When the
    /// files no longer pass the checks, the previously loaded upstream is returned and the
    /// failure is logged.
    pub(crate) fn reload(&self, now: SystemTime) -> Arc<Upstream> {
        match Upstream::load(&self.config, now) {
            Ok(upstream) => {
                let upstream = Arc::new(upstream);
                self.current.store(Arc::clone(&upstream));
                upstream
            }
            Err(error) => {
                tracing::warn!(
                    error = %crate::tasks::error_chain(&error),
                    "failed to reload the upstream authority; signing with the one loaded before"
                );
                self.current.load_full()
            }
        }
    }
}

fn file_error(key: &'static str, path: &Path, reason: String) -> ServerError {
    ServerError::UpstreamAuthority {
        key,
        path: path.to_owned(),
        reason,
    }
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1) that only its owner may access.
fn read_key(path: &Path) -> Result<PrivateKey, ServerError> {
    let fail = |reason: String| file_error("key_file_path", path, reason);
    let file = File::open(path).map_err(|error| fail(format!("cannot open: {error}")))?;
    // The checks use the opened file, so a rename between check and read cannot swap it.
    let metadata = file
        .metadata()
        .map_err(|error| fail(format!("cannot stat: {error}")))?;
    if !metadata.is_file() {
        return Err(fail("not a regular file".to_owned()));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "group or others may access this private key (mode {mode:o}); run chmod 600 on it"
        )));
    }
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_KEY_FILE_BYTES} bytes")));
    }
    let capacity = usize::try_from(metadata.len()).unwrap_or(0) + 1;
    let mut pem = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_end(&mut pem)
        .map_err(|error| fail(format!("cannot read: {error}")))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        fail(
            "contains no unencrypted PEM private key (PRIVATE KEY, EC PRIVATE KEY or RSA \
             PRIVATE KEY)"
                .to_owned(),
        )
    })?;
    let pkcs8 = to_pkcs8(&key).map_err(fail)?;
    PrivateKey::from_pkcs8_der(&pkcs8).map_err(|error| fail(error.to_string()))
}

/// Converts a SEC1 or PKCS#1 key to PKCS#8, which [`PrivateKey`] reads.
fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<Zeroizing<Vec<u8>>, String> {
    use aws_lc_rs::encoding::{AsDer as _, Pkcs8V1Der};
    match key {
        PrivateKeyDer::Pkcs8(der) => Ok(Zeroizing::new(der.secret_pkcs8_der().to_vec())),
        PrivateKeyDer::Sec1(der) => {
            for algorithm in [
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            ] {
                if let Ok(pair) =
                    signature::EcdsaKeyPair::from_private_key_der(algorithm, der.secret_sec1_der())
                {
                    let document = pair
                        .to_pkcs8v1()
                        .map_err(|_| "cannot convert the EC key to PKCS#8".to_owned())?;
                    return Ok(Zeroizing::new(document.as_ref().to_vec()));
                }
            }
            Err("the EC key is invalid or not on P-256 or P-384".to_owned())
        }
        PrivateKeyDer::Pkcs1(der) => {
            let pair = signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|error| format!("invalid RSA key: {error}"))?;
            let document: Pkcs8V1Der<'static> = pair
                .as_der()
                .map_err(|_| "cannot convert the RSA key to PKCS#8".to_owned())?;
            Ok(Zeroizing::new(document.as_ref().to_vec()))
        }
        _ => Err("unsupported private key format".to_owned()),
    }
}

/// Reads the PEM certificates of `path`, at least one.
fn read_certificates(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let fail = |reason: String| file_error(key, path, reason);
    let bytes = std::fs::read(path).map_err(|error| fail(format!("cannot read: {error}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("invalid PEM: {error}")))?;
    if certs.is_empty() {
        return Err(fail("contains no PEM CERTIFICATE block".to_owned()));
    }
    for (index, der) in certs.iter().enumerate() {
        parse(der).map_err(|reason| fail(format!("certificate {}: {reason}", index + 1)))?;
    }
    Ok(certs)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".to_owned()),
        Err(error) => Err(format!("malformed certificate: {error}")),
    }
}

fn check_validity(cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), String> {
    let now = crate::convert::unix_seconds(now);
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(format!(
            "not valid yet: notBefore is {} (Unix {not_before})",
            validity.not_before
        ));
    }
    if now >= not_after {
        return Err(format!(
            "expired: notAfter is {} (Unix {not_after})",
            validity.not_after
        ));
    }
    Ok(())
}

fn check_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let constraints = cert
        .basic_constraints()
        .map_err(|_| "malformed basicConstraints extension".to_owned())?;
    if !constraints.is_some_and(|extension| extension.value.ca) {
        return Err("not a CA: basicConstraints CA is not TRUE".to_owned());
    }
    let usage = cert
        .key_usage()
        .map_err(|_| "malformed keyUsage extension".to_owned())?;
    if usage.is_some_and(|extension| !extension.value.key_cert_sign()) {
        return Err("not a CA: keyUsage lacks keyCertSign".to_owned());
    }
    Ok(())
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    signed_by(cert, cert)
}

/// Checks that the certificates of `cert_file_path` form a chain, each signed by the next,
/// and that the last one is a root or is signed by a valid root of `roots`. Returns the
/// certificates before the root.
fn chain_to_roots(
    certs: &[CertificateDer<'static>],
    parsed: &[X509Certificate<'_>],
    roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let parsed_roots = roots
        .iter()
        .map(|der| parse(der))
        .collect::<Result<Vec<_>, String>>()?;
    let mut intermediates = Vec::new();
    for (index, cert) in parsed.iter().enumerate() {
        if roots.contains(&certs[index]) {
            return Ok(intermediates);
        }
        intermediates.push(certs[index].clone());
        if let Some(next) = parsed.get(index + 1) {
            if !signed_by(cert, next) {
                return Err(format!(
                    "certificate {} of cert_file_path (subject {}) is not signed by certificate \
                     {} (subject {}); list the upstream certificate first, then each issuer",
                    index + 1,
                    cert.subject(),
                    index + 2,
                    next.subject()
                ));
            }
            continue;
        }
        let issuer = parsed_roots.iter().find(|root| signed_by(cert, root));
        return match issuer {
            Some(root) => {
                check_validity(root, now).map_err(|reason| {
                    format!(
                        "the root {} that the chain ends at is {reason}",
                        root.subject()
                    )
                })?;
                Ok(intermediates)
            }
            None => Err(format!(
                "no certificate in it signed the last certificate of cert_file_path (issuer \
                 {}); add that issuer, or its root, to the bundle file",
                cert.issuer()
            )),
        };
    }
    Ok(intermediates)
}

/// Returns whether `issuer`'s key signed `cert` and `issuer`'s subject is `cert`'s issuer.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return false;
    }
    let public_key = issuer.public_key().subject_public_key.data.as_ref();
    let message = cert.tbs_certificate.as_ref();
    let signature = cert.signature_value.data.as_ref();
    verification_algorithms(&cert.signature_algorithm.algorithm.to_id_string())
        .iter()
        .any(|algorithm| {
            signature::UnparsedPublicKey::new(*algorithm, public_key)
                .verify(message, signature)
                .is_ok()
        })
}

/// Returns the candidate verification algorithms for a signature algorithm OID. ECDSA OIDs
/// do not name the curve, so each supported curve is tried.
fn verification_algorithms(oid: &str) -> Vec<&'static dyn VerificationAlgorithm> {
    match oid {
        "1.2.840.10045.4.3.2" => vec![
            &signature::ECDSA_P256_SHA256_ASN1,
            &signature::ECDSA_P384_SHA256_ASN1,
        ],
        "1.2.840.10045.4.3.3" => vec![
            &signature::ECDSA_P384_SHA384_ASN1,
            &signature::ECDSA_P256_SHA384_ASN1,
        ],
        "1.2.840.10045.4.3.4" => vec![&signature::ECDSA_P521_SHA512_ASN1],
        "1.2.840.113549.1.1.11" => vec![&signature::RSA_PKCS1_2048_8192_SHA256],
        "1.2.840.113549.1.1.12" => vec![&signature::RSA_PKCS1_2048_8192_SHA384],
        "1.2.840.113549.1.1.13" => vec![&signature::RSA_PKCS1_2048_8192_SHA512],
        "1.3.101.112" => vec![&signature::ED25519],
        _ => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use twid_config::UpstreamAuthorityDisk;

    use super::Upstream;

    /// A root CA and an intermediate CA under it, written as PEM files into a directory.
    pub(crate) struct TestPki {
        pub(crate) root_cert: PathBuf,
        pub(crate) root_key: PathBuf,
        pub(crate) intermediate_cert: PathBuf,
        pub(crate) intermediate_key: PathBuf,
        pub(crate) root_der: Vec<u8>,
        pub(crate) intermediate_der: Vec<u8>,
    }

    impl TestPki {
        /// The disk plugin settings for the intermediate under the root.
        pub(crate) fn intermediate_config(&self) -> UpstreamAuthorityDisk {
            UpstreamAuthorityDisk {
                key_file_path: self.intermediate_key.clone(),
                cert_file_path: self.intermediate_cert.clone(),
                bundle_file_path: Some(self.root_cert.clone()),
            }
        }

        /// The disk plugin settings for the self-signed root alone.
        pub(crate) fn root_config(&self) -> UpstreamAuthorityDisk {
            UpstreamAuthorityDisk {
                key_file_path: self.root_key.clone(),
                cert_file_path: self.root_cert.clone(),
                bundle_file_path: None,
            }
        }
    }

    fn ca_params(name: &str, valid_for: Duration) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::try_from(valid_for).unwrap();
        params
    }

    fn write(path: &Path, contents: &str, mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Writes a root valid for a year and an intermediate valid for `intermediate_life`.
    pub(crate) fn write_pki(dir: &Path, intermediate_life: Duration) -> TestPki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Test Root CA", Duration::from_secs(365 * 86_400));
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, &root_key);
        let intermediate_key = KeyPair::generate().unwrap();
        let intermediate = ca_params("Test Upstream CA", intermediate_life)
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();
        let pki = TestPki {
            root_cert: dir.join("root.pem"),
            root_key: dir.join("root.key"),
            intermediate_cert: dir.join("ca.crt.pem"),
            intermediate_key: dir.join("ca.key.pem"),
            root_der: root.der().to_vec(),
            intermediate_der: intermediate.der().to_vec(),
        };
        write(&pki.root_cert, &root.pem(), 0o644);
        write(&pki.root_key, &root_key.serialize_pem(), 0o600);
        write(&pki.intermediate_cert, &intermediate.pem(), 0o644);
        write(
            &pki.intermediate_key,
            &intermediate_key.serialize_pem(),
            0o400,
        );
        pki
    }

    fn load_error(config: &UpstreamAuthorityDisk) -> String {
        match Upstream::load(config, SystemTime::now()) {
            Ok(_) => panic!("loading {config:?} succeeded"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn intermediate_with_bundle_loads() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let upstream = Upstream::load(&pki.intermediate_config(), SystemTime::now()).unwrap();
        assert_eq!(upstream.signer.cert_der().as_ref(), pki.intermediate_der);
        assert_eq!(upstream.chain.intermediates.len(), 1);
        assert_eq!(
            upstream.chain.intermediates[0].as_ref(),
            pki.intermediate_der
        );
        assert_eq!(upstream.chain.roots.len(), 1);
        assert_eq!(upstream.chain.roots[0].as_ref(), pki.root_der);
    }

    #[test]
    fn self_signed_root_loads_without_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let upstream = Upstream::load(&pki.root_config(), SystemTime::now()).unwrap();
        assert!(upstream.chain.intermediates.is_empty());
        assert_eq!(upstream.chain.roots.len(), 1);
        assert_eq!(upstream.chain.roots[0].as_ref(), pki.root_der);
    }

    #[test]
    fn cert_file_may_end_with_root() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let full_chain = dir.path().join("chain.pem");
        let text = std::fs::read_to_string(&pki.intermediate_cert).unwrap()
            + &std::fs::read_to_string(&pki.root_cert).unwrap();
        write(&full_chain, &text, 0o644);
        let config = UpstreamAuthorityDisk {
            cert_file_path: full_chain,
            ..pki.intermediate_config()
        };
        let upstream = Upstream::load(&config, SystemTime::now()).unwrap();
        assert_eq!(
            upstream.chain.intermediates.len(),
            1,
            "the root is not sent"
        );
        assert_eq!(upstream.chain.roots[0].as_ref(), pki.root_der);
    }

    #[test]
    fn readable_key_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&pki.intermediate_key, std::fs::Permissions::from_mode(mode))
                .unwrap();
            let error = load_error(&pki.intermediate_config());
            assert!(error.contains("key_file_path"), "{error}");
            assert!(
                error.contains(&pki.intermediate_key.display().to_string()),
                "{error}"
            );
            assert!(error.contains(&format!("mode {mode:o}")), "{error}");
            assert!(error.contains("chmod 600"), "{error}");
        }
    }

    #[test]
    fn mismatched_key_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let config = UpstreamAuthorityDisk {
            key_file_path: pki.root_key.clone(),
            ..pki.intermediate_config()
        };
        let error = load_error(&config);
        assert!(
            error.contains(&format!("key_file_path {}", pki.root_key.display())),
            "{error}"
        );
        assert!(error.contains("does not match"), "{error}");
    }

    #[test]
    fn missing_and_empty_files_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let missing = UpstreamAuthorityDisk {
            cert_file_path: dir.path().join("absent.pem"),
            ..pki.intermediate_config()
        };
        let error = load_error(&missing);
        assert!(error.contains("cert_file_path"), "{error}");
        assert!(error.contains("absent.pem: cannot read"), "{error}");

        let empty = dir.path().join("empty.pem");
        write(&empty, "", 0o644);
        let error = load_error(&UpstreamAuthorityDisk {
            bundle_file_path: Some(empty),
            ..pki.intermediate_config()
        });
        assert!(error.contains("bundle_file_path"), "{error}");
        assert!(error.contains("no PEM CERTIFICATE block"), "{error}");

        let no_key = dir.path().join("no-key.pem");
        write(&no_key, "not a key", 0o600);
        let error = load_error(&UpstreamAuthorityDisk {
            key_file_path: no_key,
            ..pki.intermediate_config()
        });
        assert!(error.contains("key_file_path"), "{error}");
        assert!(error.contains("no unencrypted PEM private key"), "{error}");
    }

    #[test]
    fn leaf_certificate_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["leaf.example.org".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("leaf.pem");
        let key_path = dir.path().join("leaf.key");
        write(&cert_path, &cert.pem(), 0o644);
        write(&key_path, &key.serialize_pem(), 0o600);
        let error = load_error(&UpstreamAuthorityDisk {
            key_file_path: key_path,
            cert_file_path: cert_path,
            bundle_file_path: None,
        });
        assert!(error.contains("cert_file_path"), "{error}");
        assert!(error.contains("not a CA"), "{error}");
    }

    #[test]
    fn expired_certificate_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(60));
        let later = SystemTime::now() + Duration::from_secs(3600);
        let error = match Upstream::load(&pki.intermediate_config(), later) {
            Ok(_) => panic!("an expired upstream certificate loaded"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("cert_file_path"), "{error}");
        assert!(error.contains("certificate 1: expired"), "{error}");
    }

    #[test]
    fn intermediate_without_bundle_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let error = load_error(&UpstreamAuthorityDisk {
            bundle_file_path: None,
            ..pki.intermediate_config()
        });
        assert!(error.contains("cert_file_path"), "{error}");
        assert!(error.contains("set bundle_file_path"), "{error}");
    }

    #[test]
    fn foreign_bundle_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(30 * 86_400));
        let other_dir = dir.path().join("other");
        std::fs::create_dir(&other_dir).unwrap();
        let other = write_pki(&other_dir, Duration::from_secs(30 * 86_400));
        let error = load_error(&UpstreamAuthorityDisk {
            bundle_file_path: Some(other.root_cert.clone()),
            ..pki.intermediate_config()
        });
        assert!(
            error.contains(&format!("bundle_file_path {}", other.root_cert.display())),
            "{error}"
        );
        assert!(error.contains("no certificate in it signed"), "{error}");
    }

    #[test]
    fn capped_ttl_follows_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), Duration::from_secs(7200));
        let config = pki.intermediate_config();
        let now = SystemTime::now();
        let upstream = Upstream::load(&config, now).unwrap();
        let short = Duration::from_secs(600);
        assert_eq!(upstream.capped_ttl(&config, now, short).unwrap(), short);
        let capped = upstream
            .capped_ttl(&config, now, Duration::from_secs(86_400))
            .unwrap();
        assert!(capped <= Duration::from_secs(7200), "{capped:?}");
        assert!(capped > Duration::from_secs(7000), "{capped:?}");
        let error = upstream
            .capped_ttl(&config, now + Duration::from_secs(7300), short)
            .unwrap_err()
            .to_string();
        assert!(error.contains("expired"), "{error}");
    }
}
