//! Errors of the discovery endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Failure to start the discovery listener.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The issuer is not a URL the endpoint can publish.
    #[error("invalid OIDC issuer {issuer:?}: {reason}")]
    InvalidIssuer {
        /// The configured issuer.
        issuer: String,
        /// Description of the problem.
        reason: String,
    },
    /// The key source signs for another issuer than the configured one.
    #[error(
        "OIDC issuer {configured:?} does not match the issuer of the keys {key_issuer:?}; \
         the published issuer must equal the iss claim of the tokens"
    )]
    IssuerMismatch {
        /// The issuer in the listener configuration.
        configured: String,
        /// The issuer the key source returned.
        key_issuer: String,
    },
    /// The TLS certificate or key file could not be loaded.
    #[error("failed to load TLS file {path}: {reason}")]
    Tls {
        /// The certificate or key file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("failed to bind the OIDC discovery listener on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}
