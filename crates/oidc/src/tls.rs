//! HTTPS with a certificate and key read from PEM files and reloaded when either changes.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Mutex;
use tokio_rustls::TlsAcceptor;

use crate::OidcError;

/// The minimum time between two checks of the files. Connections in between reuse the last
/// result.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The identity of one version of a file. Replacing or rewriting the file changes at least
/// one of these fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

type Stamps = (Option<FileStamp>, Option<FileStamp>);

/// A TLS acceptor for a certificate file and a key file.
///
/// The files are checked when a connection arrives, at most once per [`CHECK_INTERVAL`].
/// A pair that fails to load is logged once and the last good pair stays in use.
pub(crate) struct ReloadingTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: Mutex<TlsState>,
}

struct TlsState {
    loaded: Stamps,
    failed: Option<Stamps>,
    checked_at: Instant,
    acceptor: TlsAcceptor,
}

impl ReloadingTls {
    /// Loads the certificate chain and key.
    pub(crate) async fn load(cert_path: &Path, key_path: &Path) -> Result<Self, OidcError> {
        let loaded = stamps(cert_path, key_path).await;
        let config = load_config(cert_path, key_path).await?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            state: Mutex::new(TlsState {
                loaded,
                failed: None,
                checked_at: Instant::now(),
                acceptor: TlsAcceptor::from(config),
            }),
        })
    }

    /// Returns the acceptor for the current files, reloading them first if they changed.
    pub(crate) async fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.state.lock().await;
        if state.checked_at.elapsed() < CHECK_INTERVAL {
            return state.acceptor.clone();
        }
        state.checked_at = Instant::now();
        // Stamps are taken before reading, so a change during the read triggers another load.
        let current = stamps(&self.cert_path, &self.key_path).await;
        if current == state.loaded || state.failed == Some(current) {
            return state.acceptor.clone();
        }
        match load_config(&self.cert_path, &self.key_path).await {
            Ok(config) => {
                state.acceptor = TlsAcceptor::from(config);
                state.loaded = current;
                state.failed = None;
                tracing::info!(
                    cert_file = %self.cert_path.display(),
                    key_file = %self.key_path.display(),
                    "OIDC discovery TLS certificate reloaded"
                );
            }
            Err(error) => {
                state.failed = Some(current);
                tracing::error!(
                    %error,
                    "failed to reload the OIDC discovery TLS certificate; keeping the previous one"
                );
            }
        }
        state.acceptor.clone()
    }
}

async fn stamps(cert_path: &Path, key_path: &Path) -> Stamps {
    (stamp(cert_path).await, stamp(key_path).await)
}

async fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
        device: metadata.dev(),
    })
}

async fn load_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, OidcError> {
    let tls_error = |path: &Path, reason: String| OidcError::Tls {
        path: path.to_owned(),
        reason,
    };
    let cert_pem = tokio::fs::read(cert_path)
        .await
        .map_err(|error| tls_error(cert_path, error.to_string()))?;
    let key_pem = tokio::fs::read(key_path)
        .await
        .map_err(|error| tls_error(key_path, error.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| tls_error(cert_path, format!("invalid PEM: {error}")))?;
    if chain.is_empty() {
        return Err(tls_error(cert_path, "no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| tls_error(key_path, format!("no usable private key: {error}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(cert_path, error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| {
            tls_error(
                cert_path,
                format!(
                    "certificate and key {} unusable: {error}",
                    key_path.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
