//! JWT-SVID parsing and validation.
//!
//! Choices where the JWT-SVID standard leaves room:
//! - The JOSE header may hold only `alg`, `kid` and `typ`; any other member (`jku`, `jwk`,
//!   `x5u`, `x5c`, `cty`, `crit`, private ones) rejects the token. The standard forbids
//!   issuers to add them, so a token carrying one did not come from a conforming issuer.
//! - `typ`, when present, must be exactly `JWT` or `JOSE`; other spellings such as `jwt`
//!   are rejected, as py-spiffe does.
//! - `kid` is required, because validation selects the key by it.
//! - `sub` may be a trust domain ID without a path; the JWT-SVID standard does not forbid it.
//! - `exp` is required and the token is valid only while `now < exp`, with no leeway. A
//!   present `nbf` must satisfy `nbf <= now`. `iat` is parsed but not checked.
//! - Header or claims with a repeated member name are rejected.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{JwtAlgorithm, JwtBundleSet, JwtError};
use crate::SpiffeId;
use crate::json::parse_unique_object;

/// A parsed JWT-SVID. Values from [`JwtSvid::parse_insecure`] are not authenticated.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    /// The compact token as received. It is a bearer credential: never log it.
    pub token: String,
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// The `aud` claim, a single string becoming a one-element list.
    pub audience: Vec<String>,
    /// The `exp` claim in Unix seconds.
    pub expiry: i64,
    /// The `iat` claim in Unix seconds, if present.
    pub issued_at: Option<i64>,
    /// All claims, including the ones above.
    pub claims: Map<String, Value>,
    /// The header `kid`.
    pub key_id: String,
    /// The header `alg`.
    pub algorithm: JwtAlgorithm,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("audience", &self.audience)
            .field("expiry", &self.expiry)
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The three decoded parts of a compact JWS.
struct Parts<'a> {
    signing_input: &'a str,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signature: Vec<u8>,
}

impl JwtSvid {
    /// Parses a token and checks its structure, header and claims, but neither its
    /// signature, expiry nor audience. Use it only for tokens from a trusted source, such as
    /// the Workload API.
    ///
    /// # Errors
    /// Returns the first structure, header or claim rule the token breaks; the `alg` check
    /// comes before any claim is read.
    pub fn parse_insecure(token: &str) -> Result<Self, JwtError> {
        Self::parse_parts(token).map(|(svid, _)| svid)
    }

    /// Parses a token and validates it at `now`: the signature must verify with the key
    /// named by `kid` in the bundle of `sub`'s trust domain, `now` must be before `exp`, and
    /// at least one of `expected_audiences` must be in `aud`.
    ///
    /// # Errors
    /// Returns [`JwtError::NoExpectedAudience`] when `expected_audiences` is empty, and
    /// otherwise the first rule the token breaks.
    pub fn parse_and_validate(
        token: &str,
        bundles: &JwtBundleSet,
        expected_audiences: &[&str],
        now: SystemTime,
    ) -> Result<Self, JwtError> {
        if expected_audiences.is_empty() {
            return Err(JwtError::NoExpectedAudience);
        }
        let (svid, parts) = Self::parse_parts(token)?;
        svid.verify_signature(&parts, bundles)?;
        svid.check_time(now)?;
        svid.check_audience(expected_audiences)?;
        Ok(svid)
    }

    fn parse_parts(token: &str) -> Result<(Self, Parts<'_>), JwtError> {
        let parts = split_token(token)?;
        let (algorithm, key_id) = check_header(&parts.header)?;
        let svid = Self::from_claims(token, parts.claims.clone(), algorithm, key_id)?;
        Ok((svid, parts))
    }

    fn from_claims(
        token: &str,
        claims: Map<String, Value>,
        algorithm: JwtAlgorithm,
        key_id: String,
    ) -> Result<Self, JwtError> {
        let sub = match claims.get("sub") {
            None => return Err(JwtError::MissingClaim("sub")),
            Some(Value::String(sub)) => sub,
            Some(_) => return Err(JwtError::WrongType("sub")),
        };
        let spiffe_id = SpiffeId::new(sub).map_err(|source| JwtError::InvalidSubject {
            sub: sub.clone(),
            source,
        })?;
        let audience = read_audience(claims.get("aud"))?;
        let expiry = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
        let issued_at = numeric_date(&claims, "iat")?;
        Ok(Self {
            token: token.to_owned(),
            spiffe_id,
            audience,
            expiry,
            issued_at,
            claims,
            key_id,
            algorithm,
        })
    }

    fn verify_signature(&self, parts: &Parts<'_>, bundles: &JwtBundleSet) -> Result<(), JwtError> {
        let trust_domain = self.spiffe_id.trust_domain();
        let bundle = bundles
            .get(trust_domain)
            .ok_or_else(|| JwtError::NoBundle(trust_domain.clone()))?;
        let authority = bundle
            .get(&self.key_id)
            .ok_or_else(|| JwtError::UnknownKeyId {
                key_id: self.key_id.clone(),
                trust_domain: trust_domain.clone(),
            })?;
        authority.verify(
            self.algorithm,
            parts.signing_input.as_bytes(),
            &parts.signature,
        )
    }

    fn check_time(&self, now: SystemTime) -> Result<(), JwtError> {
        let now = unix_seconds(now);
        if now >= self.expiry {
            return Err(JwtError::Expired {
                exp: self.expiry,
                now,
            });
        }
        if let Some(nbf) = numeric_date(&self.claims, "nbf")?
            && now < nbf
        {
            return Err(JwtError::NotYetValid { nbf, now });
        }
        Ok(())
    }

    fn check_audience(&self, expected: &[&str]) -> Result<(), JwtError> {
        if expected
            .iter()
            .any(|e| self.audience.iter().any(|a| a == e))
        {
            return Ok(());
        }
        Err(JwtError::AudienceMismatch {
            actual: self.audience.clone(),
            expected: expected.iter().map(|e| (*e).to_owned()).collect(),
        })
    }
}

/// Encodes `header` and `claims` as the JWS signing input `b64url(header).b64url(claims)`.
pub fn encode_signing_input(header: &Value, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}")
}

/// Appends the base64url `signature` to a signing input, giving the compact token.
pub fn assemble(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn split_token(token: &str) -> Result<Parts<'_>, JwtError> {
    let mut segments = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(JwtError::MalformedToken(
            "expected three dot-separated segments",
        ));
    };
    if header.is_empty() || claims.is_empty() || signature.is_empty() {
        return Err(JwtError::MalformedToken("a segment is empty"));
    }
    let signing_input = &token[..header.len() + 1 + claims.len()];
    Ok(Parts {
        signing_input,
        header: decode_object(header, "header")?,
        claims: decode_object(claims, "claims")?,
        signature: URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtError::InvalidBase64("signature"))?,
    })
}

fn decode_object(segment: &str, name: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::InvalidBase64(name))?;
    parse_unique_object(&bytes).map_err(|e| JwtError::InvalidJson {
        segment: name,
        reason: e.to_string(),
    })
}

/// Applies the header rules, `alg` first, and returns the algorithm and `kid`.
fn check_header(header: &Map<String, Value>) -> Result<(JwtAlgorithm, String), JwtError> {
    let algorithm = match header.get("alg") {
        None => return Err(JwtError::MissingAlgorithm),
        Some(Value::String(alg)) => alg.parse::<JwtAlgorithm>()?,
        Some(_) => return Err(JwtError::WrongType("alg")),
    };
    if let Some(name) = header
        .keys()
        .find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(JwtError::UnexpectedHeader(name.clone()));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
        Some(Value::String(typ)) => return Err(JwtError::InvalidType(typ.clone())),
        Some(_) => return Err(JwtError::WrongType("typ")),
    }
    let key_id = match header.get("kid") {
        None => return Err(JwtError::MissingKeyId),
        Some(Value::String(kid)) if kid.is_empty() => return Err(JwtError::MissingKeyId),
        Some(Value::String(kid)) => kid.clone(),
        Some(_) => return Err(JwtError::WrongType("kid")),
    };
    Ok((algorithm, key_id))
}

fn read_audience(aud: Option<&Value>) -> Result<Vec<String>, JwtError> {
    match aud {
        None => Err(JwtError::MissingClaim("aud")),
        Some(Value::String(one)) => Ok(vec![one.clone()]),
        Some(Value::Array(many)) if many.is_empty() => Err(JwtError::EmptyAudience),
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(JwtError::WrongType("aud"))
            })
            .collect(),
        Some(_) => Err(JwtError::WrongType("aud")),
    }
}

/// Reads an RFC 7519 NumericDate claim; fractional seconds are truncated toward minus
/// infinity.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(seconds) = value.as_i64() {
        return Ok(Some(seconds));
    }
    match value.as_f64() {
        Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
        _ => Err(JwtError::WrongType(name)),
    }
}

fn unix_seconds(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
#[path = "svid_tests.rs"]
mod tests;
