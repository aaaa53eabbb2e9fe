//! Workload Proof Tokens (WPTs): short-lived JWTs of type `wpt+jwt`, signed with the
//! workload key a WIT confirms, that bind one request's audience, the WIT and any other
//! tokens in the request.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::jose::{
    self, TokenKind, numeric_date, optional_string, reject_critical, token_hash, unix_seconds,
};
use crate::jwk::SignatureRejected;
use crate::wit::{DEFAULT_CLOCK_SKEW, read_confirmation};
use crate::{ReplayCache, SigningKey, WimseError, Wit};

/// The `typ` header of a WPT, the media type `application/wpt+jwt`.
pub const WPT_TYPE: &str = "wpt+jwt";

/// The proof lifetime to use when the caller has no reason to choose another.
pub const DEFAULT_PROOF_TTL: Duration = Duration::from_secs(30);

/// The maximum proof lifetime [`create_wpt`] accepts, and the default maximum for
/// [`verify_wpt`]. The WPT draft requires lifetimes "on the order of minutes or seconds".
pub const MAX_PROOF_TTL: Duration = Duration::from_secs(5 * 60);

/// Tokens besides the WIT that a request carries and a WPT must bind by hash.
///
/// The default is a request with no such token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundTokens {
    /// The OAuth access token, bound by `ath`.
    pub access_token: Option<String>,
    /// The Txn-Token, bound by `tth`.
    pub transaction_token: Option<String>,
    /// Other tokens by lower-case header field name, bound by `oth`. Each value is the
    /// header field value, whose leading and trailing spaces and tabs are ignored.
    pub other_tokens: BTreeMap<String, String>,
}

impl BoundTokens {
    /// Sets the access token.
    #[must_use]
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Sets the Txn-Token.
    #[must_use]
    pub fn with_transaction_token(mut self, token: impl Into<String>) -> Self {
        self.transaction_token = Some(token.into());
        self
    }

    /// Adds a token carried in header field `name`, which is lower-cased.
    #[must_use]
    pub fn with_other_token(mut self, name: &str, value: impl Into<String>) -> Self {
        self.other_tokens
            .insert(name.to_ascii_lowercase(), value.into());
        self
    }
}

/// The rules [`verify_wpt`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofValidation {
    /// The audiences this verifier accepts, from trusted configuration. Never fill it from
    /// the request's `Host` or `X-Forwarded-Host`.
    pub accepted_audiences: Vec<String>,
    /// The maximum lifetime of a proof, from `iat` (or the validation time) to `exp`.
    pub max_proof_lifetime: Duration,
    /// The clock difference tolerated when checking `exp` and `iat`.
    pub clock_skew: Duration,
    /// The lower-case header field names whose tokens `oth` may bind. A proof whose `oth`
    /// names any other header is rejected.
    pub other_token_headers: Vec<String>,
}

impl ProofValidation {
    /// Creates rules accepting `accepted_audiences`, with [`MAX_PROOF_TTL`],
    /// [`DEFAULT_CLOCK_SKEW`] and no `oth` headers.
    pub fn new(accepted_audiences: Vec<String>) -> Self {
        Self {
            accepted_audiences,
            max_proof_lifetime: MAX_PROOF_TTL,
            clock_skew: DEFAULT_CLOCK_SKEW,
            other_token_headers: Vec::new(),
        }
    }
}

/// A WPT accepted by [`verify_wpt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The `jti` claim.
    pub jti: String,
    /// The `aud` claim, a single string becoming a one-element list.
    pub audience: Vec<String>,
    /// The `exp` claim in Unix seconds.
    pub expiry: i64,
    /// The `iat` claim in Unix seconds, if present.
    pub issued_at: Option<i64>,
    /// All claims.
    pub claims: Map<String, Value>,
}

/// Signs a WPT with the workload key that `wit` confirms.
///
/// The header is `{"alg": <cnf.jwk.alg of the WIT>, "typ": "wpt+jwt"}`. The claims are
/// `aud`, `exp` (`now + ttl`), `iat`, `jti`, `wth` and, for each token in `bound`, `ath`,
/// `tth` or an `oth` entry. A `jti` of `None` becomes 128 random bits.
///
/// The WIT is read without verifying it, only to check that `workload_key` is its
/// confirmation key.
///
/// # Errors
/// - A parse error when `wit` is not a JWT with a `cnf.jwk`.
/// - [`WimseError::ConfirmationKeyMismatch`] when `workload_key` is not the `cnf.jwk` key
///   or does not sign with its `alg`.
/// - [`WimseError::InvalidInput`] for an empty `audience` or `jti`.
/// - [`WimseError::InvalidTtl`] for a zero `ttl` or one above [`MAX_PROOF_TTL`].
/// - [`WimseError::WitExpired`] when the WIT's `exp` is at or before `now`, because a
///   workload must not use its key once the WIT has expired.
/// - [`WimseError::Signing`] or [`WimseError::Random`] when the crypto library fails.
pub fn create_wpt(
    workload_key: &SigningKey,
    wit: &str,
    audience: &str,
    ttl: Duration,
    jti: Option<&str>,
    bound: &BoundTokens,
    now: SystemTime,
) -> Result<String, WimseError> {
    let wit_claims = jose::split_compact(wit, TokenKind::Wit)?.claims;
    let (confirmation_key, confirmation_algorithm) = read_confirmation(&wit_claims)?;
    if let Some(exp) = wit_claims.get("exp").and_then(Value::as_i64)
        && exp <= unix_seconds(now)
    {
        return Err(WimseError::WitExpired {
            exp,
            now: unix_seconds(now),
        });
    }
    if confirmation_algorithm != workload_key.algorithm()
        || !confirmation_key.same_key(&workload_key.public_jwk())
    {
        return Err(WimseError::ConfirmationKeyMismatch);
    }
    if audience.is_empty() {
        return Err(WimseError::InvalidInput {
            name: "audience",
            reason: "it is empty".into(),
        });
    }
    if ttl.is_zero() || ttl > MAX_PROOF_TTL {
        return Err(WimseError::InvalidTtl {
            ttl,
            max: MAX_PROOF_TTL,
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

    let mut claims = Map::new();
    claims.insert("aud".into(), audience.into());
    claims.insert("exp".into(), expiry.into());
    claims.insert("iat".into(), issued_at.into());
    claims.insert("jti".into(), jti.into());
    claims.insert("wth".into(), token_hash(wit).into());
    if let Some(token) = &bound.access_token {
        claims.insert("ath".into(), token_hash(token).into());
    }
    if let Some(token) = &bound.transaction_token {
        claims.insert("tth".into(), token_hash(token).into());
    }
    if !bound.other_tokens.is_empty() {
        let other: Map<String, Value> = bound
            .other_tokens
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), other_token_hash(value).into()))
            .collect();
        claims.insert("oth".into(), Value::Object(other));
    }
    let header = json!({"alg": workload_key.algorithm().as_str(), "typ": WPT_TYPE});
    workload_key.sign_compact(&header, &Value::Object(claims))
}

/// Verifies a WPT presented with the verified `wit`, whose token as sent is `raw_wit`.
///
/// The checks, in order:
/// 1. The accepted audience list is not empty.
/// 2. `raw_wit` is the token `wit` was verified from.
/// 3. The WPT is a compact JWS whose `typ` conveys `wpt+jwt`.
/// 4. `alg` is string-equal to the WIT `cnf.jwk.alg`, and there is no `crit`.
/// 5. The signature verifies with `cnf.jwk`.
/// 6. `exp` is present and not passed, and `iat`, when present, is not in the future.
/// 7. The lifetime is at most `validation.max_proof_lifetime`.
/// 8. An `aud` value is accepted.
/// 9. `wth` is the hash of `raw_wit`.
/// 10. `ath`, `tth` and `oth` bind exactly the tokens in `presented`.
/// 11. `jti` is present and was not accepted before from the same subject.
///
/// The `jti` is recorded only when every other check passed.
///
/// # Errors
/// Returns the first rule the proof breaks, each as its own [`WimseError`] variant.
pub fn verify_wpt(
    wpt: &str,
    wit: &Wit,
    raw_wit: &str,
    validation: &ProofValidation,
    presented: &BoundTokens,
    replay_cache: &ReplayCache,
    now: SystemTime,
) -> Result<Proof, WimseError> {
    if validation.accepted_audiences.is_empty() {
        return Err(WimseError::NoAcceptedAudience);
    }
    let raw_wit_hash = token_hash(raw_wit);
    if raw_wit_hash != wit.token_hash() {
        return Err(WimseError::WitNotVerified);
    }
    let jws = jose::split_compact(wpt, TokenKind::Wpt)?;
    check_header(&jws.header, wit)?;
    wit.confirmation_key
        .verify(
            wit.confirmation_algorithm,
            jws.signing_input.as_bytes(),
            &jws.signature,
        )
        .map_err(|rejected| match rejected {
            SignatureRejected::KeyMismatch => WimseError::KeyAlgorithmMismatch {
                kind: TokenKind::Wpt,
                algorithm: wit.confirmation_algorithm.as_str().into(),
            },
            SignatureRejected::Invalid => WimseError::InvalidSignature(TokenKind::Wpt),
        })?;

    let claims = jws.claims;
    let now_seconds = unix_seconds(now);
    let (expiry, issued_at) = check_times(&claims, validation, now_seconds)?;
    let audience = check_audience(&claims, &validation.accepted_audiences)?;
    match optional_string(&claims, TokenKind::Wpt, "wth")? {
        None => {
            return Err(WimseError::MissingClaim {
                kind: TokenKind::Wpt,
                claim: "wth",
            });
        }
        Some(wth) if wth != raw_wit_hash => return Err(WimseError::WitHashMismatch),
        Some(_) => {}
    }
    check_bound_token(
        &claims,
        "ath",
        "access token",
        presented.access_token.as_deref(),
    )?;
    check_bound_token(
        &claims,
        "tth",
        "Txn-Token",
        presented.transaction_token.as_deref(),
    )?;
    check_other_tokens(&claims, validation, presented)?;

    let jti = match optional_string(&claims, TokenKind::Wpt, "jti")? {
        None | Some("") => {
            return Err(WimseError::MissingClaim {
                kind: TokenKind::Wpt,
                claim: "jti",
            });
        }
        Some(jti) => jti.to_owned(),
    };
    // The proof stays acceptable until exp plus the skew, so the cache must remember it
    // that long.
    let skew = i64::try_from(validation.clock_skew.as_secs()).unwrap_or(i64::MAX);
    replay_cache.insert_unseen(
        wit.subject.as_str(),
        &jti,
        expiry.saturating_add(skew),
        now_seconds,
    )?;
    Ok(Proof {
        jti,
        audience,
        expiry,
        issued_at,
        claims,
    })
}

fn check_header(header: &Map<String, Value>, wit: &Wit) -> Result<(), WimseError> {
    match header.get("typ") {
        Some(Value::String(typ)) if jose::typ_matches(typ, WPT_TYPE) => {}
        Some(Value::String(typ)) => return Err(WimseError::InvalidWptType(Some(typ.clone()))),
        Some(other) => return Err(WimseError::InvalidWptType(Some(other.to_string()))),
        None => return Err(WimseError::InvalidWptType(None)),
    }
    let expected = wit.confirmation_algorithm.as_str();
    match header.get("alg") {
        Some(Value::String(alg)) if alg == expected => {}
        Some(Value::String(alg)) => {
            return Err(WimseError::ProofAlgorithmMismatch {
                proof: alg.clone(),
                expected: expected.into(),
            });
        }
        _ => return Err(WimseError::MissingAlgorithm(TokenKind::Wpt)),
    }
    reject_critical(header, TokenKind::Wpt)
}

/// Checks `exp`, `iat` and the lifetime, and returns `exp` and `iat`.
fn check_times(
    claims: &Map<String, Value>,
    validation: &ProofValidation,
    now: i64,
) -> Result<(i64, Option<i64>), WimseError> {
    let skew = i64::try_from(validation.clock_skew.as_secs()).unwrap_or(i64::MAX);
    let max = validation.max_proof_lifetime.as_secs();
    let max_seconds = i64::try_from(max).unwrap_or(i64::MAX);
    let expiry = numeric_date(claims, TokenKind::Wpt, "exp")?.ok_or(WimseError::MissingClaim {
        kind: TokenKind::Wpt,
        claim: "exp",
    })?;
    if now >= expiry.saturating_add(skew) {
        return Err(WimseError::ProofExpired { exp: expiry, now });
    }
    let issued_at = numeric_date(claims, TokenKind::Wpt, "iat")?;
    if let Some(iat) = issued_at {
        if iat > now.saturating_add(skew) {
            return Err(WimseError::ProofIssuedInFuture { iat, now });
        }
        let lifetime = expiry.saturating_sub(iat);
        if lifetime > max_seconds {
            return Err(WimseError::ProofLifetimeTooLong { lifetime, max });
        }
    }
    // Without iat, or with a back-dated one, the remaining lifetime still has to fit.
    let remaining = expiry.saturating_sub(now);
    if remaining > max_seconds.saturating_add(skew) {
        return Err(WimseError::ProofLifetimeTooLong {
            lifetime: remaining,
            max,
        });
    }
    Ok((expiry, issued_at))
}

fn check_audience(
    claims: &Map<String, Value>,
    accepted: &[String],
) -> Result<Vec<String>, WimseError> {
    let invalid = || WimseError::InvalidClaim {
        kind: TokenKind::Wpt,
        claim: "aud",
        reason: "not a string or an array of strings".into(),
    };
    let audience: Vec<String> = match claims.get("aud") {
        None => {
            return Err(WimseError::MissingClaim {
                kind: TokenKind::Wpt,
                claim: "aud",
            });
        }
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid()),
    };
    if audience.iter().any(|aud| accepted.contains(aud)) {
        Ok(audience)
    } else {
        Err(WimseError::AudienceNotAccepted { audience })
    }
}

/// Checks that hash claim `claim` is present exactly when `token` is, and matches it.
fn check_bound_token(
    claims: &Map<String, Value>,
    claim: &'static str,
    name: &str,
    token: Option<&str>,
) -> Result<(), WimseError> {
    let hash = optional_string(claims, TokenKind::Wpt, claim)?;
    match (hash, token) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(WimseError::UnexpectedTokenHash {
            claim,
            token: name.into(),
        }),
        (None, Some(_)) => Err(WimseError::MissingTokenHash {
            claim,
            token: name.into(),
        }),
        (Some(hash), Some(token)) if hash == token_hash(token) => Ok(()),
        (Some(_), Some(_)) => Err(WimseError::TokenHashMismatch {
            claim,
            token: name.into(),
        }),
    }
}

/// Checks that `oth` has exactly one matching entry per presented other token and names
/// only configured headers.
fn check_other_tokens(
    claims: &Map<String, Value>,
    validation: &ProofValidation,
    presented: &BoundTokens,
) -> Result<(), WimseError> {
    let empty = Map::new();
    let other = match claims.get("oth") {
        None => &empty,
        Some(Value::Object(other)) => other,
        Some(_) => {
            return Err(WimseError::InvalidClaim {
                kind: TokenKind::Wpt,
                claim: "oth",
                reason: "not a JSON object".into(),
            });
        }
    };
    for (name, hash) in other {
        if *name != name.to_ascii_lowercase() {
            return Err(WimseError::InvalidClaim {
                kind: TokenKind::Wpt,
                claim: "oth",
                reason: format!("header field name {name:?} is not lower case"),
            });
        }
        if !validation.other_token_headers.contains(name) {
            return Err(WimseError::UnknownOtherToken(name.clone()));
        }
        let Some(hash) = hash.as_str() else {
            return Err(WimseError::InvalidClaim {
                kind: TokenKind::Wpt,
                claim: "oth",
                reason: format!("the value for {name:?} is not a string"),
            });
        };
        match presented.other_tokens.get(name) {
            None => {
                return Err(WimseError::UnexpectedTokenHash {
                    claim: "oth",
                    token: format!("{name} header"),
                });
            }
            Some(value) if other_token_hash(value) != hash => {
                return Err(WimseError::TokenHashMismatch {
                    claim: "oth",
                    token: format!("{name} header"),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(name) = presented
        .other_tokens
        .keys()
        .find(|name| !other.contains_key(name.as_str()))
    {
        return Err(WimseError::MissingTokenHash {
            claim: "oth",
            token: format!("{name} header"),
        });
    }
    Ok(())
}

/// Hashes a header field value with leading and trailing spaces and tabs removed.
fn other_token_hash(value: &str) -> String {
    token_hash(value.trim_matches([' ', '\t']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_token_hash_ignores_outer_spaces() {
        assert_eq!(other_token_hash("  abc\t"), token_hash("abc"));
    }
}
