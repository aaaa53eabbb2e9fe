//! SEV-SNP verification against real AMD reports and certificates, and against reports that
//! the test kit signs under a test ARK.

use std::path::{Path, PathBuf};

use twid_evidence::claims::{SnpClaims, SnpSigningKey, SnpTcb};
use twid_evidence::snp::{self, SnpProduct};
use twid_evidence::{Claims, Kind, Reason, TrustAnchors, Verified, VerifyError};

/// 2025-07-01T00:00:00Z, inside the validity of every Milan VCEK fixture.
const NOW: i64 = 1_751_328_000;
/// 2025-06-01T00:00:00Z, inside the VLEK's one-year validity.
const VLEK_NOW: i64 = 1_748_736_000;

fn sev_snp_dir() -> Option<PathBuf> {
    let base = std::env::var_os("TWID_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"));
    let dir = base.join("attestation/sev-snp");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("fixtures not found at {}; skipping", dir.display());
        None
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|error| panic!("read {name}: {error}"))
}

fn read_hex(dir: &Path, name: &str) -> Vec<u8> {
    let text = String::from_utf8(read(dir, name)).expect("hex file is text");
    hex::decode(text.trim()).expect("hex file decodes")
}

fn read_pem(dir: &Path, name: &str) -> Vec<Vec<u8>> {
    snp::parse_pem_chain(&read(dir, name)).expect("PEM chain parses")
}

fn unhex<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).expect("test hex has the right length");
    out
}

fn padded<const N: usize>(prefix: &str) -> [u8; N] {
    let bytes = hex::decode(prefix).expect("test hex");
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(&bytes);
    out
}

fn production() -> TrustAnchors {
    TrustAnchors::production(Kind::Snp)
}

fn milan_tcb(bootloader: u8, tee: u8, snp: u8, microcode: u8) -> SnpTcb {
    SnpTcb {
        bootloader,
        tee,
        snp,
        microcode,
        fmc: None,
    }
}

fn snp_claims(verified: &Verified) -> &SnpClaims {
    match &verified.claims {
        Claims::Snp(claims) => claims,
        other => panic!("expected SNP claims, got {other:?}"),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("32 bytes")
}

fn reason(result: Result<Verified, VerifyError>) -> Reason {
    match result {
        Ok(verified) => panic!("expected an error, verified {verified:?}"),
        Err(error) => {
            println!("rejected as expected: {error}");
            error.reason
        }
    }
}

/// The trustee VCEK report with the Milan ASK, ARK and ASVK.
struct TrusteeVcek {
    report: Vec<u8>,
    vcek: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

impl TrusteeVcek {
    fn load(dir: &Path) -> Self {
        Self {
            report: read(dir, "trustee_test-report.bin"),
            vcek: read(dir, "trustee_test-vcek.der"),
            chain: read_pem(dir, "trustee_milan_ask_ark_asvk.pem"),
        }
    }

    fn verify(&self, now: i64) -> Result<Verified, VerifyError> {
        snp::verify(&self.report, &self.vcek, &self.chain, &production(), now)
    }
}

#[test]
fn trustee_vcek_report_claims() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    let verified = fixture.verify(NOW).expect("trustee VCEK report verifies");

    assert_eq!(verified.kind, Kind::Snp);
    assert_eq!(verified.tcb_status, None);
    assert!(verified.advisory_ids.is_empty());
    assert_eq!(verified.collateral_issued_at, None);
    // The VCEK's notAfter, 2030-01-24T17:58:26Z. The ASK and ARK run to 2045.
    assert_eq!(verified.valid_until, Some(1_895_507_906));
    assert_eq!(verified.evidence_sha256, sha256(&fixture.report));

    let claims = snp_claims(&verified);
    assert_eq!(claims.version, 2);
    assert_eq!(claims.guest_svn, 4);
    assert_eq!(claims.policy, 0x3001f);
    assert!(!claims.debug);
    assert!(!verified.debug());
    assert_eq!(claims.vmpl, 0);
    assert_eq!(claims.family_id, padded::<16>("01"));
    assert_eq!(claims.image_id, padded::<16>("02"));
    assert_eq!(
        claims.measurement,
        unhex::<48>(
            "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
        )
    );
    assert_eq!(
        claims.report_data,
        padded::<64>("ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2")
    );
    assert_eq!(claims.host_data, [0u8; 32]);
    assert_eq!(
        claims.id_key_digest,
        unhex::<48>(
            "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3"
        )
    );
    assert_eq!(
        claims.chip_id,
        unhex::<64>(
            "c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e"
        )
    );
    assert_eq!(claims.reported_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.committed_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.launch_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.current_tcb, milan_tcb(3, 0, 8, 206));
    assert_eq!(claims.signing_key, SnpSigningKey::Vcek);
    assert_eq!(claims.product, "Milan");
}

#[test]
fn trustee_vlek_report_claims() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = read(&dir, "trustee_test-vlek-report.bin");
    let vlek = read(&dir, "trustee_test-vlek.der");
    let chain = read_pem(&dir, "trustee_milan_ask_ark_asvk.pem");
    let verified =
        snp::verify(&report, &vlek, &chain, &production(), VLEK_NOW).expect("VLEK report verifies");

    // The VLEK's notAfter, 2025-12-10T22:14:21Z.
    assert_eq!(verified.valid_until, Some(1_765_404_861));
    assert_eq!(verified.evidence_sha256, sha256(&report));
    let claims = snp_claims(&verified);
    assert_eq!(claims.version, 3);
    assert_eq!(claims.vmpl, 1);
    assert_eq!(claims.policy, 0x30000);
    assert!(!claims.debug);
    assert_eq!(claims.guest_svn, 0);
    assert_eq!(claims.chip_id, [0u8; 64]);
    assert_eq!(claims.family_id, [0u8; 16]);
    assert_eq!(claims.image_id, [0u8; 16]);
    assert_eq!(claims.host_data, [0u8; 32]);
    assert_eq!(claims.id_key_digest, [0u8; 48]);
    assert_eq!(
        claims.measurement,
        unhex::<48>(
            "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0"
        )
    );
    assert_eq!(
        claims.report_data,
        unhex::<64>(
            "819770b7e6ea6df8dd8fd4dd146b073c0bf4f3ce5b0977ecac486e3a05ed1bd54e2a7ac1f5d1ca02e7d7d5ef9f73b8574fd9359e3a480d741a4478e8a7bc27ca"
        )
    );
    assert_eq!(claims.reported_tcb, milan_tcb(4, 0, 24, 217));
    assert_eq!(claims.committed_tcb, milan_tcb(4, 0, 24, 219));
    assert_eq!(claims.launch_tcb, milan_tcb(4, 0, 24, 219));
    assert_eq!(claims.current_tcb, milan_tcb(4, 0, 24, 220));
    assert_eq!(claims.signing_key, SnpSigningKey::Vlek);
    assert_eq!(claims.product, "Milan");
}

#[test]
fn vlek_chain_states_csp() {
    let Some(dir) = sev_snp_dir() else { return };
    let vlek = read(&dir, "trustee_test-vlek.der");
    let chain = read_pem(&dir, "trustee_milan_ask_ark_asvk.pem");
    let verified =
        snp::verify_vek_chain(&vlek, &chain, &production(), VLEK_NOW).expect("VLEK chain verifies");
    assert_eq!(verified.product, SnpProduct::Milan);
    assert_eq!(verified.signing_key, SnpSigningKey::Vlek);
    assert_eq!(verified.tcb, milan_tcb(4, 0, 24, 217));
    assert_eq!(verified.hw_id, None);
    assert_eq!(
        verified.csp_id.as_deref(),
        Some("CN=cc-us-east-2.amazonaws.com")
    );
}

#[test]
fn vlek_validity_boundaries() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = read(&dir, "trustee_test-vlek-report.bin");
    let vlek = read(&dir, "trustee_test-vlek.der");
    let chain = read_pem(&dir, "trustee_milan_ask_ark_asvk.pem");
    let verify = |now| snp::verify(&report, &vlek, &chain, &production(), now);
    let not_before = 1_733_868_861; // 2024-12-10T22:14:21Z
    let not_after = 1_765_404_861; // 2025-12-10T22:14:21Z
    assert!(verify(not_before).is_ok());
    assert!(verify(not_after).is_ok());
    assert_eq!(reason(verify(not_before - 1)), Reason::Expired);
    assert_eq!(reason(verify(not_after + 1)), Reason::Expired);
}

#[test]
fn virtee_milan_report_claims() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = read_hex(&dir, "virtee_report_milan.hex");
    let vcek = read(&dir, "virtee_vcek_milan.der");
    let chain = read_pem(&dir, "virtee_cert_chain_milan_ask_ark.pem");
    let verified =
        snp::verify(&report, &vcek, &chain, &production(), NOW).expect("virtee report verifies");

    // The VCEK's notAfter, 2030-04-03T19:23:43Z.
    assert_eq!(verified.valid_until, Some(1_901_474_623));
    assert_eq!(verified.evidence_sha256, sha256(&report));
    let claims = snp_claims(&verified);
    assert_eq!(claims.version, 2);
    assert_eq!(claims.policy, 0x30000);
    assert!(!claims.debug);
    assert_eq!(claims.vmpl, 0);
    assert_eq!(claims.guest_svn, 0);
    assert_eq!(
        claims.measurement,
        unhex::<48>(
            "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
        )
    );
    assert_eq!(
        claims.report_data,
        unhex::<64>(
            "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd"
        )
    );
    assert_eq!(
        claims.chip_id,
        unhex::<64>(
            "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6"
        )
    );
    assert_eq!(claims.reported_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.current_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.committed_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.launch_tcb, milan_tcb(3, 0, 8, 115));
    assert_eq!(claims.signing_key, SnpSigningKey::Vcek);
    assert_eq!(claims.product, "Milan");
}

#[test]
fn virtee_vcek_validity_boundaries() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = read_hex(&dir, "virtee_report_milan.hex");
    let vcek = read(&dir, "virtee_vcek_milan.der");
    let chain = read_pem(&dir, "virtee_cert_chain_milan_ask_ark.pem");
    let verify = |now| snp::verify(&report, &vcek, &chain, &production(), now);
    let not_before = 1_680_549_823; // 2023-04-03T19:23:43Z
    let not_after = 1_901_474_623; // 2030-04-03T19:23:43Z
    assert!(verify(not_before).is_ok());
    assert!(verify(not_after).is_ok());
    assert_eq!(reason(verify(not_before - 1)), Reason::Expired);
    assert_eq!(reason(verify(not_after + 1)), Reason::Expired);
}

#[test]
fn trustee_vcek_validity_boundaries() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    let not_before = 1_674_583_106; // 2023-01-24T17:58:26Z
    let not_after = 1_895_507_906; // 2030-01-24T17:58:26Z
    assert!(fixture.verify(not_before).is_ok());
    assert!(fixture.verify(not_after).is_ok());
    assert_eq!(reason(fixture.verify(not_before - 1)), Reason::Expired);
    assert_eq!(reason(fixture.verify(not_after + 1)), Reason::Expired);
}

#[test]
fn virtee_report_flip_fails_signature() {
    let Some(dir) = sev_snp_dir() else { return };
    let mut report = read_hex(&dir, "virtee_report_milan.hex");
    let vcek = read(&dir, "virtee_vcek_milan.der");
    let chain = read_pem(&dir, "virtee_cert_chain_milan_ask_ark.pem");
    report[21] ^= 0x80;
    let result = snp::verify(&report, &vcek, &chain, &production(), NOW);
    assert_eq!(reason(result), Reason::Signature);
}

#[test]
fn trustee_report_flip_fails_signature() {
    let Some(dir) = sev_snp_dir() else { return };
    let mut fixture = TrusteeVcek::load(&dir);
    fixture.report[42] = fixture.report[42].wrapping_add(1);
    assert_eq!(reason(fixture.verify(NOW)), Reason::Signature);
}

#[test]
fn reported_tcb_change_fails() {
    let Some(dir) = sev_snp_dir() else { return };
    let mut fixture = TrusteeVcek::load(&dir);
    // Boot loader SPL 3 becomes 4: the signature breaks before the TCB comparison runs.
    fixture.report[384] = fixture.report[384].wrapping_add(1);
    assert_eq!(reason(fixture.verify(NOW)), Reason::Signature);
}

#[test]
fn report_with_other_vcek_fails() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = read_hex(&dir, "virtee_report_milan.hex");
    let vcek = read(&dir, "trustee_test-vcek.der");
    let chain = read_pem(&dir, "trustee_milan_ask_ark_asvk.pem");
    let result = snp::verify(&report, &vcek, &chain, &production(), NOW);
    assert_eq!(reason(result), Reason::Signature);
}

#[test]
fn vcek_algorithm_flip_fails_chain() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = read_hex(&dir, "virtee_report_milan.hex");
    let mut vcek = read(&dir, "virtee_vcek_milan.der");
    let chain = read_pem(&dir, "virtee_cert_chain_milan_ask_ark.pem");
    vcek[40] ^= 0xff;
    let result = snp::verify(&report, &vcek, &chain, &production(), NOW);
    assert_eq!(reason(result), Reason::Chain);
    let chain_only = snp::verify_vek_chain(&vcek, &chain, &production(), NOW);
    assert_eq!(
        chain_only.map(|_| ()).map_err(|error| error.reason),
        Err(Reason::Chain)
    );
}

#[test]
fn vcek_under_asvk_fails() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    // The trustee PEM contains ASK, ARK and ASVK in that order. Keep only the ASVK and ARK.
    let asvk_and_ark = vec![fixture.chain[2].clone(), fixture.chain[1].clone()];
    let result = snp::verify(
        &fixture.report,
        &fixture.vcek,
        &asvk_and_ark,
        &production(),
        NOW,
    );
    assert_eq!(reason(result), Reason::Chain);
}

#[test]
fn vcek_with_asvk_alone_fails() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    let asvk_only = vec![fixture.chain[2].clone()];
    let result = snp::verify_vek_chain(&fixture.vcek, &asvk_only, &production(), NOW);
    assert_eq!(
        result.map(|_| ()).map_err(|error| error.reason),
        Err(Reason::Chain)
    );
}

#[test]
fn untrusted_ark_fails() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    let result = snp::verify(
        &fixture.report,
        &fixture.vcek,
        &fixture.chain,
        &TrustAnchors::new(),
        NOW,
    );
    assert_eq!(reason(result), Reason::Chain);

    let mut genoa_only = TrustAnchors::new();
    genoa_only
        .add_fingerprint(twid_evidence::roots::production::AMD_ARK_GENOA)
        .expect("fingerprint");
    let result = snp::verify(
        &fixture.report,
        &fixture.vcek,
        &fixture.chain,
        &genoa_only,
        NOW,
    );
    assert_eq!(reason(result), Reason::Chain);
}

#[test]
fn ark_given_only_as_anchor() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    // The ARK is the PEM's second certificate. Pass only the ASK and trust the ARK in full.
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(&fixture.chain[1]);
    let ask_only = vec![fixture.chain[0].clone()];
    let verified = snp::verify(&fixture.report, &fixture.vcek, &ask_only, &anchors, NOW)
        .expect("verifies with the ARK as a full anchor");
    assert_eq!(snp_claims(&verified).product, "Milan");

    let result = snp::verify(
        &fixture.report,
        &fixture.vcek,
        &ask_only,
        &production(),
        NOW,
    );
    assert_eq!(reason(result), Reason::Chain);
}

#[test]
fn chain_order_does_not_matter() {
    let Some(dir) = sev_snp_dir() else { return };
    let fixture = TrusteeVcek::load(&dir);
    let mut reversed = fixture.chain.clone();
    reversed.reverse();
    let verified = snp::verify(
        &fixture.report,
        &fixture.vcek,
        &reversed,
        &production(),
        NOW,
    )
    .expect("verifies with the chain reversed");
    assert_eq!(snp_claims(&verified).product, "Milan");
}

#[test]
fn turin_vcek_chain_verifies() {
    let Some(dir) = sev_snp_dir() else { return };
    let vcek = read(&dir, "virtee_vcek_turin.der");
    let chain = read_pem(&dir, "virtee_cert_chain_turin_ask_ark.pem");
    let verified =
        snp::verify_vek_chain(&vcek, &chain, &production(), NOW).expect("Turin chain verifies");
    assert_eq!(verified.product, SnpProduct::Turin);
    assert_eq!(verified.signing_key, SnpSigningKey::Vcek);
    assert_eq!(
        verified.tcb,
        SnpTcb {
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 9,
            fmc: Some(0),
        }
    );
    assert_eq!(
        verified.hw_id,
        Some(hex::decode("1e550a8ee5cf9f4d").expect("hex"))
    );
    assert_eq!(verified.csp_id, None);
    // The VCEK's notAfter, 2031-11-06T21:14:00Z.
    assert_eq!(verified.valid_until, 1_951_766_040);

    let not_before = 1_730_927_640; // 2024-11-06T21:14:00Z
    let early = snp::verify_vek_chain(&vcek, &chain, &production(), not_before - 1);
    assert_eq!(
        early.map(|_| ()).map_err(|error| error.reason),
        Err(Reason::Expired)
    );
    let late = snp::verify_vek_chain(&vcek, &chain, &production(), 1_951_766_041);
    assert_eq!(
        late.map(|_| ()).map_err(|error| error.reason),
        Err(Reason::Expired)
    );
}

#[test]
fn turin_vcek_rejects_milan_chain() {
    let Some(dir) = sev_snp_dir() else { return };
    let vcek = read(&dir, "virtee_vcek_turin.der");
    let chain = read_pem(&dir, "virtee_cert_chain_milan_ask_ark.pem");
    let result = snp::verify_vek_chain(&vcek, &chain, &production(), NOW);
    assert_eq!(
        result.map(|_| ()).map_err(|error| error.reason),
        Err(Reason::Chain)
    );
}

#[test]
fn genoa_ca_chain_verifies() {
    let Some(dir) = sev_snp_dir() else { return };
    let mut chain = read_pem(&dir, "amd_genoa_ask.pem");
    chain.extend(read_pem(&dir, "amd_genoa_ark.pem"));
    let verified = snp::verify_ca_chain(&chain, &production(), NOW).expect("Genoa chain verifies");
    assert_eq!(verified.product, SnpProduct::Genoa);
    // The ARK's notAfter, 2047-01-26T15:34:37Z, comes before the ASK's (2047-10-31).
    assert_eq!(verified.valid_until, 2_432_129_677);

    let result = snp::verify_ca_chain(&chain, &TrustAnchors::new(), NOW);
    assert_eq!(
        result.map(|_| ()).map_err(|error| error.reason),
        Err(Reason::Chain)
    );
}

#[test]
fn milan_and_turin_ca_chains_verify() {
    let Some(dir) = sev_snp_dir() else { return };
    for (file, product) in [
        ("trustee_milan_ask_ark_asvk.pem", SnpProduct::Milan),
        ("virtee_cert_chain_milan_ask_ark.pem", SnpProduct::Milan),
        ("virtee_cert_chain_turin_ask_ark.pem", SnpProduct::Turin),
    ] {
        let chain = read_pem(&dir, file);
        let verified = snp::verify_ca_chain(&chain, &production(), NOW)
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        assert_eq!(verified.product, product, "{file}");
    }
}

#[test]
fn pem_chain_splits_certificates() {
    let Some(dir) = sev_snp_dir() else { return };
    let chain = read_pem(&dir, "trustee_milan_ask_ark_asvk.pem");
    assert_eq!(chain.len(), 3);
    let chain = read_pem(&dir, "virtee_cert_chain_turin_ask_ark.pem");
    assert_eq!(chain.len(), 2);
    assert_eq!(
        hex::encode(sha256(&chain[1])),
        twid_evidence::roots::production::AMD_ARK_TURIN
    );
}

#[test]
fn pem_chain_rejects_bad_input() {
    let cases: [&[u8]; 5] = [
        b"",
        b"no certificates here",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    ];
    for case in cases {
        let result = snp::parse_pem_chain(case);
        assert_eq!(
            result.map(|_| ()).map_err(|error| error.reason),
            Err(Reason::Malformed),
            "{}",
            String::from_utf8_lossy(case)
        );
    }
}

#[test]
fn parse_report_reads_fields() {
    let Some(dir) = sev_snp_dir() else { return };
    let report = snp::parse_report(&read(&dir, "trustee_test-vlek-report.bin")).expect("parses");
    assert_eq!(report.version, 3);
    assert_eq!(report.signature_algo, 1);
    assert_eq!(report.key_info, 0x4);
    assert_eq!(report.signing_key(), Ok(SnpSigningKey::Vlek));
    assert!(!report.mask_chip_key());
    assert!(!report.author_key_en());
    assert_eq!(report.cpuid_fam_id, Some(0x19));
    assert_eq!(report.cpuid_mod_id, Some(0x01));
    assert_eq!(report.cpuid_step, Some(0x01));
    assert_eq!(report.cpuid_product(), Some(SnpProduct::Milan));
    assert_eq!(report.reported_tcb, 0xd918_0000_0000_0004);
    assert_eq!(report.launch_mit_vector, None);

    let report = snp::parse_report(&read(&dir, "trustee_test-report.bin")).expect("parses");
    assert_eq!(report.version, 2);
    assert_eq!(report.cpuid_fam_id, None);
    assert_eq!(report.cpuid_product(), None);
    assert_eq!(report.reported_tcb, 0x7308_0000_0000_0003);
    assert_eq!(report.signing_key(), Ok(SnpSigningKey::Vcek));
}

#[test]
fn parse_report_rejects_bad_sizes() {
    for length in [0, 1, 1183, 1185, 4096] {
        let mut bytes = vec![0u8; length];
        if let Some(version) = bytes.get_mut(0) {
            *version = 2;
        }
        let result = snp::parse_report(&bytes);
        assert_eq!(
            result.map(|_| ()).map_err(|error| error.reason),
            Err(Reason::Malformed),
            "length {length}"
        );
    }
}

#[test]
fn parse_report_rejects_bad_versions() {
    for version in [0u32, 1, 6, u32::MAX] {
        let mut bytes = vec![0u8; snp::REPORT_LEN];
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        let result = snp::parse_report(&bytes);
        assert_eq!(
            result.map(|_| ()).map_err(|error| error.reason),
            Err(Reason::Malformed),
            "version {version}"
        );
    }
    for version in 2u32..=5 {
        let mut bytes = vec![0u8; snp::REPORT_LEN];
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        let report = snp::parse_report(&bytes).expect("supported version parses");
        assert_eq!(report.version, version);
        assert_eq!(report.launch_mit_vector.is_some(), version >= 5);
        assert_eq!(report.cpuid_fam_id.is_some(), version >= 3);
    }
}

// Reports from the test kit, signed under a test ARK.

mod generated {
    use super::*;
    use twid_evidence_testkit::snp::{self as kit, ReportSpec, TestAmd};

    fn chip_id() -> [u8; 64] {
        std::array::from_fn(|index| index as u8 + 1)
    }

    fn tcb() -> SnpTcb {
        milan_tcb(2, 1, 9, 200)
    }

    fn anchors(amd: &TestAmd) -> TrustAnchors {
        let mut anchors = TrustAnchors::new();
        anchors.add_certificate(amd.ark_der());
        anchors
    }

    fn verify(amd: &TestAmd, report: &[u8]) -> Result<Verified, VerifyError> {
        snp::verify(
            report,
            amd.vcek_der(),
            &amd.chain_der(),
            &anchors(amd),
            kit::NOW,
        )
    }

    fn spec() -> ReportSpec {
        ReportSpec {
            report_data: [0x11; 64],
            measurement: [0x22; 48],
            policy: 0x30000,
            host_data: [0x33; 32],
            guest_svn: 7,
            vmpl: 2,
            family_id: [0x44; 16],
            image_id: [0x55; 16],
            id_key_digest: [0x66; 48],
            ..ReportSpec::default()
        }
    }

    #[test]
    fn milan_report_round_trip() {
        let amd = TestAmd::new("Milan-B0", chip_id(), tcb());
        let report = amd.report(&spec());
        assert_eq!(report.len(), snp::REPORT_LEN);
        let verified = verify(&amd, &report).expect("generated report verifies");

        assert_eq!(verified.kind, Kind::Snp);
        assert_eq!(verified.valid_until, Some(kit::VEK_NOT_AFTER));
        assert_eq!(verified.collateral_issued_at, None);
        assert_eq!(verified.evidence_sha256, sha256(&report));
        let claims = snp_claims(&verified);
        assert_eq!(claims.version, 3);
        assert_eq!(claims.guest_svn, 7);
        assert_eq!(claims.policy, 0x30000);
        assert!(!claims.debug);
        assert_eq!(claims.vmpl, 2);
        assert_eq!(claims.family_id, [0x44; 16]);
        assert_eq!(claims.image_id, [0x55; 16]);
        assert_eq!(claims.measurement, [0x22; 48]);
        assert_eq!(claims.host_data, [0x33; 32]);
        assert_eq!(claims.id_key_digest, [0x66; 48]);
        assert_eq!(claims.report_data, [0x11; 64]);
        assert_eq!(claims.chip_id, chip_id());
        assert_eq!(claims.reported_tcb, tcb());
        assert_eq!(claims.committed_tcb, tcb());
        assert_eq!(claims.launch_tcb, tcb());
        assert_eq!(claims.current_tcb, tcb());
        assert_eq!(claims.signing_key, SnpSigningKey::Vcek);
        assert_eq!(claims.product, "Milan");
        assert_eq!(verified.bound_data(), Some(&[0x11u8; 64][..]));
    }

    #[test]
    fn vek_chain_reads_extensions() {
        let amd = TestAmd::new("Milan-B0", chip_id(), tcb());
        let chain =
            snp::verify_vek_chain(amd.vcek_der(), &amd.chain_der(), &anchors(&amd), kit::NOW)
                .expect("chain verifies");
        assert_eq!(chain.product, SnpProduct::Milan);
        assert_eq!(chain.signing_key, SnpSigningKey::Vcek);
        assert_eq!(chain.tcb, tcb());
        assert_eq!(chain.hw_id, Some(chip_id().to_vec()));
        assert_eq!(chain.csp_id, None);
        assert_eq!(chain.valid_until, kit::VEK_NOT_AFTER);

        let ca = snp::verify_ca_chain(&amd.chain_der(), &anchors(&amd), kit::NOW)
            .expect("CA chain verifies");
        assert_eq!(ca.product, SnpProduct::Milan);
        assert_eq!(ca.valid_until, kit::CA_NOT_AFTER);
    }

    #[test]
    fn genoa_report_verifies() {
        let amd = TestAmd::new("Genoa", chip_id(), tcb());
        let verified = verify(&amd, &amd.report(&spec())).expect("Genoa report verifies");
        let claims = snp_claims(&verified);
        assert_eq!(claims.product, "Genoa");
        assert_eq!(claims.reported_tcb, tcb());
        assert_eq!(claims.chip_id, chip_id());
    }

    #[test]
    fn turin_report_uses_turin_layout() {
        let turin_tcb = SnpTcb {
            bootloader: 2,
            tee: 1,
            snp: 9,
            microcode: 200,
            fmc: Some(5),
        };
        let amd = TestAmd::new("Turin", chip_id(), turin_tcb);
        let report = amd.report(&spec());
        let verified = verify(&amd, &report).expect("Turin report verifies");
        let claims = snp_claims(&verified);
        assert_eq!(claims.product, "Turin");
        assert_eq!(claims.reported_tcb, turin_tcb);
        assert_eq!(claims.current_tcb, turin_tcb);
        // The Turin VCEK certifies only the first 8 bytes, but the report carries all 64.
        assert_eq!(claims.chip_id, chip_id());
        let parsed = snp::parse_report(&report).expect("parses");
        assert_eq!(
            parsed.reported_tcb.to_le_bytes(),
            [5, 2, 1, 9, 0, 0, 0, 200]
        );
        assert_eq!(parsed.cpuid_product(), Some(SnpProduct::Turin));

        let chain =
            snp::verify_vek_chain(amd.vcek_der(), &amd.chain_der(), &anchors(&amd), kit::NOW)
                .expect("chain verifies");
        assert_eq!(chain.hw_id, Some(chip_id()[..8].to_vec()));

        let mut other_chip = chip_id();
        other_chip[3] ^= 1;
        let report = amd.report(&ReportSpec {
            chip_id: Some(other_chip),
            ..spec()
        });
        assert_eq!(reason(verify(&amd, &report)), Reason::Collateral);

        let report = amd.report(&ReportSpec {
            reported_tcb: Some(SnpTcb {
                fmc: Some(6),
                ..turin_tcb
            }),
            ..spec()
        });
        assert_eq!(reason(verify(&amd, &report)), Reason::Collateral);
    }

    #[test]
    fn vlek_report_round_trip() {
        let amd = TestAmd::new_vlek("Milan", tcb(), "CN=test-cloud.example");
        let report = amd.report(&spec());
        let verified = verify(&amd, &report).expect("VLEK report verifies");
        let claims = snp_claims(&verified);
        assert_eq!(claims.signing_key, SnpSigningKey::Vlek);
        assert_eq!(claims.chip_id, [0u8; 64]);
        assert_eq!(claims.product, "Milan");

        let chain =
            snp::verify_vek_chain(amd.vcek_der(), &amd.chain_der(), &anchors(&amd), kit::NOW)
                .expect("chain verifies");
        assert_eq!(chain.csp_id.as_deref(), Some("CN=test-cloud.example"));
        assert_eq!(chain.hw_id, None);

        // A VLEK report that claims the VCEK signed it.
        let report = amd.report(&ReportSpec {
            signing_key_field: Some(0),
            ..spec()
        });
        assert_eq!(reason(verify(&amd, &report)), Reason::Collateral);
    }

    #[test]
    fn signing_key_field_checked() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let cases = [
            (1, Reason::Collateral),
            (7, Reason::Signature),
            (2, Reason::Malformed),
        ];
        for (field, expected) in cases {
            let report = amd.report(&ReportSpec {
                signing_key_field: Some(field),
                ..spec()
            });
            assert_eq!(
                reason(verify(&amd, &report)),
                expected,
                "SIGNING_KEY {field}"
            );
        }
    }

    #[test]
    fn debug_policy_sets_debug() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let report = amd.report(&ReportSpec {
            policy: 0x30000 | snp::POLICY_DEBUG,
            ..spec()
        });
        let verified = verify(&amd, &report).expect("debug report verifies");
        assert!(snp_claims(&verified).debug);
        assert!(verified.debug());
    }

    #[test]
    fn every_version_verifies() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        for version in 2..=5 {
            let report = amd.report(&ReportSpec { version, ..spec() });
            let verified =
                verify(&amd, &report).unwrap_or_else(|error| panic!("version {version}: {error}"));
            assert_eq!(snp_claims(&verified).version, version);
        }
    }

    #[test]
    fn reported_tcb_mismatch_fails() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let changes = [
            milan_tcb(3, 1, 9, 200),
            milan_tcb(2, 0, 9, 200),
            milan_tcb(2, 1, 8, 200),
            milan_tcb(2, 1, 9, 201),
        ];
        for reported in changes {
            let report = amd.report(&ReportSpec {
                reported_tcb: Some(reported),
                ..spec()
            });
            assert_eq!(
                reason(verify(&amd, &report)),
                Reason::Collateral,
                "{reported:?}"
            );
        }
    }

    #[test]
    fn chip_id_mismatch_fails() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let mut other = chip_id();
        other[63] ^= 0x01;
        let report = amd.report(&ReportSpec {
            chip_id: Some(other),
            ..spec()
        });
        assert_eq!(reason(verify(&amd, &report)), Reason::Collateral);
    }

    #[test]
    fn masked_chip_id_verifies() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let report = amd.report(&ReportSpec {
            mask_chip_id: true,
            ..spec()
        });
        let verified = verify(&amd, &report).expect("masked report verifies");
        assert_eq!(snp_claims(&verified).chip_id, [0u8; 64]);

        // A zero chip ID without MASK_CHIP_KEY is a mismatch.
        let report = amd.report(&ReportSpec {
            chip_id: Some([0; 64]),
            ..spec()
        });
        assert_eq!(reason(verify(&amd, &report)), Reason::Collateral);
    }

    #[test]
    fn cpuid_product_mismatch_fails() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let report = amd.report(&ReportSpec {
            cpuid: Some((0x19, 0x11, 0x01)),
            ..spec()
        });
        assert_eq!(reason(verify(&amd, &report)), Reason::Collateral);

        // An unknown family and model leaves the chain's product in charge.
        let report = amd.report(&ReportSpec {
            cpuid: Some((0, 0, 0)),
            ..spec()
        });
        assert!(verify(&amd, &report).is_ok());
    }

    #[test]
    fn signed_byte_flips_fail() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let report = amd.report(&spec());
        // Every byte of the signed body and of the r and s fields. The reserved bytes after s
        // (0x330 onwards) are not signed.
        for index in 0..0x330 {
            let mut flipped = report.clone();
            flipped[index] ^= 0x01;
            let error = verify(&amd, &flipped)
                .err()
                .unwrap_or_else(|| panic!("flip at {index:#x} verified"));
            assert_ne!(error.reason, Reason::Chain, "flip at {index:#x}: {error}");
        }
        let mut flipped = report.clone();
        flipped[0x90] ^= 0x80;
        assert_eq!(reason(verify(&amd, &flipped)), Reason::Signature);
    }

    #[test]
    fn untrusted_test_ark_fails() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let report = amd.report(&spec());
        let result = snp::verify(
            &report,
            amd.vcek_der(),
            &amd.chain_der(),
            &production(),
            kit::NOW,
        );
        assert_eq!(reason(result), Reason::Chain);
        let result = snp::verify(
            &report,
            amd.vcek_der(),
            &amd.chain_der(),
            &TrustAnchors::new(),
            kit::NOW,
        );
        assert_eq!(reason(result), Reason::Chain);
    }

    #[test]
    fn foreign_ask_fails_signature_check() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let other = TestAmd::new("Milan", chip_id(), tcb());
        let report = amd.report(&spec());
        // Same names, other keys: the VCEK's issuer is found by name but its signature fails.
        let result = snp::verify(
            &report,
            amd.vcek_der(),
            &other.chain_der(),
            &anchors(&other),
            kit::NOW,
        );
        assert_eq!(reason(result), Reason::Chain);
        // The ASK under the other ARK.
        let mixed = vec![amd.ask_der().to_vec(), other.ark_der().to_vec()];
        let result = snp::verify(&report, amd.vcek_der(), &mixed, &anchors(&other), kit::NOW);
        assert_eq!(reason(result), Reason::Chain);
    }

    #[test]
    fn vek_validity_boundaries() {
        let not_before = kit::NOW - 1000;
        let not_after = kit::NOW + 1000;
        let amd = TestAmd::with_vek_validity("Milan", chip_id(), tcb(), not_before, not_after);
        let report = amd.report(&spec());
        let at = |now| {
            snp::verify(
                &report,
                amd.vcek_der(),
                &amd.chain_der(),
                &anchors(&amd),
                now,
            )
        };
        let verified = at(not_before).expect("valid at notBefore");
        assert_eq!(verified.valid_until, Some(not_after));
        assert!(at(not_after).is_ok());
        assert_eq!(reason(at(not_before - 1)), Reason::Expired);
        assert_eq!(reason(at(not_after + 1)), Reason::Expired);
        // The CA certificates bound the window too.
        assert_eq!(reason(at(kit::CA_NOT_BEFORE - 1)), Reason::Expired);
    }

    #[test]
    fn mismatched_products_fail() {
        let milan = TestAmd::new("Milan", chip_id(), tcb());
        let genoa = TestAmd::new("Genoa", chip_id(), tcb());
        let report = milan.report(&spec());
        let result = snp::verify(
            &report,
            milan.vcek_der(),
            &genoa.chain_der(),
            &anchors(&genoa),
            kit::NOW,
        );
        assert_eq!(reason(result), Reason::Chain);
    }

    #[test]
    fn reserved_tail_is_unsigned() {
        let amd = TestAmd::new("Milan", chip_id(), tcb());
        let mut report = amd.report(&spec());
        let original = verify(&amd, &report).expect("verifies");
        report[0x400] ^= 0x01;
        let changed = verify(&amd, &report).expect("the reserved tail is not signed");
        assert_ne!(original.evidence_sha256, changed.evidence_sha256);
    }
}

/// A small deterministic generator, so mutation tests repeat exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn mutated_certificates_are_rejected() {
    use twid_evidence_testkit::snp::{self as kit, ReportSpec, TestAmd};

    let amd = TestAmd::new("Turin", [7; 64], milan_tcb(1, 2, 3, 4));
    let report = amd.report(&ReportSpec::default());
    // Pin the ARK by fingerprint only: an ARK given in full would stand in for a changed copy.
    let mut anchors = TrustAnchors::new();
    anchors
        .add_fingerprint(&hex::encode(sha256(amd.ark_der())))
        .expect("fingerprint");
    let mut random = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..1500 {
        let mut vcek = amd.vcek_der().to_vec();
        let mut chain = amd.chain_der();
        let target = random.below(3);
        let bytes = match target {
            0 => &mut vcek,
            1 => &mut chain[0],
            _ => &mut chain[1],
        };
        let original = bytes.clone();
        for _ in 0..=random.below(3) {
            let index = random.below(bytes.len());
            bytes[index] = random.next() as u8;
        }
        if *bytes == original {
            continue;
        }
        // The VCEK and ASK are signed and the ARK is pinned, so every change must be rejected.
        let result = snp::verify(&report, &vcek, &chain, &anchors, kit::NOW);
        assert!(result.is_err(), "certificate {target} change verified");
        if target > 0 {
            let result = snp::verify_ca_chain(&chain, &anchors, kit::NOW);
            assert!(result.is_err(), "CA certificate {target} change verified");
        }
    }
}

#[test]
fn random_pem_never_panics() {
    let mut random = XorShift(0x1234_5678_9abc_def1);
    let alphabet = b"-BEGINENDCRTIFA \n=+/ab01";
    for _ in 0..2000 {
        let length = random.below(200);
        let mut text = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        text.extend((0..length).map(|_| alphabet[random.below(alphabet.len())]));
        drop(snp::parse_pem_chain(&text));
    }
}
