//! X.509 bundles: the CA certificates one trust domain's X.509-SVIDs chain to.
//!
//! A bundle accepts any well-formed X.509 certificate, CA or not, because Workload API
//! peers and files in the wild carry such certificates. Only certificates with
//! basicConstraints cA=true act as trust anchors during verification; others are kept but
//! never anchor a chain.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::svid::parse_certificate;
use crate::der::split_sequences;
use crate::{DerError, TrustDomain};

/// A reason bundle input cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509BundleError {
    /// Non-empty PEM input holds no `CERTIFICATE` block.
    #[error("no certificates found in PEM input")]
    NoCertificates,
    /// PEM input is not valid PEM.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The concatenated DER cannot be split.
    #[error("invalid concatenated DER")]
    Der(#[from] DerError),
    /// A certificate does not parse as X.509.
    #[error("certificate {index} is malformed: {reason}")]
    MalformedCertificate {
        /// Position in the input.
        index: usize,
        /// Message from the parser.
        reason: String,
    },
}

/// The X.509 authorities of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Bundle {
    trust_domain: TrustDomain,
    authorities: Vec<CertificateDer<'static>>,
}

impl X509Bundle {
    /// Creates an empty bundle, which makes every X.509-SVID of the trust domain invalid.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            authorities: Vec::new(),
        }
    }

    /// Creates a bundle from DER certificates, dropping duplicates.
    ///
    /// # Errors
    /// Returns [`X509BundleError::MalformedCertificate`] for a certificate that does not parse.
    pub fn from_authorities(
        trust_domain: TrustDomain,
        authorities: Vec<CertificateDer<'static>>,
    ) -> Result<Self, X509BundleError> {
        let mut bundle = Self::new(trust_domain);
        for (index, cert) in authorities.into_iter().enumerate() {
            parse_certificate(index, &cert).map_err(|e| X509BundleError::MalformedCertificate {
                index,
                reason: e.to_string(),
            })?;
            bundle.add_authority(cert);
        }
        Ok(bundle)
    }

    /// Parses every `CERTIFICATE` block of PEM input.
    ///
    /// Empty or whitespace-only input gives an empty bundle, as go-spiffe does.
    ///
    /// # Errors
    /// Returns [`X509BundleError::NoCertificates`] when non-empty input has no certificate
    /// block, and an error for invalid PEM or a certificate that does not parse.
    pub fn parse_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, X509BundleError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| X509BundleError::Pem(e.to_string()))?;
        if certs.is_empty() && !pem.iter().all(u8::is_ascii_whitespace) {
            return Err(X509BundleError::NoCertificates);
        }
        Self::from_authorities(trust_domain, certs)
    }

    /// Parses concatenated DER certificates, the Workload API bundle form. Empty input gives
    /// an empty bundle.
    ///
    /// # Errors
    /// Returns an error for DER that cannot be split or a certificate that does not parse.
    pub fn parse_der(trust_domain: TrustDomain, der: &[u8]) -> Result<Self, X509BundleError> {
        let certs = split_sequences(der)?
            .into_iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect();
        Self::from_authorities(trust_domain, certs)
    }

    /// Encodes the authorities as PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        self.authorities.iter().map(|c| pem_block(c)).collect()
    }

    /// Encodes the authorities as concatenated DER.
    pub fn to_der(&self) -> Vec<u8> {
        super::concat_der(&self.authorities)
    }

    /// Returns the trust domain the bundle belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Returns the certificates in insertion order.
    pub fn authorities(&self) -> &[CertificateDer<'static>] {
        &self.authorities
    }

    /// Adds a certificate unless an identical one is present. The certificate is not parsed.
    pub fn add_authority(&mut self, cert: CertificateDer<'static>) {
        if !self.contains(&cert) {
            self.authorities.push(cert);
        }
    }

    /// Returns whether the bundle contains a byte-identical certificate.
    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.authorities.iter().any(|a| a.as_ref() == cert.as_ref())
    }
}

fn pem_block(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// X.509 bundles keyed by trust domain, at most one per trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct X509BundleSet {
    bundles: BTreeMap<TrustDomain, X509Bundle>,
}

impl X509BundleSet {
    /// Creates an empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bundle` under its trust domain and returns the bundle it replaces.
    pub fn insert(&mut self, bundle: X509Bundle) -> Option<X509Bundle> {
        self.bundles.insert(bundle.trust_domain.clone(), bundle)
    }

    /// Returns the bundle of `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&X509Bundle> {
        self.bundles.get(trust_domain)
    }

    /// Iterates over the bundles in trust domain order.
    pub fn iter(&self) -> impl Iterator<Item = &X509Bundle> {
        self.bundles.values()
    }

    /// Returns the number of bundles.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Returns whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl FromIterator<X509Bundle> for X509BundleSet {
    fn from_iter<I: IntoIterator<Item = X509Bundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for bundle in iter {
            set.insert(bundle);
        }
        set
    }
}
