//! `twid attest verify` on real evidence: exit status, JSON claims and rejection reasons.

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use crate::common::{TempDir, repo_root, twid};

/// Returns the attestation fixtures folder, or `None` (with a skip line) when it is absent.
fn fixtures() -> Option<PathBuf> {
    let base = std::env::var_os("TWID_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/fixtures"));
    let dir = base.join("attestation");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "attestation fixtures not found at {}, skipping",
            dir.display()
        );
        None
    }
}

fn verify(args: &[&str]) -> (Output, Value) {
    let output = twid()
        .args(["attest", "verify"])
        .args(args)
        .output()
        .expect("run twid attest verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let document: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, document)
}

fn path(dir: &std::path::Path, name: &str) -> String {
    dir.join(name).to_str().expect("utf-8 path").to_owned()
}

#[test]
fn sgx_quote_prints_claims_and_status() {
    let Some(dir) = fixtures() else { return };
    let (output, document) = verify(&[
        "--kind",
        "sgx-dcap",
        "--evidence",
        &path(&dir, "sgx-dcap/dcap-qvl_sgx_quote.bin"),
        "--collateral",
        &path(&dir, "sgx-dcap/dcap-qvl_sgx_quote_collateral.json"),
        "--now",
        "2025-07-01T00:00:00Z",
    ]);
    assert!(output.status.success(), "{document}");
    assert_eq!(document["status"], "verified");
    assert_eq!(document["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        document["advisory_ids"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    assert_eq!(
        document["claims"]["mr_enclave"],
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(document["debug"], false);
}

#[test]
fn tdx_hex_quote_expires_after_window() {
    let Some(dir) = fixtures() else { return };
    let evidence = path(&dir, "tdx/dcap-qvl_near_tdx_quote.hex");
    let collateral = path(&dir, "tdx/dcap-qvl_near_tdx_quote_collateral.json");
    let args = |now: &str| {
        vec![
            "--kind".to_owned(),
            "tdx".to_owned(),
            "--evidence".to_owned(),
            evidence.clone(),
            "--collateral".to_owned(),
            collateral.clone(),
            "--now".to_owned(),
            now.to_owned(),
        ]
    };
    let inside = args("1757894400");
    let (output, document) = verify(&inside.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{document}");
    assert_eq!(document["tcb_status"], "UpToDate");
    assert_eq!(
        document["claims"]["mr_td"],
        "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077"
    );

    let after = args("2025-10-02T07:03:52Z");
    let (output, document) = verify(&after.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["status"], "rejected");
    assert_eq!(document["reason"], "expired");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expired"), "{stderr}");
}

#[test]
fn nitro_debug_document_rejected_by_default() {
    let Some(dir) = fixtures() else { return };
    let evidence = path(&dir, "nitro/evervault_beta_debug_mode_attestation_doc.cose");
    let (output, document) = verify(&[
        "--kind",
        "nitro",
        "--evidence",
        &evidence,
        "--now",
        "1665583200",
    ]);
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["status"], "rejected");
    assert_eq!(document["reason"], "debug");
    assert_eq!(
        document["claims"]["module_id"],
        "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1"
    );

    let (output, document) = verify(&[
        "--kind",
        "nitro",
        "--evidence",
        &evidence,
        "--now",
        "1665583200",
        "--allow-debug",
    ]);
    assert!(output.status.success(), "{document}");
    assert_eq!(document["status"], "verified");
}

#[test]
fn nitro_base64_document_verifies() {
    let Some(dir) = fixtures() else { return };
    let (output, document) = verify(&[
        "--kind",
        "nitro",
        "--evidence",
        &path(&dir, "nitro/evervault_beta_valid_attestation_doc.cose"),
        "--now",
        "1665651600",
    ]);
    assert!(output.status.success(), "{document}");
    assert_eq!(
        document["claims"]["pcrs"]["0"],
        "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b"
    );

    let (output, document) = verify(&[
        "--kind",
        "nitro",
        "--evidence",
        &path(&dir, "nitro/evervault_ga_valid_attestation_doc.b64"),
        "--now",
        "1695049411",
        "--allow-debug",
    ]);
    assert!(output.status.success(), "{document}");
    assert_eq!(
        document["claims"]["module_id"],
        "i-0918f6c55e3b61d89-enc018aa8b8e2285d13"
    );
}

#[test]
fn snp_report_with_vcek_chain() {
    let Some(dir) = fixtures() else { return };
    let (output, document) = verify(&[
        "--kind",
        "snp",
        "--evidence",
        &path(&dir, "sev-snp/virtee_report_milan.hex"),
        "--certs",
        &path(&dir, "sev-snp/virtee_vcek_milan.der"),
        "--certs",
        &path(&dir, "sev-snp/virtee_cert_chain_milan_ask_ark.pem"),
        "--now",
        "1751328000",
    ]);
    assert!(output.status.success(), "{document}");
    assert_eq!(
        document["claims"]["measurement"],
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );

    let (output, document) = verify(&[
        "--kind",
        "snp",
        "--evidence",
        &path(&dir, "sev-snp/virtee_report_milan.hex"),
        "--certs",
        &path(&dir, "sev-snp/trustee_test-vcek.der"),
        "--certs",
        &path(&dir, "sev-snp/virtee_cert_chain_milan_ask_ark.pem"),
        "--now",
        "1751328000",
    ]);
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["status"], "rejected");
}

#[test]
fn ias_report_debug_enclave() {
    let Some(dir) = fixtures() else { return };
    let body = path(&dir, "sgx-ias/fortanix_test_report_body.json");
    let base = [
        "--kind",
        "sgx-ias",
        "--evidence",
        body.as_str(),
        "--signature",
        &path(&dir, "sgx-ias/fortanix_test_report_sig.bin"),
        "--certs",
        &path(
            &dir,
            "sgx-ias/intel_sgx_attestation_report_signing_cert.pem",
        ),
        "--root",
        &path(
            &dir,
            "sgx-ias/intel_sgx_attestation_report_signing_ca_root.pem",
        ),
        "--now",
        "1535069738",
    ]
    .map(str::to_owned);
    let args: Vec<&str> = base.iter().map(String::as_str).collect();
    let (output, document) = verify(&args);
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["reason"], "debug");

    let mut allow = args.clone();
    allow.push("--allow-debug");
    let (output, document) = verify(&allow);
    assert!(output.status.success(), "{document}");
    assert_eq!(document["tcb_status"], "UpToDate");
    assert_eq!(
        document["claims"]["mr_enclave"],
        "540788f13d4abaf43dbaf43f4d4680d9264ba820aca2468a87734a854e1ec6fd"
    );
}

#[test]
fn tpm_quote_checks_nonce() {
    let Some(dir) = fixtures() else { return };
    let evidence = path(&dir, "tpm/trustee_tpm_evidence.json");
    let nonce = "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393ef0e41a18b3569ab678f1497fbc5c12000000000000000000000000000000000";
    let (output, document) = verify(&["--kind", "tpm", "--evidence", &evidence, "--nonce", nonce]);
    assert!(output.status.success(), "{document}");
    assert_eq!(document["claims"]["pcr_bank"], "sha256");

    let wrong = format!("ff{}", &nonce[2..]);
    let (output, document) = verify(&["--kind", "tpm", "--evidence", &evidence, "--nonce", &wrong]);
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["reason"], "freshness");
}

#[test]
fn pcs_folder_with_stale_crl_rejected() {
    let Some(dir) = fixtures() else { return };
    let folder = TempDir::new();
    let copies = [
        (
            "sgx-dcap/mobilecoin_fmspc_00906ED50000_2023_07_12.json",
            "tcb_info.json",
        ),
        ("sgx-dcap/mobilecoin_qe_identity.json", "qe_identity.json"),
        ("sgx-dcap/mobilecoin_processor_crl.der", "pck_crl.der"),
        ("sgx-dcap/mobilecoin_root_crl.der", "root_ca_crl.der"),
    ];
    for (from, to) in copies {
        std::fs::copy(dir.join(from), folder.path().join(to)).expect("copy collateral");
    }
    let root = std::fs::read_to_string(dir.join("sgx-dcap/mobilecoin_root_ca.pem")).expect("root");
    let signer =
        std::fs::read_to_string(dir.join("sgx-dcap/mobilecoin_tcb_signer.pem")).expect("signer");
    let processor = std::fs::read_to_string(dir.join("sgx-dcap/mobilecoin_processor_ca.pem"))
        .expect("processor");
    std::fs::write(
        folder.path().join("tcb_info_issuer_chain.pem"),
        format!("{signer}{root}"),
    )
    .expect("write chain");
    std::fs::write(
        folder.path().join("pck_crl_issuer_chain.pem"),
        format!("{processor}{root}"),
    )
    .expect("write chain");
    let (output, document) = verify(&[
        "--kind",
        "sgx-dcap",
        "--evidence",
        &path(&dir, "sgx-dcap/mobilecoin_hw_quote.bin"),
        "--collateral",
        folder.path().to_str().expect("utf-8"),
        "--now",
        "1689194905",
    ]);
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["reason"], "expired");
    let error = document["error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(error.contains("crl"), "{error}");

    // The same files in a server's collateral_dir layout: one folder per FMSPC.
    let cache = TempDir::new();
    let entry = cache.path().join("00906ED50000");
    std::fs::create_dir(&entry).expect("cache entry");
    for file in std::fs::read_dir(folder.path()).expect("PCS folder") {
        let file = file.expect("PCS file").path();
        std::fs::copy(&file, entry.join(file.file_name().expect("name"))).expect("copy");
    }
    let (output, document) = verify(&[
        "--kind",
        "sgx_dcap",
        "--evidence",
        &path(&dir, "sgx-dcap/mobilecoin_hw_quote.bin"),
        "--collateral",
        cache.path().to_str().expect("utf-8"),
        "--now",
        "1689194905",
    ]);
    assert!(!output.status.success(), "{document}");
    assert_eq!(document["reason"], "expired");
}

#[test]
fn unknown_kind_is_a_usage_error() {
    let output = twid()
        .args([
            "attest",
            "verify",
            "--kind",
            "sev",
            "--evidence",
            "/dev/null",
        ])
        .output()
        .expect("run twid");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown evidence kind"), "{stderr}");
}
