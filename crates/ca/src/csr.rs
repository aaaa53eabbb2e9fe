//! PKCS#10 certificate signing requests.
//!
//! The CA takes only the public key from a CSR. Its subject and requested extensions (such
//! as basicConstraints cA=true) are ignored, because every certificate field comes from the
//! CA's own template.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::AlgorithmIdentifier;

use crate::der::{DerWriter, TAG_SEQUENCE, signature_algorithm};
use crate::public_key::check_public_key;
use crate::{CaError, KeyType, PrivateKey};

/// The parts of a verified CSR that the CA uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrInfo {
    /// The requested key as DER SubjectPublicKeyInfo, exactly as the CSR encodes it.
    pub public_key_spki_der: Vec<u8>,
}

/// Parses a DER PKCS#10 CSR, checks its key type and verifies its self-signature.
///
/// Accepted signature algorithms are ECDSA with SHA-256 or SHA-384 and RSASSA-PKCS1-v1_5
/// with SHA-256, SHA-384 or SHA-512. SHA-1 and RSASSA-PSS signatures are rejected. The key
/// must be EC P-256, EC P-384 or RSA with 2048 to 8192 bits. The request must be DER: the
/// parser tolerates some BER forms (such as other tag classes), so the parts outside the
/// signed request info are checked against their DER encoding.
///
/// # Errors
/// Returns [`CaError::InvalidCsr`] for malformed or non-DER input, trailing bytes, a
/// version other than v1, a rejected signature algorithm or a signature that does not
/// verify, and [`CaError::UnsupportedPublicKey`] for other key types.
pub fn parse_csr(der: &[u8]) -> Result<CsrInfo, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::InvalidCsr(format!("malformed DER: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::InvalidCsr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CaError::InvalidCsr(format!(
            "version {} is not v1 (0)",
            info.version.0
        )));
    }
    check_public_key(&info.subject_pki)?;
    let algorithm_der = allowed_signature_algorithm(&csr.signature_algorithm)?;
    let mut expected = DerWriter::with_capacity(der.len());
    expected.nested(TAG_SEQUENCE, |w| {
        w.raw(info.raw);
        w.raw(algorithm_der);
        w.bit_string(&csr.signature_value.data);
    });
    if expected.into_vec() != der {
        return Err(CaError::InvalidCsr(
            "the request is not in DER form".to_owned(),
        ));
    }
    csr.verify_signature().map_err(|_| {
        CaError::InvalidCsr("signature does not verify with the request's public key".to_owned())
    })?;
    Ok(CsrInfo {
        public_key_spki_der: info.subject_pki.raw.to_vec(),
    })
}

/// Returns the DER AlgorithmIdentifier of an allowed CSR signature algorithm.
fn allowed_signature_algorithm(
    algorithm: &AlgorithmIdentifier<'_>,
) -> Result<&'static [u8], CaError> {
    let oid = &algorithm.algorithm;
    let allowed = [
        (OID_SIG_ECDSA_WITH_SHA256, signature_algorithm::ECDSA_SHA256),
        (OID_SIG_ECDSA_WITH_SHA384, signature_algorithm::ECDSA_SHA384),
        (
            OID_PKCS1_SHA256WITHRSA,
            signature_algorithm::RSA_PKCS1_SHA256,
        ),
        (
            OID_PKCS1_SHA384WITHRSA,
            signature_algorithm::RSA_PKCS1_SHA384,
        ),
        (
            OID_PKCS1_SHA512WITHRSA,
            signature_algorithm::RSA_PKCS1_SHA512,
        ),
    ];
    allowed
        .into_iter()
        .find(|(allowed_oid, _)| allowed_oid == oid)
        .map(|(_, der)| der)
        .ok_or_else(|| CaError::InvalidCsr(format!("signature algorithm {oid} is not allowed")))
}

/// Builds a DER PKCS#10 CSR for `key` with an empty subject and no attributes, signed with
/// ECDSA (SHA-256 for P-256, SHA-384 for P-384) or RSASSA-PKCS1-v1_5 with SHA-256.
///
/// # Errors
/// Returns [`CaError::Signing`] when signing fails.
pub fn build_csr(key: &PrivateKey) -> Result<Vec<u8>, CaError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&CsrSigner(key))
        .map_err(|_| CaError::Signing)?;
    Ok(csr.der().to_vec())
}

/// Lets rcgen sign with a [`PrivateKey`] without copying the key.
struct CsrSigner<'a>(&'a PrivateKey);

impl rcgen::PublicKeyData for CsrSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_bits()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.0.key_type() {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for CsrSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign_x509(message)
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}
