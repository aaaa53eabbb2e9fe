//! JWT-SVIDs and JWT bundles: the JWS algorithms SPIFFE allows, JWK conversion, token
//! parsing and signature validation with aws-lc-rs.

mod authority;
mod bundle;
mod svid;

pub use authority::JwtAuthority;
pub(crate) use authority::jwk_key_members;
pub use bundle::{JwtBundle, JwtBundleSet};
pub use svid::{JwtSvid, assemble, encode_signing_input};

use std::fmt;
use std::str::FromStr;

use crate::{IdError, TrustDomain};

/// A JWS algorithm allowed for JWT-SVIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
}

impl JwtAlgorithm {
    /// Every allowed algorithm.
    pub const ALL: [Self; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
    ];

    /// Returns the JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
        }
    }
}

impl FromStr for JwtAlgorithm {
    type Err = JwtError;

    /// Parses the exact, case-sensitive `alg` name; `none`, `HS256`, `EdDSA` and `es256`
    /// are rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or_else(|| JwtError::UnsupportedAlgorithm(s.to_owned()))
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason a JWK, JWK Set or JWT-SVID is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The token is not three non-empty base64url segments.
    #[error("token is not JWS compact serialization: {0}")]
    MalformedToken(&'static str),
    /// A segment is not unpadded base64url.
    #[error("token {0} is not valid base64url")]
    InvalidBase64(&'static str),
    /// The header or claims are not a JSON object with unique member names.
    #[error("token {segment} is not a valid JSON object: {reason}")]
    InvalidJson {
        /// `header` or `claims`.
        segment: &'static str,
        /// Message from the JSON parser.
        reason: String,
    },
    /// `alg` is missing.
    #[error("header has no alg")]
    MissingAlgorithm,
    /// `alg` names an algorithm JWT-SVIDs may not use.
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    UnsupportedAlgorithm(String),
    /// The header has a member other than `alg`, `kid` and `typ`.
    #[error("header member {0:?} is not allowed")]
    UnexpectedHeader(String),
    /// `typ` is present but is neither `JWT` nor `JOSE`.
    #[error("header typ {0:?} is not JWT or JOSE")]
    InvalidType(String),
    /// `kid` is missing.
    #[error("header has no kid")]
    MissingKeyId,
    /// A header member or claim has the wrong JSON type.
    #[error("{0} has the wrong JSON type")]
    WrongType(&'static str),
    /// A required claim is missing.
    #[error("claim {0} is missing")]
    MissingClaim(&'static str),
    /// `sub` is not a SPIFFE ID.
    #[error("sub {sub:?} is not a valid SPIFFE ID: {source}")]
    InvalidSubject {
        /// The claim value.
        sub: String,
        /// The rule it breaks.
        source: IdError,
    },
    /// `aud` is an empty array.
    #[error("aud is empty")]
    EmptyAudience,
    /// The validator passed no expected audience.
    #[error("no expected audience given")]
    NoExpectedAudience,
    /// None of the expected audiences is in `aud`.
    #[error("aud {actual:?} contains none of {expected:?}")]
    AudienceMismatch {
        /// The token's audiences.
        actual: Vec<String>,
        /// The audiences the validator accepts.
        expected: Vec<String>,
    },
    /// The token has expired.
    #[error("token expired at {exp}, validation time is {now}")]
    Expired {
        /// The `exp` claim.
        exp: i64,
        /// The validation time in Unix seconds.
        now: i64,
    },
    /// The token's `nbf` lies after the validation time.
    #[error("token not valid before {nbf}, validation time is {now}")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: i64,
        /// The validation time in Unix seconds.
        now: i64,
    },
    /// The set has no bundle for the subject's trust domain.
    #[error("no JWT bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The bundle has no key with the token's `kid`.
    #[error("no JWT authority with kid {key_id:?} in trust domain {trust_domain}")]
    UnknownKeyId {
        /// The token's `kid`.
        key_id: String,
        /// The trust domain searched.
        trust_domain: TrustDomain,
    },
    /// The key type or curve does not fit the token's algorithm.
    #[error("key {key_id:?} cannot verify {algorithm} signatures")]
    KeyAlgorithmMismatch {
        /// The key's `kid`.
        key_id: String,
        /// The token's algorithm.
        algorithm: JwtAlgorithm,
    },
    /// The signature does not verify.
    #[error("signature does not verify with key {0:?}")]
    InvalidSignature(String),
    /// A JWK Set is not a JSON object with a `keys` array.
    #[error("JWK Set is malformed: {0}")]
    MalformedJwkSet(String),
    /// A JWK is malformed.
    #[error("JWK {key_id:?} is malformed: {reason}")]
    MalformedJwk {
        /// The key's `kid`, empty if absent.
        key_id: String,
        /// Description of the problem.
        reason: String,
    },
    /// A JWK has a key type other than EC or RSA.
    #[error("JWK key type {0:?} is not supported")]
    UnsupportedKeyType(String),
    /// A JWK has no `kid`.
    #[error("JWK has no kid")]
    JwkMissingKeyId,
    /// Two keys of one set share a `kid`.
    #[error("JWK Set has two keys with kid {0:?}")]
    DuplicateKeyId(String),
}
