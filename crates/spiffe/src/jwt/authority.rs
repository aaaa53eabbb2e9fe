//! JWT authorities: public keys identified by `kid`, convertible to and from JWKs.

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::{JwtAlgorithm, JwtError};
use crate::keys::{Curve, PublicKeyInfo};

/// A JWT signing key of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The key ID (`kid`) tokens name to select this key.
    pub key_id: String,
    /// The public key as DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
}

impl JwtAuthority {
    /// Builds an authority from a DER SubjectPublicKeyInfo.
    ///
    /// # Errors
    /// Returns [`JwtError::JwkMissingKeyId`] for an empty `key_id` and
    /// [`JwtError::MalformedJwk`] unless the key is a valid EC P-256/P-384/P-521 or RSA key.
    pub fn from_spki_der(key_id: &str, der: &[u8]) -> Result<Self, JwtError> {
        if key_id.is_empty() {
            return Err(JwtError::JwkMissingKeyId);
        }
        let info = PublicKeyInfo::from_spki_der(der)
            .ok_or_else(|| malformed(key_id, "not an EC or RSA SubjectPublicKeyInfo"))?;
        check_key(key_id, &info)?;
        Ok(Self {
            key_id: key_id.to_owned(),
            public_key: der.to_vec(),
        })
    }

    /// Reads a public JWK: `kty` EC with `crv` P-256, P-384 or P-521 and `x`, `y`, or `kty`
    /// RSA with `n` and `e`. Private members are ignored.
    ///
    /// # Errors
    /// Returns [`JwtError::JwkMissingKeyId`] without a `kid`,
    /// [`JwtError::UnsupportedKeyType`] for another `kty`, and [`JwtError::MalformedJwk`] for
    /// missing or invalid key members.
    pub fn from_jwk(jwk: &Value) -> Result<Self, JwtError> {
        let object = jwk
            .as_object()
            .ok_or_else(|| malformed("", "not a JSON object"))?;
        let key_id = jwk_key_id(object)?;
        let info = match string_member(&key_id, object, "kty")? {
            "EC" => ec_key(&key_id, object)?,
            "RSA" => {
                let modulus = base64_member(&key_id, object, "n")?;
                let exponent = base64_member(&key_id, object, "e")?;
                PublicKeyInfo::rsa(&modulus, &exponent)
            }
            other => return Err(JwtError::UnsupportedKeyType(other.to_owned())),
        };
        check_key(&key_id, &info)?;
        Ok(Self {
            public_key: info.to_spki_der(),
            key_id,
        })
    }

    /// Writes the key as a JWK with `kty`, `kid`, the public key members and, if given,
    /// `use`. Private members and `alg` are never written.
    ///
    /// A key whose `public_key` does not parse gives only `kid` and `use`.
    pub fn to_jwk(&self, use_: Option<&str>) -> Value {
        let mut object = Map::new();
        if let Some(use_) = use_ {
            object.insert("use".into(), use_.into());
        }
        if let Some(info) = PublicKeyInfo::from_spki_der(&self.public_key) {
            object.extend(jwk_key_members(&info));
        }
        object.insert("kid".into(), self.key_id.clone().into());
        Value::Object(object)
    }

    /// Verifies `signature` over `message` with this key, which must fit `algorithm`.
    pub(crate) fn verify(
        &self,
        algorithm: JwtAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), JwtError> {
        let mismatch = || JwtError::KeyAlgorithmMismatch {
            key_id: self.key_id.clone(),
            algorithm,
        };
        let info = PublicKeyInfo::from_spki_der(&self.public_key).ok_or_else(mismatch)?;
        let (verifier, key) = verification_algorithm(algorithm, &info).ok_or_else(mismatch)?;
        UnparsedPublicKey::new(verifier, key)
            .verify(message, signature)
            .map_err(|_| JwtError::InvalidSignature(self.key_id.clone()))
    }
}

/// Returns the JWK members `kty` and `crv`/`x`/`y` or `n`/`e` for a key.
pub(crate) fn jwk_key_members(info: &PublicKeyInfo) -> Map<String, Value> {
    let encode = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
    let members = match info {
        PublicKeyInfo::Ec { curve, point } => {
            let (x, y) = point[1..].split_at(curve.coordinate_len());
            json!({"kty": "EC", "crv": curve.jwk_name(), "x": encode(x), "y": encode(y)})
        }
        PublicKeyInfo::Rsa {
            modulus, exponent, ..
        } => json!({"kty": "RSA", "n": encode(modulus), "e": encode(exponent)}),
    };
    match members {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Picks the aws-lc-rs verifier and key bytes for `algorithm`, or `None` when the key type
/// or curve does not fit it.
fn verification_algorithm(
    algorithm: JwtAlgorithm,
    info: &PublicKeyInfo,
) -> Option<(&'static dyn VerificationAlgorithm, &[u8])> {
    use JwtAlgorithm as A;
    let verifier: &'static dyn VerificationAlgorithm = match (algorithm, info) {
        (
            A::ES256,
            PublicKeyInfo::Ec {
                curve: Curve::P256, ..
            },
        ) => &signature::ECDSA_P256_SHA256_FIXED,
        (
            A::ES384,
            PublicKeyInfo::Ec {
                curve: Curve::P384, ..
            },
        ) => &signature::ECDSA_P384_SHA384_FIXED,
        (
            A::ES512,
            PublicKeyInfo::Ec {
                curve: Curve::P521, ..
            },
        ) => &signature::ECDSA_P521_SHA512_FIXED,
        (A::RS256, PublicKeyInfo::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (A::RS384, PublicKeyInfo::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (A::RS512, PublicKeyInfo::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (A::PS256, PublicKeyInfo::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA256,
        (A::PS384, PublicKeyInfo::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA384,
        (A::PS512, PublicKeyInfo::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    };
    let key = match info {
        PublicKeyInfo::Ec { point, .. } => point.as_slice(),
        PublicKeyInfo::Rsa { pkcs1, .. } => pkcs1.as_slice(),
    };
    Some((verifier, key))
}

/// Checks that aws-lc-rs accepts the key: an EC point on its curve, or an RSA key of
/// 2048 to 8192 bits.
fn check_key(key_id: &str, info: &PublicKeyInfo) -> Result<(), JwtError> {
    let algorithm = match info {
        PublicKeyInfo::Ec {
            curve: Curve::P256, ..
        } => JwtAlgorithm::ES256,
        PublicKeyInfo::Ec {
            curve: Curve::P384, ..
        } => JwtAlgorithm::ES384,
        PublicKeyInfo::Ec {
            curve: Curve::P521, ..
        } => JwtAlgorithm::ES512,
        PublicKeyInfo::Rsa { .. } => JwtAlgorithm::RS256,
    };
    let (verifier, key) = verification_algorithm(algorithm, info)
        .ok_or_else(|| malformed(key_id, "unsupported key"))?;
    ParsedPublicKey::new(verifier, key)
        .map(|_| ())
        .map_err(|e| malformed(key_id, &format!("key rejected: {e}")))
}

fn ec_key(key_id: &str, object: &Map<String, Value>) -> Result<PublicKeyInfo, JwtError> {
    let crv = string_member(key_id, object, "crv")?;
    let curve = Curve::from_jwk_name(crv)
        .ok_or_else(|| malformed(key_id, &format!("curve {crv:?} is not supported")))?;
    let x = base64_member(key_id, object, "x")?;
    let y = base64_member(key_id, object, "y")?;
    let len = curve.coordinate_len();
    if x.len() != len || y.len() != len {
        return Err(malformed(
            key_id,
            &format!("{crv} coordinates must be {len} bytes"),
        ));
    }
    let point = [&[4u8][..], &x, &y].concat();
    Ok(PublicKeyInfo::Ec { curve, point })
}

/// Returns the non-empty `kid` of a JWK.
pub(crate) fn jwk_key_id(object: &Map<String, Value>) -> Result<String, JwtError> {
    match object.get("kid") {
        None => Err(JwtError::JwkMissingKeyId),
        Some(Value::String(kid)) if kid.is_empty() => Err(JwtError::JwkMissingKeyId),
        Some(Value::String(kid)) => Ok(kid.clone()),
        Some(_) => Err(malformed("", "kid is not a string")),
    }
}

fn string_member<'a>(
    key_id: &str,
    object: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, JwtError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(key_id, &format!("{name} is missing or not a string")))
}

fn base64_member(
    key_id: &str,
    object: &Map<String, Value>,
    name: &str,
) -> Result<Vec<u8>, JwtError> {
    let text = string_member(key_id, object, name)?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| malformed(key_id, &format!("{name} is not unpadded base64url")))
}

fn malformed(key_id: &str, reason: &str) -> JwtError {
    JwtError::MalformedJwk {
        key_id: key_id.to_owned(),
        reason: reason.to_owned(),
    }
}
