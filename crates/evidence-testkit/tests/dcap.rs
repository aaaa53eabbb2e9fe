//! Checks that generated DCAP quotes and collateral have the byte layout of real ones.
//!
//! A small quote reader in this file walks every field by offset. It first reads the real
//! quotes in the fixture folder, so it is known to follow Intel's layout, and then the
//! generated quotes. Each signature is checked with aws-lc-rs and each certificate and CRL with
//! x509-parser, independently of the twid verifier.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::Value;
use twid_evidence::claims::{PckPlatform, SgxClaims, TdxClaims};
use twid_evidence::dcap::{PcsFiles, verify};
use twid_evidence::{Claims, Kind, Reason, TcbStatus, TrustAnchors, Verified, VerifyError};
use twid_evidence_testkit::dcap::{
    Collateral, PckCa, PlatformSpec, SgxReportSpec, Td15Fields, TdReportSpec, TestPlatform,
    Validity,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::{FromDer, parse_x509_crl};

const INTEL_QE_VENDOR_ID: &str = "939a7233f79c4ca9940a0db3957f0607";
const SGX_EXTENSION_OID: &str = "1.2.840.113741.1.13.1";

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixtures_dir() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = match std::env::var_os("TWID_FIXTURES") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("../shared/fixtures"),
    };
    let dir = base.join("attestation");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("fixtures not found; skipping");
        None
    }
}

fn read_fixture(dir: &Path, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(name)).expect("fixture file is readable");
    if name.ends_with(".hex") {
        let text = String::from_utf8(bytes).expect("hex fixture is text");
        hex::decode(text.trim()).expect("hex fixture decodes")
    } else {
        bytes
    }
}

fn fixture_collateral_json(dir: &Path, name: &str) -> Value {
    serde_json::from_slice(&read_fixture(dir, name)).expect("collateral fixture is JSON")
}

// ---------------------------------------------------------------------------------------------
// Quote reader

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("four bytes"))
}

/// A quote split into its fields by the offsets of Intel's quote formats.
struct QuoteParts<'a> {
    version: u16,
    tee_type: u32,
    /// Header and body: what the attestation key signs.
    signed: &'a [u8],
    body: &'a [u8],
    /// v5 only: body type and size.
    body_descriptor: Option<(u16, u32)>,
    isv_signature: &'a [u8],
    attestation_key: &'a [u8],
    /// Type 6 for v4 and v5; `None` for v3, which has no wrapper.
    outer_cert_type: Option<u16>,
    qe_report: &'a [u8],
    qe_report_signature: &'a [u8],
    qe_auth_data: &'a [u8],
    cert_type: u16,
    cert_data: &'a [u8],
    /// Bytes after the signature data.
    trailing: usize,
}

fn split_quote(quote: &[u8]) -> QuoteParts<'_> {
    let version = u16_at(quote, 0);
    assert_eq!(u16_at(quote, 2), 2, "attestation key type is ECDSA P-256");
    let tee_type = u32_at(quote, 4);
    let (body_start, body_len, body_descriptor) = match version {
        3 => (48, 384, None),
        4 => (48, 584, None),
        5 => {
            let body_type = u16_at(quote, 48);
            let body_size = u32_at(quote, 50);
            (54, body_size as usize, Some((body_type, body_size)))
        }
        other => panic!("unexpected quote version {other}"),
    };
    let signed_end = body_start + body_len;
    let signature_len = u32_at(quote, signed_end) as usize;
    let signature_data = &quote[signed_end + 4..signed_end + 4 + signature_len];
    let trailing = quote.len() - (signed_end + 4 + signature_len);

    let isv_signature = &signature_data[..64];
    let attestation_key = &signature_data[64..128];
    let (outer_cert_type, qe_part) = if version == 3 {
        (None, &signature_data[128..])
    } else {
        let outer_type = u16_at(signature_data, 128);
        let outer_len = u32_at(signature_data, 130) as usize;
        assert_eq!(
            134 + outer_len,
            signature_data.len(),
            "type 6 data fills the signature data"
        );
        (Some(outer_type), &signature_data[134..])
    };
    let qe_report = &qe_part[..384];
    let qe_report_signature = &qe_part[384..448];
    let auth_len = u16_at(qe_part, 448) as usize;
    let qe_auth_data = &qe_part[450..450 + auth_len];
    let cert_offset = 450 + auth_len;
    let cert_type = u16_at(qe_part, cert_offset);
    let cert_len = u32_at(qe_part, cert_offset + 2) as usize;
    let cert_data = &qe_part[cert_offset + 6..cert_offset + 6 + cert_len];
    assert_eq!(
        cert_offset + 6 + cert_len,
        qe_part.len(),
        "type 5 data ends the certification data"
    );

    QuoteParts {
        version,
        tee_type,
        signed: &quote[..signed_end],
        body: &quote[body_start..signed_end],
        body_descriptor,
        isv_signature,
        attestation_key,
        outer_cert_type,
        qe_report,
        qe_report_signature,
        qe_auth_data,
        cert_type,
        cert_data,
        trailing,
    }
}

fn pem_chain(cert_data: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(cert_data);
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block
            .split("-----END CERTIFICATE-----")
            .next()
            .expect("PEM block has an end line");
        let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(base64)
                .expect("PEM body is base64"),
        );
    }
    out
}

fn certificate(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty(), "no bytes after the certificate");
    cert
}

/// Returns the uncompressed P-256 point of a certificate's key.
fn public_key_point(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.public_key().subject_public_key.data.to_vec()
}

fn verify_raw(point: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(message, signature)
        .is_ok()
}

/// Runs the checks that hold for every genuine quote. The attestation key signs header and
/// body, and the PCK key signs the QE report, which binds the attestation key. The chain is
/// PCK leaf, PCK CA and root, each signed by the next.
fn check_quote_signatures(parts: &QuoteParts<'_>) {
    let mut point = vec![0x04];
    point.extend_from_slice(parts.attestation_key);
    assert!(
        verify_raw(&point, parts.signed, parts.isv_signature),
        "attestation key signature over header and body"
    );

    let chain = pem_chain(parts.cert_data);
    assert_eq!(chain.len(), 3, "PCK leaf, PCK CA and root");
    let leaf = certificate(&chain[0]);
    assert!(
        verify_raw(
            &public_key_point(&leaf),
            parts.qe_report,
            parts.qe_report_signature
        ),
        "PCK signature over the QE report"
    );

    let mut hashed = parts.attestation_key.to_vec();
    hashed.extend_from_slice(parts.qe_auth_data);
    assert_eq!(
        &parts.qe_report[320..352],
        digest(&SHA256, &hashed).as_ref(),
        "QE report data binds the attestation key"
    );
    assert_eq!(&parts.qe_report[352..384], &[0u8; 32]);

    let ca = certificate(&chain[1]);
    let root = certificate(&chain[2]);
    leaf.verify_signature(Some(ca.public_key()))
        .expect("PCK CA signs the PCK leaf");
    ca.verify_signature(Some(root.public_key()))
        .expect("root signs the PCK CA");
    root.verify_signature(None).expect("root is self-signed");
}

// ---------------------------------------------------------------------------------------------
// PCK certificate reader

/// Reads the SGX extension as (OID, DER tag, value bytes) triples in order, with the TCB and
/// Configuration sequences flattened.
fn sgx_extension_fields(cert: &X509Certificate<'_>) -> Vec<(String, u8, Vec<u8>)> {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::parse_der;

    let extension = cert
        .extensions()
        .iter()
        .find(|ext| ext.oid.to_id_string() == SGX_EXTENSION_OID)
        .expect("PCK certificate has the SGX extension");
    assert!(!extension.critical, "SGX extension is not critical");
    let (rest, value) = parse_der(extension.value).expect("SGX extension is DER");
    assert!(rest.is_empty());

    fn walk(
        object: &x509_parser::der_parser::ber::BerObject<'_>,
        out: &mut Vec<(String, u8, Vec<u8>)>,
    ) {
        let BerObjectContent::Sequence(entries) = &object.content else {
            panic!("expected a SEQUENCE in the SGX extension");
        };
        for entry in entries {
            let BerObjectContent::Sequence(pair) = &entry.content else {
                panic!("expected an (OID, value) SEQUENCE");
            };
            let oid = pair[0]
                .as_oid()
                .expect("first element is an OID")
                .to_id_string();
            let value = &pair[1];
            if let BerObjectContent::Sequence(_) = value.content {
                out.push((oid, 0x30, Vec::new()));
                walk(value, out);
            } else {
                let tag = value.header.tag().0 as u8;
                let bytes = value.as_slice().map(<[u8]>::to_vec).unwrap_or_else(|_| {
                    value
                        .as_u64()
                        .map(|v| v.to_be_bytes().to_vec())
                        .or_else(|_| value.as_bool().map(|b| vec![u8::from(b)]))
                        .expect("scalar SGX extension value")
                });
                out.push((oid, tag, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(&value, &mut out);
    out
}

fn field<'a>(fields: &'a [(String, u8, Vec<u8>)], oid_suffix: &str) -> &'a (String, u8, Vec<u8>) {
    let oid = format!("{SGX_EXTENSION_OID}.{oid_suffix}");
    fields
        .iter()
        .find(|(id, _, _)| *id == oid)
        .unwrap_or_else(|| panic!("SGX extension field {oid} is missing"))
}

fn extension_oids(cert: &X509Certificate<'_>) -> Vec<(String, bool)> {
    cert.extensions()
        .iter()
        .map(|ext| (ext.oid.to_id_string(), ext.critical))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generated evidence

fn sgx_report() -> SgxReportSpec {
    let mut report = SgxReportSpec {
        mr_enclave: [0xe1; 32],
        mr_signer: [0xe2; 32],
        isv_prod_id: 7,
        isv_svn: 3,
        ..SgxReportSpec::default()
    };
    report.report_data[..13].copy_from_slice(b"Hello, world!");
    report
}

fn td_report() -> TdReportSpec {
    let mut report = TdReportSpec {
        mr_td: [0xd1; 48],
        mr_config_id: [0xc1; 48],
        rtmr: [[0xa0; 48], [0xa1; 48], [0xa2; 48], [0xa3; 48]],
        ..TdReportSpec::default()
    };
    report.report_data = [0x77; 64];
    report
}

#[test]
fn reader_accepts_real_quotes() {
    let Some(dir) = fixtures_dir() else { return };
    let cases: [(&str, u16, Option<u16>, usize); 6] = [
        ("sgx-dcap/dcap-qvl_sgx_quote.bin", 3, None, 0),
        ("sgx-dcap/mobilecoin_hw_quote.bin", 3, None, 0),
        ("tdx/dcap-qvl_tdx_quote.bin", 4, Some(6), 70),
        ("tdx/dcap-qvl_tdx_quote_outdated.bin", 5, Some(6), 0),
        ("tdx/trustee_tdx_quote_v4.bin", 4, Some(6), 0),
        ("tdx/dcap-qvl_near_tdx_quote.hex", 4, Some(6), 70),
    ];
    for (case, (name, version, outer_cert_type, trailing)) in cases.into_iter().enumerate() {
        let quote = read_fixture(&dir, name);
        let parts = split_quote(&quote);
        assert_eq!(parts.version, version, "case {case}");
        assert_eq!(parts.outer_cert_type, outer_cert_type, "case {case}");
        assert_eq!(parts.cert_type, 5, "case {case}");
        assert_eq!(parts.trailing, trailing, "case {case}");
        assert_eq!(
            hex::encode(&quote[12..28]),
            INTEL_QE_VENDOR_ID,
            "case {case}"
        );
        assert_eq!(
            parts.cert_data.last(),
            Some(&0),
            "case {case}: PEM chain ends in NUL"
        );
        check_quote_signatures(&parts);
    }
}

#[test]
fn sgx_quote_matches_v3_layout() {
    let platform = TestPlatform::new(&PlatformSpec::sgx());
    let report = sgx_report();
    let quote = platform.sgx_quote(&report);
    let parts = split_quote(&quote);

    assert_eq!(parts.version, 3);
    assert_eq!(parts.tee_type, 0);
    assert_eq!(parts.outer_cert_type, None);
    assert_eq!(parts.cert_type, 5);
    assert_eq!(parts.trailing, 0);
    assert_eq!(parts.signed.len(), 432);
    assert_eq!(hex::encode(&quote[12..28]), INTEL_QE_VENDOR_ID);
    assert_eq!(u16_at(&quote, 8), 8, "header QE SVN");
    assert_eq!(u16_at(&quote, 10), 13, "header PCE SVN");
    assert_eq!(
        &quote[44..48],
        &[0u8; 4],
        "user data ends in four zero bytes"
    );

    // Body fields sit at 48 plus their offset in the 384-byte report body.
    let spec = platform.spec();
    assert_eq!(&quote[48..64], &spec.cpu_svn_components, "CPUSVN");
    assert_eq!(&quote[96..112], &report.attributes, "ATTRIBUTES");
    assert_eq!(&quote[112..144], &report.mr_enclave, "MRENCLAVE");
    assert_eq!(&quote[176..208], &report.mr_signer, "MRSIGNER");
    assert_eq!(u16_at(&quote, 304), 7, "ISVPRODID");
    assert_eq!(u16_at(&quote, 306), 3, "ISVSVN");
    assert_eq!(&quote[368..432], &report.report_data, "REPORTDATA");

    check_quote_signatures(&parts);
    assert_eq!(parts.attestation_key, &platform.attestation_public_key());
    assert_eq!(parts.qe_auth_data, (0u8..32).collect::<Vec<_>>());
    assert_eq!(parts.cert_data.last(), Some(&0), "PEM chain ends in NUL");

    // The QE report is the SGX QE's: MRSIGNER, ISVPRODID 1, the platform's QE SVN.
    assert_eq!(
        hex::encode(&parts.qe_report[128..160]),
        "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
    );
    assert_eq!(u16_at(parts.qe_report, 256), 1);
    assert_eq!(u16_at(parts.qe_report, 258), 8);

    let chain = pem_chain(parts.cert_data);
    assert_eq!(chain[0], platform.pck_der());
    assert_eq!(chain[1], platform.pck_ca_der());
    assert_eq!(chain[2], platform.root_der());
}

#[test]
fn sgx_quote_byte_flips_break_signatures() {
    let platform = TestPlatform::new(&PlatformSpec::sgx());
    let quote = platform.sgx_quote(&sgx_report());

    // Flip a byte of MRENCLAVE, of the QE report, and of the attestation key.
    let mut flipped = quote.clone();
    flipped[112] ^= 0x01;
    let parts = split_quote(&flipped);
    let mut point = vec![0x04];
    point.extend_from_slice(parts.attestation_key);
    assert!(!verify_raw(&point, parts.signed, parts.isv_signature));

    let mut flipped = quote.clone();
    flipped[628] ^= 0x01;
    let parts = split_quote(&flipped);
    let leaf_der = pem_chain(parts.cert_data).remove(0);
    let leaf = certificate(&leaf_der);
    assert!(!verify_raw(
        &public_key_point(&leaf),
        parts.qe_report,
        parts.qe_report_signature
    ));

    let mut flipped = quote;
    flipped[500] ^= 0x01;
    let parts = split_quote(&flipped);
    let mut point = vec![0x04];
    point.extend_from_slice(parts.attestation_key);
    assert!(!verify_raw(&point, parts.signed, parts.isv_signature));
}

#[test]
fn tdx_v4_quote_matches_layout() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let report = td_report();
    let quote = platform.tdx_quote(&report, 4);
    let parts = split_quote(&quote);

    assert_eq!(parts.version, 4);
    assert_eq!(parts.tee_type, 0x81);
    assert_eq!(parts.signed.len(), 632);
    assert_eq!(parts.outer_cert_type, Some(6));
    assert_eq!(parts.cert_type, 5);
    assert_eq!(parts.trailing, 0);
    assert_eq!(&quote[8..12], &[0u8; 4], "reserved header bytes");
    assert_eq!(hex::encode(&quote[12..28]), INTEL_QE_VENDOR_ID);

    assert_eq!(&quote[48..64], &report.tee_tcb_svn, "TEE_TCB_SVN");
    assert_eq!(
        &quote[48 + 120..48 + 128],
        &report.td_attributes,
        "TDATTRIBUTES"
    );
    assert_eq!(&quote[184..232], &report.mr_td, "MRTD");
    assert_eq!(&quote[232..280], &report.mr_config_id, "MRCONFIGID");
    for (index, rtmr) in report.rtmr.iter().enumerate() {
        let start = 48 + 328 + 48 * index;
        assert_eq!(&quote[start..start + 48], rtmr, "RTMR{index}");
    }
    assert_eq!(&quote[568..632], &report.report_data, "REPORTDATA");

    check_quote_signatures(&parts);
    assert_eq!(
        hex::encode(&parts.qe_report[128..160]),
        "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5",
        "TD QE MRSIGNER"
    );
    assert_eq!(u16_at(parts.qe_report, 256), 2, "TD QE ISVPRODID");
    assert_eq!(u16_at(parts.qe_report, 258), 6, "TD QE ISVSVN");

    // Flip a byte of MRTD and a byte of the QE report.
    let mut flipped = quote.clone();
    flipped[184] ^= 0x01;
    let flipped_parts = split_quote(&flipped);
    let mut point = vec![0x04];
    point.extend_from_slice(flipped_parts.attestation_key);
    assert!(!verify_raw(
        &point,
        flipped_parts.signed,
        flipped_parts.isv_signature
    ));
    let mut flipped = quote;
    flipped[834] ^= 0x01;
    let flipped_parts = split_quote(&flipped);
    let leaf_der = pem_chain(flipped_parts.cert_data).remove(0);
    assert!(!verify_raw(
        &public_key_point(&certificate(&leaf_der)),
        flipped_parts.qe_report,
        flipped_parts.qe_report_signature
    ));
}

#[test]
fn tdx_v5_quote_has_td10_body() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let report = td_report();
    let quote = platform.tdx_quote(&report, 5);
    let parts = split_quote(&quote);

    assert_eq!(parts.version, 5);
    assert_eq!(
        parts.body_descriptor,
        Some((2, 584)),
        "body type 2 (TD 1.0)"
    );
    assert_eq!(parts.signed.len(), 54 + 584);
    assert_eq!(parts.body.len(), 584);
    assert_eq!(&quote[190..238], &report.mr_td, "MRTD at body + 136");
    assert_eq!(parts.trailing, 0);
    check_quote_signatures(&parts);

    let mut flipped = quote;
    flipped[190] ^= 0x01;
    let flipped_parts = split_quote(&flipped);
    let mut point = vec![0x04];
    point.extend_from_slice(flipped_parts.attestation_key);
    assert!(!verify_raw(
        &point,
        flipped_parts.signed,
        flipped_parts.isv_signature
    ));
}

#[test]
fn tdx_v5_quote_has_td15_body() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let mut report = td_report();
    let td15 = Td15Fields {
        tee_tcb_svn2: [5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        mr_service_td: [0x9d; 48],
    };
    report.td15 = Some(td15.clone());
    let quote = platform.tdx_quote(&report, 5);
    let parts = split_quote(&quote);

    assert_eq!(
        parts.body_descriptor,
        Some((3, 648)),
        "body type 3 (TD 1.5)"
    );
    assert_eq!(parts.signed.len(), 54 + 648);
    assert_eq!(&quote[190..238], &report.mr_td, "MRTD at body + 136");
    assert_eq!(
        &quote[54 + 584..54 + 600],
        &td15.tee_tcb_svn2,
        "TEE_TCB_SVN2"
    );
    assert_eq!(
        &quote[54 + 600..54 + 648],
        &td15.mr_service_td,
        "MRSERVICETD"
    );
    check_quote_signatures(&parts);
}

#[test]
#[should_panic(expected = "cannot carry a TD 1.5 body")]
fn tdx_v4_rejects_td15_body() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let mut report = td_report();
    report.td15 = Some(Td15Fields {
        tee_tcb_svn2: [0; 16],
        mr_service_td: [0; 48],
    });
    platform.tdx_quote(&report, 4);
}

#[test]
fn debug_flags_land_in_attributes() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let mut sgx = sgx_report();
    sgx.set_debug(true);
    let quote = platform.sgx_quote(&sgx);
    assert_eq!(quote[96] & 0x02, 0x02, "SGX ATTRIBUTES.DEBUG");

    let mut td = td_report();
    td.set_debug(true);
    let quote = platform.tdx_quote(&td, 4);
    assert_eq!(quote[48 + 120] & 0x01, 0x01, "TDATTRIBUTES.DEBUG");
    td.set_debug(false);
    let quote = platform.tdx_quote(&td, 4);
    assert_eq!(quote[48 + 120] & 0x01, 0x00);
}

#[test]
#[should_panic(expected = "TDX quote version 3 is not supported")]
fn tdx_quote_rejects_version_three() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    platform.tdx_quote(&td_report(), 3);
}

#[test]
fn pck_platform_extension_matches_spec() {
    let spec = PlatformSpec::default();
    let platform = TestPlatform::new(&spec);
    let der = platform.pck_der();
    let cert = certificate(&der);
    let fields = sgx_extension_fields(&cert);

    assert_eq!(field(&fields, "1").2, spec.ppid, "PPID");
    for (index, svn) in spec.cpu_svn_components.iter().enumerate() {
        let (_, tag, value) = field(&fields, &format!("2.{}", index + 1));
        assert_eq!(*tag, 0x02, "component {} is an INTEGER", index + 1);
        assert_eq!(value.last(), Some(svn), "component {}", index + 1);
    }
    assert_eq!(field(&fields, "2.17").2.last(), Some(&11), "PCESVN");
    assert_eq!(field(&fields, "2.18").2, spec.cpu_svn_components, "CPUSVN");
    assert_eq!(field(&fields, "3").2, [0, 0], "PCE-ID");
    assert_eq!(field(&fields, "4").2, spec.fmspc, "FMSPC");
    let (_, tag, value) = field(&fields, "5");
    assert_eq!(*tag, 0x0a, "SGX type is ENUMERATED");
    assert_eq!(value.last(), Some(&1), "SGX type Scalable");
    assert_eq!(field(&fields, "6").2, spec.platform_instance_id);
    assert_eq!(field(&fields, "7.1").1, 0x01, "dynamicPlatform is BOOLEAN");

    let subject = cert.subject().to_string();
    assert!(
        subject.contains("CN=Intel SGX PCK Certificate"),
        "{subject}"
    );
    let issuer = cert.issuer().to_string();
    assert!(issuer.contains("CN=Intel SGX PCK Platform CA"), "{issuer}");
    assert_eq!(
        cert.validity().not_before.timestamp(),
        spec.pck_validity.not_before
    );
    assert_eq!(
        cert.validity().not_after.timestamp(),
        spec.pck_validity.not_after
    );
}

#[test]
fn pck_processor_extension_has_no_platform_fields() {
    let platform = TestPlatform::new(&PlatformSpec::sgx());
    let der = platform.pck_der();
    let cert = certificate(&der);
    let fields = sgx_extension_fields(&cert);
    assert_eq!(field(&fields, "5").2.last(), Some(&0), "SGX type Standard");
    let platform_only = format!("{SGX_EXTENSION_OID}.6");
    assert!(fields.iter().all(|(oid, _, _)| *oid != platform_only));
    // Component 5 is 255 and must be encoded as 00 FF.
    assert_eq!(field(&fields, "2.5").2.last(), Some(&255));
    let issuer = cert.issuer().to_string();
    assert!(issuer.contains("CN=Intel SGX PCK Processor CA"), "{issuer}");
}

#[test]
fn pck_certificates_match_real_structure() {
    let Some(dir) = fixtures_dir() else { return };
    let cases = [
        ("tdx/dcap-qvl_tdx_quote.bin", PlatformSpec::default()),
        ("sgx-dcap/dcap-qvl_sgx_quote.bin", PlatformSpec::sgx()),
    ];
    for (case, (name, spec)) in cases.into_iter().enumerate() {
        let real_quote = read_fixture(&dir, name);
        let real_chain = pem_chain(split_quote(&real_quote).cert_data);
        let platform = TestPlatform::new(&spec);
        let ours_quote = platform.sgx_quote(&sgx_report());
        let our_chain = pem_chain(split_quote(&ours_quote).cert_data);

        for (index, (real_der, our_der)) in real_chain.iter().zip(&our_chain).enumerate() {
            let real = certificate(real_der);
            let ours = certificate(our_der);
            assert_eq!(
                real.subject().as_raw(),
                ours.subject().as_raw(),
                "case {case}: subject of certificate {index}"
            );
            assert_eq!(
                real.issuer().as_raw(),
                ours.issuer().as_raw(),
                "case {case}: issuer of certificate {index}"
            );
            assert_eq!(
                extension_oids(&real),
                extension_oids(&ours),
                "case {case}: extension order and criticality of certificate {index}"
            );
            assert_eq!(
                real.key_usage().ok().flatten().map(|ku| ku.value.flags),
                ours.key_usage().ok().flatten().map(|ku| ku.value.flags),
                "case {case}: key usage of certificate {index}"
            );
            assert_eq!(
                real.basic_constraints()
                    .ok()
                    .flatten()
                    .map(|bc| (bc.value.ca, bc.value.path_len_constraint)),
                ours.basic_constraints()
                    .ok()
                    .flatten()
                    .map(|bc| (bc.value.ca, bc.value.path_len_constraint)),
                "case {case}: basic constraints of certificate {index}"
            );
            assert_eq!(real.version(), ours.version());
            assert_eq!(
                real.signature_algorithm.algorithm,
                ours.signature_algorithm.algorithm
            );
        }

        let real_fields = sgx_extension_fields(&certificate(&real_chain[0]));
        let our_fields = sgx_extension_fields(&certificate(&our_chain[0]));
        let shape = |fields: &[(String, u8, Vec<u8>)]| {
            fields
                .iter()
                .map(|(oid, tag, value)| {
                    // Integers differ in length with their value; everything else must not.
                    let len = if *tag == 0x02 { 0 } else { value.len() };
                    (oid.clone(), *tag, len)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shape(&real_fields),
            shape(&our_fields),
            "case {case}: SGX extension"
        );
    }
}

#[test]
fn tcb_signing_chain_matches_real() {
    let Some(dir) = fixtures_dir() else { return };
    let real = fixture_collateral_json(&dir, "tdx/dcap-qvl_tdx_quote_collateral.json");
    let real_pem = real["tcb_info_issuer_chain"].as_str().expect("PEM chain");
    let real_chain = pem_chain(real_pem.as_bytes());
    let platform = TestPlatform::new(&PlatformSpec::default());
    let collateral = platform.collateral_tdx();
    assert_eq!(collateral.tcb_info_issuer_chain.len(), real_chain.len());
    for (real_der, our_der) in real_chain.iter().zip(&collateral.tcb_info_issuer_chain) {
        let real = certificate(real_der);
        let ours = certificate(our_der);
        assert_eq!(real.subject().as_raw(), ours.subject().as_raw());
        assert_eq!(extension_oids(&real), extension_oids(&ours));
    }
}

// ---------------------------------------------------------------------------------------------
// Collateral

fn check_collateral_chains(platform: &TestPlatform, collateral: &Collateral) {
    let root_der = platform.root_der();
    assert_eq!(
        collateral.pck_crl_issuer_chain,
        vec![platform.pck_ca_der(), root_der.clone()]
    );
    assert_eq!(
        collateral.tcb_info_issuer_chain,
        vec![platform.tcb_signing_der(), root_der.clone()]
    );
    assert_eq!(
        collateral.qe_identity_issuer_chain,
        collateral.tcb_info_issuer_chain
    );
    let root = certificate(&root_der);
    let signer_der = platform.tcb_signing_der();
    let signer = certificate(&signer_der);
    signer
        .verify_signature(Some(root.public_key()))
        .expect("root signs the TCB signing certificate");
    let point = public_key_point(&signer);
    assert!(verify_raw(
        &point,
        collateral.tcb_info.as_bytes(),
        &collateral.tcb_info_signature
    ));
    assert!(verify_raw(
        &point,
        collateral.qe_identity.as_bytes(),
        &collateral.qe_identity_signature
    ));
}

fn json_keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .expect("JSON object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn sgx_collateral_is_signed_json() {
    let spec = PlatformSpec::sgx();
    let platform = TestPlatform::new(&spec);
    let collateral = platform.collateral_sgx();
    check_collateral_chains(&platform, &collateral);

    assert!(
        collateral.tcb_info.starts_with(
            "{\"id\":\"SGX\",\"version\":3,\"issueDate\":\"2026-06-01T10:16:03Z\",\
             \"nextUpdate\":\"2026-07-01T10:16:03Z\",\"fmspc\":\"00A067110000\",\
             \"pceId\":\"0000\",\"tcbType\":0,\"tcbEvaluationDataNumber\":17,\"tcbLevels\":[\
             {\"tcb\":{\"sgxtcbcomponents\":[{\"svn\":11},{\"svn\":11},{\"svn\":2}"
        ),
        "{}",
        collateral.tcb_info
    );
    let tcb_info: Value = serde_json::from_str(&collateral.tcb_info).expect("TCB info JSON");
    let levels = tcb_info["tcbLevels"].as_array().expect("tcbLevels");
    assert_eq!(levels.len(), 2, "the platform's level and one below");
    assert_eq!(levels[0]["tcbStatus"], "UpToDate");
    assert_eq!(levels[0]["tcb"]["pcesvn"], 13);
    assert!(levels[0].get("advisoryIDs").is_none());
    assert_eq!(levels[1]["tcbStatus"], "OutOfDate");
    assert_eq!(levels[1]["tcb"]["pcesvn"], 12);
    assert!(levels[0]["tcb"].get("tdxtcbcomponents").is_none());

    let qe_identity: Value =
        serde_json::from_str(&collateral.qe_identity).expect("QE identity JSON");
    assert_eq!(qe_identity["id"], "QE");
    assert_eq!(qe_identity["version"], 2);
    assert_eq!(qe_identity["isvprodid"], 1);
    assert_eq!(
        qe_identity["mrsigner"],
        "8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF"
    );
    assert_eq!(qe_identity["issueDate"], "2026-06-01T10:32:27Z");
    assert_eq!(qe_identity["nextUpdate"], "2026-07-01T10:32:27Z");
    assert_eq!(qe_identity["tcbLevels"][0]["tcb"]["isvsvn"], 8);
    assert_eq!(qe_identity["tcbLevels"][0]["tcbStatus"], "UpToDate");
}

#[test]
fn tdx_collateral_has_module_identities() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let collateral = platform.collateral_tdx();
    check_collateral_chains(&platform, &collateral);

    let tcb_info: Value = serde_json::from_str(&collateral.tcb_info).expect("TCB info JSON");
    assert_eq!(tcb_info["id"], "TDX");
    assert_eq!(tcb_info["fmspc"], "B0C06F000000");
    assert_eq!(tcb_info["tdxModule"]["mrsigner"], "0".repeat(96));
    let identities = tcb_info["tdxModuleIdentities"]
        .as_array()
        .expect("tdxModuleIdentities");
    let ids: Vec<&str> = identities
        .iter()
        .map(|identity| identity["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["TDX_01", "TDX_03"]);
    assert_eq!(identities[0]["tcbLevels"][0]["tcb"]["isvsvn"], 5);
    let level = &tcb_info["tcbLevels"][0];
    assert_eq!(level["tcb"]["tdxtcbcomponents"][0]["svn"], 5);
    assert_eq!(level["tcb"]["tdxtcbcomponents"][2]["svn"], 2);
    assert_eq!(level["tcb"]["sgxtcbcomponents"][7]["svn"], 5);
    assert_eq!(level["tcb"]["sgxtcbcomponents"][7]["type"], "SEAMLDR ACM");

    let qe_identity: Value =
        serde_json::from_str(&collateral.qe_identity).expect("QE identity JSON");
    assert_eq!(qe_identity["id"], "TD_QE");
    assert_eq!(qe_identity["isvprodid"], 2);
}

#[test]
fn collateral_keys_match_real_order() {
    let Some(dir) = fixtures_dir() else { return };
    let cases = [
        ("tdx/dcap-qvl_tdx_quote_collateral.json", true),
        ("sgx-dcap/dcap-qvl_sgx_quote_collateral.json", false),
    ];
    let spec = PlatformSpec {
        tcb_status: TcbStatus::SWHardeningNeeded,
        advisory_ids: vec!["INTEL-SA-00615".to_owned()],
        ..PlatformSpec::default()
    };
    let platform = TestPlatform::new(&spec);
    for (case, (name, tdx)) in cases.into_iter().enumerate() {
        let real = fixture_collateral_json(&dir, name);
        let real_tcb: Value =
            serde_json::from_str(real["tcb_info"].as_str().expect("tcb_info")).expect("JSON");
        let real_qe: Value =
            serde_json::from_str(real["qe_identity"].as_str().expect("qe")).expect("JSON");
        let collateral = if tdx {
            platform.collateral_tdx()
        } else {
            platform.collateral_sgx()
        };
        let our_tcb: Value = serde_json::from_str(&collateral.tcb_info).expect("JSON");
        let our_qe: Value = serde_json::from_str(&collateral.qe_identity).expect("JSON");

        assert_eq!(
            json_keys(&real_tcb),
            json_keys(&our_tcb),
            "case {case}: tcbInfo keys"
        );
        assert_eq!(
            json_keys(&real_qe),
            json_keys(&our_qe),
            "case {case}: QE identity keys"
        );
        assert_eq!(
            json_keys(&real_tcb["tcbLevels"][0]["tcb"]),
            json_keys(&our_tcb["tcbLevels"][0]["tcb"]),
            "case {case}: tcb keys"
        );
        let with_advisories = |levels: &Value| -> Vec<String> {
            let level = levels
                .as_array()
                .expect("levels")
                .iter()
                .find(|level| level.get("advisoryIDs").is_some())
                .expect("a level with advisories");
            json_keys(level)
        };
        assert_eq!(
            with_advisories(&real_tcb["tcbLevels"]),
            with_advisories(&our_tcb["tcbLevels"]),
            "case {case}: level keys"
        );
        if tdx {
            assert_eq!(
                json_keys(&real_tcb["tdxModuleIdentities"][0]),
                json_keys(&our_tcb["tdxModuleIdentities"][0])
            );
            assert_eq!(
                json_keys(&real_tcb["tdxModule"]),
                json_keys(&our_tcb["tdxModule"])
            );
        }
        // Intel's text is compact, so writing the parsed object back gives the same bytes.
        assert_eq!(
            serde_json::to_string(&our_tcb).expect("JSON"),
            collateral.tcb_info
        );
        assert_eq!(
            serde_json::to_string(&our_qe).expect("JSON"),
            collateral.qe_identity
        );
        assert_eq!(
            serde_json::to_string(&real_tcb).expect("JSON"),
            real["tcb_info"].as_str().expect("tcb_info"),
            "case {case}: the real text is compact too"
        );
    }
}

#[test]
fn tcb_status_levels_bracket_platform() {
    let spec = PlatformSpec {
        tcb_status: TcbStatus::ConfigurationAndSWHardeningNeeded,
        advisory_ids: vec!["INTEL-SA-00289".to_owned(), "INTEL-SA-00615".to_owned()],
        ..PlatformSpec::sgx()
    };
    let platform = TestPlatform::new(&spec);
    let tcb_info: Value =
        serde_json::from_str(&platform.collateral_sgx().tcb_info).expect("TCB info JSON");
    let levels = tcb_info["tcbLevels"].as_array().expect("tcbLevels");
    assert_eq!(levels.len(), 3);
    assert_eq!(levels[0]["tcbStatus"], "UpToDate");
    assert_eq!(levels[0]["tcb"]["pcesvn"], 14, "above the platform");
    assert_eq!(levels[1]["tcbStatus"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(levels[1]["tcb"]["pcesvn"], 13);
    assert_eq!(
        levels[1]["advisoryIDs"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    assert_eq!(levels[2]["tcbStatus"], "OutOfDate");
}

#[test]
fn crls_carry_spec_times_and_revocations() {
    let spec = PlatformSpec {
        revoked_pck: true,
        revoked_pck_ca: true,
        ..PlatformSpec::default()
    };
    let platform = TestPlatform::new(&spec);
    let collateral = platform.collateral_tdx();

    let root_der = platform.root_der();
    let root = certificate(&root_der);
    let ca_der = platform.pck_ca_der();
    let ca = certificate(&ca_der);
    let pck_der = platform.pck_der();
    let pck = certificate(&pck_der);

    let (_, pck_crl) = parse_x509_crl(&collateral.pck_crl).expect("PCK CRL parses");
    pck_crl
        .verify_signature(ca.public_key())
        .expect("PCK CA signs the PCK CRL");
    assert_eq!(
        pck_crl.last_update().timestamp(),
        spec.crl_validity.not_before
    );
    assert_eq!(
        pck_crl.next_update().map(|time| time.timestamp()),
        Some(spec.crl_validity.not_after)
    );
    assert_eq!(pck_crl.issuer().as_raw(), ca.subject().as_raw());
    let revoked: Vec<_> = pck_crl
        .iter_revoked_certificates()
        .map(|entry| entry.raw_serial().to_vec())
        .collect();
    assert_eq!(revoked.len(), 3);
    assert!(revoked.contains(&pck.raw_serial().to_vec()));

    let (_, root_crl) = parse_x509_crl(&collateral.root_ca_crl).expect("root CRL parses");
    root_crl
        .verify_signature(root.public_key())
        .expect("root signs the root CA CRL");
    let revoked: Vec<_> = root_crl
        .iter_revoked_certificates()
        .map(|entry| entry.raw_serial().to_vec())
        .collect();
    assert_eq!(revoked, vec![ca.raw_serial().to_vec()]);

    let clean = TestPlatform::new(&PlatformSpec::default()).collateral_tdx();
    let (_, root_crl) = parse_x509_crl(&clean.root_ca_crl).expect("root CRL parses");
    assert_eq!(root_crl.iter_revoked_certificates().count(), 0);
    let (_, pck_crl) = parse_x509_crl(&clean.pck_crl).expect("PCK CRL parses");
    assert_eq!(pck_crl.iter_revoked_certificates().count(), 2);
}

#[test]
fn valid_window_is_intersection() {
    let spec = PlatformSpec::default();
    let window = spec.valid_window();
    assert_eq!(window.not_before, spec.qe_identity_validity.not_before);
    assert_eq!(window.not_after, spec.crl_validity.not_after);
    assert!(window.not_before <= PlatformSpec::DEFAULT_NOW);
    assert!(PlatformSpec::DEFAULT_NOW <= window.not_after);
    assert_eq!(spec.collateral_issued_at(), spec.crl_validity.not_before);

    let moved = spec.with_collateral_validity(Validity {
        not_before: 1_800_000_000,
        not_after: 1_800_086_400,
    });
    assert_eq!(moved.valid_window().not_before, 1_800_000_000);
    assert_eq!(moved.valid_window().not_after, 1_800_086_400);
    let platform = TestPlatform::new(&moved);
    let tcb_info: Value =
        serde_json::from_str(&platform.collateral_tdx().tcb_info).expect("TCB info JSON");
    assert_eq!(tcb_info["issueDate"], "2027-01-15T08:00:00Z");
    assert_eq!(tcb_info["nextUpdate"], "2027-01-16T08:00:00Z");
}

#[test]
fn pcs_folder_round_trips_collateral() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    for tdx in [false, true] {
        let dir = tempfile::tempdir().expect("temporary directory");
        platform
            .write_pcs_folder(dir.path(), tdx)
            .expect("collateral files are written");
        let collateral = if tdx {
            platform.collateral_tdx()
        } else {
            platform.collateral_sgx()
        };
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect("file exists");

        let tcb_file = String::from_utf8(read("tcb_info.json")).expect("UTF-8");
        assert_eq!(
            tcb_file,
            format!(
                "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                collateral.tcb_info,
                hex::encode(&collateral.tcb_info_signature)
            )
        );
        let qe_file = String::from_utf8(read("qe_identity.json")).expect("UTF-8");
        assert_eq!(
            qe_file,
            format!(
                "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                collateral.qe_identity,
                hex::encode(&collateral.qe_identity_signature)
            )
        );
        assert_eq!(
            pem_chain(&read("tcb_info_issuer_chain.pem")),
            collateral.tcb_info_issuer_chain
        );
        assert_eq!(
            pem_chain(&read("pck_crl_issuer_chain.pem")),
            collateral.pck_crl_issuer_chain
        );
        assert_eq!(read("pck_crl.der"), collateral.pck_crl);
        assert_eq!(read("root_ca_crl.der"), collateral.root_ca_crl);
    }
}

#[test]
fn certificates_carry_spec_validity() {
    let spec = PlatformSpec::default();
    let platform = TestPlatform::new(&spec);
    let cases = [
        (platform.root_der(), spec.root_validity),
        (platform.pck_ca_der(), spec.ca_validity),
        (platform.tcb_signing_der(), spec.ca_validity),
        (platform.pck_der(), spec.pck_validity),
    ];
    for (der, validity) in cases {
        let cert = certificate(&der);
        assert_eq!(cert.validity().not_before.timestamp(), validity.not_before);
        assert_eq!(cert.validity().not_after.timestamp(), validity.not_after);
    }
    assert_eq!(spec.pck_ca, PckCa::Platform);
}

// ---------------------------------------------------------------------------------------------
// Round trips through the twid verifier

fn anchors(platform: &TestPlatform) -> TrustAnchors {
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(&platform.root_der());
    anchors
}

fn expected_platform(spec: &PlatformSpec) -> PckPlatform {
    PckPlatform {
        fmspc: spec.fmspc,
        pce_id: spec.pce_id,
        pce_svn: spec.pce_svn,
        cpu_svn_components: spec.cpu_svn_components,
        ppid: spec.ppid,
        qe_isv_svn: spec.qe_isv_svn,
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("32-byte digest")
}

fn verify_sgx(platform: &TestPlatform, quote: &[u8], now: i64) -> Result<Verified, VerifyError> {
    verify(quote, &platform.collateral_sgx(), &anchors(platform), now)
}

fn verify_tdx(platform: &TestPlatform, quote: &[u8], now: i64) -> Result<Verified, VerifyError> {
    verify(quote, &platform.collateral_tdx(), &anchors(platform), now)
}

fn reason(result: Result<Verified, VerifyError>) -> Reason {
    match result {
        Ok(verified) => panic!("verification passed: {verified:?}"),
        Err(error) => error.reason,
    }
}

#[test]
fn verifier_accepts_sgx_quote() {
    let spec = PlatformSpec::sgx();
    let platform = TestPlatform::new(&spec);
    let report = sgx_report();
    let quote = platform.sgx_quote(&report);
    let verified =
        verify_sgx(&platform, &quote, PlatformSpec::DEFAULT_NOW).expect("quote verifies");

    assert_eq!(verified.kind, Kind::SgxDcap);
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    assert!(verified.advisory_ids.is_empty());
    assert_eq!(
        verified.collateral_issued_at,
        Some(spec.collateral_issued_at())
    );
    assert_eq!(verified.valid_until, Some(spec.valid_window().not_after));
    assert_eq!(verified.evidence_sha256, sha256(&quote));
    assert_eq!(
        verified.claims,
        Claims::Sgx(SgxClaims {
            mr_enclave: report.mr_enclave,
            mr_signer: report.mr_signer,
            isv_prod_id: report.isv_prod_id,
            isv_svn: report.isv_svn,
            attributes: report.attributes,
            cpu_svn: spec.cpu_svn_components,
            report_data: report.report_data,
            debug: false,
            platform: Some(expected_platform(&spec)),
        })
    );
}

#[test]
fn verifier_accepts_tdx_quotes() {
    let spec = PlatformSpec::default();
    let platform = TestPlatform::new(&spec);
    let report = td_report();
    for version in [4, 5] {
        let quote = platform.tdx_quote(&report, version);
        let verified =
            verify_tdx(&platform, &quote, PlatformSpec::DEFAULT_NOW).expect("quote verifies");
        assert_eq!(verified.kind, Kind::Tdx, "v{version}");
        assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate), "v{version}");
        assert!(verified.advisory_ids.is_empty(), "v{version}");
        assert_eq!(verified.valid_until, Some(spec.valid_window().not_after));
        assert_eq!(
            verified.claims,
            Claims::Tdx(TdxClaims {
                tee_tcb_svn: report.tee_tcb_svn,
                mr_seam: report.mr_seam,
                mr_signer_seam: report.mr_signer_seam,
                seam_attributes: report.seam_attributes,
                td_attributes: report.td_attributes,
                xfam: report.xfam,
                mr_td: report.mr_td,
                mr_config_id: report.mr_config_id,
                mr_owner: report.mr_owner,
                mr_owner_config: report.mr_owner_config,
                rtmr: report.rtmr,
                report_data: report.report_data,
                tee_tcb_svn2: None,
                mr_service_td: None,
                debug: false,
                platform: Some(expected_platform(&spec)),
            }),
            "v{version}"
        );
    }
}

#[test]
fn verifier_accepts_td15_quote() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let mut report = td_report();
    report.td15 = Some(Td15Fields {
        tee_tcb_svn2: [5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        mr_service_td: [0x9d; 48],
    });
    let quote = platform.tdx_quote(&report, 5);
    let verified =
        verify_tdx(&platform, &quote, PlatformSpec::DEFAULT_NOW).expect("quote verifies");
    let Claims::Tdx(claims) = verified.claims else {
        panic!("expected TDX claims");
    };
    assert_eq!(
        claims.tee_tcb_svn2,
        Some([5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    );
    assert_eq!(claims.mr_service_td, Some([0x9d; 48]));
    assert_eq!(claims.mr_td, report.mr_td);
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
}

#[test]
fn verifier_reports_debug_claims() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let mut sgx = sgx_report();
    sgx.set_debug(true);
    let verified = verify_sgx(
        &platform,
        &platform.sgx_quote(&sgx),
        PlatformSpec::DEFAULT_NOW,
    )
    .expect("debug enclaves pass verification; policy rejects them");
    assert!(verified.debug());

    let mut td = td_report();
    td.set_debug(true);
    let verified = verify_tdx(
        &platform,
        &platform.tdx_quote(&td, 4),
        PlatformSpec::DEFAULT_NOW,
    )
    .expect("debug TDs pass verification; policy rejects them");
    assert!(verified.debug());
}

#[test]
fn verifier_window_boundaries() {
    let spec = PlatformSpec::default();
    let platform = TestPlatform::new(&spec);
    let quote = platform.tdx_quote(&td_report(), 4);
    let window = spec.valid_window();
    assert!(verify_tdx(&platform, &quote, window.not_before).is_ok());
    assert!(verify_tdx(&platform, &quote, window.not_after).is_ok());
    assert_eq!(
        reason(verify_tdx(&platform, &quote, window.not_before - 1)),
        Reason::Expired
    );
    assert_eq!(
        reason(verify_tdx(&platform, &quote, window.not_after + 1)),
        Reason::Expired
    );
}

/// Sets one validity window so that it ends first (and starts last), to test it alone.
fn narrow(spec: &mut PlatformSpec, which: &str, validity: Validity) {
    match which {
        "root" => spec.root_validity = validity,
        "ca" => spec.ca_validity = validity,
        "pck" => spec.pck_validity = validity,
        "tcb_info" => spec.tcb_info_validity = validity,
        "qe_identity" => spec.qe_identity_validity = validity,
        "crl" => spec.crl_validity = validity,
        other => panic!("unknown window {other}"),
    }
}

#[test]
fn verifier_enforces_each_window() {
    let inner = Validity {
        not_before: PlatformSpec::DEFAULT_NOW - 3600,
        not_after: PlatformSpec::DEFAULT_NOW + 3600,
    };
    for which in ["root", "ca", "pck", "tcb_info", "qe_identity", "crl"] {
        let mut spec = PlatformSpec::sgx();
        narrow(&mut spec, which, inner);
        let platform = TestPlatform::new(&spec);
        let quote = platform.sgx_quote(&sgx_report());

        let verified = verify_sgx(&platform, &quote, inner.not_after)
            .unwrap_or_else(|error| panic!("{which}: valid at the end: {error}"));
        assert_eq!(verified.valid_until, Some(inner.not_after), "{which}");
        assert!(
            verify_sgx(&platform, &quote, inner.not_before).is_ok(),
            "{which}: valid at the start"
        );
        assert_eq!(
            reason(verify_sgx(&platform, &quote, inner.not_after + 1)),
            Reason::Expired,
            "{which}: one second after"
        );
        assert_eq!(
            reason(verify_sgx(&platform, &quote, inner.not_before - 1)),
            Reason::Expired,
            "{which}: one second before"
        );
    }
}

#[test]
fn verifier_rejects_revoked_certificates() {
    let spec = PlatformSpec {
        revoked_pck: true,
        ..PlatformSpec::default()
    };
    let platform = TestPlatform::new(&spec);
    let quote = platform.tdx_quote(&td_report(), 4);
    assert_eq!(
        reason(verify_tdx(&platform, &quote, PlatformSpec::DEFAULT_NOW)),
        Reason::Revoked
    );

    let spec = PlatformSpec {
        revoked_pck_ca: true,
        ..PlatformSpec::sgx()
    };
    let platform = TestPlatform::new(&spec);
    let quote = platform.sgx_quote(&sgx_report());
    assert_eq!(
        reason(verify_sgx(&platform, &quote, PlatformSpec::DEFAULT_NOW)),
        Reason::Revoked
    );
}

#[test]
fn verifier_returns_spec_tcb_status() {
    let advisories = vec!["INTEL-SA-00289".to_owned(), "INTEL-SA-00615".to_owned()];
    for status in [
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
    ] {
        let spec = PlatformSpec {
            tcb_status: status,
            advisory_ids: advisories.clone(),
            ..PlatformSpec::sgx()
        };
        let platform = TestPlatform::new(&spec);
        let verified = verify_sgx(
            &platform,
            &platform.sgx_quote(&sgx_report()),
            PlatformSpec::DEFAULT_NOW,
        )
        .unwrap_or_else(|error| panic!("{status}: {error}"));
        assert_eq!(verified.tcb_status, Some(status));
        assert_eq!(verified.advisory_ids, advisories, "{status}");
    }

    let spec = PlatformSpec {
        tcb_status: TcbStatus::Revoked,
        ..PlatformSpec::default()
    };
    let platform = TestPlatform::new(&spec);
    let quote = platform.tdx_quote(&td_report(), 5);
    assert_eq!(
        reason(verify_tdx(&platform, &quote, PlatformSpec::DEFAULT_NOW)),
        Reason::Revoked
    );
}

#[test]
fn verifier_rejects_low_tee_tcb() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let mut report = td_report();
    // TDX Late Microcode Update SVN 1 is below every TDX TCB level (2 and up).
    report.tee_tcb_svn[2] = 1;
    let quote = platform.tdx_quote(&report, 4);
    assert_eq!(
        reason(verify_tdx(&platform, &quote, PlatformSpec::DEFAULT_NOW)),
        Reason::TcbLevel
    );
}

#[test]
fn verifier_rejects_foreign_root() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let other = TestPlatform::new(&PlatformSpec::default());
    let quote = platform.tdx_quote(&td_report(), 4);
    let result = verify(
        &quote,
        &platform.collateral_tdx(),
        &anchors(&other),
        PlatformSpec::DEFAULT_NOW,
    );
    assert_eq!(reason(result), Reason::Chain);

    let production = TrustAnchors::production(Kind::Tdx);
    let result = verify(
        &quote,
        &platform.collateral_tdx(),
        &production,
        PlatformSpec::DEFAULT_NOW,
    );
    assert_eq!(reason(result), Reason::Chain);
}

#[test]
fn verifier_rejects_mismatched_collateral() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let td_quote = platform.tdx_quote(&td_report(), 4);
    let result = verify(
        &td_quote,
        &platform.collateral_sgx(),
        &anchors(&platform),
        PlatformSpec::DEFAULT_NOW,
    );
    assert_eq!(reason(result), Reason::Collateral);

    // Collateral for another FMSPC, under a root the verifier also trusts.
    let sgx_platform = TestPlatform::new(&PlatformSpec::sgx());
    let sgx_quote = sgx_platform.sgx_quote(&sgx_report());
    let mut both_roots = anchors(&sgx_platform);
    both_roots.add_certificate(&platform.root_der());
    let result = verify(
        &sgx_quote,
        &platform.collateral_sgx(),
        &both_roots,
        PlatformSpec::DEFAULT_NOW,
    );
    assert_eq!(reason(result), Reason::Collateral);
}

#[test]
fn verifier_rejects_flipped_bytes() {
    let platform = TestPlatform::new(&PlatformSpec::sgx());
    let quote = platform.sgx_quote(&sgx_report());
    for offset in [112, 628] {
        let mut flipped = quote.clone();
        flipped[offset] ^= 0x01;
        assert_eq!(
            reason(verify_sgx(&platform, &flipped, PlatformSpec::DEFAULT_NOW)),
            Reason::Signature,
            "byte {offset}"
        );
    }
    let mut flipped = quote;
    flipped[500] ^= 0x01;
    let error = verify_sgx(&platform, &flipped, PlatformSpec::DEFAULT_NOW)
        .expect_err("attestation key off the curve");
    assert!(
        matches!(error.reason, Reason::Malformed | Reason::Signature),
        "{error}"
    );

    let platform = TestPlatform::new(&PlatformSpec::default());
    let quote = platform.tdx_quote(&td_report(), 4);
    for offset in [184, 834] {
        let mut flipped = quote.clone();
        flipped[offset] ^= 0x01;
        assert_eq!(
            reason(verify_tdx(&platform, &flipped, PlatformSpec::DEFAULT_NOW)),
            Reason::Signature,
            "byte {offset}"
        );
    }
    let quote = platform.tdx_quote(&td_report(), 5);
    let mut flipped = quote;
    flipped[190] ^= 0x01;
    assert_eq!(
        reason(verify_tdx(&platform, &flipped, PlatformSpec::DEFAULT_NOW)),
        Reason::Signature
    );
}

#[test]
fn verifier_rejects_edited_collateral() {
    let platform = TestPlatform::new(&PlatformSpec::default());
    let quote = platform.tdx_quote(&td_report(), 4);
    let anchors = anchors(&platform);

    let mut collateral = platform.collateral_tdx();
    collateral.tcb_info = collateral.tcb_info.replacen("UpToDate", "UpToDatf", 1);
    let result = verify(&quote, &collateral, &anchors, PlatformSpec::DEFAULT_NOW);
    assert_eq!(reason(result), Reason::Signature);

    let mut collateral = platform.collateral_tdx();
    collateral.qe_identity_signature[0] ^= 0x10;
    let result = verify(&quote, &collateral, &anchors, PlatformSpec::DEFAULT_NOW);
    assert_eq!(reason(result), Reason::Signature);
}

#[test]
fn verifier_reads_pcs_folder() {
    let spec = PlatformSpec::default();
    let platform = TestPlatform::new(&spec);
    for tdx in [false, true] {
        let dir = tempfile::tempdir().expect("temporary directory");
        platform
            .write_pcs_folder(dir.path(), tdx)
            .expect("collateral files are written");
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect("file exists");
        let tcb_info = read("tcb_info.json");
        let qe_identity = read("qe_identity.json");
        let tcb_info_issuer_chain = read("tcb_info_issuer_chain.pem");
        let pck_crl = read("pck_crl.der");
        let pck_crl_issuer_chain = read("pck_crl_issuer_chain.pem");
        let root_ca_crl = read("root_ca_crl.der");
        let collateral = Collateral::from_pcs_files(&PcsFiles {
            tcb_info: &tcb_info,
            qe_identity: &qe_identity,
            tcb_info_issuer_chain: &tcb_info_issuer_chain,
            qe_identity_issuer_chain: None,
            pck_crl: &pck_crl,
            pck_crl_issuer_chain: &pck_crl_issuer_chain,
            root_ca_crl: &root_ca_crl,
        })
        .expect("the verifier reads the folder");
        let expected = if tdx {
            platform.collateral_tdx()
        } else {
            platform.collateral_sgx()
        };
        assert_eq!(collateral, expected);
        let quote = if tdx {
            platform.tdx_quote(&td_report(), 4)
        } else {
            platform.sgx_quote(&sgx_report())
        };
        let verified = verify(
            &quote,
            &collateral,
            &anchors(&platform),
            PlatformSpec::DEFAULT_NOW,
        )
        .expect("quote verifies with the folder's collateral");
        assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    }
}

#[test]
fn verifier_parses_generated_collateral() {
    let spec = PlatformSpec::default();
    let platform = TestPlatform::new(&spec);
    let collateral = platform.collateral_tdx();

    let tcb_info =
        twid_evidence::dcap::parse_tcb_info(&collateral.tcb_info).expect("TCB info parses");
    assert_eq!(tcb_info.id, "TDX");
    assert_eq!(tcb_info.version, 3);
    assert_eq!(tcb_info.issue_date, spec.tcb_info_validity.not_before);
    assert_eq!(tcb_info.next_update, spec.tcb_info_validity.not_after);
    assert_eq!(tcb_info.fmspc, spec.fmspc);
    assert_eq!(tcb_info.levels[0].pce_svn, spec.pce_svn);
    assert_eq!(
        tcb_info.levels[0].tdx_components.map(|svns| svns[0]),
        Some(u16::from(spec.tdx_components[0]))
    );
    assert_eq!(tcb_info.tdx_module_identities.len(), 2);

    let qe_identity = twid_evidence::dcap::parse_qe_identity(&collateral.qe_identity)
        .expect("QE identity parses");
    assert_eq!(qe_identity.id, "TD_QE");
    assert_eq!(qe_identity.issue_date, spec.qe_identity_validity.not_before);
    assert_eq!(qe_identity.isv_prod_id, 2);

    let quote = twid_evidence::dcap::parse_quote(&platform.tdx_quote(&td_report(), 5))
        .expect("quote parses");
    assert_eq!(quote.pck_chain.len(), 3);
}
