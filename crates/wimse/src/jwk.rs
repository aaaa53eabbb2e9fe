//! Public JWKs (RFC 7517) for EC, RSA and Ed25519 keys, and private signing keys, all on
//! aws-lc-rs.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair,
    ParsedPublicKey, RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::{JwsAlgorithm, WimseError};

/// JWK members that carry private key material (RFC 7518 sections 6.2.2, 6.3.2 and
/// RFC 8037 section 2). A public JWK containing one would publish the private key.
const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "r"];

/// RSA keys shorter than this are rejected, the minimum aws-lc-rs verifies with.
const MIN_RSA_MODULUS_BITS: usize = 2048;
/// RSA keys longer than this are rejected, the maximum aws-lc-rs verifies with.
const MAX_RSA_MODULUS_BITS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    fn algorithm(self) -> JwsAlgorithm {
        match self {
            Self::P256 => JwsAlgorithm::ES256,
            Self::P384 => JwsAlgorithm::ES384,
            Self::P521 => JwsAlgorithm::ES512,
        }
    }
}

/// The key material of a public JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKeyMaterial {
    /// `point` is the uncompressed SEC1 point `04 || x || y`.
    Ec { curve: Curve, point: Vec<u8> },
    /// Big-endian modulus and exponent without leading zeros.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// The 32-byte Ed25519 public key.
    Ed25519 { public: Vec<u8> },
}

/// A public key as a JWK, with its optional `alg` and `kid`.
///
/// Only the members this crate understands are kept: `kty`, `crv`, `x`, `y`, `n`, `e`,
/// `alg` and `kid`. Other public members such as `use` are dropped when parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    material: PublicKeyMaterial,
    algorithm: Option<JwsAlgorithm>,
    key_id: Option<String>,
}

impl PublicJwk {
    /// Parses a public JWK: `kty` EC with `crv` P-256, P-384 or P-521, `kty` RSA with a
    /// 2048- to 8192-bit modulus, or `kty` OKP with `crv` Ed25519.
    ///
    /// # Errors
    /// Returns [`WimseError::InvalidJwk`] when the value is not such a key, contains a
    /// private key member, has an `alg` that this crate does not support, or has an `alg`
    /// that does not fit the key type.
    pub fn from_json(value: &Value) -> Result<Self, WimseError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("not a JSON object"))?;
        if let Some(name) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
            return Err(invalid(&format!(
                "contains the private key member {name:?}"
            )));
        }
        let material = match string_member(object, "kty")? {
            "EC" => ec_material(object)?,
            "RSA" => rsa_material(object)?,
            "OKP" => okp_material(object)?,
            other => return Err(invalid(&format!("key type {other:?} is not supported"))),
        };
        let key_id = match object.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(invalid("kid is not a string")),
        };
        let algorithm = match object.get("alg") {
            None => None,
            Some(Value::String(alg)) => Some(
                alg.parse::<JwsAlgorithm>()
                    .map_err(|_| invalid(&format!("alg {alg:?} is not supported")))?,
            ),
            Some(_) => return Err(invalid("alg is not a string")),
        };
        let jwk = Self {
            material,
            algorithm: None,
            key_id,
        };
        match algorithm {
            Some(algorithm) => jwk.with_algorithm(algorithm),
            None => Ok(jwk),
        }
    }

    /// Writes the JWK with `kty`, the key members, and `alg` and `kid` when set.
    pub fn to_json(&self) -> Value {
        let encode = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
        let mut object = Map::new();
        match &self.material {
            PublicKeyMaterial::Ec { curve, point } => {
                let (x, y) = point[1..].split_at(curve.coordinate_len());
                object.insert("kty".into(), "EC".into());
                object.insert("crv".into(), curve.name().into());
                object.insert("x".into(), encode(x));
                object.insert("y".into(), encode(y));
            }
            PublicKeyMaterial::Rsa { modulus, exponent } => {
                object.insert("kty".into(), "RSA".into());
                object.insert("n".into(), encode(modulus));
                object.insert("e".into(), encode(exponent));
            }
            PublicKeyMaterial::Ed25519 { public } => {
                object.insert("kty".into(), "OKP".into());
                object.insert("crv".into(), "Ed25519".into());
                object.insert("x".into(), encode(public));
            }
        }
        if let Some(algorithm) = self.algorithm {
            object.insert("alg".into(), algorithm.as_str().into());
        }
        if let Some(key_id) = &self.key_id {
            object.insert("kid".into(), key_id.clone().into());
        }
        Value::Object(object)
    }

    /// Returns the `alg` member.
    pub fn algorithm(&self) -> Option<JwsAlgorithm> {
        self.algorithm
    }

    /// Returns the `kid` member.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Sets `alg`.
    ///
    /// # Errors
    /// Returns [`WimseError::InvalidJwk`] when `algorithm` does not fit the key type or
    /// curve.
    pub fn with_algorithm(mut self, algorithm: JwsAlgorithm) -> Result<Self, WimseError> {
        if !self.fits(algorithm) {
            return Err(invalid(&format!(
                "alg {algorithm} does not fit a {} key",
                self.describe()
            )));
        }
        self.algorithm = Some(algorithm);
        Ok(self)
    }

    /// Sets `kid`.
    #[must_use]
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Returns whether both JWKs hold the same public key, ignoring `alg` and `kid`.
    pub fn same_key(&self, other: &Self) -> bool {
        self.material == other.material
    }

    /// Returns whether `algorithm` can sign with this key type and curve.
    pub fn fits(&self, algorithm: JwsAlgorithm) -> bool {
        use JwsAlgorithm as A;
        match &self.material {
            PublicKeyMaterial::Ec { curve, .. } => curve.algorithm() == algorithm,
            PublicKeyMaterial::Rsa { .. } => matches!(
                algorithm,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            PublicKeyMaterial::Ed25519 { .. } => algorithm == A::EdDSA,
        }
    }

    /// Verifies a JWS `signature` over `message` made with `algorithm`.
    pub(crate) fn verify(
        &self,
        algorithm: JwsAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureRejected> {
        if !self.fits(algorithm) {
            return Err(SignatureRejected::KeyMismatch);
        }
        let verified = match &self.material {
            PublicKeyMaterial::Ec { point, .. } => {
                UnparsedPublicKey::new(verifier(algorithm), point).verify(message, signature)
            }
            PublicKeyMaterial::Rsa { modulus, exponent } => RsaPublicKeyComponents {
                n: modulus,
                e: exponent,
            }
            .verify(rsa_parameters(algorithm), message, signature),
            PublicKeyMaterial::Ed25519 { public } => {
                UnparsedPublicKey::new(&signature::ED25519, public).verify(message, signature)
            }
        };
        verified.map_err(|_| SignatureRejected::Invalid)
    }

    fn describe(&self) -> &'static str {
        match &self.material {
            PublicKeyMaterial::Ec { curve, .. } => curve.name(),
            PublicKeyMaterial::Rsa { .. } => "RSA",
            PublicKeyMaterial::Ed25519 { .. } => "Ed25519",
        }
    }
}

/// The reason a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureRejected {
    /// The algorithm does not fit the key type or curve.
    KeyMismatch,
    /// The signature is wrong.
    Invalid,
}

fn verifier(algorithm: JwsAlgorithm) -> &'static dyn VerificationAlgorithm {
    match algorithm {
        JwsAlgorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        JwsAlgorithm::ES512 => &signature::ECDSA_P521_SHA512_FIXED,
        _ => &signature::ECDSA_P256_SHA256_FIXED,
    }
}

fn rsa_parameters(algorithm: JwsAlgorithm) -> &'static signature::RsaParameters {
    match algorithm {
        JwsAlgorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        JwsAlgorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        JwsAlgorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        JwsAlgorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        JwsAlgorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn ec_material(object: &Map<String, Value>) -> Result<PublicKeyMaterial, WimseError> {
    let curve = match string_member(object, "crv")? {
        "P-256" => Curve::P256,
        "P-384" => Curve::P384,
        "P-521" => Curve::P521,
        other => return Err(invalid(&format!("EC curve {other:?} is not supported"))),
    };
    let x = base64_member(object, "x")?;
    let y = base64_member(object, "y")?;
    let len = curve.coordinate_len();
    if x.len() != len || y.len() != len {
        return Err(invalid(&format!(
            "{} coordinates must be {len} bytes",
            curve.name()
        )));
    }
    let point = [&[4u8][..], &x, &y].concat();
    ParsedPublicKey::new(verifier(curve.algorithm()), &point)
        .map_err(|_| invalid("the EC point is not on its curve"))?;
    Ok(PublicKeyMaterial::Ec { curve, point })
}

fn rsa_material(object: &Map<String, Value>) -> Result<PublicKeyMaterial, WimseError> {
    let modulus = strip_leading_zeros(&base64_member(object, "n")?).to_vec();
    let exponent = strip_leading_zeros(&base64_member(object, "e")?).to_vec();
    let bits = modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros() as usize);
    if !(MIN_RSA_MODULUS_BITS..=MAX_RSA_MODULUS_BITS).contains(&bits) {
        return Err(invalid(&format!(
            "RSA modulus has {bits} bits, expected {MIN_RSA_MODULUS_BITS} to {MAX_RSA_MODULUS_BITS}"
        )));
    }
    if exponent.is_empty() {
        return Err(invalid("RSA exponent is zero"));
    }
    Ok(PublicKeyMaterial::Rsa { modulus, exponent })
}

fn okp_material(object: &Map<String, Value>) -> Result<PublicKeyMaterial, WimseError> {
    let crv = string_member(object, "crv")?;
    if crv != "Ed25519" {
        return Err(invalid(&format!("OKP curve {crv:?} is not supported")));
    }
    let public = base64_member(object, "x")?;
    if public.len() != 32 {
        return Err(invalid("Ed25519 x must be 32 bytes"));
    }
    Ok(PublicKeyMaterial::Ed25519 { public })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn string_member<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, WimseError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{name} is missing or not a string")))
}

fn base64_member(object: &Map<String, Value>, name: &str) -> Result<Vec<u8>, WimseError> {
    URL_SAFE_NO_PAD
        .decode(string_member(object, name)?)
        .map_err(|_| invalid(&format!("{name} is not unpadded base64url")))
}

fn invalid(reason: &str) -> WimseError {
    WimseError::InvalidJwk(reason.to_owned())
}

enum KeyPairKind {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private key that signs JWS tokens with one algorithm: an Identity Server key signing
/// WITs, or a workload key signing WPTs.
pub struct SigningKey {
    algorithm: JwsAlgorithm,
    key_id: Option<String>,
    pair: KeyPairKind,
}

impl SigningKey {
    /// Generates a key for `algorithm`: the matching NIST curve for ES*, a 2048-bit RSA
    /// key for RS* and PS*, and an Ed25519 key for EdDSA.
    ///
    /// # Errors
    /// Returns [`WimseError::KeyGeneration`] when the crypto library fails.
    pub fn generate(algorithm: JwsAlgorithm) -> Result<Self, WimseError> {
        let pair = match ecdsa_signing(algorithm) {
            Some(ecdsa) => KeyPairKind::Ecdsa(
                EcdsaKeyPair::generate(ecdsa).map_err(|_| WimseError::KeyGeneration)?,
            ),
            None if algorithm == JwsAlgorithm::EdDSA => KeyPairKind::Ed25519(
                Ed25519KeyPair::generate().map_err(|_| WimseError::KeyGeneration)?,
            ),
            None => KeyPairKind::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| WimseError::KeyGeneration)?,
            ),
        };
        Ok(Self {
            algorithm,
            key_id: None,
            pair,
        })
    }

    /// Loads an unencrypted PKCS#8 private key to sign with `algorithm`.
    ///
    /// # Errors
    /// Returns [`WimseError::InvalidPrivateKey`] when the DER is not a key of the type and
    /// curve `algorithm` needs.
    pub fn from_pkcs8(algorithm: JwsAlgorithm, der: &[u8]) -> Result<Self, WimseError> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| {
            WimseError::InvalidPrivateKey(format!("not a PKCS#8 key for {algorithm}: {e}"))
        };
        let pair = match ecdsa_signing(algorithm) {
            Some(ecdsa) => {
                KeyPairKind::Ecdsa(EcdsaKeyPair::from_pkcs8(ecdsa, der).map_err(rejected)?)
            }
            None if algorithm == JwsAlgorithm::EdDSA => {
                KeyPairKind::Ed25519(Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?)
            }
            None => KeyPairKind::Rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?),
        };
        Ok(Self {
            algorithm,
            key_id: None,
            pair,
        })
    }

    /// Sets the key ID written as the JOSE header `kid` and the JWK `kid`.
    #[must_use]
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Returns the signing algorithm.
    pub fn algorithm(&self) -> JwsAlgorithm {
        self.algorithm
    }

    /// Returns the key ID.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Returns the public key as a JWK with `alg` and, when set, `kid`.
    pub fn public_jwk(&self) -> PublicJwk {
        let material = match &self.pair {
            KeyPairKind::Ecdsa(pair) => {
                let curve = match self.algorithm {
                    JwsAlgorithm::ES384 => Curve::P384,
                    JwsAlgorithm::ES512 => Curve::P521,
                    _ => Curve::P256,
                };
                PublicKeyMaterial::Ec {
                    curve,
                    point: pair.public_key().as_ref().to_vec(),
                }
            }
            KeyPairKind::Rsa(pair) => PublicKeyMaterial::Rsa {
                modulus: pair
                    .public_key()
                    .modulus()
                    .big_endian_without_leading_zero()
                    .to_vec(),
                exponent: pair
                    .public_key()
                    .exponent()
                    .big_endian_without_leading_zero()
                    .to_vec(),
            },
            KeyPairKind::Ed25519(pair) => PublicKeyMaterial::Ed25519 {
                public: pair.public_key().as_ref().to_vec(),
            },
        };
        PublicJwk {
            material,
            algorithm: Some(self.algorithm),
            key_id: self.key_id.clone(),
        }
    }

    /// Signs `header` and `claims` as a compact JWS exactly as given, with no check of
    /// either. [`crate::issue_wit`] and [`crate::create_wpt`] build valid tokens; this is
    /// for other JWS uses and for building invalid tokens in tests.
    ///
    /// # Errors
    /// Returns [`WimseError::Signing`] when the crypto library fails.
    pub fn sign_compact(&self, header: &Value, claims: &Value) -> Result<String, WimseError> {
        let signing_input = crate::jose::signing_input(header, claims);
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(twid_spiffe::assemble(&signing_input, &signature))
    }

    /// Signs `message` and returns the JWS signature bytes.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, WimseError> {
        let rng = SystemRandom::new();
        match &self.pair {
            KeyPairKind::Ecdsa(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| WimseError::Signing),
            KeyPairKind::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            KeyPairKind::Rsa(pair) => {
                let encoding: &'static dyn signature::RsaEncoding = match self.algorithm {
                    JwsAlgorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    JwsAlgorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    JwsAlgorithm::PS256 => &signature::RSA_PSS_SHA256,
                    JwsAlgorithm::PS384 => &signature::RSA_PSS_SHA384,
                    JwsAlgorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(encoding, &rng, message, &mut signature)
                    .map_err(|_| WimseError::Signing)?;
                Ok(signature)
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn ecdsa_signing(algorithm: JwsAlgorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match algorithm {
        JwsAlgorithm::ES256 => Some(&ECDSA_P256_SHA256_FIXED_SIGNING),
        JwsAlgorithm::ES384 => Some(&ECDSA_P384_SHA384_FIXED_SIGNING),
        JwsAlgorithm::ES512 => Some(&ECDSA_P521_SHA512_FIXED_SIGNING),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_signs_and_verifies() {
        for algorithm in JwsAlgorithm::ALL {
            let key = SigningKey::generate(algorithm).unwrap();
            let jwk = PublicJwk::from_json(&key.public_jwk().to_json()).unwrap();
            assert_eq!(jwk.algorithm(), Some(algorithm));
            let signature = key.sign(b"message").unwrap();
            assert_eq!(jwk.verify(algorithm, b"message", &signature), Ok(()));
            assert_eq!(
                jwk.verify(algorithm, b"other", &signature),
                Err(SignatureRejected::Invalid),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn private_members_are_rejected() {
        let key = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
        let mut json = key.public_jwk().to_json();
        json["d"] = "AAAA".into();
        let err = PublicJwk::from_json(&json).unwrap_err();
        assert!(err.to_string().contains("private key member"), "{err}");
    }

    #[test]
    fn mismatched_alg_is_rejected() {
        let key = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
        let mut json = key.public_jwk().to_json();
        json["alg"] = "ES384".into();
        assert!(PublicJwk::from_json(&json).is_err());
        json["alg"] = "HS256".into();
        assert!(PublicJwk::from_json(&json).is_err());
        json["alg"] = "none".into();
        assert!(PublicJwk::from_json(&json).is_err());
    }
}
