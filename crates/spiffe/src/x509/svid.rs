//! The X.509-SVID type and the certificate rules of the SPIFFE X.509-SVID standard.
//!
//! Rules applied to every chain: the leaf has exactly one URI SAN, a SPIFFE ID with a
//! non-empty path; the leaf has basicConstraints with cA=false and keyUsage with
//! digitalSignature but without keyCertSign or cRLSign; every later certificate has cA=true
//! and keyCertSign. A leaf with no basicConstraints extension is rejected even though
//! RFC 5280 would read it as cA=false, because the SVID standard says the leaf must set the
//! flag and py-spiffe and the Rust `spiffe` crate reject such leaves too.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::X509SvidError;
use crate::SpiffeId;
use crate::der::split_sequences;
use crate::keys::PublicKeyInfo;

/// An X.509-SVID: a leaf certificate, its intermediates and the leaf's private key.
///
/// Every value has passed the SPIFFE certificate rules and the key-match check; chain
/// trust is a separate step, [`super::verify_x509_svid`].
pub struct X509Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    private_key: PrivatePkcs8KeyDer<'static>,
    not_after: SystemTime,
}

impl X509Svid {
    /// Parses the Workload API form: concatenated DER certificates (leaf first) and a DER
    /// PKCS#8 private key.
    ///
    /// # Errors
    /// Returns the first rule the chain or key breaks.
    pub fn parse_der(chain_der: &[u8], key_pkcs8_der: &[u8]) -> Result<Self, X509SvidError> {
        let chain = split_der_certificates(chain_der)?;
        Self::from_parts(chain, PrivatePkcs8KeyDer::from(key_pkcs8_der.to_vec()))
    }

    /// Parses PEM: every `CERTIFICATE` block of `certs_pem` in order (leaf first) and the
    /// first `PRIVATE KEY` (PKCS#8) block of `key_pem`.
    ///
    /// Blocks are picked by type, so one file holding both the chain and the key can be
    /// passed as both arguments.
    ///
    /// # Errors
    /// Returns [`X509SvidError::NoCertificates`] or [`X509SvidError::NoPrivateKey`] when the
    /// block is missing, and otherwise the first rule the chain or key breaks.
    pub fn parse_pem(certs_pem: &[u8], key_pem: &[u8]) -> Result<Self, X509SvidError> {
        let chain = CertificateDer::pem_slice_iter(certs_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| X509SvidError::Pem(e.to_string()))?;
        let key = match PrivatePkcs8KeyDer::from_pem_slice(key_pem) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(X509SvidError::NoPrivateKey),
            Err(e) => return Err(X509SvidError::Pem(e.to_string())),
        };
        Self::from_parts(chain, key)
    }

    /// Builds an SVID from DER certificates (leaf first) and a PKCS#8 key, checking all
    /// X.509-SVID rules and that the key matches the leaf.
    ///
    /// # Errors
    /// Returns the first rule the chain or key breaks.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        private_key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, X509SvidError> {
        let checked = check_chain(&chain)?;
        let key = PublicKeyInfo::from_pkcs8(private_key.secret_pkcs8_der())
            .ok_or(X509SvidError::MalformedPrivateKey)?;
        if checked.leaf_key.as_ref() != Some(&key) {
            return Err(X509SvidError::KeyMismatch);
        }
        Ok(Self {
            spiffe_id: checked.spiffe_id,
            chain,
            private_key,
            not_after: checked.not_after,
        })
    }

    /// Returns the SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Returns the leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Returns the leaf followed by its intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Returns the PKCS#8 DER private key.
    pub fn private_key_der(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.private_key
    }

    /// Returns the end of the leaf's validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            chain: self.chain.clone(),
            private_key: self.private_key.clone_key(),
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Applies the leaf rules of the X.509-SVID standard to one DER certificate and returns
/// its SPIFFE ID. Chain position rules and the key match are not checked.
///
/// # Errors
/// Returns the first leaf rule the certificate breaks.
pub fn check_leaf(cert_der: &[u8]) -> Result<SpiffeId, X509SvidError> {
    let cert = parse_certificate(0, cert_der)?;
    check_leaf_certificate(&cert)
}

/// Splits concatenated DER certificates, the Workload API wire form, by walking the
/// top-level SEQUENCE lengths. The certificates themselves are not parsed.
///
/// # Errors
/// Returns [`X509SvidError::NoCertificates`] for empty input and
/// [`X509SvidError::Der`] when an element is not a well-formed SEQUENCE.
pub fn split_der_certificates(
    concat: &[u8],
) -> Result<Vec<CertificateDer<'static>>, X509SvidError> {
    let parts = split_sequences(concat)?;
    if parts.is_empty() {
        return Err(X509SvidError::NoCertificates);
    }
    Ok(parts
        .into_iter()
        .map(|der| CertificateDer::from(der.to_vec()))
        .collect())
}

/// Joins DER certificates into the concatenated form the Workload API sends.
pub fn concat_der(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

/// Facts [`check_chain`] extracts from a valid chain.
pub(super) struct CheckedChain {
    pub(super) spiffe_id: SpiffeId,
    pub(super) not_after: SystemTime,
    /// `None` when the leaf key type is not one we can match against a private key.
    leaf_key: Option<PublicKeyInfo>,
}

/// Applies the leaf rules to `chain[0]` and the signing-certificate rules to the rest.
pub(super) fn check_chain(chain: &[CertificateDer<'_>]) -> Result<CheckedChain, X509SvidError> {
    let leaf_der = chain.first().ok_or(X509SvidError::NoCertificates)?;
    let leaf = parse_certificate(0, leaf_der)?;
    let spiffe_id = check_leaf_certificate(&leaf)?;
    for (index, der) in chain.iter().enumerate().skip(1) {
        check_signing_certificate(index, &parse_certificate(index, der)?)?;
    }
    Ok(CheckedChain {
        spiffe_id,
        not_after: to_system_time(leaf.validity().not_after.timestamp()),
        leaf_key: PublicKeyInfo::from_spki(leaf.public_key()),
    })
}

/// Parses one DER certificate, rejecting trailing bytes.
pub(super) fn parse_certificate(
    index: usize,
    der: &[u8],
) -> Result<X509Certificate<'_>, X509SvidError> {
    let malformed = |reason: String| X509SvidError::MalformedCertificate { index, reason };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(cert)
}

fn check_leaf_certificate(cert: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let spiffe_id = leaf_spiffe_id(cert)?;

    let constraints = cert
        .basic_constraints()
        .map_err(|_| malformed(0, "basicConstraints"))?;
    match constraints {
        None => return Err(X509SvidError::LeafMissingBasicConstraints),
        Some(bc) if bc.value.ca => return Err(X509SvidError::LeafIsCa),
        Some(_) => {}
    }

    let usage = cert.key_usage().map_err(|_| malformed(0, "keyUsage"))?;
    let usage = usage.ok_or(X509SvidError::LeafMissingKeyUsage)?.value;
    if !usage.digital_signature() {
        return Err(X509SvidError::LeafMissingDigitalSignature);
    }
    if usage.key_cert_sign() {
        return Err(X509SvidError::LeafHasKeyCertSign);
    }
    if usage.crl_sign() {
        return Err(X509SvidError::LeafHasCrlSign);
    }
    Ok(spiffe_id)
}

fn leaf_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let uris = uri_sans(0, cert)?;
    let uri = match uris.as_slice() {
        [] => return Err(X509SvidError::UriSanMissing),
        [one] => *one,
        many => return Err(X509SvidError::MultipleUriSans(many.len())),
    };
    let id = SpiffeId::new(uri).map_err(|source| X509SvidError::InvalidSpiffeId {
        uri: uri.to_owned(),
        source,
    })?;
    if id.path().is_empty() {
        return Err(X509SvidError::LeafIdWithoutPath(id));
    }
    Ok(id)
}

fn check_signing_certificate(
    index: usize,
    cert: &X509Certificate<'_>,
) -> Result<(), X509SvidError> {
    let constraints = cert
        .basic_constraints()
        .map_err(|_| malformed(index, "basicConstraints"))?;
    if !constraints.is_some_and(|bc| bc.value.ca) {
        return Err(X509SvidError::SigningCertNotCa { index });
    }
    let usage = cert.key_usage().map_err(|_| malformed(index, "keyUsage"))?;
    if !usage.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(X509SvidError::SigningCertMissingKeyCertSign { index });
    }
    // A signing certificate need not carry a SPIFFE ID, but one that does names the trust
    // domain itself, so a path is wrong. Other URI schemes are not SPIFFE's business.
    for uri in uri_sans(index, cert)? {
        if let Ok(id) = SpiffeId::new(uri)
            && !id.path().is_empty()
        {
            return Err(X509SvidError::SigningCertIdWithPath { index, id });
        }
    }
    Ok(())
}

/// Returns every URI SAN of `cert`.
fn uri_sans<'a>(
    index: usize,
    cert: &'a X509Certificate<'_>,
) -> Result<Vec<&'a str>, X509SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| malformed(index, "subjectAltName"))?;
    let names = san
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or_default();
    Ok(names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect())
}

fn malformed(index: usize, extension: &'static str) -> X509SvidError {
    X509SvidError::MalformedExtension { index, extension }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    if unix_seconds >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
#[path = "svid_tests.rs"]
mod tests;
