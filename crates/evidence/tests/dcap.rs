//! DCAP verifier tests against published SGX and TDX quotes with their collateral.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use twid_evidence::claims::{SgxClaims, TdxClaims};
use twid_evidence::dcap::{self, Body, Collateral, PcsFiles};
use twid_evidence::{Claims, Kind, Reason, TcbStatus, TrustAnchors, Verified, VerifyError};

/// The attestation fixture folder, or `None` (after printing why) when it is absent.
fn fixtures() -> Option<PathBuf> {
    let root = std::env::var_os("TWID_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
        PathBuf::from,
    );
    let dir = root.join("attestation");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("fixtures not found at {}; skipping", dir.display());
        None
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|error| panic!("cannot read a fixture: {error}"))
}

fn unix(rfc3339: &str) -> i64 {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .expect("valid RFC 3339 time")
        .unix_timestamp()
}

fn production() -> TrustAnchors {
    TrustAnchors::production(Kind::SgxDcap)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

fn hex_array<const N: usize>(value: &str) -> [u8; N] {
    let bytes = hex::decode(value).expect("valid hex");
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(&bytes);
    out
}

fn expect_reason(result: Result<Verified, VerifyError>, reason: Reason, case: &str) -> VerifyError {
    match result {
        Ok(verified) => panic!("{case}: expected {reason} failure, got {verified:?}"),
        Err(error) => {
            assert_eq!(error.reason, reason, "{case}: {error}");
            error
        }
    }
}

fn sgx_claims(verified: &Verified) -> &SgxClaims {
    match &verified.claims {
        Claims::Sgx(claims) => claims,
        other => panic!("expected SGX claims, got {other:?}"),
    }
}

fn tdx_claims(verified: &Verified) -> &TdxClaims {
    match &verified.claims {
        Claims::Tdx(claims) => claims,
        other => panic!("expected TDX claims, got {other:?}"),
    }
}

/// A sample that verifies with its dcap-qvl collateral, with the window in which it does.
struct Sample {
    quote: Vec<u8>,
    collateral: Collateral,
    start: i64,
    end: i64,
    now: i64,
}

fn dcap_qvl_sample(dir: &Path, quote: &str, collateral: &str) -> (Vec<u8>, Collateral) {
    let quote = read(dir, quote);
    let collateral =
        Collateral::from_dcap_qvl_json(&read(dir, collateral)).expect("collateral parses");
    (quote, collateral)
}

fn near_quote(dir: &Path) -> Vec<u8> {
    let text = String::from_utf8(read(dir, "tdx/dcap-qvl_near_tdx_quote.hex")).expect("hex text");
    hex::decode(text.trim()).expect("valid hex quote")
}

fn verifying_samples(dir: &Path) -> Vec<(&'static str, Sample)> {
    let (sgx_quote, sgx_collateral) = dcap_qvl_sample(
        dir,
        "sgx-dcap/dcap-qvl_sgx_quote.bin",
        "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
    );
    let (tdx_quote, tdx_collateral) = dcap_qvl_sample(
        dir,
        "tdx/dcap-qvl_tdx_quote.bin",
        "tdx/dcap-qvl_tdx_quote_collateral.json",
    );
    let near_collateral =
        Collateral::from_dcap_qvl_json(&read(dir, "tdx/dcap-qvl_near_tdx_quote_collateral.json"))
            .expect("collateral parses");
    vec![
        (
            "dcap-qvl SGX",
            Sample {
                quote: sgx_quote,
                collateral: sgx_collateral,
                start: unix("2025-06-19T10:56:11Z"),
                end: unix("2025-07-19T10:01:18Z"),
                now: 1_751_328_000,
            },
        ),
        (
            "dcap-qvl TDX",
            Sample {
                quote: tdx_quote,
                collateral: tdx_collateral,
                start: unix("2025-06-19T10:32:27Z"),
                end: unix("2025-07-19T10:00:35Z"),
                now: 1_751_328_000,
            },
        ),
        (
            "near TDX",
            Sample {
                quote: near_quote(dir),
                collateral: near_collateral,
                start: unix("2025-09-02T07:41:59Z"),
                end: unix("2025-10-02T07:03:51Z"),
                now: 1_757_894_400,
            },
        ),
    ]
}

#[test]
fn sgx_quote_verifies_with_claims() {
    let Some(dir) = fixtures() else { return };
    let (quote, collateral) = dcap_qvl_sample(
        &dir,
        "sgx-dcap/dcap-qvl_sgx_quote.bin",
        "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
    );
    let verified =
        dcap::verify(&quote, &collateral, &production(), 1_751_328_000).expect("verifies");
    assert_eq!(verified.kind, Kind::SgxDcap);
    assert_eq!(
        verified.tcb_status,
        Some(TcbStatus::ConfigurationAndSWHardeningNeeded)
    );
    assert_eq!(verified.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(verified.valid_until, Some(unix("2025-07-19T10:01:18Z")));
    // The root CA CRL is the oldest dated collateral.
    assert_eq!(
        verified.collateral_issued_at,
        Some(unix("2025-03-20T11:21:57Z"))
    );
    assert_eq!(verified.evidence_sha256, sha256(&quote));

    let claims = sgx_claims(&verified);
    assert_eq!(
        hex::encode(claims.mr_enclave),
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        hex::encode(claims.mr_signer),
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(claims.isv_prod_id, 0);
    assert_eq!(claims.isv_svn, 0);
    assert_eq!(
        hex::encode(claims.attributes),
        "0500000000000000e700000000000000"
    );
    assert!(!claims.debug);
    assert_eq!(
        hex::encode(claims.cpu_svn),
        "0b0b1a18ffff04000000000000000000"
    );
    assert_eq!(
        claims.report_data,
        hex_array::<64>("48656c6c6f2c20776f726c6421")
    );
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(hex::encode_upper(platform.fmspc), "00A067110000");
    assert_eq!(platform.pce_id, [0, 0]);
    assert_eq!(platform.pce_svn, 13);
    assert_eq!(
        platform.cpu_svn_components,
        [11, 11, 2, 2, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(platform.qe_isv_svn, 10);
    assert_eq!(verified.bound_data(), Some(&claims.report_data[..]));
}

#[test]
fn tdx_v4_quote_verifies_with_claims() {
    let Some(dir) = fixtures() else { return };
    let (quote, collateral) = dcap_qvl_sample(
        &dir,
        "tdx/dcap-qvl_tdx_quote.bin",
        "tdx/dcap-qvl_tdx_quote_collateral.json",
    );
    // The quote has 70 zero bytes after its signature data.
    assert_eq!(quote.len(), 5006);
    let verified =
        dcap::verify(&quote, &collateral, &production(), 1_751_328_000).expect("verifies");
    assert_eq!(verified.kind, Kind::Tdx);
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    assert!(verified.advisory_ids.is_empty());
    assert_eq!(verified.valid_until, Some(unix("2025-07-19T10:00:35Z")));

    let claims = tdx_claims(&verified);
    assert_eq!(
        hex::encode(claims.mr_td),
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    );
    assert_eq!(
        hex::encode(claims.rtmr[0]),
        "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
    );
    assert_eq!(
        hex::encode(claims.rtmr[1]),
        "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378"
    );
    assert_eq!(
        hex::encode(claims.rtmr[2]),
        "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132"
    );
    assert_eq!(claims.rtmr[3], [0u8; 48]);
    assert_eq!(
        hex::encode(claims.report_data),
        "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
    );
    assert_eq!(
        hex::encode(claims.tee_tcb_svn),
        "06010300000000000000000000000000"
    );
    assert_eq!(
        hex::encode(claims.mr_seam),
        "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1"
    );
    assert_eq!(hex::encode(claims.td_attributes), "0000001000000000");
    assert!(!claims.debug);
    assert_eq!(hex::encode(claims.xfam), "e702060000000000");
    assert_eq!(claims.mr_config_id, [0u8; 48]);
    assert_eq!(claims.mr_owner, [0u8; 48]);
    assert_eq!(claims.mr_owner_config, [0u8; 48]);
    assert_eq!(claims.tee_tcb_svn2, None);
    assert_eq!(claims.mr_service_td, None);
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(hex::encode_upper(platform.fmspc), "B0C06F000000");
    assert_eq!(platform.pce_svn, 11);
}

#[test]
fn near_tdx_quote_verifies() {
    let Some(dir) = fixtures() else { return };
    let quote = near_quote(&dir);
    assert_eq!(quote.len(), 5006);
    let collateral =
        Collateral::from_dcap_qvl_json(&read(&dir, "tdx/dcap-qvl_near_tdx_quote_collateral.json"))
            .expect("collateral parses");
    let verified =
        dcap::verify(&quote, &collateral, &production(), 1_757_894_400).expect("verifies");
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    assert!(verified.advisory_ids.is_empty());
    let claims = tdx_claims(&verified);
    assert_eq!(
        hex::encode(claims.mr_td),
        "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077"
    );
    assert_eq!(
        claims.report_data,
        hex_array::<64>(
            "0001d579ba6e734a1046feb6112f852df5f4f1e44a4e7ce1755ce3b07bd6aaab04e89ca01fdf4956d2f609c2709731cb813a"
        )
    );
    assert_eq!(
        hex::encode(claims.tee_tcb_svn),
        "06010400000000000000000000000000"
    );
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(hex::encode_upper(platform.fmspc), "20A06F000000");
}

#[test]
fn validity_window_edges() {
    let Some(dir) = fixtures() else { return };
    let anchors = production();
    for (name, sample) in verifying_samples(&dir) {
        for now in [sample.start, sample.now, sample.end] {
            let result = dcap::verify(&sample.quote, &sample.collateral, &anchors, now);
            assert!(result.is_ok(), "{name} at {now}: {result:?}");
        }
        let before = dcap::verify(
            &sample.quote,
            &sample.collateral,
            &anchors,
            sample.start - 1,
        );
        expect_reason(
            before,
            Reason::Expired,
            &format!("{name} one second before its window"),
        );
        let after = dcap::verify(&sample.quote, &sample.collateral, &anchors, sample.end + 1);
        let error = expect_reason(
            after,
            Reason::Expired,
            &format!("{name} one second after its window"),
        );
        assert!(error.message.contains("nextUpdate"), "{name}: {error}");
    }
}

#[test]
fn expired_message_names_item() {
    let Some(dir) = fixtures() else { return };
    let (quote, collateral) = dcap_qvl_sample(
        &dir,
        "sgx-dcap/dcap-qvl_sgx_quote.bin",
        "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
    );
    let error = dcap::verify(
        &quote,
        &collateral,
        &production(),
        unix("2025-07-20T00:00:00Z"),
    )
    .expect_err("expired");
    assert_eq!(
        error.to_string(),
        "expired: TCB info nextUpdate 2025-07-19T10:56:11Z is before now 2025-07-20T00:00:00Z"
    );
}

#[test]
fn outdated_tdx_v5_has_no_level() {
    let Some(dir) = fixtures() else { return };
    let (quote, collateral) = dcap_qvl_sample(
        &dir,
        "tdx/dcap-qvl_tdx_quote_outdated.bin",
        "tdx/dcap-qvl_tdx_quote_outdated_collateral.json",
    );
    let parsed = dcap::parse_quote(&quote).expect("parses");
    assert_eq!(parsed.version, 5);
    let Body::Td(td) = &parsed.body else {
        panic!("expected a TD body");
    };
    assert_eq!(
        hex::encode(td.mr_td),
        "273828c46252fcbdd8ad2dd907130222b03466d52a2911d70c1a5950895d6bd1ae451d382d5a9b1b4c0ed0e5ae9a3dbd"
    );
    assert_eq!(td.rtmr, [[0u8; 48]; 4]);
    assert_eq!(
        td.report_data,
        hex_array::<64>("d2142b643598eb5fae2bc8529dd79a558b29f868ccbb6531cb28dab9dce47728")
    );
    assert_eq!(
        hex::encode(td.tee_tcb_svn),
        "07010300000000000000000000000000"
    );
    assert_eq!(td.tee_tcb_svn2, Some(hex_array::<16>("0d0103")));
    assert_eq!(td.mr_service_td, Some([0u8; 48]));
    assert_eq!(
        dcap::quote_fmspc(&quote),
        Ok(hex_array::<6>("90c06f000000"))
    );

    let anchors = production();
    let error = expect_reason(
        dcap::verify(&quote, &collateral, &anchors, 1_772_323_200),
        Reason::TcbLevel,
        "outdated TDX v5",
    );
    assert!(error.message.contains("no TCB level matches"), "{error}");
    let start = unix("2026-02-18T10:58:51Z");
    let end = unix("2026-03-20T10:41:15Z");
    for now in [start, end] {
        expect_reason(
            dcap::verify(&quote, &collateral, &anchors, now),
            Reason::TcbLevel,
            "edge",
        );
    }
    expect_reason(
        dcap::verify(&quote, &collateral, &anchors, start - 1),
        Reason::Expired,
        "before",
    );
    expect_reason(
        dcap::verify(&quote, &collateral, &anchors, end + 1),
        Reason::Expired,
        "after",
    );
}

#[test]
fn quote_byte_flips_fail() {
    let Some(dir) = fixtures() else { return };
    let anchors = production();
    let cases: [(&str, &str, usize, Reason); 7] = [
        (
            "sgx-dcap/dcap-qvl_sgx_quote.bin",
            "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
            112,
            Reason::Signature,
        ),
        (
            "sgx-dcap/dcap-qvl_sgx_quote.bin",
            "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
            628,
            Reason::Signature,
        ),
        (
            "sgx-dcap/dcap-qvl_sgx_quote.bin",
            "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
            500,
            Reason::Malformed,
        ),
        (
            "tdx/dcap-qvl_tdx_quote.bin",
            "tdx/dcap-qvl_tdx_quote_collateral.json",
            184,
            Reason::Signature,
        ),
        (
            "tdx/dcap-qvl_tdx_quote.bin",
            "tdx/dcap-qvl_tdx_quote_collateral.json",
            834,
            Reason::Signature,
        ),
        (
            "tdx/dcap-qvl_tdx_quote_outdated.bin",
            "tdx/dcap-qvl_tdx_quote_outdated_collateral.json",
            190,
            Reason::Signature,
        ),
        (
            "tdx/dcap-qvl_tdx_quote.bin",
            "tdx/dcap-qvl_tdx_quote_collateral.json",
            700,
            Reason::Malformed,
        ),
    ];
    for (index, (quote_name, collateral_name, offset, reason)) in cases.into_iter().enumerate() {
        let (mut quote, collateral) = dcap_qvl_sample(&dir, quote_name, collateral_name);
        let now = if quote_name.contains("outdated") {
            1_772_323_200
        } else {
            1_751_328_000
        };
        quote[offset] ^= 0x01;
        let case = format!("case {index}: byte {offset} flipped");
        expect_reason(
            dcap::verify(&quote, &collateral, &anchors, now),
            reason,
            &case,
        );
        expect_reason(
            dcap::verify_quote_signatures(&quote, &anchors, now),
            reason,
            &case,
        );
    }
}

#[test]
fn quote_only_byte_flips_fail() {
    let Some(dir) = fixtures() else { return };
    let anchors = production();
    let cases: [(&str, usize, Reason); 4] = [
        ("sgx-dcap/mobilecoin_hw_quote.bin", 112, Reason::Signature),
        ("sgx-dcap/mobilecoin_hw_quote.bin", 628, Reason::Signature),
        ("sgx-dcap/mobilecoin_hw_quote.bin", 500, Reason::Malformed),
        ("tdx/trustee_tdx_quote_v5.bin", 190, Reason::Signature),
    ];
    for (index, (name, offset, reason)) in cases.into_iter().enumerate() {
        let mut quote = read(&dir, name);
        assert!(
            dcap::verify_quote_signatures(&quote, &anchors, 1_751_328_000).is_ok(),
            "case {index} intact"
        );
        quote[offset] ^= 0x01;
        let case = format!("case {index}: byte {offset} flipped");
        expect_reason(
            dcap::verify_quote_signatures(&quote, &anchors, 1_751_328_000),
            reason,
            &case,
        );
    }
}

#[test]
fn collateral_edits_break_signature() {
    let Some(dir) = fixtures() else { return };
    let anchors = production();
    for (name, sample) in verifying_samples(&dir) {
        let mut edited = sample.collateral.clone();
        edited.tcb_info = edited
            .tcb_info
            .replacen("\"tcbDate\":\"20", "\"tcbDate\":\"21", 1);
        assert_ne!(edited.tcb_info, sample.collateral.tcb_info, "{name}");
        let error = expect_reason(
            dcap::verify(&sample.quote, &edited, &anchors, sample.now),
            Reason::Signature,
            &format!("{name} TCB info date edited"),
        );
        assert!(error.message.contains("TCB info signature"), "{error}");

        if sample.collateral.tcb_info.contains("\"UpToDate\"") {
            let mut edited = sample.collateral.clone();
            edited.tcb_info = edited.tcb_info.replacen("\"UpToDate\"", "\"UpToDatf\"", 1);
            expect_reason(
                dcap::verify(&sample.quote, &edited, &anchors, sample.now),
                Reason::Signature,
                &format!("{name} TCB info status edited"),
            );
        }

        let mut edited = sample.collateral.clone();
        edited.qe_identity = edited
            .qe_identity
            .replacen("\"UpToDate\"", "\"UpToDatf\"", 1);
        let error = expect_reason(
            dcap::verify(&sample.quote, &edited, &anchors, sample.now),
            Reason::Signature,
            &format!("{name} QE identity edited"),
        );
        assert!(error.message.contains("QE identity signature"), "{error}");

        let mut edited = sample.collateral.clone();
        edited.tcb_info_signature[5] ^= 0x10;
        expect_reason(
            dcap::verify(&sample.quote, &edited, &anchors, sample.now),
            Reason::Signature,
            &format!("{name} TCB info signature flipped"),
        );

        let mut edited = sample.collateral.clone();
        edited.qe_identity_signature[40] ^= 0x01;
        expect_reason(
            dcap::verify(&sample.quote, &edited, &anchors, sample.now),
            Reason::Signature,
            &format!("{name} QE identity signature flipped"),
        );

        let mut edited = sample.collateral.clone();
        let last = edited.pck_crl.len() - 1;
        edited.pck_crl[last] ^= 0x01;
        expect_reason(
            dcap::verify(&sample.quote, &edited, &anchors, sample.now),
            Reason::Signature,
            &format!("{name} PCK CRL signature flipped"),
        );
    }
}

#[test]
fn hex_digit_flip_in_json_signature() {
    let Some(dir) = fixtures() else { return };
    let json = String::from_utf8(read(&dir, "sgx-dcap/dcap-qvl_sgx_quote_collateral.json"))
        .expect("UTF-8");
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let signature = value["tcb_info_signature"]
        .as_str()
        .expect("signature string");
    let first = signature.chars().next().expect("non-empty");
    let replacement = if first == '0' { "1" } else { "0" };
    let edited = json.replacen(signature, &format!("{replacement}{}", &signature[1..]), 1);
    let collateral = Collateral::from_dcap_qvl_json(edited.as_bytes()).expect("still parses");
    let quote = read(&dir, "sgx-dcap/dcap-qvl_sgx_quote.bin");
    expect_reason(
        dcap::verify(&quote, &collateral, &production(), 1_751_328_000),
        Reason::Signature,
        "hex digit flipped in tcb_info_signature",
    );
}

#[test]
fn unknown_tcb_status_is_malformed() {
    let Some(dir) = fixtures() else { return };
    let tcb = String::from_utf8(read(
        &dir,
        "sgx-dcap/mobilecoin_fmspc_00906ED50000_2023_07_12.json",
    ))
    .expect("UTF-8");
    let value: serde_json::Value = serde_json::from_str(&tcb).expect("JSON");
    let inner = value["tcbInfo"].to_string();
    assert!(dcap::parse_tcb_info(&inner).is_ok());
    let edited = inner.replace("\"SWHardeningNeeded\"", "\"SWHardeningNeededX\"");
    let error = dcap::parse_tcb_info(&edited).expect_err("unknown status");
    assert_eq!(error.reason, Reason::Malformed);
    assert!(error.message.contains("SWHardeningNeededX"), "{error}");
}

fn mobilecoin_files(dir: &Path, tcb_info: &str) -> Collateral {
    let tcb_info = read(dir, tcb_info);
    let qe_identity = read(dir, "sgx-dcap/mobilecoin_qe_identity.json");
    let root = read(dir, "sgx-dcap/mobilecoin_root_ca.pem");
    let mut tcb_chain = read(dir, "sgx-dcap/mobilecoin_tcb_signer.pem");
    tcb_chain.extend_from_slice(&root);
    let mut crl_chain = read(dir, "sgx-dcap/mobilecoin_processor_ca.pem");
    crl_chain.extend_from_slice(&root);
    let pck_crl = read(dir, "sgx-dcap/mobilecoin_processor_crl.der");
    let root_crl = read(dir, "sgx-dcap/mobilecoin_root_crl.der");
    Collateral::from_pcs_files(&PcsFiles {
        tcb_info: &tcb_info,
        qe_identity: &qe_identity,
        tcb_info_issuer_chain: &tcb_chain,
        qe_identity_issuer_chain: None,
        pck_crl: &pck_crl,
        pck_crl_issuer_chain: &crl_chain,
        root_ca_crl: &root_crl,
    })
    .expect("PCS files parse")
}

#[test]
fn mobilecoin_stale_pck_crl_rejected() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "sgx-dcap/mobilecoin_hw_quote.bin");
    let collateral = mobilecoin_files(
        &dir,
        "sgx-dcap/mobilecoin_fmspc_00906ED50000_2023_07_12.json",
    );
    let error = expect_reason(
        dcap::verify(&quote, &collateral, &production(), 1_689_194_905),
        Reason::Expired,
        "mobilecoin at its repository time",
    );
    assert!(
        error
            .message
            .starts_with("PCK CRL nextUpdate 2023-05-21T22:00:36Z"),
        "{error}"
    );
}

#[test]
fn mobilecoin_example_tcb_fmspc_mismatch() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "sgx-dcap/mobilecoin_hw_quote.bin");
    let collateral = mobilecoin_files(&dir, "sgx-dcap/mobilecoin_example_tcb.json");
    let error = expect_reason(
        dcap::verify(&quote, &collateral, &production(), 1_689_194_905),
        Reason::Collateral,
        "mobilecoin with another platform's TCB info",
    );
    assert!(error.message.contains("FMSPC mismatch"), "{error}");
    assert!(error.message.contains("50806F000000"), "{error}");
}

#[test]
fn mobilecoin_quote_claims() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "sgx-dcap/mobilecoin_hw_quote.bin");
    assert_eq!(quote.len(), 4600);
    assert_eq!(
        dcap::quote_fmspc(&quote),
        Ok(hex_array::<6>("00906ed50000"))
    );
    let verified =
        dcap::verify_quote_signatures(&quote, &production(), 1_689_194_905).expect("verifies");
    assert_eq!(verified.tcb_status, None);
    let claims = sgx_claims(&verified);
    assert_eq!(
        hex::encode(claims.mr_enclave),
        "840d61b0585dc8b4dc90f53af293c760fda06bee75978a6a86263ffb296423f4"
    );
    assert_eq!(
        hex::encode(claims.mr_signer),
        "9f06df5ca79a23ffdfb6ca0ec85514e21dd1cbd1ed11abc45dbe8dc894efdddf"
    );
    assert_eq!(
        hex::encode(claims.attributes),
        "05000000000000000700000000000000"
    );
    assert_eq!(claims.report_data, [0u8; 64]);
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(platform.pce_svn, 13);
    assert_eq!(
        platform.cpu_svn_components,
        [20, 20, 2, 4, 1, 128, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(platform.qe_isv_svn, 9);
}

fn synthetic_collateral(dir: &Path) -> Collateral {
    let tcb_info = read(dir, "tdx/intel-qvl-synthetic_tcbInfo.json");
    let qe_identity = read(dir, "tdx/intel-qvl-synthetic_qeIdentity.json");
    let tcb_chain = read(dir, "tdx/intel-qvl-synthetic_tcbSignChain.pem");
    let crl_chain = read(dir, "tdx/intel-qvl-synthetic_pckSignChain.pem");
    let pck_crl = read(dir, "tdx/intel-qvl-synthetic_intermediateCaCrl.der");
    let root_crl = read(dir, "tdx/intel-qvl-synthetic_rootCaCrl.der");
    Collateral::from_pcs_files(&PcsFiles {
        tcb_info: &tcb_info,
        qe_identity: &qe_identity,
        tcb_info_issuer_chain: &tcb_chain,
        qe_identity_issuer_chain: Some(&tcb_chain),
        pck_crl: &pck_crl,
        pck_crl_issuer_chain: &crl_chain,
        root_ca_crl: &root_crl,
    })
    .expect("PCS files parse")
}

#[test]
fn synthetic_rejected_under_production_root() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "tdx/intel-qvl-synthetic_quote.bin");
    let collateral = synthetic_collateral(&dir);
    let error = expect_reason(
        dcap::verify(&quote, &collateral, &production(), 1_751_328_000),
        Reason::Chain,
        "synthetic quote under the production root",
    );
    assert!(error.message.contains("untrusted root"), "{error}");
}

#[test]
fn synthetic_rejected_under_test_root() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "tdx/intel-qvl-synthetic_quote.bin");
    // The quote carries DER certificates, root first.
    let parsed = dcap::parse_quote(&quote).expect("parses");
    assert_eq!(parsed.version, 4);
    assert_eq!(parsed.pck_chain.len(), 3);

    let collateral = synthetic_collateral(&dir);
    let root_pem = read(&dir, "tdx/intel-qvl-synthetic_trustedRootCaCert.pem");
    let root = collateral
        .tcb_info_issuer_chain
        .iter()
        .find(|der| {
            sha256(der)
                == hex_array::<32>(
                    "bf85a53fc08f84cb1f73a4f75f48af566e30ac040699ba0ec1b8d593c05b56fc",
                )
        })
        .expect("the test root is in the TCB signing chain")
        .clone();
    assert!(String::from_utf8_lossy(&root_pem).contains("BEGIN CERTIFICATE"));
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(&root);
    // Every signature verifies under the test root, but the TCB info SVNs are random values.
    let error = expect_reason(
        dcap::verify(&quote, &collateral, &anchors, 1_751_328_000),
        Reason::TcbLevel,
        "synthetic quote under its test root",
    );
    assert!(error.message.contains("no TCB level matches"), "{error}");
    assert!(dcap::verify_quote_signatures(&quote, &anchors, 1_751_328_000).is_ok());
}

#[test]
fn occlum_quote_parses_as_debug() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "sgx-dcap/trustee_occlum_quote_v3.bin");
    let parsed = dcap::parse_quote(&quote).expect("parses");
    assert_eq!(parsed.version, 3);
    assert_eq!(parsed.qe_report.isv_svn, 8);
    let Body::Sgx(report) = &parsed.body else {
        panic!("expected an SGX body");
    };
    assert_eq!(
        hex::encode(report.mr_enclave),
        "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
    );
    assert_eq!(
        hex::encode(report.mr_signer),
        "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"
    );
    assert_eq!(report.isv_prod_id, 0);
    assert_eq!(report.isv_svn, 0);
    assert_eq!(
        hex::encode(report.attributes),
        "0700000000000000e700000000000000"
    );
    assert_eq!(report.report_data, hex_array::<64>("74657374"));

    let verified =
        dcap::verify_quote_signatures(&quote, &production(), 1_751_328_000).expect("verifies");
    let claims = sgx_claims(&verified);
    assert!(claims.debug);
    assert!(verified.debug());
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(hex::encode_upper(platform.fmspc), "00606A000000");
    assert_eq!(platform.pce_svn, 11);
    assert_eq!(platform.qe_isv_svn, 8);
    // The PCK certificate runs from 2023-04-26 to 2030-04-26.
    expect_reason(
        dcap::verify_quote_signatures(&quote, &production(), unix("2023-04-01T00:00:00Z")),
        Reason::Expired,
        "occlum before its PCK certificate",
    );
}

#[test]
fn trustee_tdx_v4_is_debug() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "tdx/trustee_tdx_quote_v4.bin");
    let verified =
        dcap::verify_quote_signatures(&quote, &production(), 1_751_328_000).expect("verifies");
    assert_eq!(verified.kind, Kind::Tdx);
    let claims = tdx_claims(&verified);
    assert_eq!(
        hex::encode(claims.mr_td),
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031"
    );
    assert_eq!(
        hex::encode(claims.rtmr[0]),
        "e940da7c2712d2790e2961e00484f4fa8e6f9eed71361655ae22699476b14f9e63867eb41edd4b480fef0c59f496b288"
    );
    assert_eq!(
        hex::encode(claims.rtmr[1]),
        "559cfcf42716ed6c40a48a73d5acb7da255435012f0a9f00fbe8c1c57612ede486a5684c4c9ff3ddf52315fcdca3a596"
    );
    assert_eq!(claims.rtmr[2], [0u8; 48]);
    assert_eq!(claims.rtmr[3], [0u8; 48]);
    assert_eq!(
        hex::encode(claims.report_data),
        "7c71fe2c86eff65a7cf8dbc22b3275689fd0464a267baced1bf94fc1324656aeb755da3d44d098c0c87382f3a5f85b45c8a28fee1d3bdb38342bf96671501429"
    );
    assert_eq!(hex::encode(claims.td_attributes), "0100001000000000");
    assert!(claims.debug);
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(hex::encode_upper(platform.fmspc), "50806F000000");
}

#[test]
fn trustee_tdx_v5_td15_claims() {
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "tdx/trustee_tdx_quote_v5.bin");
    let parsed = dcap::parse_quote(&quote).expect("parses");
    assert_eq!(parsed.version, 5);
    let verified =
        dcap::verify_quote_signatures(&quote, &production(), 1_751_328_000).expect("verifies");
    let claims = tdx_claims(&verified);
    assert_eq!(
        hex::encode(claims.mr_td),
        "dfba221b48a22af8511542ee796603f37382800840dcd978703909bf8e64d4c8a1e9de86e7c9638bfcba422f3886400a"
    );
    assert_eq!(
        hex::encode(claims.rtmr[0]),
        "9b529f3689e2e8ebb899e9abbbc3dab394d6545e8cdb28a2abb9cc2f377b83a65c01ba56b824cd3ee885df20051f5128"
    );
    assert_eq!(
        hex::encode(claims.rtmr[1]),
        "ca5a979317ffe8a527a3b7aadab03976d7cb6eef1041fb9bd9d69e6fafa7252cdc10e4c2a55e7ecbd2ddb5cacc867430"
    );
    assert_eq!(claims.rtmr[2], [0u8; 48]);
    assert_eq!(claims.rtmr[3], [0u8; 48]);
    assert_eq!(
        hex::encode(claims.report_data),
        "6d6ab13b046cff606ac0074be13981b07b6325dba10b5facc96febf551c0c3be2b75f92fe1f88f4bb996969ad0174b4b7a70261b7b85c844f4b33a4674fd049f"
    );
    assert_eq!(
        claims.mr_service_td.map(hex::encode).as_deref(),
        Some(
            "383c87d3bbb047b2d171eaca95312ede99f258088dc788f6ae2ccf8b6dd848fe8d47629e08b3f6cbd4a00dd47a5a033d"
        )
    );
    assert!(claims.tee_tcb_svn2.is_some());
    assert!(!claims.debug);
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(hex::encode_upper(platform.fmspc), "90C06F000000");
}

#[test]
fn collateral_json_round_trip() {
    let Some(dir) = fixtures() else { return };
    for (name, sample) in verifying_samples(&dir) {
        let json = sample.collateral.to_dcap_qvl_json();
        let back = Collateral::from_dcap_qvl_json(json.as_bytes()).expect("round trip parses");
        assert_eq!(back, sample.collateral, "{name}");
    }
    let mobilecoin = mobilecoin_files(
        &dir,
        "sgx-dcap/mobilecoin_fmspc_00906ED50000_2023_07_12.json",
    );
    let back =
        Collateral::from_dcap_qvl_json(mobilecoin.to_dcap_qvl_json().as_bytes()).expect("parses");
    assert_eq!(back, mobilecoin);
}

#[test]
fn pcs_files_keep_signed_bytes() {
    let Some(dir) = fixtures() else { return };
    let collateral = mobilecoin_files(
        &dir,
        "sgx-dcap/mobilecoin_fmspc_00906ED50000_2023_07_12.json",
    );
    assert!(collateral.tcb_info.starts_with("{\"id\":\"SGX\""));
    assert!(collateral.tcb_info.ends_with('}'));
    assert_eq!(collateral.tcb_info_signature.len(), 64);
    assert!(collateral.qe_identity.starts_with("{\"id\":\"QE\""));
    assert_eq!(collateral.tcb_info_issuer_chain.len(), 2);
    assert_eq!(
        collateral.qe_identity_issuer_chain,
        collateral.tcb_info_issuer_chain
    );
    let info = dcap::parse_tcb_info(&collateral.tcb_info).expect("TCB info parses");
    assert_eq!(info.fmspc, hex_array::<6>("00906ed50000"));
    // The multi-line example file keeps its indentation inside the signed object.
    let example = mobilecoin_files(&dir, "sgx-dcap/mobilecoin_example_tcb.json");
    assert!(example.tcb_info.starts_with("{\n"));
    assert!(example.tcb_info.ends_with('}'));
}

#[test]
fn truncated_quotes_fail_cleanly() {
    let Some(dir) = fixtures() else { return };
    let names = [
        "sgx-dcap/dcap-qvl_sgx_quote.bin",
        "tdx/dcap-qvl_tdx_quote_outdated.bin",
        "tdx/intel-qvl-synthetic_quote.bin",
    ];
    for (index, name) in names.into_iter().enumerate() {
        let quote = read(&dir, name);
        let full = dcap::parse_quote(&quote).expect("full quote parses");
        let signature_end = quote.len() - quote.iter().rev().take_while(|byte| **byte == 0).count();
        for len in 0..signature_end.min(quote.len()) {
            if let Ok(parsed) = dcap::parse_quote(&quote[..len]) {
                // Only trailing PEM bytes may be cut without harm.
                assert_eq!(parsed.body, full.body, "quote {index} cut at {len}");
            }
        }
    }
}

#[test]
fn mutated_quotes_never_panic() {
    let Some(dir) = fixtures() else { return };
    let (quote, collateral) = dcap_qvl_sample(
        &dir,
        "tdx/dcap-qvl_tdx_quote.bin",
        "tdx/dcap-qvl_tdx_quote_collateral.json",
    );
    let anchors = production();
    // Every byte of the header, the length fields and the start of the certification data.
    for offset in (0..48).chain(632..640).chain(764..790).chain(1150..1180) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut mutated = quote.clone();
            mutated[offset] ^= mask;
            let _ = dcap::parse_quote(&mutated);
            let _ = dcap::quote_fmspc(&mutated);
            let result = dcap::verify(&mutated, &collateral, &anchors, 1_751_328_000);
            // Length fields may grow into the zero padding after the signature data, which no
            // signature covers, so only the signed header must always fail.
            if offset < 48 {
                assert!(
                    result.is_err(),
                    "byte {offset} xor {mask:#x} still verifies"
                );
            }
        }
    }
}

#[test]
fn parse_rejects_bad_headers() {
    assert_eq!(
        dcap::parse_quote(&[])
            .map(|_| ())
            .expect_err("malformed")
            .reason,
        Reason::Malformed
    );
    let Some(dir) = fixtures() else { return };
    let quote = read(&dir, "sgx-dcap/dcap-qvl_sgx_quote.bin");
    let mut bad_version = quote.clone();
    bad_version[0] = 2;
    let error = dcap::parse_quote(&bad_version).expect_err("version 2");
    assert!(error.message.contains("version 2"), "{error}");
    let mut bad_key_type = quote.clone();
    bad_key_type[2] = 3;
    let error = dcap::parse_quote(&bad_key_type).expect_err("key type 3");
    assert!(error.message.contains("attestation key type 3"), "{error}");
    let mut bad_tee = quote;
    bad_tee[4] = 0x81;
    assert_eq!(
        dcap::parse_quote(&bad_tee)
            .map(|_| ())
            .expect_err("malformed")
            .reason,
        Reason::Malformed
    );
}

/// Quotes and collateral signed under a test root generated per run, to reach the statuses,
/// revocations and chain layouts that no published sample has.
mod generated {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
        DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
        SerialNumber,
    };
    use time::OffsetDateTime;
    use twid_evidence::TrustAnchors;
    use twid_evidence::dcap::Collateral;

    /// 2027-01-15T08:00:00Z, inside every generated validity window.
    pub(super) const NOW: i64 = 1_800_000_000;
    pub(super) const FMSPC: [u8; 6] = [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00];
    pub(super) const QE_MR_SIGNER: [u8; 32] = [0x8c; 32];
    pub(super) const MR_ENCLAVE: [u8; 32] = [0x11; 32];
    pub(super) const MR_TD: [u8; 48] = [0x22; 48];
    pub(super) const LEAF_NOT_AFTER: i64 = NOW + 5 * 86_400;

    /// What to vary in the generated quote and collateral.
    #[derive(Clone)]
    pub(super) struct Options {
        pub(super) tdx: bool,
        pub(super) debug: bool,
        pub(super) platform_components: [u8; 16],
        pub(super) first_level_components: [u16; 16],
        pub(super) first_level_status: &'static str,
        pub(super) first_level_advisories: Vec<&'static str>,
        pub(super) qe_isv_svn: u16,
        pub(super) qe_status: &'static str,
        pub(super) qe_advisories: Vec<&'static str>,
        pub(super) qe_identity_mr_signer: [u8; 32],
        pub(super) tdx_module_svn: u8,
        pub(super) revoke_leaf: bool,
        pub(super) revoke_pck_ca: bool,
        pub(super) chain: ChainLayout,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum ChainLayout {
        PemLeafFirst,
        DerRootFirst,
        /// Leaf and PCK CA only, so the verifier must take the root from the anchors.
        PemWithoutRoot,
    }

    impl Default for Options {
        fn default() -> Self {
            Self {
                tdx: false,
                debug: false,
                platform_components: [4, 4, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
                first_level_components: [4, 4, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
                first_level_status: "UpToDate",
                first_level_advisories: Vec::new(),
                qe_isv_svn: 8,
                qe_status: "UpToDate",
                qe_advisories: Vec::new(),
                qe_identity_mr_signer: QE_MR_SIGNER,
                tdx_module_svn: 5,
                revoke_leaf: false,
                revoke_pck_ca: false,
                chain: ChainLayout::PemLeafFirst,
            }
        }
    }

    pub(super) struct Generated {
        pub(super) quote: Vec<u8>,
        pub(super) collateral: Collateral,
        pub(super) anchors: TrustAnchors,
        pub(super) root_der: Vec<u8>,
    }

    struct Key {
        signer: EcdsaKeyPair,
        rcgen: KeyPair,
    }

    fn key() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key generation");
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("PKCS#8 key");
        let rcgen = KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        Key { signer, rcgen }
    }

    fn sign(key: &Key, message: &[u8]) -> Vec<u8> {
        key.signer
            .sign(&SystemRandom::new(), message)
            .expect("signing")
            .as_ref()
            .to_vec()
    }

    fn time(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("valid time")
    }

    fn rfc3339(unix: i64) -> String {
        super::pki_time(unix)
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn sgx_oid(suffix: &[u8]) -> Vec<u8> {
        let mut content = vec![0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];
        content.extend_from_slice(suffix);
        tlv(0x06, &content)
    }

    fn entry(suffix: &[u8], value: Vec<u8>) -> Vec<u8> {
        let mut content = sgx_oid(suffix);
        content.extend(value);
        tlv(0x30, &content)
    }

    fn integer(value: u16) -> Vec<u8> {
        let bytes = value.to_be_bytes();
        let mut content: Vec<u8> = bytes
            .iter()
            .copied()
            .skip_while(|byte| *byte == 0)
            .collect();
        if content.first().is_none_or(|byte| byte & 0x80 != 0) {
            content.insert(0, 0);
        }
        tlv(0x02, &content)
    }

    /// Encodes the Intel SGX extension of a PCK certificate.
    fn sgx_extension(components: &[u8; 16], pce_svn: u16) -> Vec<u8> {
        let mut tcb = Vec::new();
        for (index, svn) in components.iter().enumerate() {
            tcb.extend(entry(&[2, index as u8 + 1], integer(u16::from(*svn))));
        }
        tcb.extend(entry(&[2, 17], integer(pce_svn)));
        tcb.extend(entry(&[2, 18], tlv(0x04, components)));
        let mut content = entry(&[1], tlv(0x04, &[0x5a; 16]));
        content.extend(entry(&[2], tlv(0x30, &tcb)));
        content.extend(entry(&[3], tlv(0x04, &[0, 0])));
        content.extend(entry(&[4], tlv(0x04, &FMSPC)));
        content.extend(entry(&[5], tlv(0x0a, &[0])));
        tlv(0x30, &content)
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = time(NOW - 365 * 86_400);
        params.not_after = time(NOW + 3650 * 86_400);
        params
    }

    fn crl(issuer: &Issuer<'_, &KeyPair>, revoked: Option<&[u8]>) -> Vec<u8> {
        let params = CertificateRevocationListParams {
            this_update: time(NOW - 86_400),
            next_update: time(NOW + 30 * 86_400),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: time(NOW - 86_400),
                    reason_code: None,
                    invalidity_date: None,
                })
                .into_iter()
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(issuer).expect("CRL").der().to_vec()
    }

    fn level_json(
        components: &[u16; 16],
        tdx: Option<&[u16; 16]>,
        status: &str,
        advisories: &[&str],
    ) -> String {
        let list = |svns: &[u16; 16]| {
            svns.iter()
                .map(|svn| format!("{{\"svn\":{svn}}}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let tdx = tdx
            .map(|svns| format!(",\"tdxtcbcomponents\":[{}]", list(svns)))
            .unwrap_or_default();
        format!(
            "{{\"tcb\":{{\"sgxtcbcomponents\":[{}],\"pcesvn\":11{tdx}}},\"tcbDate\":\"2026-01-01T00:00:00Z\",\"tcbStatus\":\"{status}\",\"advisoryIDs\":{}}}",
            list(components),
            serde_json::to_string(advisories).expect("JSON")
        )
    }

    fn tcb_info(options: &Options) -> String {
        let tdx_components = options
            .tdx
            .then_some([5u16, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let first = level_json(
            &options.first_level_components,
            tdx_components.as_ref(),
            options.first_level_status,
            &options.first_level_advisories,
        );
        let fallback = level_json(
            &[0; 16],
            tdx_components.as_ref().map(|_| &[0u16; 16]),
            "OutOfDate",
            &["INTEL-SA-00001"],
        );
        let tdx_fields = if options.tdx {
            let zeros48 = "00".repeat(48);
            format!(
                ",\"tdxModule\":{{\"mrsigner\":\"{zeros48}\",\"attributes\":\"0000000000000000\",\"attributesMask\":\"FFFFFFFFFFFFFFFF\"}},\"tdxModuleIdentities\":[{{\"id\":\"TDX_01\",\"mrsigner\":\"{zeros48}\",\"attributes\":\"0000000000000000\",\"attributesMask\":\"FFFFFFFFFFFFFFFF\",\"tcbLevels\":[{{\"tcb\":{{\"isvsvn\":4}},\"tcbDate\":\"2026-01-01T00:00:00Z\",\"tcbStatus\":\"UpToDate\"}},{{\"tcb\":{{\"isvsvn\":0}},\"tcbDate\":\"2025-01-01T00:00:00Z\",\"tcbStatus\":\"OutOfDate\",\"advisoryIDs\":[\"INTEL-SA-00960\"]}}]}}]"
            )
        } else {
            String::new()
        };
        format!(
            "{{\"id\":\"{}\",\"version\":3,\"issueDate\":\"{}\",\"nextUpdate\":\"{}\",\"fmspc\":\"{}\",\"pceId\":\"0000\",\"tcbType\":0,\"tcbEvaluationDataNumber\":17{tdx_fields},\"tcbLevels\":[{first},{fallback}]}}",
            if options.tdx { "TDX" } else { "SGX" },
            rfc3339(NOW - 3600),
            rfc3339(NOW + 20 * 86_400),
            hex::encode_upper(FMSPC),
        )
    }

    fn qe_identity(options: &Options) -> String {
        format!(
            "{{\"id\":\"{}\",\"version\":2,\"issueDate\":\"{}\",\"nextUpdate\":\"{}\",\"tcbEvaluationDataNumber\":17,\"miscselect\":\"00000000\",\"miscselectMask\":\"FFFFFFFF\",\"attributes\":\"11000000000000000000000000000000\",\"attributesMask\":\"FBFFFFFFFFFFFFFF0000000000000000\",\"mrsigner\":\"{}\",\"isvprodid\":1,\"tcbLevels\":[{{\"tcb\":{{\"isvsvn\":8}},\"tcbDate\":\"2026-01-01T00:00:00Z\",\"tcbStatus\":\"UpToDate\"}},{{\"tcb\":{{\"isvsvn\":0}},\"tcbDate\":\"2025-01-01T00:00:00Z\",\"tcbStatus\":\"{}\",\"advisoryIDs\":{}}}]}}",
            if options.tdx { "TD_QE" } else { "QE" },
            rfc3339(NOW - 7200),
            rfc3339(NOW + 10 * 86_400),
            hex::encode_upper(options.qe_identity_mr_signer),
            options.qe_status,
            serde_json::to_string(&options.qe_advisories).expect("JSON")
        )
    }

    fn sgx_body(options: &Options) -> Vec<u8> {
        let mut body = vec![0u8; 384];
        body[..16].copy_from_slice(&options.platform_components);
        body[48] = if options.debug { 0x07 } else { 0x05 };
        body[64..96].copy_from_slice(&MR_ENCLAVE);
        body[128..160].copy_from_slice(&[0x33; 32]);
        body[256..258].copy_from_slice(&7u16.to_le_bytes());
        body[258..260].copy_from_slice(&3u16.to_le_bytes());
        body[320..324].copy_from_slice(b"twid");
        body
    }

    fn td_body(options: &Options) -> Vec<u8> {
        let mut body = vec![0u8; 584];
        body[0] = options.tdx_module_svn;
        body[1] = 1;
        body[2] = 3;
        body[120] = u8::from(options.debug);
        body[136..184].copy_from_slice(&MR_TD);
        body[520..524].copy_from_slice(b"twid");
        body
    }

    /// Generates a quote (v3 for SGX, v4 for TDX) and matching collateral under a new root.
    pub(super) fn generate(options: &Options) -> Generated {
        let root_key = key();
        let root_params = ca_params("Test SGX Root CA");
        let root_cert = root_params.self_signed(&root_key.rcgen).expect("root");
        let root = Issuer::new(root_params, &root_key.rcgen);

        let ca_key = key();
        let mut ca_params = ca_params("Test SGX PCK Processor CA");
        ca_params.serial_number = Some(SerialNumber::from_slice(&[0x0c, 0xa1]));
        let ca_cert = ca_params.signed_by(&ca_key.rcgen, &root).expect("PCK CA");
        let pck_ca = Issuer::new(ca_params, &ca_key.rcgen);

        let leaf_key = key();
        let mut leaf_params = CertificateParams::default();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "Test SGX PCK Certificate");
        leaf_params.serial_number = Some(SerialNumber::from_slice(&[0x1e, 0xaf]));
        leaf_params.not_before = time(NOW - 86_400);
        leaf_params.not_after = time(LEAF_NOT_AFTER);
        leaf_params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 2, 840, 113_741, 1, 13, 1],
            sgx_extension(&options.platform_components, 11),
        )];
        let leaf_cert = leaf_params
            .signed_by(&leaf_key.rcgen, &pck_ca)
            .expect("PCK leaf");

        let tcb_key = key();
        let mut tcb_params = CertificateParams::default();
        tcb_params
            .distinguished_name
            .push(DnType::CommonName, "Test SGX TCB Signing");
        tcb_params.not_before = time(NOW - 86_400);
        tcb_params.not_after = time(NOW + 3650 * 86_400);
        let tcb_cert = tcb_params
            .signed_by(&tcb_key.rcgen, &root)
            .expect("TCB signer");

        let root_der = root_cert.der().to_vec();
        let ca_der = ca_cert.der().to_vec();
        let leaf_der = leaf_cert.der().to_vec();
        let tcb_der = tcb_cert.der().to_vec();

        let root_crl = crl(&root, options.revoke_pck_ca.then_some(&[0x0c, 0xa1][..]));
        let pck_crl = crl(&pck_ca, options.revoke_leaf.then_some(&[0x1e, 0xaf][..]));

        let tcb_info = tcb_info(options);
        let qe_identity = qe_identity(options);
        let collateral = Collateral {
            pck_crl_issuer_chain: vec![ca_der.clone(), root_der.clone()],
            root_ca_crl: root_crl,
            pck_crl,
            tcb_info_issuer_chain: vec![tcb_der.clone(), root_der.clone()],
            tcb_info_signature: sign(&tcb_key, tcb_info.as_bytes()),
            tcb_info,
            qe_identity_issuer_chain: vec![tcb_der, root_der.clone()],
            qe_identity_signature: sign(&tcb_key, qe_identity.as_bytes()),
            qe_identity,
        };

        let attestation_key = key();
        let attestation_public = attestation_key.signer.public_key().as_ref()[1..].to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&(if options.tdx { 4u16 } else { 3 }).to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&(if options.tdx { 0x81u32 } else { 0 }).to_le_bytes());
        header.extend_from_slice(&options.qe_isv_svn.to_le_bytes());
        header.extend_from_slice(&11u16.to_le_bytes());
        header.extend_from_slice(&[0x93; 16]);
        header.extend_from_slice(&[0; 20]);
        let mut signed = header;
        signed.extend(if options.tdx {
            td_body(options)
        } else {
            sgx_body(options)
        });

        let auth_data: Vec<u8> = (0u8..32).collect();
        let mut qe_report = vec![0u8; 384];
        qe_report[48] = 0x11;
        qe_report[128..160].copy_from_slice(&QE_MR_SIGNER);
        qe_report[256..258].copy_from_slice(&1u16.to_le_bytes());
        qe_report[258..260].copy_from_slice(&options.qe_isv_svn.to_le_bytes());
        let mut bound = attestation_public.clone();
        bound.extend_from_slice(&auth_data);
        qe_report[320..352].copy_from_slice(&super::sha256(&bound));

        let chain: Vec<u8> = match options.chain {
            ChainLayout::PemLeafFirst => [&leaf_der, &ca_der, &root_der]
                .into_iter()
                .map(|der| pem(der))
                .collect::<String>()
                .into_bytes(),
            ChainLayout::DerRootFirst => [root_der.clone(), ca_der, leaf_der].concat(),
            ChainLayout::PemWithoutRoot => [&leaf_der, &ca_der]
                .into_iter()
                .map(|der| pem(der))
                .collect::<String>()
                .into_bytes(),
        };
        let mut certification = qe_report.clone();
        certification.extend(sign(&leaf_key, &qe_report));
        certification.extend_from_slice(&(auth_data.len() as u16).to_le_bytes());
        certification.extend_from_slice(&auth_data);
        certification.extend_from_slice(&5u16.to_le_bytes());
        certification.extend_from_slice(&(chain.len() as u32).to_le_bytes());
        certification.extend_from_slice(&chain);

        let mut signature_data = sign(&attestation_key, &signed);
        signature_data.extend_from_slice(&attestation_public);
        if options.tdx {
            signature_data.extend_from_slice(&6u16.to_le_bytes());
            signature_data.extend_from_slice(&(certification.len() as u32).to_le_bytes());
        }
        signature_data.extend(certification);

        let mut quote = signed;
        quote.extend_from_slice(&(signature_data.len() as u32).to_le_bytes());
        quote.extend(signature_data);

        let mut anchors = TrustAnchors::new();
        anchors.add_certificate(&root_der);
        Generated {
            quote,
            collateral,
            anchors,
            root_der,
        }
    }

    fn pem(der: &[u8]) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }
}

fn pki_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .expect("valid time")
        .format(&Rfc3339)
        .expect("formats")
}

use generated::{ChainLayout, Options, generate};

#[test]
fn generated_sgx_quote_verifies() {
    let sample = generate(&Options::default());
    let verified = dcap::verify(
        &sample.quote,
        &sample.collateral,
        &sample.anchors,
        generated::NOW,
    )
    .expect("verifies");
    assert_eq!(verified.kind, Kind::SgxDcap);
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    assert!(verified.advisory_ids.is_empty());
    assert_eq!(verified.valid_until, Some(generated::LEAF_NOT_AFTER));
    assert_eq!(verified.collateral_issued_at, Some(generated::NOW - 86_400));
    let claims = sgx_claims(&verified);
    assert_eq!(claims.mr_enclave, generated::MR_ENCLAVE);
    assert_eq!(claims.isv_prod_id, 7);
    assert_eq!(claims.isv_svn, 3);
    assert!(!claims.debug);
    let platform = claims.platform.as_ref().expect("platform claims");
    assert_eq!(platform.fmspc, generated::FMSPC);
    assert_eq!(platform.pce_svn, 11);
    assert_eq!(platform.ppid, [0x5a; 16]);
    assert_eq!(platform.qe_isv_svn, 8);
    assert_eq!(dcap::quote_fmspc(&sample.quote), Ok(generated::FMSPC));

    // The PCK leaf is the first certificate to expire: valid at its notAfter, not a second later.
    let at_end = dcap::verify(
        &sample.quote,
        &sample.collateral,
        &sample.anchors,
        generated::LEAF_NOT_AFTER,
    );
    assert!(at_end.is_ok(), "{at_end:?}");
    let error = expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::LEAF_NOT_AFTER + 1,
        ),
        Reason::Expired,
        "after the PCK leaf",
    );
    assert!(
        error.message.contains("Test SGX PCK Certificate notAfter"),
        "{error}"
    );
}

#[test]
fn generated_tdx_quote_verifies() {
    let sample = generate(&Options {
        tdx: true,
        ..Options::default()
    });
    let verified = dcap::verify(
        &sample.quote,
        &sample.collateral,
        &sample.anchors,
        generated::NOW,
    )
    .expect("verifies");
    assert_eq!(verified.kind, Kind::Tdx);
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    let claims = tdx_claims(&verified);
    assert_eq!(claims.mr_td, generated::MR_TD);
    assert!(!claims.debug);
}

#[test]
fn generated_tdx_module_out_of_date() {
    let sample = generate(&Options {
        tdx: true,
        tdx_module_svn: 2,
        ..Options::default()
    });
    let verified = dcap::verify(
        &sample.quote,
        &sample.collateral,
        &sample.anchors,
        generated::NOW,
    )
    .expect("verifies");
    assert_eq!(verified.tcb_status, Some(TcbStatus::OutOfDate));
    assert_eq!(verified.advisory_ids, ["INTEL-SA-00960"]);
}

#[test]
fn generated_debug_enclave_reported() {
    for tdx in [false, true] {
        let sample = generate(&Options {
            tdx,
            debug: true,
            ..Options::default()
        });
        let verified = dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        )
        .expect("debug is a policy decision");
        assert!(verified.debug(), "tdx {tdx}");
    }
}

#[test]
fn generated_revoked_certificates_rejected() {
    let sample = generate(&Options {
        revoke_leaf: true,
        ..Options::default()
    });
    let error = expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        ),
        Reason::Revoked,
        "revoked PCK leaf",
    );
    assert!(
        error.message.contains("Test SGX PCK Certificate"),
        "{error}"
    );
    assert!(error.message.contains("PCK CRL"), "{error}");

    let sample = generate(&Options {
        revoke_pck_ca: true,
        ..Options::default()
    });
    let error = expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        ),
        Reason::Revoked,
        "revoked PCK CA",
    );
    assert!(
        error.message.contains("Test SGX PCK Processor CA"),
        "{error}"
    );
    assert!(error.message.contains("root CA CRL"), "{error}");
}

#[test]
fn generated_statuses_converge() {
    let sample = generate(&Options {
        first_level_status: "ConfigurationNeeded",
        first_level_advisories: vec!["INTEL-SA-00615", "INTEL-SA-00289"],
        qe_isv_svn: 6,
        qe_status: "OutOfDate",
        qe_advisories: vec!["INTEL-SA-00615", "INTEL-SA-00100"],
        ..Options::default()
    });
    let verified = dcap::verify(
        &sample.quote,
        &sample.collateral,
        &sample.anchors,
        generated::NOW,
    )
    .expect("verifies");
    assert_eq!(
        verified.tcb_status,
        Some(TcbStatus::OutOfDateConfigurationNeeded)
    );
    assert_eq!(
        verified.advisory_ids,
        ["INTEL-SA-00100", "INTEL-SA-00289", "INTEL-SA-00615"]
    );
    let Claims::Sgx(claims) = &verified.claims else {
        panic!("expected SGX claims");
    };
    assert_eq!(
        claims.platform.as_ref().map(|platform| platform.qe_isv_svn),
        Some(6)
    );
}

#[test]
fn generated_revoked_status_rejected() {
    let sample = generate(&Options {
        first_level_status: "Revoked",
        ..Options::default()
    });
    expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        ),
        Reason::Revoked,
        "platform TCB Revoked",
    );
    let sample = generate(&Options {
        qe_isv_svn: 2,
        qe_status: "Revoked",
        ..Options::default()
    });
    expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        ),
        Reason::Revoked,
        "QE TCB Revoked",
    );
}

#[test]
fn generated_level_order_matters() {
    // The platform is below the first level, so the fallback level (OutOfDate) applies.
    let mut first = [4u16, 4, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
    first[7] = 6;
    let sample = generate(&Options {
        first_level_components: first,
        ..Options::default()
    });
    let verified = dcap::verify(
        &sample.quote,
        &sample.collateral,
        &sample.anchors,
        generated::NOW,
    )
    .expect("verifies");
    assert_eq!(verified.tcb_status, Some(TcbStatus::OutOfDate));
    assert_eq!(verified.advisory_ids, ["INTEL-SA-00001"]);
}

#[test]
fn generated_qe_mismatch_rejected() {
    let sample = generate(&Options {
        qe_identity_mr_signer: [0x01; 32],
        ..Options::default()
    });
    let error = expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        ),
        Reason::Collateral,
        "QE identity of another QE",
    );
    assert!(error.message.contains("mrsigner"), "{error}");
}

#[test]
fn generated_chain_layouts_verify() {
    for layout in [ChainLayout::DerRootFirst, ChainLayout::PemWithoutRoot] {
        let sample = generate(&Options {
            chain: layout,
            ..Options::default()
        });
        let result = dcap::verify(
            &sample.quote,
            &sample.collateral,
            &sample.anchors,
            generated::NOW,
        );
        assert!(result.is_ok(), "{result:?}");
    }
    // Without the root in the quote, a fingerprint-only anchor cannot complete the chain.
    let sample = generate(&Options {
        chain: ChainLayout::PemWithoutRoot,
        ..Options::default()
    });
    let mut fingerprint_only = TrustAnchors::new();
    fingerprint_only
        .add_fingerprint(&hex::encode(sha256(&sample.root_der)))
        .expect("fingerprint");
    expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &fingerprint_only,
            generated::NOW,
        ),
        Reason::Chain,
        "chain without root, fingerprint anchor",
    );
}

#[test]
fn generated_untrusted_root_rejected() {
    let sample = generate(&Options::default());
    let error = expect_reason(
        dcap::verify(
            &sample.quote,
            &sample.collateral,
            &production(),
            generated::NOW,
        ),
        Reason::Chain,
        "test root under production anchors",
    );
    assert!(error.message.contains("untrusted root"), "{error}");
    // Collateral from another run is signed under another root.
    let other = generate(&Options::default());
    let error = expect_reason(
        dcap::verify(
            &sample.quote,
            &other.collateral,
            &sample.anchors,
            generated::NOW,
        ),
        Reason::Chain,
        "collateral from another root",
    );
    assert!(error.message.contains("TCB info issuer chain"), "{error}");
}

#[test]
fn pck_key_cannot_sign_collateral() {
    let sample = generate(&Options::default());
    let parsed = dcap::parse_quote(&sample.quote).expect("parses");
    let mut collateral = sample.collateral.clone();
    collateral.tcb_info_issuer_chain = parsed.pck_chain.clone();
    let error = expect_reason(
        dcap::verify(&sample.quote, &collateral, &sample.anchors, generated::NOW),
        Reason::Chain,
        "TCB info chain through the PCK CA",
    );
    assert!(
        error
            .message
            .contains("TCB info issuer chain has 3 certificates"),
        "{error}"
    );

    let mut collateral = sample.collateral;
    collateral.pck_crl_issuer_chain = parsed.pck_chain;
    expect_reason(
        dcap::verify(&sample.quote, &collateral, &sample.anchors, generated::NOW),
        Reason::Chain,
        "PCK CRL chain through the PCK leaf",
    );
}
