//! The public keys this CA certifies: EC P-256 and P-384 keys as uncompressed points, and RSA
//! keys of 2048 to 8192 bits, each in DER SubjectPublicKeyInfo form.
//!
//! Limit: the checks are structural, so an EC point is not checked to lie on its curve. A
//! CSR's key passes that check when its signature verifies, and a certificate for an invalid
//! key is useless to anyone, because no private key matches it. EC P-521 and Ed25519 keys
//! are rejected although the SPIFFE standards allow them.

use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::CaError;
use crate::der::{DerWriter, TAG_BIT_STRING, TAG_SEQUENCE, key_algorithm};

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// Parses DER SubjectPublicKeyInfo with no trailing bytes and applies [`check_public_key`].
pub(crate) fn parse_spki(der: &[u8]) -> Result<SubjectPublicKeyInfo<'_>, CaError> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| {
        CaError::UnsupportedPublicKey(format!("malformed SubjectPublicKeyInfo: {e}"))
    })?;
    if !rest.is_empty() {
        return Err(CaError::UnsupportedPublicKey(
            "trailing bytes after SubjectPublicKeyInfo".to_owned(),
        ));
    }
    check_public_key(&spki)?;
    Ok(spki)
}

/// Checks that a key is one this CA certifies and that its encoding is DER; see the module
/// docs.
pub(crate) fn check_public_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), CaError> {
    let algorithm = &spki.algorithm.algorithm;
    let canonical = if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        canonical_ec_key(spki)?
    } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
        canonical_rsa_key(spki)?
    } else {
        return Err(CaError::UnsupportedPublicKey(format!(
            "key algorithm {algorithm} is neither id-ecPublicKey nor rsaEncryption"
        )));
    };
    // x509-parser accepts some non-DER encodings, such as other tag classes. The key is
    // copied into certificates as is, so it must be exactly the DER encoding.
    if canonical != spki.raw {
        return Err(CaError::UnsupportedPublicKey(
            "SubjectPublicKeyInfo is not in DER form".to_owned(),
        ));
    }
    Ok(())
}

/// Returns the DER encoding of a P-256 or P-384 key.
fn canonical_ec_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, CaError> {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .ok_or_else(|| CaError::UnsupportedPublicKey("EC key names no curve".to_owned()))?;
    let (algorithm, coordinate_len) = if curve == OID_EC_P256 {
        (key_algorithm::EC_P256, 32)
    } else if curve == OID_NIST_EC_P384 {
        (key_algorithm::EC_P384, 48)
    } else {
        return Err(CaError::UnsupportedPublicKey(format!(
            "EC curve {curve} is not P-256 or P-384"
        )));
    };
    let point = &spki.subject_public_key.data;
    if point.len() != 1 + 2 * coordinate_len || point[0] != 0x04 {
        return Err(CaError::UnsupportedPublicKey(
            "EC public key is not an uncompressed point of its curve".to_owned(),
        ));
    }
    let mut writer = DerWriter::with_capacity(spki.raw.len());
    writer.nested(TAG_SEQUENCE, |w| {
        w.raw(algorithm);
        w.bit_string(point);
    });
    Ok(writer.into_vec())
}

/// Returns the DER encoding of an RSA key with 2048 to 8192 bits.
fn canonical_rsa_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, CaError> {
    let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
        return Err(CaError::UnsupportedPublicKey(
            "malformed RSA public key".to_owned(),
        ));
    };
    let bits = significant_bits(rsa.modulus);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(CaError::UnsupportedPublicKey(format!(
            "RSA modulus has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are supported"
        )));
    }
    let mut writer = DerWriter::with_capacity(spki.raw.len());
    writer.nested(TAG_SEQUENCE, |w| {
        w.raw(key_algorithm::RSA);
        w.nested(TAG_BIT_STRING, |w| {
            w.raw(&[0]);
            w.nested(TAG_SEQUENCE, |w| {
                w.unsigned_integer(rsa.modulus);
                w.unsigned_integer(rsa.exponent);
            });
        });
    });
    Ok(writer.into_vec())
}

/// Returns the bit length of a big-endian unsigned integer.
fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        None => 0,
        Some(first) => (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyType, PrivateKey};

    #[test]
    fn accepts_every_generated_key_type() {
        for key_type in KeyType::ALL {
            let key = PrivateKey::generate(key_type).unwrap();
            let spki = key.public_key_spki_der();
            let parsed = parse_spki(&spki).unwrap_or_else(|e| panic!("{key_type}: {e}"));
            assert_eq!(parsed.raw, spki.as_slice());
        }
    }

    #[test]
    fn rejects_trailing_bytes_and_garbage() {
        let mut spki = PrivateKey::generate(KeyType::EcP256)
            .unwrap()
            .public_key_spki_der();
        spki.push(0);
        assert!(parse_spki(&spki).is_err());
        assert!(parse_spki(b"junk").is_err());
    }

    #[test]
    fn rejects_non_der_forms() {
        for key_type in [KeyType::EcP256, KeyType::Rsa2048] {
            let spki = PrivateKey::generate(key_type)
                .unwrap()
                .public_key_spki_der();
            for (index, bit) in [(0, 6), (0, 7), (2, 6)] {
                let mut changed = spki.clone();
                changed[index] ^= 1 << bit;
                assert!(
                    parse_spki(&changed).is_err(),
                    "{key_type}: byte {index} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn rejects_p521_and_ed25519() {
        let p521 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
        let err = parse_spki(&rcgen::PublicKeyData::subject_public_key_info(&p521)).unwrap_err();
        assert!(err.to_string().contains("not P-256 or P-384"), "{err}");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = parse_spki(&rcgen::PublicKeyData::subject_public_key_info(&ed)).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
    }

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01, 0xff]), 9);
        assert_eq!(significant_bits(&[0x00]), 0);
    }
}
