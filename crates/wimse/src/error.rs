//! The reasons a WIT or WPT is rejected or cannot be made.
//!
//! Messages name the failed check and the values involved, but never contain a token,
//! a token hash or key material.

use std::time::Duration;

use twid_spiffe::{IdError, TrustDomain};

use crate::TokenKind;

/// A reason a WIT or WPT is rejected, or a token cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WimseError {
    /// The token is not three non-empty base64url segments.
    #[error("{kind} is not a compact JWS: {reason}")]
    MalformedToken {
        /// Which token.
        kind: TokenKind,
        /// Description of the problem.
        reason: &'static str,
    },
    /// The header or claims are not a JSON object with unique member names.
    #[error("{kind} {segment} is not a valid JSON object: {reason}")]
    InvalidJson {
        /// Which token.
        kind: TokenKind,
        /// `header` or `claims`.
        segment: &'static str,
        /// Message from the JSON parser.
        reason: String,
    },
    /// The WIT `typ` header is missing or does not convey `wit+jwt`.
    #[error("WIT typ {0:?} is not wit+jwt")]
    InvalidWitType(Option<String>),
    /// The WPT `typ` header is missing or does not convey `wpt+jwt`.
    #[error("WPT typ {0:?} is not wpt+jwt")]
    InvalidWptType(Option<String>),
    /// The header has no `alg` string.
    #[error("{0} header has no alg")]
    MissingAlgorithm(TokenKind),
    /// An `alg` names no asymmetric signature algorithm this crate supports, such as
    /// `none`, an HMAC or an encryption algorithm.
    #[error("algorithm {0:?} is not supported")]
    UnsupportedAlgorithm(String),
    /// The WIT `alg` is supported but not in the verifier's allow list.
    #[error("WIT algorithm {0} is not in the allowed list")]
    AlgorithmNotAllowed(String),
    /// The header has a `crit` member naming extensions this crate does not understand.
    #[error("{0} header has crit, and no JWS extension is understood")]
    CriticalHeader(TokenKind),
    /// The WIT has no `kid` and its trust domain has more than one key to choose from.
    #[error("WIT has no kid and trust domain {0} has more than one key")]
    MissingKeyId(TrustDomain),
    /// No issuer key is configured for the trust domain of the WIT subject.
    #[error("no issuer keys are configured for trust domain {0}")]
    UnknownTrustDomain(TrustDomain),
    /// The trust domain has no key with the WIT `kid`.
    #[error("no issuer key with kid {key_id:?} in trust domain {trust_domain}")]
    UnknownKeyId {
        /// The WIT `kid`.
        key_id: String,
        /// The trust domain searched.
        trust_domain: TrustDomain,
    },
    /// The key's type or curve does not fit the token's `alg`.
    #[error("{kind} algorithm {algorithm} does not fit the verification key type")]
    KeyAlgorithmMismatch {
        /// Which token.
        kind: TokenKind,
        /// The token's `alg`.
        algorithm: String,
    },
    /// The signature does not verify.
    #[error("{0} signature is invalid")]
    InvalidSignature(TokenKind),
    /// A required claim is missing.
    #[error("{kind} claim {claim} is missing")]
    MissingClaim {
        /// Which token.
        kind: TokenKind,
        /// The claim name.
        claim: &'static str,
    },
    /// A claim has the wrong JSON type or an invalid value.
    #[error("{kind} claim {claim} is invalid: {reason}")]
    InvalidClaim {
        /// Which token.
        kind: TokenKind,
        /// The claim name.
        claim: &'static str,
        /// Description of the problem.
        reason: String,
    },
    /// The WIT `sub` is not a SPIFFE ID.
    #[error("WIT sub {sub:?} is not a valid SPIFFE ID: {source}")]
    InvalidSubject {
        /// The claim value.
        sub: String,
        /// The rule it breaks.
        source: IdError,
    },
    /// The WIT `iss` is missing or differs from the expected issuer.
    #[error("WIT iss {actual:?} is not the expected issuer {expected:?}")]
    IssuerMismatch {
        /// The expected issuer.
        expected: String,
        /// The claim value, `None` when missing.
        actual: Option<String>,
    },
    /// The WIT has expired, beyond the allowed clock skew.
    #[error("WIT expired at {exp}, validation time is {now}")]
    WitExpired {
        /// The `exp` claim in Unix seconds.
        exp: i64,
        /// The validation time in Unix seconds.
        now: i64,
    },
    /// The WIT `iat` or `nbf` lies after the validation time plus the allowed clock skew.
    #[error("WIT is not valid before {not_before}, validation time is {now}")]
    WitNotYetValid {
        /// The later of `iat` and `nbf` in Unix seconds.
        not_before: i64,
        /// The validation time in Unix seconds.
        now: i64,
    },
    /// The WIT has no `cnf` object with a `jwk` object.
    #[error("WIT has no cnf.jwk confirmation key")]
    MissingConfirmationKey,
    /// The WIT `cnf.jwk` has no `alg`.
    #[error("WIT cnf.jwk has no alg")]
    MissingConfirmationAlgorithm,
    /// The WIT `cnf.jwk` is not a usable public key.
    #[error("WIT cnf.jwk is invalid: {0}")]
    InvalidConfirmationKey(String),
    /// The WPT `alg` is not string-equal to the WIT `cnf.jwk.alg`.
    #[error("WPT alg {proof:?} does not match the WIT cnf.jwk.alg {expected}")]
    ProofAlgorithmMismatch {
        /// The WPT `alg`.
        proof: String,
        /// The WIT `cnf.jwk.alg`.
        expected: String,
    },
    /// The WPT has expired, beyond the allowed clock skew.
    #[error("WPT expired at {exp}, validation time is {now}")]
    ProofExpired {
        /// The `exp` claim in Unix seconds.
        exp: i64,
        /// The validation time in Unix seconds.
        now: i64,
    },
    /// The WPT `iat` lies after the validation time plus the allowed clock skew.
    #[error("WPT iat {iat} is in the future, validation time is {now}")]
    ProofIssuedInFuture {
        /// The `iat` claim in Unix seconds.
        iat: i64,
        /// The validation time in Unix seconds.
        now: i64,
    },
    /// The WPT is valid for longer than the configured maximum proof lifetime.
    #[error("WPT lifetime of {lifetime} s exceeds the maximum of {max} s")]
    ProofLifetimeTooLong {
        /// Seconds from `iat` (or the validation time) to `exp`.
        lifetime: i64,
        /// The configured maximum in seconds.
        max: u64,
    },
    /// The verifier was given no accepted audience.
    #[error("no accepted audience is configured")]
    NoAcceptedAudience,
    /// No WPT audience is in the accepted list.
    #[error("WPT aud {audience:?} is not an accepted audience")]
    AudienceNotAccepted {
        /// The WPT `aud` values.
        audience: Vec<String>,
    },
    /// The WPT `wth` is not the hash of the WIT sent with it.
    #[error("WPT wth does not match the hash of the Workload-Identity-Token")]
    WitHashMismatch,
    /// The raw WIT given to [`crate::verify_wpt`] is not the token the [`crate::Wit`]
    /// was verified from.
    #[error("the raw WIT is not the token the verified WIT was parsed from")]
    WitNotVerified,
    /// A bound token is in the request but the WPT has no hash claim for it.
    #[error("{token} is present but the WPT has no {claim} claim")]
    MissingTokenHash {
        /// The hash claim: `ath`, `tth` or `oth`.
        claim: &'static str,
        /// The token, such as `access token` or a header field name.
        token: String,
    },
    /// The WPT has a hash claim but the request carries no such token.
    #[error("WPT {claim} claim is present but the request has no {token}")]
    UnexpectedTokenHash {
        /// The hash claim: `ath`, `tth` or `oth`.
        claim: &'static str,
        /// The token, such as `access token` or a header field name.
        token: String,
    },
    /// A WPT hash claim does not match the token in the request.
    #[error("WPT {claim} claim does not match the hash of the {token}")]
    TokenHashMismatch {
        /// The hash claim: `ath`, `tth` or `oth`.
        claim: &'static str,
        /// The token, such as `access token` or a header field name.
        token: String,
    },
    /// The WPT `oth` names a token this verifier was not configured to understand.
    #[error("WPT oth names {0:?}, which is not a configured token header")]
    UnknownOtherToken(String),
    /// The WPT `jti` was already accepted within its lifetime.
    #[error("WPT jti {0:?} was already used")]
    ReplayedProof(String),
    /// The replay cache contains its maximum number of unexpired entries.
    #[error(
        "replay cache is full with {0} unexpired proofs; try again later or raise its capacity"
    )]
    ReplayCacheFull(usize),
    /// The request has no such header field.
    #[error("request has no {0} header")]
    MissingHeader(&'static str),
    /// The request has the header field more than once.
    #[error("request has more than one {0} header")]
    RepeatedHeader(&'static str),
    /// The header field value is not a JWT or not visible ASCII.
    #[error("{0} header value is not a well-formed JWT")]
    InvalidHeaderValue(&'static str),
    /// A token lifetime is zero or above the allowed maximum.
    #[error("lifetime {ttl:?} must be above zero and at most {max:?}")]
    InvalidTtl {
        /// The requested lifetime.
        ttl: Duration,
        /// The maximum allowed.
        max: Duration,
    },
    /// A value passed to an issuing function is invalid.
    #[error("invalid {name}: {reason}")]
    InvalidInput {
        /// The parameter.
        name: &'static str,
        /// Description of the problem.
        reason: String,
    },
    /// A JWK is malformed or not supported.
    #[error("JWK is invalid: {0}")]
    InvalidJwk(String),
    /// A JWK Set is malformed.
    #[error("JWK Set is invalid: {0}")]
    InvalidJwkSet(String),
    /// The workload key does not match the WIT `cnf.jwk`.
    #[error("the signing key does not match the WIT cnf.jwk")]
    ConfirmationKeyMismatch,
    /// A private key cannot be loaded.
    #[error("private key is invalid: {0}")]
    InvalidPrivateKey(String),
    /// Key generation failed in the crypto library.
    #[error("key generation failed")]
    KeyGeneration,
    /// Signing failed in the crypto library.
    #[error("signing failed")]
    Signing,
    /// The system random number generator failed.
    #[error("random number generation failed")]
    Random,
}

impl WimseError {
    /// Returns a short reason for HTTP error responses, without any value from the
    /// request.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedToken { .. } | Self::InvalidJson { .. } => "malformed token",
            Self::InvalidWitType(_) => "invalid WIT typ",
            Self::InvalidWptType(_) => "invalid WPT typ",
            Self::MissingAlgorithm(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::AlgorithmNotAllowed(_) => "algorithm not allowed",
            Self::CriticalHeader(_) => "unsupported crit header",
            Self::MissingKeyId(_) | Self::UnknownTrustDomain(_) | Self::UnknownKeyId { .. } => {
                "unknown WIT issuer key"
            }
            Self::KeyAlgorithmMismatch { .. } => "algorithm does not fit key",
            Self::InvalidSignature(_) => "invalid signature",
            Self::MissingClaim { .. } | Self::InvalidClaim { .. } => "missing or invalid claim",
            Self::InvalidSubject { .. } => "WIT subject is not a SPIFFE ID",
            Self::IssuerMismatch { .. } => "WIT issuer not accepted",
            Self::WitExpired { .. } => "WIT expired",
            Self::WitNotYetValid { .. } => "WIT not yet valid",
            Self::MissingConfirmationKey
            | Self::MissingConfirmationAlgorithm
            | Self::InvalidConfirmationKey(_) => "invalid WIT confirmation key",
            Self::ProofAlgorithmMismatch { .. } => "WPT alg does not match WIT key",
            Self::ProofExpired { .. } => "WPT expired",
            Self::ProofIssuedInFuture { .. } => "WPT issued in the future",
            Self::ProofLifetimeTooLong { .. } => "WPT lifetime too long",
            Self::NoAcceptedAudience | Self::AudienceNotAccepted { .. } => {
                "WPT audience not accepted"
            }
            Self::WitHashMismatch | Self::WitNotVerified => "WPT wth mismatch",
            Self::MissingTokenHash { .. }
            | Self::UnexpectedTokenHash { .. }
            | Self::TokenHashMismatch { .. }
            | Self::UnknownOtherToken(_) => "bound token hash mismatch",
            Self::ReplayedProof(_) => "WPT replayed",
            Self::ReplayCacheFull(_) => "replay cache full",
            Self::MissingHeader(_) => "missing WIMSE header",
            Self::RepeatedHeader(_) => "repeated WIMSE header",
            Self::InvalidHeaderValue(_) => "malformed WIMSE header",
            Self::InvalidTtl { .. }
            | Self::InvalidInput { .. }
            | Self::InvalidJwk(_)
            | Self::InvalidJwkSet(_)
            | Self::ConfirmationKeyMismatch
            | Self::InvalidPrivateKey(_)
            | Self::KeyGeneration
            | Self::Signing
            | Self::Random => "internal error",
        }
    }
}
