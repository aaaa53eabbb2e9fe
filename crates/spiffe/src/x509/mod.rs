//! X.509-SVIDs and X.509 bundles: parsing, the SPIFFE certificate rules, and chain
//! verification against the bundle of the SVID's own trust domain.

mod bundle;
mod svid;
mod verify;

pub use bundle::{X509Bundle, X509BundleError, X509BundleSet};
pub use svid::{X509Svid, check_leaf, concat_der, split_der_certificates};
pub use verify::verify_x509_svid;

use rustls_pki_types::CertificateDer;

use crate::keys::PublicKeyInfo;
use crate::{DerError, IdError, SpiffeId, TrustDomain};

/// Checks that `der` is one well-formed X.509 certificate, returning the parser's complaint.
pub(crate) fn parse_certificate_for_bundle(der: &[u8]) -> Result<(), String> {
    svid::parse_certificate(0, der)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Returns the public key of a certificate when it is an EC or RSA key.
pub(crate) fn certificate_public_key(cert: &CertificateDer<'_>) -> Option<PublicKeyInfo> {
    let parsed = svid::parse_certificate(0, cert).ok()?;
    PublicKeyInfo::from_spki(parsed.public_key())
}

/// A reason a certificate chain or key is not a valid X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509SvidError {
    /// The chain input contains no certificate.
    #[error("no certificates found")]
    NoCertificates,
    /// The concatenated DER cannot be split.
    #[error("invalid concatenated DER")]
    Der(#[from] DerError),
    /// PEM input is not valid PEM.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A certificate does not parse as X.509.
    #[error("certificate {index} is malformed: {reason}")]
    MalformedCertificate {
        /// Position in the chain, 0 being the leaf.
        index: usize,
        /// Message from the parser.
        reason: String,
    },
    /// The key input holds no PKCS#8 `PRIVATE KEY` block.
    #[error("no PKCS#8 private key found")]
    NoPrivateKey,
    /// The private key is not an EC P-256/P-384/P-521 or RSA PKCS#8 key.
    #[error("private key is malformed or of an unsupported type")]
    MalformedPrivateKey,
    /// The leaf has no URI SAN.
    #[error("leaf certificate has no URI SAN")]
    UriSanMissing,
    /// The leaf has more than one URI SAN.
    #[error("leaf certificate has {0} URI SANs; exactly one is allowed")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    InvalidSpiffeId {
        /// The URI SAN text.
        uri: String,
        /// The rule it breaks.
        source: IdError,
    },
    /// The leaf SPIFFE ID is a trust domain ID with no path.
    #[error("leaf SPIFFE ID {0} has no path")]
    LeafIdWithoutPath(SpiffeId),
    /// The leaf has no basicConstraints extension.
    #[error("leaf certificate has no basicConstraints extension")]
    LeafMissingBasicConstraints,
    /// The leaf sets cA=true.
    #[error("leaf certificate has the CA flag set")]
    LeafIsCa,
    /// The leaf has no keyUsage extension.
    #[error("leaf certificate has no keyUsage extension")]
    LeafMissingKeyUsage,
    /// The leaf keyUsage lacks digitalSignature.
    #[error("leaf certificate keyUsage lacks digitalSignature")]
    LeafMissingDigitalSignature,
    /// The leaf keyUsage sets keyCertSign.
    #[error("leaf certificate keyUsage has keyCertSign")]
    LeafHasKeyCertSign,
    /// The leaf keyUsage sets cRLSign.
    #[error("leaf certificate keyUsage has cRLSign")]
    LeafHasCrlSign,
    /// A certificate extension the rules read is malformed or duplicated.
    #[error("certificate {index} has a malformed {extension} extension")]
    MalformedExtension {
        /// Position in the chain, 0 being the leaf.
        index: usize,
        /// Extension name.
        extension: &'static str,
    },
    /// A signing certificate lacks basicConstraints cA=true.
    #[error("signing certificate {index} does not have the CA flag set")]
    SigningCertNotCa {
        /// Position in the chain.
        index: usize,
    },
    /// A signing certificate lacks keyUsage keyCertSign.
    #[error("signing certificate {index} keyUsage lacks keyCertSign")]
    SigningCertMissingKeyCertSign {
        /// Position in the chain.
        index: usize,
    },
    /// A signing certificate carries a SPIFFE ID with a path.
    #[error("signing certificate {index} has SPIFFE ID {id} with a path")]
    SigningCertIdWithPath {
        /// Position in the chain.
        index: usize,
        /// The ID found.
        id: SpiffeId,
    },
    /// The private key does not belong to the leaf public key.
    #[error("private key does not match the leaf certificate public key")]
    KeyMismatch,
    /// The set contains no bundle for the SVID's trust domain.
    #[error("no bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The trust domain's bundle contains no CA certificate to anchor a chain.
    #[error("bundle for trust domain {0} has no CA certificate")]
    NoAuthorities(TrustDomain),
    /// A certificate in the chain has expired at the validation time.
    #[error("certificate expired: {0}")]
    Expired(String),
    /// A certificate in the chain is not valid yet at the validation time.
    #[error("certificate not yet valid: {0}")]
    NotYetValid(String),
    /// RFC 5280 path validation failed for another reason, such as an unknown issuer.
    #[error("certificate chain does not verify: {0}")]
    ChainInvalid(String),
}
