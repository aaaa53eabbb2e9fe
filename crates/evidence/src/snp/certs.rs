//! The AMD certificate chain: VCEK <- ASK <- ARK, or VLEK <- ASVK <- ARK, each signed with
//! RSASSA-PSS and SHA-384, and the AMD extensions on the VCEK or VLEK.

use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA384, UnparsedPublicKey};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::AlgorithmIdentifier;

use crate::claims::{SnpSigningKey, SnpTcb};
use crate::roots::{TrustAnchors, sha256};
use crate::{Reason, VerifyError};

use super::SnpProduct;
use super::der::{self, Reader};

const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";

/// DER content of the OID 2.16.840.1.101.3.4.2.2 (SHA-384).
const OID_SHA384_CONTENT: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
/// DER content of the OID 1.2.840.113549.1.1.8 (MGF1).
const OID_MGF1_CONTENT: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];

/// AMD's extension OIDs on the VCEK and VLEK (AMD "Versioned Chip Endorsement Key (VCEK)
/// Certificate and KDS Interface Specification").
const OID_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
const OID_CSP_ID: &str = "1.3.6.1.4.1.3704.1.5";

/// Maximum number of certificates in `chain_der`. ASK, ASVK and ARK fit with room to spare.
const MAX_CHAIN_LEN: usize = 8;

/// Platform facts from a verified VCEK or VLEK chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VekChain {
    /// The product line, from the ASK's or ASVK's subject CN (`SEV-Milan`, `SEV-VLEK-Milan`).
    pub product: SnpProduct,
    pub signing_key: SnpSigningKey,
    /// The security patch levels in the VEK's extensions. `fmc` is set for Turin only.
    pub tcb: SnpTcb,
    /// The VCEK's hwID extension: 64 bytes, or 8 on Turin. `None` for a VLEK.
    pub hw_id: Option<Vec<u8>>,
    /// The VLEK's cspID extension, naming the cloud provider it was issued to.
    pub csp_id: Option<String>,
    /// The earliest notAfter (Unix seconds) of the VEK, its issuer and the ARK.
    pub valid_until: i64,
}

/// A parsed certificate with its DER and subject CN, for messages.
pub(crate) struct Cert<'a> {
    pub(crate) der: &'a [u8],
    pub(crate) x509: X509Certificate<'a>,
    pub(crate) cn: String,
}

/// Names a certificate by its subject CN, or by its whole subject when it has no CN.
pub(crate) fn describe(cert: &Cert<'_>) -> String {
    if cert.cn.is_empty() {
        cert.x509.subject().to_string()
    } else {
        format!("CN={}", cert.cn)
    }
}

pub(crate) fn parse_cert<'a>(der: &'a [u8], description: &str) -> Result<Cert<'a>, VerifyError> {
    let (rest, x509) = x509_parser::parse_x509_certificate(der).map_err(|error| {
        VerifyError::malformed(format!(
            "{description} is not a valid X.509 certificate: {error}"
        ))
    })?;
    if !rest.is_empty() {
        return Err(VerifyError::malformed(format!(
            "{description} has {} bytes after the certificate",
            rest.len()
        )));
    }
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|attribute| attribute.as_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok(Cert { der, x509, cn })
}

/// Verifies the VEK chain and returns what it states, with the VEK's uncompressed P-384
/// public key for the report signature.
pub(crate) fn verify_chain(
    vek_der: &[u8],
    chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<(VekChain, Vec<u8>), VerifyError> {
    let vek = parse_cert(vek_der, "VEK certificate")?;
    let signing_key = match vek.cn.as_str() {
        "SEV-VCEK" => SnpSigningKey::Vcek,
        "SEV-VLEK" => SnpSigningKey::Vlek,
        other => {
            return Err(VerifyError::chain(format!(
                "VEK certificate subject CN {other:?} is neither SEV-VCEK nor SEV-VLEK"
            )));
        }
    };
    if chain_der.len() > MAX_CHAIN_LEN {
        return Err(VerifyError::malformed(format!(
            "AMD chain has {} certificates; at most {MAX_CHAIN_LEN} are accepted",
            chain_der.len()
        )));
    }
    let chain = chain_der
        .iter()
        .enumerate()
        .map(|(index, der)| parse_cert(der, &format!("AMD chain certificate {index}")))
        .collect::<Result<Vec<_>, _>>()?;

    let issuer = find_issuer(&vek, &chain)?;
    let product = issuer_product(issuer, signing_key)?;
    check_ca(issuer)?;
    check_pss_signature(&vek, issuer)?;

    let root = find_root(issuer, &chain, anchors)?;
    check_root(&root, issuer, product)?;

    let mut valid_until = i64::MAX;
    for cert in [&vek, issuer, &root] {
        valid_until = valid_until.min(check_validity(cert, now)?);
    }

    let extensions = VekExtensions::read(&vek, product)?;
    if let Some(name) = &extensions.product_name {
        let family = name.split('-').next().unwrap_or(name);
        if family != product.as_str() {
            return Err(VerifyError::chain(format!(
                "VEK productName {name:?} does not match the issuer {}",
                issuer.cn
            )));
        }
    }
    let hw_id = match signing_key {
        SnpSigningKey::Vcek => Some(extensions.hw_id.ok_or_else(|| {
            VerifyError::chain("VCEK certificate lacks the hwID extension 1.3.6.1.4.1.3704.1.4")
        })?),
        SnpSigningKey::Vlek => None,
    };
    let public_key = p384_public_key(&vek)?;
    Ok((
        VekChain {
            product,
            signing_key,
            tcb: extensions.tcb,
            hw_id,
            csp_id: extensions.csp_id,
            valid_until,
        },
        public_key,
    ))
}

/// Product facts from a verified ASK or ASVK chain to an ARK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaChain {
    pub product: SnpProduct,
    /// The earliest notAfter (Unix seconds) of the certificates checked.
    pub valid_until: i64,
}

/// Verifies every ASK and ASVK in `chain_der` against the ARK, which is in `chain_der` and
/// pinned in `anchors`, or given in full in `anchors`.
pub(crate) fn verify_ca_chain(
    chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<CaChain, VerifyError> {
    if chain_der.len() > MAX_CHAIN_LEN {
        return Err(VerifyError::malformed(format!(
            "AMD chain has {} certificates; at most {MAX_CHAIN_LEN} are accepted",
            chain_der.len()
        )));
    }
    let chain = chain_der
        .iter()
        .enumerate()
        .map(|(index, der)| parse_cert(der, &format!("AMD chain certificate {index}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut product = None;
    let mut valid_until = i64::MAX;
    for cert in chain
        .iter()
        .filter(|cert| cert.x509.subject().as_raw() != cert.x509.issuer().as_raw())
    {
        let key = if cert.cn.starts_with("SEV-VLEK-") {
            SnpSigningKey::Vlek
        } else {
            SnpSigningKey::Vcek
        };
        let this_product = issuer_product(cert, key)?;
        if product.is_some_and(|product| product != this_product) {
            return Err(VerifyError::chain(format!(
                "AMD chain mixes products: {} is not for {}",
                cert.cn,
                product.map(SnpProduct::as_str).unwrap_or_default()
            )));
        }
        product = Some(this_product);
        check_ca(cert)?;
        let root = find_root(cert, &chain, anchors)?;
        check_root(&root, cert, this_product)?;
        valid_until = valid_until
            .min(check_validity(cert, now)?)
            .min(check_validity(&root, now)?);
    }
    let product = product
        .ok_or_else(|| VerifyError::chain("the AMD chain contains no ASK or ASVK certificate"))?;
    Ok(CaChain {
        product,
        valid_until,
    })
}

/// Checks that the root that issued `issuer` is the ARK of `product` and a CA certificate.
fn check_root(root: &Cert<'_>, issuer: &Cert<'_>, product: SnpProduct) -> Result<(), VerifyError> {
    let ark_cn = format!("ARK-{}", product.as_str());
    if root.cn != ark_cn {
        return Err(VerifyError::chain(format!(
            "root certificate CN {:?} does not match the issuer {}; expected {ark_cn}",
            root.cn, issuer.cn
        )));
    }
    check_ca(root)
}

/// Finds the certificate in `chain` whose subject is the VEK's issuer.
fn find_issuer<'c, 'a>(vek: &Cert<'_>, chain: &'c [Cert<'a>]) -> Result<&'c Cert<'a>, VerifyError> {
    let issuer_name = vek.x509.issuer().as_raw();
    chain
        .iter()
        .find(|cert| cert.x509.subject().as_raw() == issuer_name)
        .ok_or_else(|| {
            VerifyError::chain(format!(
                "no certificate in the AMD chain is the issuer of {} ({}); the chain has {}",
                vek.cn,
                vek.x509.issuer(),
                list_cns(chain)
            ))
        })
}

/// Reads the product from the issuer's CN: `SEV-<product>` issues VCEKs, `SEV-VLEK-<product>`
/// issues VLEKs.
fn issuer_product(
    issuer: &Cert<'_>,
    signing_key: SnpSigningKey,
) -> Result<SnpProduct, VerifyError> {
    let suffix = match signing_key {
        SnpSigningKey::Vcek => issuer
            .cn
            .strip_prefix("SEV-")
            .filter(|rest| !rest.starts_with("VLEK-")),
        SnpSigningKey::Vlek => issuer.cn.strip_prefix("SEV-VLEK-"),
    };
    let expected = match signing_key {
        SnpSigningKey::Vcek => "an ASK (CN SEV-<product>)",
        SnpSigningKey::Vlek => "an ASVK (CN SEV-VLEK-<product>)",
    };
    let suffix = suffix.ok_or_else(|| {
        VerifyError::chain(format!(
            "the issuer of the {signing_key:?} certificate has CN {:?}; expected {expected}",
            issuer.cn
        ))
    })?;
    SnpProduct::from_name(suffix).ok_or_else(|| {
        VerifyError::chain(format!(
            "issuer {} names an unsupported product {suffix:?}; expected Milan, Genoa or Turin",
            issuer.cn
        ))
    })
}

/// Finds the ARK that issued `issuer`: a self-signed certificate in `chain` whose fingerprint
/// is pinned in `anchors`, or else a root certificate given in full in `anchors`.
fn find_root<'a>(
    issuer: &Cert<'a>,
    chain: &[Cert<'a>],
    anchors: &'a TrustAnchors,
) -> Result<Cert<'a>, VerifyError> {
    let root_name = issuer.x509.issuer().as_raw();
    if let Some(root) = chain.iter().find(|cert| {
        cert.x509.subject().as_raw() == root_name && cert.x509.issuer().as_raw() == root_name
    }) {
        check_pss_signature(root, root)?;
        check_pss_signature(issuer, root)?;
        if !anchors.contains(root.der) {
            return Err(VerifyError::chain(format!(
                "root certificate {} (SHA-256 {}) is not a trusted anchor",
                root.cn,
                hex::encode(sha256(root.der))
            )));
        }
        return parse_cert(root.der, "ARK certificate");
    }
    for der in anchors.certificates() {
        let Ok(root) = parse_cert(der, "trust anchor") else {
            continue;
        };
        if root.x509.subject().as_raw() != root_name {
            continue;
        }
        check_pss_signature(&root, &root)?;
        check_pss_signature(issuer, &root)?;
        return Ok(root);
    }
    Err(VerifyError::chain(format!(
        "no trusted root issued {} ({}); the chain has {}",
        issuer.cn,
        issuer.x509.issuer(),
        list_cns(chain)
    )))
}

fn list_cns(chain: &[Cert<'_>]) -> String {
    if chain.is_empty() {
        return "no certificates".to_owned();
    }
    chain
        .iter()
        .map(|cert| cert.cn.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Requires basicConstraints with cA set, as on every AMD ASK, ASVK and ARK.
fn check_ca(cert: &Cert<'_>) -> Result<(), VerifyError> {
    match cert.x509.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => Ok(()),
        Ok(_) => Err(VerifyError::chain(format!(
            "{} is used as an issuer but is not a CA certificate (basicConstraints cA is not set)",
            cert.cn
        ))),
        Err(error) => Err(VerifyError::malformed(format!(
            "{} has an invalid basicConstraints extension: {error}",
            cert.cn
        ))),
    }
}

/// Checks that `subject` is signed by `issuer` with RSASSA-PSS, SHA-384, MGF1 with SHA-384 and
/// a 48-byte salt, and that its inner and outer signature algorithms are identical.
fn check_pss_signature(subject: &Cert<'_>, issuer: &Cert<'_>) -> Result<(), VerifyError> {
    let outer = &subject.x509.signature_algorithm;
    let inner = &subject.x509.tbs_certificate.signature;
    if !same_algorithm(outer, inner) {
        return Err(VerifyError::chain(format!(
            "{} names different signature algorithms inside and outside its TBSCertificate",
            subject.cn
        )));
    }
    let oid = outer.algorithm.to_id_string();
    if oid != OID_RSASSA_PSS {
        return Err(VerifyError::chain(format!(
            "{} is signed with algorithm {oid}; expected RSASSA-PSS ({OID_RSASSA_PSS})",
            subject.cn
        )));
    }
    check_pss_parameters(outer).map_err(|problem| {
        VerifyError::chain(format!(
            "{} has RSASSA-PSS parameters other than SHA-384, MGF1 with SHA-384 and a \
             48-byte salt: {problem}",
            subject.cn
        ))
    })?;

    let spki = &issuer.x509.tbs_certificate.subject_pki;
    let key_oid = spki.algorithm.algorithm.to_id_string();
    if key_oid != OID_RSA_ENCRYPTION && key_oid != OID_RSASSA_PSS {
        return Err(VerifyError::chain(format!(
            "{} has a public key of type {key_oid}; an AMD issuer must have an RSA key",
            issuer.cn
        )));
    }
    let signature = &subject.x509.signature_value.data;
    UnparsedPublicKey::new(
        &RSA_PSS_2048_8192_SHA384,
        spki.subject_public_key.data.as_ref(),
    )
    .verify(subject.x509.tbs_certificate.as_ref(), signature.as_ref())
    .map_err(|_| {
        VerifyError::chain(format!(
            "RSASSA-PSS signature on {} by {} is invalid",
            subject.cn, issuer.cn
        ))
    })
}

pub(crate) fn same_algorithm(a: &AlgorithmIdentifier<'_>, b: &AlgorithmIdentifier<'_>) -> bool {
    fn parameters<'a>(algorithm: &AlgorithmIdentifier<'a>) -> Option<(Tag, bool, &'a [u8])> {
        algorithm
            .parameters
            .as_ref()
            .map(|any| (any.header.tag(), any.header.is_constructed(), any.data))
    }
    a.algorithm == b.algorithm && parameters(a) == parameters(b)
}

/// Checks RSASSA-PSS-params (RFC 8017, appendix A.2.3) for SHA-384, MGF1 with SHA-384, a salt
/// of 48 bytes and trailer field 1. The defaults (SHA-1, salt 20) are not accepted.
fn check_pss_parameters(algorithm: &AlgorithmIdentifier<'_>) -> Result<(), &'static str> {
    let parameters = algorithm
        .parameters
        .as_ref()
        .ok_or("parameters are absent")?;
    if parameters.header.tag() != Tag::Sequence || !parameters.header.is_constructed() {
        return Err("parameters are not a SEQUENCE");
    }
    let mut fields = Reader::new(parameters.data);

    let hash = fields.read_tagged(0xa0).ok_or("hashAlgorithm is absent")?;
    if !is_sha384_identifier(hash) {
        return Err("hashAlgorithm is not SHA-384");
    }

    let mgf = fields
        .read_tagged(0xa1)
        .ok_or("maskGenAlgorithm is absent")?;
    let mut mgf = Reader::new(mgf);
    let mgf_identifier = mgf
        .read_tagged(der::TAG_SEQUENCE)
        .ok_or("maskGenAlgorithm is invalid")?;
    if !mgf.is_empty() {
        return Err("maskGenAlgorithm is invalid");
    }
    let mut mgf_identifier = Reader::new(mgf_identifier);
    if mgf_identifier.read_tagged(der::TAG_OID) != Some(OID_MGF1_CONTENT) {
        return Err("maskGenAlgorithm is not MGF1");
    }
    let mgf_hash = mgf_identifier.read().ok_or("MGF1 hash is absent")?;
    if mgf_hash.tag != der::TAG_SEQUENCE
        || !mgf_identifier.is_empty()
        || !is_sha384_algorithm(mgf_hash.content)
    {
        return Err("MGF1 hash is not SHA-384");
    }

    let salt = fields.read_tagged(0xa2).ok_or("saltLength is absent")?;
    if der::small_unsigned(salt) != Some(48) {
        return Err("saltLength is not 48");
    }

    if fields.peek_tag() == Some(0xa3) {
        let trailer = fields.read_tagged(0xa3).ok_or("trailerField is invalid")?;
        if der::small_unsigned(trailer) != Some(1) {
            return Err("trailerField is not 1");
        }
    }
    if !fields.is_empty() {
        return Err("unexpected fields follow");
    }
    Ok(())
}

/// Returns whether `explicit` (the content of a context tag) is exactly one SHA-384
/// AlgorithmIdentifier.
fn is_sha384_identifier(explicit: &[u8]) -> bool {
    let mut reader = Reader::new(explicit);
    match reader.read() {
        Some(tlv) if tlv.tag == der::TAG_SEQUENCE && reader.is_empty() => {
            is_sha384_algorithm(tlv.content)
        }
        _ => false,
    }
}

/// Returns whether `content` (of an AlgorithmIdentifier SEQUENCE) names SHA-384 with absent or
/// NULL parameters.
fn is_sha384_algorithm(content: &[u8]) -> bool {
    let mut reader = Reader::new(content);
    if reader.read_tagged(der::TAG_OID) != Some(OID_SHA384_CONTENT) {
        return false;
    }
    if reader.is_empty() {
        return true;
    }
    matches!(reader.read(), Some(tlv) if tlv.tag == der::TAG_NULL && tlv.content.is_empty())
        && reader.is_empty()
}

/// Checks notBefore <= now <= notAfter and returns notAfter.
pub(crate) fn check_validity(cert: &Cert<'_>, now: i64) -> Result<i64, VerifyError> {
    let validity = cert.x509.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(VerifyError::expired(format!(
            "certificate {} notBefore {} is after now {}",
            describe(cert),
            rfc3339(not_before),
            rfc3339(now)
        )));
    }
    if now > not_after {
        return Err(VerifyError::expired(format!(
            "certificate {} notAfter {} is before now {}",
            describe(cert),
            rfc3339(not_after),
            rfc3339(now)
        )));
    }
    Ok(not_after)
}

pub(crate) fn rfc3339(unix_seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_seconds} (Unix seconds)"))
}

/// Returns the VEK's public key as an uncompressed P-384 point.
fn p384_public_key(vek: &Cert<'_>) -> Result<Vec<u8>, VerifyError> {
    let spki = &vek.x509.tbs_certificate.subject_pki;
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|any| any.as_oid().ok())
        .map(|oid| oid.to_id_string());
    if key_oid != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_SECP384R1) {
        return Err(VerifyError::chain(format!(
            "{} public key is {key_oid} on curve {}; expected an EC key on P-384",
            vek.cn,
            curve.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

/// The AMD extensions of a VCEK or VLEK.
struct VekExtensions {
    product_name: Option<String>,
    tcb: SnpTcb,
    hw_id: Option<Vec<u8>>,
    csp_id: Option<String>,
}

/// The AMD extensions as found, before the required ones are checked.
#[derive(Default)]
struct FoundExtensions {
    product_name: Option<String>,
    bootloader: Option<u8>,
    tee: Option<u8>,
    snp: Option<u8>,
    microcode: Option<u8>,
    fmc: Option<u8>,
    hw_id: Option<Vec<u8>>,
    csp_id: Option<String>,
}

impl VekExtensions {
    fn read(vek: &Cert<'_>, product: SnpProduct) -> Result<Self, VerifyError> {
        let found = FoundExtensions::collect(vek)?;

        let required = |value: Option<u8>, oid: &str, name: &str| {
            value.ok_or_else(|| {
                VerifyError::chain(format!("{} lacks the {name} extension {oid}", vek.cn))
            })
        };
        let tcb = SnpTcb {
            bootloader: required(found.bootloader, OID_BL_SPL, "blSPL")?,
            tee: required(found.tee, OID_TEE_SPL, "teeSPL")?,
            snp: required(found.snp, OID_SNP_SPL, "snpSPL")?,
            microcode: required(found.microcode, OID_UCODE_SPL, "ucodeSPL")?,
            fmc: match product {
                SnpProduct::Turin => Some(required(found.fmc, OID_FMC_SPL, "fmcSPL")?),
                SnpProduct::Milan | SnpProduct::Genoa => None,
            },
        };
        Ok(Self {
            product_name: found.product_name,
            tcb,
            hw_id: found.hw_id,
            csp_id: found.csp_id,
        })
    }
}

impl FoundExtensions {
    fn collect(vek: &Cert<'_>) -> Result<Self, VerifyError> {
        let mut found = Self::default();
        for extension in vek.x509.extensions() {
            let oid = extension.oid.to_id_string();
            let value = extension.value;
            let invalid = |expected: &str| {
                VerifyError::malformed(format!("{} extension {oid} is not {expected}", vek.cn))
            };
            let level =
                || der::small_unsigned(value).ok_or_else(|| invalid("a DER INTEGER 0..=255"));
            let text = || {
                der::ia5_string(value)
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("an IA5String"))
            };

            match oid.as_str() {
                OID_BL_SPL => set_once(&mut found.bootloader, level()?, vek, &oid)?,
                OID_TEE_SPL => set_once(&mut found.tee, level()?, vek, &oid)?,
                OID_SNP_SPL => set_once(&mut found.snp, level()?, vek, &oid)?,
                OID_UCODE_SPL => set_once(&mut found.microcode, level()?, vek, &oid)?,
                OID_FMC_SPL => set_once(&mut found.fmc, level()?, vek, &oid)?,
                OID_PRODUCT_NAME => set_once(&mut found.product_name, text()?, vek, &oid)?,
                OID_CSP_ID => set_once(&mut found.csp_id, text()?, vek, &oid)?,
                // AMD puts the raw ID bytes in the extension value, with no inner OCTET STRING.
                OID_HW_ID => set_once(&mut found.hw_id, value.to_vec(), vek, &oid)?,
                _ => {}
            }
        }
        Ok(found)
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    vek: &Cert<'_>,
    oid: &str,
) -> Result<(), VerifyError> {
    if slot.is_some() {
        return Err(VerifyError::new(
            Reason::Malformed,
            format!("{} has the extension {oid} more than once", vek.cn),
        ));
    }
    *slot = Some(value);
    Ok(())
}
