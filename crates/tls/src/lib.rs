//! Mutual TLS with SPIFFE ID authorization, between agent and server and between workloads.
//!
//! Certificates and bundles rotate, so configurations read them through shared, swappable
//! sources ([`SvidSource`], [`TrustSource`]): a swap takes effect at the next handshake.
//! Peers are verified against the bundle of the trust domain their leaf's SPIFFE ID names and
//! no other. Trust domains are never pooled into one root store. All configurations speak
//! TLS 1.3 only and negotiate ALPN `h2`.
//!
//! [`TlsIncoming`] and [`connect_channel`] plug these configurations into tonic.

#![forbid(unsafe_code)]

mod client;
mod connect;
mod incoming;
mod server;
mod source;
mod verify;

pub use client::{client_config, insecure_client_config};
pub use connect::{CONNECT_TIMEOUT, connect_channel, connect_channel_lazy};
pub use incoming::{
    HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_PENDING_HANDSHAKES, TlsConnectInfo, TlsConnection,
    TlsIncoming,
};
pub use server::{ClientAuth, server_config};
pub use source::{SvidSource, TrustSource};
pub use verify::{Authorizer, PeerError, peer_spiffe_id};

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use twid_spiffe::{TrustDomain, X509SvidError};

/// The ALPN protocol every configuration offers: HTTP/2, which gRPC runs on.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors from building sources and configurations or from connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The SVID has no certificates.
    #[error("SVID certificate chain is empty")]
    EmptyChain,
    /// The SVID leaf breaks an X.509-SVID rule.
    #[error("invalid SVID leaf certificate: {0}")]
    InvalidSvid(#[source] X509SvidError),
    /// The private key could not be loaded or does not match the leaf certificate.
    #[error("invalid SVID private key: {0}")]
    InvalidKey(#[source] rustls::Error),
    /// A bundle certificate does not parse as a trust anchor.
    #[error(
        "invalid CA certificate {index} in the bundle of trust domain {trust_domain}: {source}"
    )]
    InvalidTrustAnchor {
        /// The trust domain whose bundle contains the certificate.
        trust_domain: TrustDomain,
        /// Position of the certificate in the bundle.
        index: usize,
        /// The parser's error.
        source: webpki::Error,
    },
    /// A bundle certificate is not a CA certificate (basicConstraints cA=true), so it cannot
    /// serve as a trust anchor.
    #[error(
        "certificate {index} in the bundle of trust domain {trust_domain} is not a CA certificate"
    )]
    TrustAnchorNotCa {
        /// The trust domain whose bundle contains the certificate.
        trust_domain: TrustDomain,
        /// Position of the certificate in the bundle.
        index: usize,
    },
    /// rustls rejected the configuration.
    #[error("failed to build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The host is neither a DNS name nor an IP address.
    #[error("invalid host {host:?}: {source}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// The parser's error.
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// The host and port do not form a valid endpoint URI.
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The URI that was built from the host and port.
        endpoint: String,
        /// The URI parser's error.
        source: tonic::transport::Error,
    },
    /// Connecting the gRPC channel failed.
    #[error("failed to connect to {endpoint}: {source}")]
    Connect {
        /// The URI that was dialed.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Returns the one crypto provider of the workspace, aws-lc-rs.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
