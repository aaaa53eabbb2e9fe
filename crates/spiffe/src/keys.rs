//! Public keys as SPIFFE uses them: EC P-256/P-384/P-521 and RSA, read from
//! SubjectPublicKeyInfo DER or PKCS#8 private keys, and written back as SPKI DER.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
    EcdsaKeyPair, KeyPair, RsaKeyPair,
};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::der::{strip_leading_zeros, tlv, unsigned_integer};

/// A NIST curve usable for JWT-SVID signatures and X.509-SVID keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// Returns the JWK `crv` name.
    pub(crate) fn jwk_name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    pub(crate) fn from_jwk_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            "P-521" => Some(Self::P521),
            _ => None,
        }
    }

    /// Returns the byte length of one coordinate.
    pub(crate) fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// Returns the DER encoding of the curve's OID.
    fn oid_der(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Self::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
        }
    }
}

const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const RSA_ENCRYPTION_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// A parsed public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKeyInfo {
    /// An EC key; `point` is the uncompressed SEC1 point `04 || x || y`.
    Ec { curve: Curve, point: Vec<u8> },
    /// An RSA key: modulus and exponent without leading zeros, and the PKCS#1
    /// RSAPublicKey DER that aws-lc-rs verifies with.
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
        pkcs1: Vec<u8>,
    },
}

impl PublicKeyInfo {
    /// Builds an RSA key from big-endian modulus and exponent.
    pub(crate) fn rsa(modulus: &[u8], exponent: &[u8]) -> Self {
        let body = [unsigned_integer(modulus), unsigned_integer(exponent)].concat();
        Self::Rsa {
            modulus: strip_leading_zeros(modulus).to_vec(),
            exponent: strip_leading_zeros(exponent).to_vec(),
            pkcs1: tlv(0x30, &body),
        }
    }

    /// Parses SubjectPublicKeyInfo DER; returns `None` for malformed input or other key types.
    pub(crate) fn from_spki_der(der: &[u8]) -> Option<Self> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).ok()?;
        if !rest.is_empty() {
            return None;
        }
        Self::from_spki(&spki)
    }

    /// Reads an x509-parser SPKI; returns `None` for key types SPIFFE does not use here.
    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Option<Self> {
        let algorithm = &spki.algorithm.algorithm;
        if *algorithm == OID_PKCS1_RSAENCRYPTION {
            let PublicKey::RSA(rsa) = spki.parsed().ok()? else {
                return None;
            };
            return Some(Self::rsa(rsa.modulus, rsa.exponent));
        }
        if *algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return None;
        }
        let curve_oid = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        let curve = if curve_oid == OID_EC_P256 {
            Curve::P256
        } else if curve_oid == OID_NIST_EC_P384 {
            Curve::P384
        } else if curve_oid == OID_NIST_EC_P521 {
            Curve::P521
        } else {
            return None;
        };
        let point = spki.subject_public_key.data.to_vec();
        (point.len() == 1 + 2 * curve.coordinate_len() && point[0] == 4)
            .then_some(Self::Ec { curve, point })
    }

    /// Encodes the key as SubjectPublicKeyInfo DER.
    pub(crate) fn to_spki_der(&self) -> Vec<u8> {
        let (algorithm, key) = match self {
            Self::Ec { curve, point } => {
                let alg = [EC_PUBLIC_KEY_OID, curve.oid_der()].concat();
                (tlv(0x30, &alg), point.as_slice())
            }
            Self::Rsa { pkcs1, .. } => {
                let alg = [RSA_ENCRYPTION_OID, &[0x05, 0x00]].concat();
                (tlv(0x30, &alg), pkcs1.as_slice())
            }
        };
        let bit_string = tlv(0x03, &[&[0u8], key].concat());
        tlv(0x30, &[algorithm, bit_string].concat())
    }

    /// Derives the public key of an unencrypted PKCS#8 private key.
    ///
    /// Returns `None` when the DER is malformed or contains a key type other than EC
    /// P-256/P-384/P-521 or RSA.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Option<Self> {
        let curves = [
            (Curve::P256, &ECDSA_P256_SHA256_ASN1_SIGNING),
            (Curve::P384, &ECDSA_P384_SHA384_ASN1_SIGNING),
            (Curve::P521, &ECDSA_P521_SHA512_ASN1_SIGNING),
        ];
        for (curve, alg) in curves {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der) {
                let point = pair.public_key().as_ref().to_vec();
                return Some(Self::Ec { curve, point });
            }
        }
        let pair = RsaKeyPair::from_pkcs8(der).ok()?;
        let pkcs1 = pair.public_key().as_ref();
        let spki = [tlv(0x30, &[RSA_ENCRYPTION_OID, &[0x05, 0x00]].concat()), {
            tlv(0x03, &[&[0u8], pkcs1].concat())
        }]
        .concat();
        Self::from_spki_der(&tlv(0x30, &spki))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_for_generated_keys() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            let info = PublicKeyInfo::from_spki_der(&spki).expect("supported key");
            assert_eq!(info.to_spki_der(), spki);
            let from_private = PublicKeyInfo::from_pkcs8(&key.serialize_der()).unwrap();
            assert_eq!(from_private, info);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(PublicKeyInfo::from_spki_der(b"junk"), None);
        assert_eq!(PublicKeyInfo::from_pkcs8(b"junk"), None);
    }
}
