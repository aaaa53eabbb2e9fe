//! Compact JWS pieces shared by WITs and WPTs: algorithm names, segment decoding, JSON
//! objects with unique member names, SHA-256 token hashes and NumericDate handling.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::WimseError;

/// An asymmetric JWS signature algorithm this crate signs and verifies with.
///
/// `none`, the HMAC algorithms and every encryption algorithm have no variant, so a token
/// or key naming one is rejected while it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// ECDSA P-256 with SHA-256; the algorithm every WIMSE implementation must support.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
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
    /// EdDSA with an Ed25519 key.
    EdDSA,
}

impl JwsAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [Self; 10] = [
        Self::ES256,
        Self::ES384,
        Self::ES512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::EdDSA,
    ];

    /// Returns the JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl FromStr for JwsAlgorithm {
    type Err = WimseError;

    /// Parses the exact, case-sensitive `alg` name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or_else(|| WimseError::UnsupportedAlgorithm(s.to_owned()))
    }
}

impl fmt::Display for JwsAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one of the two token kinds in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A Workload Identity Token.
    Wit,
    /// A Workload Proof Token.
    Wpt,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wit => "WIT",
            Self::Wpt => "WPT",
        })
    }
}

/// The decoded parts of a compact JWS.
pub(crate) struct CompactJws<'a> {
    /// `base64url(header) "." base64url(claims)`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
    pub(crate) signature: Vec<u8>,
}

/// Splits and decodes a compact JWS of exactly three non-empty base64url segments.
pub(crate) fn split_compact(token: &str, kind: TokenKind) -> Result<CompactJws<'_>, WimseError> {
    let malformed = |reason| WimseError::MalformedToken { kind, reason };
    let mut segments = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(malformed("expected three dot-separated segments"));
    };
    if header.is_empty() || claims.is_empty() || signature.is_empty() {
        return Err(malformed("a segment is empty"));
    }
    let signing_input = &token[..header.len() + 1 + claims.len()];
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("the signature is not unpadded base64url"))?;
    Ok(CompactJws {
        signing_input,
        header: decode_object(header, kind, "header")?,
        claims: decode_object(claims, kind, "claims")?,
        signature,
    })
}

fn decode_object(
    segment: &str,
    kind: TokenKind,
    name: &'static str,
) -> Result<Map<String, Value>, WimseError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| WimseError::MalformedToken {
            kind,
            reason: "a segment is not unpadded base64url",
        })?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .map(|object| object.0)
        .map_err(|e| WimseError::InvalidJson {
            kind,
            segment: name,
            reason: e.to_string(),
        })
}

/// A JSON object whose top-level member names are unique. serde_json alone keeps the last
/// of two equal names, so two parsers could read different claims from one token.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate member {key:?}")));
            }
            map.insert(key, value);
        }
        Ok(UniqueObject(map))
    }
}

/// Encodes header and claims as a JWS signing input.
pub(crate) fn signing_input(header: &Value, claims: &Value) -> String {
    twid_spiffe::encode_signing_input(header, claims)
}

/// Returns whether the `typ` header conveys `application/<expected>`.
///
/// RFC 7515 section 4.1.9 makes a recipient treat a `typ` without a `/` as if
/// `application/` were prepended, and media type names compare case-insensitively, so
/// `wit+jwt`, `application/wit+jwt` and `WIT+JWT` all convey the same type.
pub(crate) fn typ_matches(typ: &str, expected: &str) -> bool {
    let subtype = match typ.split_once('/') {
        Some((kind, subtype)) if kind.eq_ignore_ascii_case("application") => subtype,
        Some(_) => return false,
        None => typ,
    };
    subtype.eq_ignore_ascii_case(expected)
}

/// Returns `base64url(SHA-256(value))`, the form of `wth`, `ath`, `tth` and `oth` values.
pub fn token_hash(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, value.as_bytes()).as_ref())
}

/// Returns 128 random bits as unpadded base64url, enough that two `jti` values collide
/// with negligible probability.
pub(crate) fn random_jti() -> Result<String, WimseError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| WimseError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Returns `time` in whole Unix seconds, negative before 1970.
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Reads an RFC 7519 NumericDate claim; fractional seconds are rounded down.
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    kind: TokenKind,
    name: &'static str,
) -> Result<Option<i64>, WimseError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(seconds) = value.as_i64() {
        return Ok(Some(seconds));
    }
    match value.as_f64() {
        Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
        _ => Err(WimseError::InvalidClaim {
            kind,
            claim: name,
            reason: "not a NumericDate".into(),
        }),
    }
}

/// Reads an optional string member.
pub(crate) fn optional_string<'a>(
    object: &'a Map<String, Value>,
    kind: TokenKind,
    name: &'static str,
) -> Result<Option<&'a str>, WimseError> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(WimseError::InvalidClaim {
            kind,
            claim: name,
            reason: "not a string".into(),
        }),
    }
}

/// Rejects a `crit` header: this crate understands no JWS extension, and RFC 7515 section
/// 4.1.11 requires rejecting a token whose critical extensions are not understood.
pub(crate) fn reject_critical(
    header: &Map<String, Value>,
    kind: TokenKind,
) -> Result<(), WimseError> {
    if header.contains_key("crit") {
        return Err(WimseError::CriticalHeader(kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_accepts_media_type_forms() {
        assert!(typ_matches("wit+jwt", "wit+jwt"));
        assert!(typ_matches("application/wit+jwt", "wit+jwt"));
        assert!(typ_matches("Application/WIT+JWT", "wit+jwt"));
        assert!(!typ_matches("text/wit+jwt", "wit+jwt"));
        assert!(!typ_matches("JWT", "wit+jwt"));
        assert!(!typ_matches("wpt+jwt", "wit+jwt"));
    }

    #[test]
    fn duplicate_members_are_rejected() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(b"{}");
        let token = format!("{header}.{claims}.AAAA");
        let err = split_compact(&token, TokenKind::Wit).err();
        assert!(
            matches!(err, Some(WimseError::InvalidJson { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn token_hash_matches_known_value() {
        // SHA-256 of "abc" from FIPS 180-2, in unpadded base64url.
        assert_eq!(
            token_hash("abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
