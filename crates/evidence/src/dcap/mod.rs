//! Intel SGX and TDX DCAP quote verification: SGX quote v3 and TDX quote v4 and v5, against
//! PCS collateral (TCB info, QE identity, CRLs) and pinned Intel roots.
//!
//! The checks follow Intel's published quote layouts and the TCB level selection of Intel's
//! Quote Verification Library. Nothing here reads files, the network or the clock.

mod collateral;
mod der;
mod pck;
mod pem;
mod pki;
mod quote;
mod tcb;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use x509_parser::certificate::X509Certificate;

pub use collateral::{Collateral, PCS_FILE_NAMES, PcsFileNames, PcsFiles};
pub use pck::{PckExtension, parse_pck_extension};
pub use quote::{
    ATTESTATION_KEY_ECDSA_P256, Body, CERT_DATA_PCK_CHAIN, CERT_DATA_QE_REPORT, Quote, SgxReport,
    TEE_TYPE_SGX, TEE_TYPE_TDX, TdReport, parse_quote,
};
pub use tcb::{
    IsvLevel, QeIdentity, TcbInfo, TcbLevel, TdxModule, TdxModuleIdentity, parse_qe_identity,
    parse_tcb_info,
};

use crate::claims::{PckPlatform, SgxClaims, TdxClaims};
use crate::roots::sha256;
use crate::{Claims, Kind, Reason, TcbStatus, TrustAnchors, Verified, VerifyError};
use pki::{Cert, Window, subject_cn};

/// Reads the FMSPC from the PCK certificate in a quote, to find collateral in a cache. No
/// signature is checked.
pub fn quote_fmspc(bytes: &[u8]) -> Result<[u8; 6], VerifyError> {
    let quote = parse_quote(bytes)?;
    let (_, leaf) = pck_leaf(&quote.pck_chain)?;
    Ok(parse_pck_extension(&leaf)?.fmspc)
}

/// Verifies a quote against its collateral at `now` (Unix seconds): the quote and QE report
/// signatures, the PCK chain to a root in `anchors`, revocation, the signed TCB info and QE
/// identity, and the TCB level. Debug enclaves and TDs pass, because the policy decides on them.
pub fn verify(
    quote: &[u8],
    collateral: &Collateral,
    anchors: &TrustAnchors,
    now: i64,
) -> Result<Verified, VerifyError> {
    let evidence_sha256 = sha256(quote);
    let parsed = parse_quote(quote)?;
    let mut window = Window::default();
    let checked = check_quote(&parsed, anchors, now, &mut window)?;
    let extension = &checked.extension;

    let tcb_chain = pki::verify_chain(
        &collateral.tcb_info_issuer_chain,
        anchors,
        now,
        "TCB info issuer chain",
        &mut window,
    )?;
    let qe_chain = pki::verify_chain(
        &collateral.qe_identity_issuer_chain,
        anchors,
        now,
        "QE identity issuer chain",
        &mut window,
    )?;

    let is_tdx = matches!(parsed.body, Body::Td(_));
    check_tcb_info_target(&collateral.tcb_info, extension, is_tdx)?;
    verify_json_signature(
        &collateral.tcb_info,
        &collateral.tcb_info_signature,
        &tcb_chain,
        "TCB info",
    )?;
    let tcb_info = parse_tcb_info(&collateral.tcb_info)?;
    window.check(
        "TCB info",
        ("issueDate", tcb_info.issue_date),
        ("nextUpdate", tcb_info.next_update),
        now,
        true,
    )?;

    verify_json_signature(
        &collateral.qe_identity,
        &collateral.qe_identity_signature,
        &qe_chain,
        "QE identity",
    )?;
    let qe_identity = parse_qe_identity(&collateral.qe_identity)?;
    let expected_qe_id = if is_tdx { "TD_QE" } else { "QE" };
    if qe_identity.id != expected_qe_id {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "QE identity id {:?} does not fit this quote; expected {expected_qe_id:?}",
                qe_identity.id
            ),
        ));
    }
    window.check(
        "QE identity",
        ("issueDate", qe_identity.issue_date),
        ("nextUpdate", qe_identity.next_update),
        now,
        true,
    )?;

    check_revocation(
        collateral,
        &checked.chain,
        &[&tcb_chain, &qe_chain],
        anchors,
        now,
        &mut window,
    )?;

    let evaluation = evaluate_tcb(&parsed, extension, &tcb_info, &qe_identity)?;
    if evaluation.status == TcbStatus::Revoked {
        return Err(VerifyError::new(
            Reason::Revoked,
            format!(
                "the platform TCB status is Revoked (advisories: {})",
                evaluation.advisory_ids.join(", ")
            ),
        ));
    }

    let (kind, claims) = claims(&parsed, extension);
    Ok(Verified {
        kind,
        claims,
        tcb_status: Some(evaluation.status),
        advisory_ids: evaluation.advisory_ids,
        collateral_issued_at: window.issued_at,
        valid_until: window.valid_until,
        evidence_sha256,
    })
}

/// Checks only the facts a quote proves by itself at `now`: the ISV signature, the QE report
/// signature and its binding of the attestation key, and the PCK chain to a root in `anchors`.
/// No CRL, TCB info or QE identity is consulted. The result therefore has no TCB status and
/// revocation is not checked, so use [`verify`] to admit a platform.
pub fn verify_quote_signatures(
    quote: &[u8],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<Verified, VerifyError> {
    let evidence_sha256 = sha256(quote);
    let parsed = parse_quote(quote)?;
    let mut window = Window::default();
    let checked = check_quote(&parsed, anchors, now, &mut window)?;
    let (kind, claims) = claims(&parsed, &checked.extension);
    Ok(Verified {
        kind,
        claims,
        tcb_status: None,
        advisory_ids: Vec::new(),
        collateral_issued_at: None,
        valid_until: window.valid_until,
        evidence_sha256,
    })
}

/// The PCK chain (leaf first, root last) and the platform values of its leaf.
struct CheckedQuote<'a> {
    chain: Vec<Cert<'a>>,
    extension: PckExtension,
}

/// Finds the PCK leaf: the certificate that carries the SGX extension.
fn pck_leaf(chain: &[Vec<u8>]) -> Result<(usize, X509Certificate<'_>), VerifyError> {
    for (index, der) in chain.iter().enumerate() {
        let cert = pki::parse_certificate(der, &format!("quote PCK chain certificate {index}"))?;
        if pck::has_sgx_extension(&cert) {
            return Ok((index, cert));
        }
    }
    Err(VerifyError::malformed(
        "quote PCK chain has no PCK certificate (no certificate carries the SGX extension)",
    ))
}

fn ecdsa_p256_key(point: &[u8], context: &str) -> Result<ParsedPublicKey, VerifyError> {
    ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .map_err(|_| VerifyError::malformed(format!("{context} is not a valid P-256 point")))
}

fn check_quote<'a>(
    quote: &'a Quote,
    anchors: &'a TrustAnchors,
    now: i64,
    window: &mut Window,
) -> Result<CheckedQuote<'a>, VerifyError> {
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&quote.attestation_key);
    let attestation_key = ecdsa_p256_key(&point, "the quote's attestation key")?;
    attestation_key
        .verify_sig(&quote.signed_data, &quote.signature)
        .map_err(|_| {
            VerifyError::signature(
                "ISV signature over the quote header and body does not verify under the attestation key",
            )
        })?;

    let (_, leaf) = pck_leaf(&quote.pck_chain)?;
    let leaf_key = ecdsa_p256_key(
        &leaf.public_key().subject_public_key.data,
        "the PCK certificate's public key",
    )?;
    leaf_key
        .verify_sig(&quote.qe_report_bytes, &quote.qe_report_signature)
        .map_err(|_| {
            VerifyError::signature(format!(
                "QE report signature does not verify under the PCK certificate {}",
                subject_cn(&leaf)
            ))
        })?;
    let mut hashed = quote.attestation_key.to_vec();
    hashed.extend_from_slice(&quote.qe_auth_data);
    let expected = sha256(&hashed);
    let report_data = &quote.qe_report.report_data;
    if report_data[..32] != expected || report_data[32..].iter().any(|byte| *byte != 0) {
        return Err(VerifyError::signature(
            "QE report data is not SHA-256 of the attestation key and QE authentication data followed by 32 zero bytes",
        ));
    }

    let chain = pki::verify_chain(
        &quote.pck_chain,
        anchors,
        now,
        "PCK certificate chain",
        window,
    )?;
    if chain.len() < 3 {
        return Err(VerifyError::chain(format!(
            "PCK certificate chain has {} certificates with its root; expected leaf, PCK CA and root",
            chain.len()
        )));
    }
    let extension = match chain.first() {
        Some(first) if pck::has_sgx_extension(&first.x509) => parse_pck_extension(&first.x509)?,
        _ => {
            return Err(VerifyError::chain(
                "PCK certificate chain does not start at the PCK certificate",
            ));
        }
    };
    Ok(CheckedQuote { chain, extension })
}

/// Checks that the TCB info is for this platform and TEE before its signature is checked, so
/// that collateral for another platform is reported as such.
fn check_tcb_info_target(
    json: &str,
    extension: &PckExtension,
    is_tdx: bool,
) -> Result<(), VerifyError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|error| VerifyError::malformed(format!("TCB info is not valid JSON: {error}")))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| VerifyError::malformed(format!("TCB info has no {name} string")))
    };
    let fmspc = field("fmspc")?;
    if !fmspc.eq_ignore_ascii_case(&hex::encode(extension.fmspc)) {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "FMSPC mismatch: the TCB info is for FMSPC {}, but the PCK certificate has {}",
                fmspc.to_ascii_uppercase(),
                hex::encode_upper(extension.fmspc)
            ),
        ));
    }
    let pce_id = field("pceId")?;
    if !pce_id.eq_ignore_ascii_case(&hex::encode(extension.pce_id)) {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "PCEID mismatch: the TCB info is for PCEID {}, but the PCK certificate has {}",
                pce_id.to_ascii_uppercase(),
                hex::encode_upper(extension.pce_id)
            ),
        ));
    }
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("SGX");
    let expected = if is_tdx { "TDX" } else { "SGX" };
    if id != expected {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!("TCB info id {id:?} does not fit this quote; expected {expected:?}"),
        ));
    }
    Ok(())
}

/// Verifies a raw r||s ECDSA-P256 signature over the exact JSON text, by the first
/// certificate of a verified chain. Intel's TCB Signing certificate is issued by the root
/// itself, so a longer chain is rejected: any PCK certificate also chains to the root, and
/// its key must not be able to sign collateral.
fn verify_json_signature(
    json: &str,
    signature: &[u8],
    chain: &[Cert<'_>],
    context: &str,
) -> Result<(), VerifyError> {
    let [signer, _root] = chain else {
        return Err(VerifyError::chain(format!(
            "{context} issuer chain has {} certificates with its root; expected the signer issued by the root",
            chain.len()
        )));
    };
    let key = ecdsa_p256_key(
        &signer.x509.public_key().subject_public_key.data,
        &format!("{context} signing certificate key"),
    )?;
    key.verify_sig(json.as_bytes(), signature).map_err(|_| {
        VerifyError::signature(format!(
            "{context} signature does not verify under {}",
            subject_cn(&signer.x509)
        ))
    })
}

/// Checks the root CA CRL and the PCK CRL, and that no certificate used is revoked.
fn check_revocation(
    collateral: &Collateral,
    pck_chain: &[Cert<'_>],
    signing_chains: &[&[Cert<'_>]],
    anchors: &TrustAnchors,
    now: i64,
    window: &mut Window,
) -> Result<(), VerifyError> {
    let (Some(leaf), Some(root)) = (pck_chain.first(), pck_chain.last()) else {
        return Err(VerifyError::chain("PCK certificate chain is empty"));
    };

    let root_crl = pki::parse_crl(&collateral.root_ca_crl, "root CA CRL")?;
    pki::check_crl(&root_crl, &root.x509, now, "root CA CRL", window)?;
    let intermediates = pck_chain
        .iter()
        .chain(signing_chains.iter().flat_map(|chain| chain.iter()))
        .filter(|cert| cert.x509.issuer().as_raw() == root.x509.subject().as_raw())
        .filter(|cert| cert.x509.subject().as_raw() != root.x509.subject().as_raw());
    for cert in intermediates {
        pki::check_not_revoked(&root_crl, &cert.x509, "root CA CRL")?;
    }

    let crl_chain = pki::verify_chain(
        &collateral.pck_crl_issuer_chain,
        anchors,
        now,
        "PCK CRL issuer chain",
        window,
    )?;
    // The PCK CA, which signs the PCK CRL, is issued by the root itself.
    let [crl_signer, _root] = crl_chain.as_slice() else {
        return Err(VerifyError::chain(format!(
            "PCK CRL issuer chain has {} certificates with its root; expected the PCK CA issued by the root",
            crl_chain.len()
        )));
    };
    if crl_signer.x509.subject().as_raw() != leaf.x509.issuer().as_raw() {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "PCK CRL issuer chain starts at {}, but the PCK certificate is issued by {}",
                subject_cn(&crl_signer.x509),
                leaf.x509.issuer()
            ),
        ));
    }
    let pck_crl = pki::parse_crl(&collateral.pck_crl, "PCK CRL")?;
    pki::check_crl(&pck_crl, &crl_signer.x509, now, "PCK CRL", window)?;
    pki::check_not_revoked(&pck_crl, &leaf.x509, "PCK CRL")
}

/// Selects the platform, TDX module and QE levels and combines their statuses.
fn evaluate_tcb(
    quote: &Quote,
    extension: &PckExtension,
    tcb_info: &TcbInfo,
    qe_identity: &QeIdentity,
) -> Result<tcb::Evaluation, VerifyError> {
    let tdx = match &quote.body {
        Body::Td(td) => Some((&td.tee_tcb_svn, &td.mr_signer_seam, &td.seam_attributes)),
        Body::Sgx(_) => None,
    };
    let platform = tcb::PlatformTcb {
        cpu_svn_components: &extension.cpu_svn_components,
        pce_svn: extension.pce_svn,
        tdx,
    };
    let level = tcb::platform_level(tcb_info, &platform)?;
    let mut status = level.status;
    let mut advisories: Vec<&[String]> = vec![&level.advisory_ids];

    if let Some((tee_tcb_svn, mr_signer_seam, seam_attributes)) = tdx
        && let Some(module) =
            tcb::tdx_module_level(tcb_info, tee_tcb_svn, mr_signer_seam, seam_attributes)?
    {
        status = tcb::converge(status, module.status);
        advisories.push(&module.advisory_ids);
    }

    let qe = &quote.qe_report;
    let qe_level = tcb::qe_level(
        qe_identity,
        &tcb::QeReportFields {
            mr_signer: &qe.mr_signer,
            isv_prod_id: qe.isv_prod_id,
            misc_select: qe.misc_select,
            attributes: &qe.attributes,
            isv_svn: qe.isv_svn,
        },
    )?;
    status = tcb::converge(status, qe_level.status);
    advisories.push(&qe_level.advisory_ids);
    Ok(tcb::evaluation(status, tcb::merge_advisories(advisories)))
}

fn claims(quote: &Quote, extension: &PckExtension) -> (Kind, Claims) {
    let platform = PckPlatform {
        fmspc: extension.fmspc,
        pce_id: extension.pce_id,
        pce_svn: extension.pce_svn,
        cpu_svn_components: extension.cpu_svn_components,
        ppid: extension.ppid,
        qe_isv_svn: quote.qe_report.isv_svn,
    };
    match &quote.body {
        Body::Sgx(report) => (
            Kind::SgxDcap,
            Claims::Sgx(SgxClaims {
                mr_enclave: report.mr_enclave,
                mr_signer: report.mr_signer,
                isv_prod_id: report.isv_prod_id,
                isv_svn: report.isv_svn,
                attributes: report.attributes,
                cpu_svn: report.cpu_svn,
                report_data: report.report_data,
                debug: report.attributes[0] & 0x02 != 0,
                platform: Some(platform),
            }),
        ),
        Body::Td(td) => (
            Kind::Tdx,
            Claims::Tdx(TdxClaims {
                tee_tcb_svn: td.tee_tcb_svn,
                mr_seam: td.mr_seam,
                mr_signer_seam: td.mr_signer_seam,
                seam_attributes: td.seam_attributes,
                td_attributes: td.td_attributes,
                xfam: td.xfam,
                mr_td: td.mr_td,
                mr_config_id: td.mr_config_id,
                mr_owner: td.mr_owner,
                mr_owner_config: td.mr_owner_config,
                rtmr: td.rtmr,
                report_data: td.report_data,
                tee_tcb_svn2: td.tee_tcb_svn2,
                mr_service_td: td.mr_service_td,
                debug: td.td_attributes[0] & 0x01 != 0,
                platform: Some(platform),
            }),
        ),
    }
}
