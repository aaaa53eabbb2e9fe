//! The Nitro certificate chain: the document's `certificate`, issued by the last `cabundle`
//! entry, and so on back to `cabundle[0]`, the root. AWS signs every link with ECDSA.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA384_ASN1, ECDSA_P384_SHA256_ASN1, ECDSA_P384_SHA384_ASN1,
    EcdsaVerificationAlgorithm, UnparsedPublicKey,
};

use crate::VerifyError;
use crate::roots::{TrustAnchors, sha256};
use crate::snp::certs::{Cert, check_validity, describe, parse_cert, same_algorithm};

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// The outcome of a verified chain.
pub(crate) struct VerifiedChain {
    /// The leaf's public key as an uncompressed P-384 point.
    pub(crate) leaf_key: Vec<u8>,
    pub(crate) leaf_cn: String,
    /// The earliest notAfter (Unix seconds) of the certificates checked.
    pub(crate) valid_until: i64,
}

pub(crate) fn verify_chain(
    certificate: &[u8],
    cabundle: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<VerifiedChain, VerifyError> {
    let mut path = vec![parse_cert(certificate, "Nitro document certificate")?];
    for (index, der) in cabundle.iter().enumerate().rev() {
        path.push(parse_cert(der, &format!("Nitro cabundle[{index}]"))?);
    }

    for pair in path.windows(2) {
        let [child, parent] = pair else { continue };
        if child.x509.issuer().as_raw() != parent.x509.subject().as_raw() {
            return Err(VerifyError::chain(format!(
                "{} names issuer {} but the next certificate in the cabundle is {}",
                describe(child),
                child.x509.issuer(),
                describe(parent)
            )));
        }
        check_ca(parent)?;
        check_ecdsa_signature(child, parent)?;
    }

    let root = path
        .last()
        .ok_or_else(|| VerifyError::malformed("Nitro certificate chain is empty"))?;
    let mut valid_until = i64::MAX;
    if root.x509.subject().as_raw() == root.x509.issuer().as_raw() {
        check_ecdsa_signature(root, root)?;
        if !anchors.contains(root.der) {
            return Err(VerifyError::chain(format!(
                "root certificate {} (SHA-256 {}) is not a trusted anchor",
                describe(root),
                hex::encode(sha256(root.der))
            )));
        }
    } else {
        let anchor = trusted_issuer(root, anchors)?;
        valid_until = check_validity(&anchor, now)?;
    }

    for cert in &path {
        valid_until = valid_until.min(check_validity(cert, now)?);
    }

    let leaf = path
        .first()
        .ok_or_else(|| VerifyError::malformed("Nitro certificate chain is empty"))?;
    let leaf_key = p384_point(leaf)?;
    Ok(VerifiedChain {
        leaf_key,
        leaf_cn: describe(leaf),
        valid_until,
    })
}

/// Finds a root given in full in `anchors` that issued `cert`, for a cabundle without its root.
fn trusted_issuer<'a>(cert: &Cert<'_>, anchors: &'a TrustAnchors) -> Result<Cert<'a>, VerifyError> {
    for der in anchors.certificates() {
        let Ok(anchor) = parse_cert(der, "trust anchor") else {
            continue;
        };
        if anchor.x509.subject().as_raw() != cert.x509.issuer().as_raw() {
            continue;
        }
        check_ca(&anchor)?;
        check_ecdsa_signature(cert, &anchor)?;
        return Ok(anchor);
    }
    Err(VerifyError::chain(format!(
        "cabundle[0] {} is not self-signed and no trusted anchor issued it ({})",
        describe(cert),
        cert.x509.issuer()
    )))
}

fn check_ca(cert: &Cert<'_>) -> Result<(), VerifyError> {
    match cert.x509.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => Ok(()),
        Ok(_) => Err(VerifyError::chain(format!(
            "{} issues a certificate but is not a CA certificate (basicConstraints cA is not set)",
            describe(cert)
        ))),
        Err(error) => Err(VerifyError::malformed(format!(
            "{} has an invalid basicConstraints extension: {error}",
            describe(cert)
        ))),
    }
}

/// Checks that `issuer` signed `child` with ECDSA on P-256 or P-384 and SHA-256 or SHA-384.
fn check_ecdsa_signature(child: &Cert<'_>, issuer: &Cert<'_>) -> Result<(), VerifyError> {
    let outer = &child.x509.signature_algorithm;
    if !same_algorithm(outer, &child.x509.tbs_certificate.signature) {
        return Err(VerifyError::chain(format!(
            "{} names different signature algorithms inside and outside its TBSCertificate",
            describe(child)
        )));
    }
    let hash = outer.algorithm.to_id_string();
    let curve = ec_curve(issuer)?;
    let algorithm: &EcdsaVerificationAlgorithm = match (curve.as_str(), hash.as_str()) {
        (OID_P256, OID_ECDSA_SHA256) => &ECDSA_P256_SHA256_ASN1,
        (OID_P256, OID_ECDSA_SHA384) => &ECDSA_P256_SHA384_ASN1,
        (OID_P384, OID_ECDSA_SHA256) => &ECDSA_P384_SHA256_ASN1,
        (OID_P384, OID_ECDSA_SHA384) => &ECDSA_P384_SHA384_ASN1,
        _ => {
            return Err(VerifyError::chain(format!(
                "{} is signed with algorithm {hash} by a key on curve {curve}; expected ECDSA \
                 with SHA-256 or SHA-384 on P-256 or P-384",
                describe(child)
            )));
        }
    };
    let key = &issuer
        .x509
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data;
    UnparsedPublicKey::new(algorithm, key.as_ref())
        .verify(
            child.x509.tbs_certificate.as_ref(),
            child.x509.signature_value.data.as_ref(),
        )
        .map_err(|_| {
            VerifyError::chain(format!(
                "ECDSA signature on {} by {} is invalid",
                describe(child),
                describe(issuer)
            ))
        })
}

/// Returns the named curve OID of an EC public key.
fn ec_curve(cert: &Cert<'_>) -> Result<String, VerifyError> {
    let algorithm = &cert.x509.tbs_certificate.subject_pki.algorithm;
    let key_type = algorithm.algorithm.to_id_string();
    if key_type != OID_EC_PUBLIC_KEY {
        return Err(VerifyError::chain(format!(
            "{} has a public key of type {key_type}; expected an EC key",
            describe(cert)
        )));
    }
    algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok())
        .map(|oid| oid.to_id_string())
        .ok_or_else(|| {
            VerifyError::chain(format!(
                "{} has an EC key without a named curve",
                describe(cert)
            ))
        })
}

fn p384_point(cert: &Cert<'_>) -> Result<Vec<u8>, VerifyError> {
    let curve = ec_curve(cert)?;
    if curve != OID_P384 {
        return Err(VerifyError::chain(format!(
            "{} key is on curve {curve}; ES384 needs P-384 ({OID_P384})",
            describe(cert)
        )));
    }
    Ok(cert
        .x509
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}
