//! The error type of the crate.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use twid_spiffe::{SpiffeId, TrustDomain};

use crate::KeyType;
use crate::timestamp::rfc3339;

/// A failure to create, load, store or use a CA key or certificate.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum CaError {
    /// A key type name is not one of the SPIRE spellings.
    #[error("unknown key type {0:?}: expected ec-p256, ec-p384, rsa-2048 or rsa-4096")]
    UnknownKeyType(String),
    /// The crypto library failed to generate a key.
    #[error("failed to generate a {0} key")]
    KeyGeneration(KeyType),
    /// A private key is malformed or of a type this crate does not use.
    #[error("invalid private key: {0}")]
    InvalidPrivateKey(String),
    /// A file operation failed.
    #[error("failed to {operation} {path}: {source}")]
    Io {
        /// The failed step, such as `read` or `rename`.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system error.
        source: std::io::Error,
    },
    /// A private key file grants access to group or others.
    #[error(
        "private key file {path} has mode {mode:04o}, which grants group or others access; \
         run `chmod 600 {path}`"
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private key file does not hold one unencrypted PKCS#8 PEM block.
    #[error("invalid private key file {path}: {reason}")]
    InvalidKeyFile {
        /// The key file.
        path: PathBuf,
        /// The reason the file is invalid.
        reason: String,
    },
    /// A certificate signing request is malformed or its signature does not verify.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// A public key is malformed or of a type this CA does not certify.
    #[error("unsupported public key: {0}")]
    UnsupportedPublicKey(String),
    /// A certificate does not parse or lacks what the operation needs.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// The CA subject is empty or has an invalid attribute.
    #[error("invalid CA subject: {0}")]
    InvalidSubject(String),
    /// A lifetime is shorter than one second.
    #[error("invalid TTL {0:?}: it must be at least one second")]
    InvalidTtl(Duration),
    /// A time cannot be written in a certificate.
    #[error("time {0:?} is outside the range an X.509 certificate can hold")]
    TimeOutOfRange(SystemTime),
    /// A serial number of zero was requested.
    #[error("invalid serial number: it must be positive")]
    InvalidSerial,
    /// The authority or JWT key has expired at the signing time.
    #[error("the signing key expired at {}, signing time is {}", rfc3339(*.not_after), rfc3339(*.now))]
    Expired {
        /// End of the key's validity.
        not_after: SystemTime,
        /// The signing time.
        now: SystemTime,
    },
    /// The SPIFFE ID belongs to a trust domain other than the authority's.
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: SpiffeId,
        /// The authority's trust domain.
        trust_domain: TrustDomain,
    },
    /// An X.509-SVID must name a workload, not the trust domain itself.
    #[error("SPIFFE ID {0} has no path; an X.509-SVID needs one")]
    IdWithoutPath(SpiffeId),
    /// A DNS name is not a valid hostname or wildcard.
    #[error(
        "invalid DNS name {0:?}: expected letters, digits and hyphens in dot-separated labels, optionally starting with `*.`"
    )]
    InvalidDnsName(String),
    /// The crypto library failed to sign.
    #[error("signing failed")]
    Signing,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A JWT-SVID needs at least one audience.
    #[error("JWT-SVID audience is empty")]
    EmptyAudience,
    /// A JWT-SVID audience value is an empty string.
    #[error("JWT-SVID audience contains an empty string")]
    EmptyAudienceValue,
    /// An extra claim would replace a claim this crate sets.
    #[error("extra claim {0:?} would replace a registered claim the CA sets")]
    ReservedClaim(String),
    /// A JWT key ID is empty, too long, or has characters outside the URL-safe set.
    #[error(
        "invalid JWT key ID {0:?}: expected 1 to 128 characters from A-Z, a-z, 0-9, `-`, `_` and `.`"
    )]
    InvalidKeyId(String),
    /// An extension a caller asked to add to an SVID is invalid.
    #[error("invalid SVID extension {oid:?}: {reason}")]
    InvalidExtension {
        /// The extension OID as the caller gave it.
        oid: String,
        /// The problem with the OID or the value.
        reason: String,
    },
}

impl CaError {
    pub(crate) fn io(
        operation: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}
