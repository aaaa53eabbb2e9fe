//! Private keys: generation, PKCS#8 import and export, and certificate signing.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use zeroize::Zeroizing;

use crate::CaError;
use crate::der::signature_algorithm;

/// A key algorithm and size, spelled as SPIRE's `ca_key_type` and `jwt_key_type` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
}

impl KeyType {
    /// Every key type.
    pub const ALL: [Self; 4] = [Self::EcP256, Self::EcP384, Self::Rsa2048, Self::Rsa4096];

    /// Returns the SPIRE spelling: `ec-p256`, `ec-p384`, `rsa-2048` or `rsa-4096`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// Returns whether this is an RSA key type.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa4096)
    }

    /// Returns the ECDSA signing algorithm with DER (ASN.1) signatures, for EC key types.
    pub(crate) fn ecdsa_asn1(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            Self::EcP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
            Self::EcP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
            Self::Rsa2048 | Self::Rsa4096 => None,
        }
    }

    fn rsa_modulus_len(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(256),
            Self::Rsa4096 => Some(512),
            Self::EcP256 | Self::EcP384 => None,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = CaError;

    /// Parses the exact SPIRE spelling, such as `ec-p256`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| CaError::UnknownKeyType(s.to_owned()))
    }
}

/// The parsed key, ready to sign.
enum KeyPair {
    /// An ECDSA key pair producing DER signatures, as X.509 and PKCS#10 need.
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private key of one of the [`KeyType`]s.
///
/// The PKCS#8 bytes are zeroized on drop, and `Debug` prints only the key type.
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    pair: KeyPair,
    spki: Vec<u8>,
}

impl PrivateKey {
    /// Generates a new key.
    ///
    /// # Errors
    /// Returns [`CaError::KeyGeneration`] when the crypto library fails.
    pub fn generate(key_type: KeyType) -> Result<Self, CaError> {
        let failed = |_| CaError::KeyGeneration(key_type);
        let pkcs8 = match key_type.ecdsa_asn1() {
            Some(algorithm) => {
                let document = EcdsaKeyPair::generate_pkcs8(algorithm, &SystemRandom::new())
                    .map_err(failed)?;
                Zeroizing::new(document.as_ref().to_vec())
            }
            None => {
                let size = match key_type {
                    KeyType::Rsa4096 => KeySize::Rsa4096,
                    _ => KeySize::Rsa2048,
                };
                let pair = RsaKeyPair::generate(size).map_err(failed)?;
                let der: Pkcs8V1Der<'static> = pair.as_der().map_err(failed)?;
                Zeroizing::new(der.as_ref().to_vec())
            }
        };
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Parses an unencrypted PKCS#8 private key and detects its type.
    ///
    /// # Errors
    /// Returns [`CaError::InvalidPrivateKey`] for malformed DER and for keys other than EC
    /// P-256, EC P-384, RSA 2048 and RSA 4096.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CaError> {
        let (key_type, pair) = parse_pkcs8(der)?;
        let spki = match &pair {
            KeyPair::Ec(pair) => spki_der(pair.public_key().as_der()),
            KeyPair::Rsa(pair) => spki_der(pair.public_key().as_der()),
        }?;
        Ok(Self {
            key_type,
            pkcs8: Zeroizing::new(der.to_vec()),
            pair,
            spki,
        })
    }

    /// Returns the key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Returns the public key as DER SubjectPublicKeyInfo.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// Returns the unencrypted PKCS#8 DER. Never log it.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub(crate) fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// Returns the subjectPublicKey BIT STRING content: the uncompressed EC point or the
    /// PKCS#1 RSAPublicKey DER.
    pub(crate) fn public_key_bits(&self) -> &[u8] {
        match &self.pair {
            KeyPair::Ec(pair) => pair.public_key().as_ref(),
            KeyPair::Rsa(pair) => pair.public_key().as_ref(),
        }
    }

    /// Returns the DER AlgorithmIdentifier of [`Self::sign_x509`] signatures:
    /// ecdsa-with-SHA256 for P-256, ecdsa-with-SHA384 for P-384, sha256WithRSAEncryption for RSA.
    pub(crate) fn signature_algorithm_der(&self) -> &'static [u8] {
        match self.key_type {
            KeyType::EcP256 => signature_algorithm::ECDSA_SHA256,
            KeyType::EcP384 => signature_algorithm::ECDSA_SHA384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => signature_algorithm::RSA_PKCS1_SHA256,
        }
    }

    /// Signs `message` for an X.509 or PKCS#10 structure: DER ECDSA signatures, or
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    pub(crate) fn sign_x509(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = SystemRandom::new();
        match &self.pair {
            KeyPair::Ec(pair) => pair
                .sign(&rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| CaError::Signing),
            KeyPair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| CaError::Signing)?;
                Ok(signature)
            }
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

fn parse_pkcs8(der: &[u8]) -> Result<(KeyType, KeyPair), CaError> {
    for key_type in [KeyType::EcP256, KeyType::EcP384] {
        let Some(algorithm) = key_type.ecdsa_asn1() else {
            continue;
        };
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(algorithm, der) {
            return Ok((key_type, KeyPair::Ec(pair)));
        }
    }
    let pair = RsaKeyPair::from_pkcs8(der).map_err(|_| {
        CaError::InvalidPrivateKey(
            "not an unencrypted PKCS#8 EC P-256, EC P-384 or RSA key".to_owned(),
        )
    })?;
    let modulus_len = pair.public_modulus_len();
    let key_type = [KeyType::Rsa2048, KeyType::Rsa4096]
        .into_iter()
        .find(|t| t.rsa_modulus_len() == Some(modulus_len))
        .ok_or_else(|| {
            CaError::InvalidPrivateKey(format!(
                "RSA modulus has {} bits; only 2048 and 4096 are supported",
                modulus_len * 8
            ))
        })?;
    Ok((key_type, KeyPair::Rsa(pair)))
}

fn spki_der(
    der: Result<PublicKeyX509Der<'static>, aws_lc_rs::error::Unspecified>,
) -> Result<Vec<u8>, CaError> {
    der.map(|der| der.as_ref().to_vec())
        .map_err(|_| CaError::InvalidPrivateKey("cannot encode the public key".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_round_trips_spire_names() {
        for key_type in KeyType::ALL {
            let name = key_type.to_string();
            assert_eq!(name.parse::<KeyType>().unwrap(), key_type);
        }
        assert_eq!(KeyType::EcP256.to_string(), "ec-p256");
        assert_eq!(KeyType::Rsa4096.to_string(), "rsa-4096");
    }

    #[test]
    fn key_type_rejects_other_spellings() {
        for name in ["EC-P256", "ec-p521", "rsa-3072", "", "ecp256"] {
            assert!(name.parse::<KeyType>().is_err(), "{name:?} parsed");
        }
    }

    #[test]
    fn debug_hides_key_material() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let printed = format!("{key:?}");
        assert_eq!(printed, "PrivateKey { key_type: EcP256, .. }");
    }
}
