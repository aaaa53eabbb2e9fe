//! The server's error type.

use std::path::{Path, PathBuf};

/// Failure to start the server or to complete an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The datastore failed.
    #[error("datastore error")]
    Datastore(#[from] twid_datastore::DatastoreError),
    /// A CA operation (key generation, signing, key files) failed.
    #[error("certificate authority error")]
    Ca(#[from] twid_ca::CaError),
    /// A TLS configuration could not be built.
    #[error("TLS setup failed")]
    Tls(#[from] twid_tls::TlsError),
    /// A metrics or health listener failed.
    #[error("telemetry listener failed")]
    Telemetry(#[from] twid_telemetry::TelemetryError),
    /// The configuration contains a value the server cannot use.
    #[error("configuration error")]
    Config(#[from] twid_config::ConfigError),
    /// A file or socket operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or socket involved.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// A network listener could not be bound.
    #[error("failed to bind {address}: {source}")]
    Bind {
        /// The address that could not be bound.
        address: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// Stored state could not be decoded.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// State could not be encoded for storage.
    #[error("failed to encode state: {0}")]
    Encode(String),
    /// A `jwt_issuer` key file cannot be read or contains no supported key.
    #[error("jwt_issuer {issuer:?}: cannot use key_file {}", path.display())]
    IssuerKey {
        /// The issuer's block label.
        issuer: String,
        /// The key file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: twid_ca::CaError,
    },
    /// The OIDC discovery endpoint could not be started.
    #[error("OIDC discovery endpoint failed to start")]
    Oidc(#[from] twid_oidc::OidcError),
    /// A file named by an evidence node attestor cannot be read or contains no certificate.
    #[error("NodeAttestor {attestor:?}: {key} file {}: {reason}", path.display())]
    EvidenceFile {
        /// The attestor name, such as `snp`.
        attestor: String,
        /// The plugin_data key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },
    /// A `policy_owner_keys` file cannot be read or contains no P-256 public key.
    #[error("server.policy_owner_keys: {}: {reason}", path.display())]
    PolicyOwnerKey {
        /// The file.
        path: PathBuf,
        /// Description of the problem and of the fix.
        reason: String,
    },
    /// A file of `UpstreamAuthority "disk"` cannot be read or does not pass its checks.
    #[error("UpstreamAuthority \"disk\": {key} {}: {reason}", path.display())]
    UpstreamAuthority {
        /// The plugin_data key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Description of the problem and of the fix.
        reason: String,
    },
    /// No active authority exists, which the CA manager never allows after start.
    #[error("no active {0} authority")]
    NoActiveAuthority(&'static str),
    /// The `federation` configuration cannot be applied, for example an unreadable
    /// `trust_domain_bundle_path` or serving certificate.
    #[error("federation: {0}")]
    Federation(String),
}

impl ServerError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn encode(error: serde_json::Error) -> Self {
        Self::Encode(error.to_string())
    }
}
