//! Workload Identity Tokens (WITs): JWTs of type `wit+jwt` in which an Identity Server
//! binds a workload's public key (`cnf.jwk`) to its SPIFFE ID (`sub`).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use twid_spiffe::SpiffeId;

use crate::jose::{
    self, CompactJws, TokenKind, numeric_date, optional_string, reject_critical, unix_seconds,
};
use crate::jwk::SignatureRejected;
use crate::{IssuerKeys, JwsAlgorithm, PublicJwk, SigningKey, WimseError};

/// The `typ` header of a WIT, the media type `application/wit+jwt`.
pub const WIT_TYPE: &str = "wit+jwt";

/// The clock skew allowed by default when checking `exp`, `iat` and `nbf`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The maximum WIT lifetime [`issue_wit`] accepts.
///
/// NOTE: The WIT draft recommends lifetimes "on the order of hours" and sets no limit, so
/// this cap is this crate's choice.
pub const MAX_WIT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A WIT whose signature and claims have been verified by [`verify_wit`].
#[derive(Clone, PartialEq, Eq)]
pub struct Wit {
    /// The `sub` claim, the workload's single identifier.
    pub subject: SpiffeId,
    /// The `iss` claim, if present.
    pub issuer: Option<String>,
    /// The `exp` claim in Unix seconds.
    pub expiry: i64,
    /// The `iat` claim in Unix seconds, if present.
    pub issued_at: Option<i64>,
    /// The `jti` claim, if present.
    pub jti: Option<String>,
    /// The workload's public key from `cnf.jwk`, which every proof must verify with.
    pub confirmation_key: PublicJwk,
    /// The `cnf.jwk.alg`, the only algorithm a proof may be signed with.
    pub confirmation_algorithm: JwsAlgorithm,
    /// The header `kid`, if present.
    pub key_id: Option<String>,
    /// The header `alg` the Identity Server signed with.
    pub algorithm: JwsAlgorithm,
    /// All claims, including the ones above and any this crate does not understand.
    pub claims: Map<String, Value>,
    /// `base64url(SHA-256(token))` of the token as received, the expected WPT `wth`.
    token_hash: String,
}

impl Wit {
    /// Returns `base64url(SHA-256)` of the token this value was verified from.
    pub fn token_hash(&self) -> &str {
        &self.token_hash
    }
}

impl fmt::Debug for Wit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wit")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("expiry", &self.expiry)
            .field("jti", &self.jti)
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("confirmation_algorithm", &self.confirmation_algorithm)
            .finish_non_exhaustive()
    }
}

/// The rules [`verify_wit`] applies beyond the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitValidation {
    /// The header `alg` values accepted for the Identity Server signature.
    pub allowed_algorithms: Vec<JwsAlgorithm>,
    /// When set, `iss` must be present and equal to it.
    pub expected_issuer: Option<String>,
    /// The clock difference tolerated when checking `exp`, `iat` and `nbf`.
    pub clock_skew: Duration,
}

impl Default for WitValidation {
    /// Allows every algorithm in [`JwsAlgorithm::ALL`], any issuer and
    /// [`DEFAULT_CLOCK_SKEW`].
    fn default() -> Self {
        Self {
            allowed_algorithms: JwsAlgorithm::ALL.to_vec(),
            expected_issuer: None,
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }
}

/// Signs a WIT for `subject` that binds `workload_key`.
///
/// The header is `{"alg","typ":"wit+jwt"}` plus `kid` when `issuer_key` has one. The claims
/// are `iss`, `sub`, `exp` (`now + ttl`), `iat`, `jti` and `cnf.jwk`. A `jti` of `None`
/// becomes 128 random bits.
///
/// # Errors
/// - [`WimseError::InvalidInput`] when `issuer` is not an absolute URI, `jti` is empty, or
///   `workload_key` has no `alg`.
/// - [`WimseError::InvalidTtl`] for a zero `ttl` or one above [`MAX_WIT_TTL`].
/// - [`WimseError::Signing`] or [`WimseError::Random`] when the crypto library fails.
pub fn issue_wit(
    issuer_key: &SigningKey,
    issuer: &str,
    subject: &SpiffeId,
    workload_key: &PublicJwk,
    ttl: Duration,
    jti: Option<&str>,
    now: SystemTime,
) -> Result<String, WimseError> {
    if let Err(e) = url::Url::parse(issuer) {
        return Err(WimseError::InvalidInput {
            name: "issuer",
            reason: format!("{issuer:?} is not an absolute URI: {e}"),
        });
    }
    if workload_key.algorithm().is_none() {
        return Err(WimseError::InvalidInput {
            name: "workload_key",
            reason: "the JWK has no alg, which cnf.jwk requires".into(),
        });
    }
    if ttl.is_zero() || ttl > MAX_WIT_TTL {
        return Err(WimseError::InvalidTtl {
            ttl,
            max: MAX_WIT_TTL,
        });
    }
    let jti = match jti {
        Some("") => {
            return Err(WimseError::InvalidInput {
                name: "jti",
                reason: "it is empty".into(),
            });
        }
        Some(jti) => jti.to_owned(),
        None => jose::random_jti()?,
    };
    let issued_at = unix_seconds(now);
    let expiry = issued_at.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));

    let mut header = Map::new();
    header.insert("alg".into(), issuer_key.algorithm().as_str().into());
    header.insert("typ".into(), WIT_TYPE.into());
    if let Some(key_id) = issuer_key.key_id() {
        header.insert("kid".into(), key_id.into());
    }
    let claims = json!({
        "iss": issuer,
        "sub": subject.as_str(),
        "exp": expiry,
        "iat": issued_at,
        "jti": jti,
        "cnf": {"jwk": workload_key.to_json()},
    });
    issuer_key.sign_compact(&Value::Object(header), &claims)
}

/// Verifies a WIT at `now` and returns its claims.
///
/// The checks, in order:
/// 1. The token is a compact JWS whose `typ` conveys `wit+jwt`.
/// 2. `alg` is in `validation.allowed_algorithms`, and there is no `crit`.
/// 3. `sub` is a SPIFFE ID.
/// 4. The issuer key of `sub`'s trust domain named by `kid` (or the domain's only key when
///    `kid` is absent) fits `alg` and verifies the signature.
/// 5. `exp` is present and not passed, and `iat` and `nbf` are not in the future.
/// 6. `iss` equals `validation.expected_issuer` when that is set.
/// 7. `cnf.jwk` is a public key with a supported `alg` that fits it.
///
/// Each time check allows `validation.clock_skew`.
///
/// # Errors
/// Returns the first rule the token breaks, each as its own [`WimseError`] variant.
pub fn verify_wit(
    token: &str,
    issuer_keys: &IssuerKeys,
    validation: &WitValidation,
    now: SystemTime,
) -> Result<Wit, WimseError> {
    let jws = jose::split_compact(token, TokenKind::Wit)?;
    let (algorithm, key_id) = check_header(&jws, validation)?;
    let subject = read_subject(&jws.claims)?;

    let key = issuer_keys.select(subject.trust_domain(), key_id.as_deref())?;
    if key.algorithm().is_some_and(|key_alg| key_alg != algorithm) {
        return Err(WimseError::KeyAlgorithmMismatch {
            kind: TokenKind::Wit,
            algorithm: algorithm.as_str().into(),
        });
    }
    key.verify(algorithm, jws.signing_input.as_bytes(), &jws.signature)
        .map_err(|rejected| match rejected {
            SignatureRejected::KeyMismatch => WimseError::KeyAlgorithmMismatch {
                kind: TokenKind::Wit,
                algorithm: algorithm.as_str().into(),
            },
            SignatureRejected::Invalid => WimseError::InvalidSignature(TokenKind::Wit),
        })?;

    let claims = jws.claims;
    let (expiry, issued_at) = check_times(&claims, validation.clock_skew, now)?;
    let issuer = optional_string(&claims, TokenKind::Wit, "iss")?.map(str::to_owned);
    if let Some(expected) = &validation.expected_issuer
        && issuer.as_ref() != Some(expected)
    {
        return Err(WimseError::IssuerMismatch {
            expected: expected.clone(),
            actual: issuer,
        });
    }
    let jti = optional_string(&claims, TokenKind::Wit, "jti")?.map(str::to_owned);
    let (confirmation_key, confirmation_algorithm) = read_confirmation(&claims)?;
    Ok(Wit {
        subject,
        issuer,
        expiry,
        issued_at,
        jti,
        confirmation_key,
        confirmation_algorithm,
        key_id,
        algorithm,
        claims,
        token_hash: jose::token_hash(token),
    })
}

/// Checks `typ`, `alg` and `crit`, and returns the algorithm and `kid`.
fn check_header(
    jws: &CompactJws<'_>,
    validation: &WitValidation,
) -> Result<(JwsAlgorithm, Option<String>), WimseError> {
    let header = &jws.header;
    match header.get("typ") {
        Some(Value::String(typ)) if jose::typ_matches(typ, WIT_TYPE) => {}
        Some(Value::String(typ)) => return Err(WimseError::InvalidWitType(Some(typ.clone()))),
        Some(other) => return Err(WimseError::InvalidWitType(Some(other.to_string()))),
        None => return Err(WimseError::InvalidWitType(None)),
    }
    let algorithm = match header.get("alg") {
        Some(Value::String(alg)) => alg.parse::<JwsAlgorithm>()?,
        _ => return Err(WimseError::MissingAlgorithm(TokenKind::Wit)),
    };
    if !validation.allowed_algorithms.contains(&algorithm) {
        return Err(WimseError::AlgorithmNotAllowed(algorithm.as_str().into()));
    }
    reject_critical(header, TokenKind::Wit)?;
    let key_id = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => {
            return Err(WimseError::InvalidClaim {
                kind: TokenKind::Wit,
                claim: "kid",
                reason: "the header kid is not a string".into(),
            });
        }
    };
    Ok((algorithm, key_id))
}

fn read_subject(claims: &Map<String, Value>) -> Result<SpiffeId, WimseError> {
    let sub = optional_string(claims, TokenKind::Wit, "sub")?.ok_or(WimseError::MissingClaim {
        kind: TokenKind::Wit,
        claim: "sub",
    })?;
    SpiffeId::new(sub).map_err(|source| WimseError::InvalidSubject {
        sub: sub.to_owned(),
        source,
    })
}

/// Checks `exp`, `iat` and `nbf` and returns `exp` and `iat`.
fn check_times(
    claims: &Map<String, Value>,
    clock_skew: Duration,
    now: SystemTime,
) -> Result<(i64, Option<i64>), WimseError> {
    let skew = i64::try_from(clock_skew.as_secs()).unwrap_or(i64::MAX);
    let now = unix_seconds(now);
    let expiry = numeric_date(claims, TokenKind::Wit, "exp")?.ok_or(WimseError::MissingClaim {
        kind: TokenKind::Wit,
        claim: "exp",
    })?;
    if now >= expiry.saturating_add(skew) {
        return Err(WimseError::WitExpired { exp: expiry, now });
    }
    let issued_at = numeric_date(claims, TokenKind::Wit, "iat")?;
    let not_before = numeric_date(claims, TokenKind::Wit, "nbf")?;
    if let Some(not_before) = issued_at.max(not_before)
        && not_before > now.saturating_add(skew)
    {
        return Err(WimseError::WitNotYetValid { not_before, now });
    }
    Ok((expiry, issued_at))
}

/// Reads `cnf.jwk` and its `alg`.
pub(crate) fn read_confirmation(
    claims: &Map<String, Value>,
) -> Result<(PublicJwk, JwsAlgorithm), WimseError> {
    let jwk = claims
        .get("cnf")
        .and_then(Value::as_object)
        .and_then(|cnf| cnf.get("jwk"))
        .filter(|jwk| jwk.is_object())
        .ok_or(WimseError::MissingConfirmationKey)?;
    let algorithm = match jwk.get("alg") {
        None => return Err(WimseError::MissingConfirmationAlgorithm),
        Some(Value::String(alg)) => alg.parse::<JwsAlgorithm>().map_err(|_| {
            WimseError::InvalidConfirmationKey(format!(
                "alg {alg:?} is not a supported asymmetric signature algorithm"
            ))
        })?,
        Some(_) => {
            return Err(WimseError::InvalidConfirmationKey(
                "alg is not a string".into(),
            ));
        }
    };
    let key = PublicJwk::from_json(jwk).map_err(|e| match e {
        WimseError::InvalidJwk(reason) => WimseError::InvalidConfirmationKey(reason),
        other => other,
    })?;
    Ok((key, algorithm))
}
