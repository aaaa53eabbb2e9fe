//! TPM quote verification against published quotes (go-attestation and trustee test data) and
//! against quotes signed by keys generated per run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    RsaKeyPair,
};
use twid_evidence::claims::TpmClaims;
use twid_evidence::tpm::{self, EventLogFormat, QuoteInput};
use twid_evidence::{Claims, Kind, Reason, Verified};

fn fixture(name: &str) -> Option<Vec<u8>> {
    let dir = match std::env::var_os("TWID_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    };
    let path = dir.join("attestation/tpm").join(name);
    if path.is_file() {
        Some(std::fs::read(path).expect("read fixture"))
    } else {
        println!("fixtures not found at {}; skipping", path.display());
        None
    }
}

fn go_input() -> Option<QuoteInput> {
    let json = fixture("go-attestation_windows_gcp_shielded_vm.json")?;
    Some(QuoteInput::from_json(&json).expect("go-attestation layout"))
}

fn trustee_input() -> Option<QuoteInput> {
    let json = fixture("trustee_tpm_evidence.json")?;
    Some(QuoteInput::from_json(&json).expect("trustee layout"))
}

fn trustee_nonce() -> Vec<u8> {
    let mut nonce = hex::decode(
        "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393\
         ef0e41a18b3569ab678f1497fbc5c120",
    )
    .expect("hex");
    nonce.extend_from_slice(&[0u8; 16]);
    nonce
}

fn tpm_claims(verified: &Verified) -> &TpmClaims {
    match &verified.claims {
        Claims::Tpm(claims) => claims,
        other => panic!("expected TPM claims, got {other:?}"),
    }
}

fn h(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex")
}

#[test]
fn go_attestation_quote_verifies() {
    let Some(input) = go_input() else { return };
    let verified = tpm::verify(&input, None, 0).expect("verify");
    assert_eq!(verified.kind, Kind::Tpm);
    assert_eq!(verified.tcb_status, None);
    assert_eq!(verified.valid_until, None);
    assert_eq!(verified.collateral_issued_at, None);

    let claims = tpm_claims(&verified);
    assert_eq!(claims.pcr_bank, "sha1");
    assert!(claims.extra_data.is_empty());
    assert_eq!(
        claims.pcr_digest,
        h("a610f27bc687ce906243287d832706036e79f6e1")
    );
    assert_eq!(claims.clock, 10_257_171);
    assert_eq!(claims.firmware_version, 0x41e4_356d_f966_e035);
    assert_eq!(claims.replayed_pcrs, vec![0, 4, 5, 7, 11, 12, 13, 14]);
    assert_eq!(
        claims.ak_sha256.to_vec(),
        h("2190373af1e3553a94c7dfec53b1c789bd48213d9b3d0cf8d82c8333edbb9c8c")
    );

    assert_eq!(claims.pcrs.len(), 24);
    let expected = [
        (0, "51c323de0c0c694f4601cdd02beb58ff13629f74"),
        (4, "0ca4b4a4784bf4eed9c3556aba1dac5585a5951a"),
        (5, "2b022297d4f1e0101c8c986be229c8dd0350514d"),
        (7, "859a5877266b5c909613468091a73380a5386786"),
        (11, "ebb98df76613280f20dc38221143a9e727399486"),
        (12, "75f3e16b6ef0b455282ed8fbbdfcc3da9abd241d"),
        (13, "383de79fbdde6296205e2afe44800e0c053fc82f"),
        (14, "275a689f9d5f8244a4b999fabe600c5816be5511"),
    ];
    for (index, value) in expected {
        assert_eq!(claims.pcrs[&index], h(value), "PCR {index}");
    }
    for index in 17..=22 {
        assert_eq!(claims.pcrs[&index], vec![0xff; 20], "PCR {index}");
    }
    for index in [1, 2, 3, 6, 8, 9, 10, 15, 16, 23] {
        assert_eq!(claims.pcrs[&index], vec![0; 20], "PCR {index}");
    }
}

#[test]
fn go_attestation_structures_parse() {
    let Some(input) = go_input() else { return };
    let attest = tpm::parse_attest(&input.attest).expect("attest");
    assert_eq!(attest.pcr_selections.len(), 1);
    assert_eq!(attest.pcr_selections[0].bank, tpm::HashAlg::Sha1);
    assert_eq!(attest.pcr_selections[0].pcrs, (0..24).collect::<Vec<u8>>());
    // The qualified name, not the AK's Name.
    assert_eq!(attest.qualified_signer[..4], h("000bad42")[..]);

    let signature = tpm::parse_signature(&input.signature).expect("signature");
    assert!(matches!(
        signature,
        tpm::Signature::RsaSsa {
            hash: tpm::HashAlg::Sha1,
            ..
        }
    ));

    let key = tpm::parse_public(&input.ak_public).expect("AK");
    assert_eq!(key.object_attributes, Some(0x0005_0472));
    assert!(matches!(key.params, tpm::KeyParams::Rsa { ref modulus, .. } if modulus.len() == 256));

    let log = tpm::parse_event_log(input.event_log.as_deref().expect("log")).expect("log");
    assert_eq!(log.format, EventLogFormat::Sha1);
    assert_eq!(log.events.len(), 21);
}

#[test]
fn trustee_quote_verifies() {
    let Some(input) = trustee_input() else { return };
    let nonce = trustee_nonce();
    let verified = tpm::verify(&input, Some(&nonce), 0).expect("verify");
    let claims = tpm_claims(&verified);
    assert_eq!(claims.pcr_bank, "sha256");
    assert_eq!(claims.extra_data, nonce);
    assert_eq!(
        claims.pcr_digest,
        h("019de64c9318655e422c3d03831169896e31f02a1d74e4d8fef575bf4e0d75fa")
    );
    assert_eq!(claims.firmware_version, 0x2019_1023_0016_3636);
    assert_eq!(claims.reset_count, 2);
    assert_eq!(
        claims.ak_sha256.to_vec(),
        h("a517f03ffdaee469aef1a19569547e330726335d0461c3ef6383409c6295679e")
    );
    assert!(claims.replayed_pcrs.is_empty());
    assert_eq!(claims.pcrs.len(), 24);
    for (index, value) in &claims.pcrs {
        let fill = if (17..=22).contains(index) { 0xff } else { 0 };
        assert_eq!(value, &vec![fill; 32], "PCR {index}");
    }
    assert_eq!(verified.bound_data(), Some(&nonce[..]));
    assert_eq!(
        verified.evidence_sha256.to_vec(),
        digest(&SHA256, &input.attest).as_ref().to_vec()
    );
}

#[test]
fn verify_json_hashes_evidence_bytes() {
    let Some(json) = fixture("trustee_tpm_evidence.json") else {
        return;
    };
    let verified = tpm::verify_json(&json, Some(&trustee_nonce()), 0).expect("verify");
    assert_eq!(
        verified.evidence_sha256.to_vec(),
        digest(&SHA256, &json).as_ref().to_vec()
    );
}

#[test]
fn wrong_nonce_is_freshness_failure() {
    let Some(input) = trustee_input() else { return };
    let mut nonce = trustee_nonce();
    nonce[0] ^= 1;
    let error = tpm::verify(&input, Some(&nonce), 0).expect_err("wrong nonce");
    assert_eq!(error.reason, Reason::Freshness);
    assert!(error.message.contains("nonce mismatch"), "{error}");

    let Some(go) = go_input() else { return };
    let error = tpm::verify(&go, Some(b"nonce"), 0).expect_err("empty extraData");
    assert_eq!(error.reason, Reason::Freshness);
}

#[test]
fn extra_data_flip_fails_signature() {
    let Some(mut input) = trustee_input() else {
        return;
    };
    input.attest[44] ^= 0x01;
    let error = tpm::verify(&input, Some(&trustee_nonce()), 0).expect_err("flip");
    assert_eq!(error.reason, Reason::Signature);
}

#[test]
fn every_attest_byte_flip_rejected() {
    for input in [go_input(), trustee_input()].into_iter().flatten() {
        for position in 0..input.attest.len() {
            let mut flipped = input.clone();
            flipped.attest[position] ^= 0x01;
            let result = tpm::verify(&flipped, None, 0);
            assert!(result.is_err(), "flip at byte {position} verified");
        }
        // Flips inside the final pcrDigest reach the signature check.
        let mut flipped = input.clone();
        let last = flipped.attest.len() - 1;
        flipped.attest[last] ^= 0x01;
        let error = tpm::verify(&flipped, None, 0).expect_err("digest flip");
        assert_eq!(error.reason, Reason::Signature);
    }
}

#[test]
fn signature_flip_rejected() {
    for input in [go_input(), trustee_input()].into_iter().flatten() {
        for position in [6, input.signature.len() / 2, input.signature.len() - 1] {
            let mut flipped = input.clone();
            flipped.signature[position] ^= 0x01;
            let error = tpm::verify(&flipped, None, 0).expect_err("signature flip");
            assert_eq!(error.reason, Reason::Signature, "byte {position}");
        }
    }
}

#[test]
fn changed_pcr_value_rejected() {
    for input in [go_input(), trustee_input()].into_iter().flatten() {
        for index in [0u8, 17, 23] {
            let mut changed = input.clone();
            if let Some(value) = changed.pcrs.get_mut(&index) {
                value[0] ^= 0x01;
            }
            // Without the log, so that the digest check and not the replay rejects it.
            changed.event_log = None;
            let error = tpm::verify(&changed, None, 0).expect_err("changed PCR");
            assert_eq!(error.reason, Reason::Collateral, "PCR {index}");
            assert!(
                error
                    .message
                    .contains("PCR values do not match the quoted digest"),
                "{error}"
            );
        }
    }
}

#[test]
fn missing_pcr_value_rejected() {
    let Some(mut input) = trustee_input() else {
        return;
    };
    input.pcrs.remove(&5);
    let error = tpm::verify(&input, None, 0).expect_err("missing PCR");
    assert_eq!(error.reason, Reason::Collateral);
    assert!(error.message.contains("PCR 5"), "{error}");
}

#[test]
fn contradicting_event_log_rejected() {
    let Some(mut input) = go_input() else { return };
    let log = input.event_log.as_mut().expect("log");
    // The first event extends PCR 0, and its SHA-1 digest starts at byte 8.
    log[8] ^= 0x01;
    let error = tpm::verify(&input, None, 0).expect_err("log contradicts PCR 0");
    assert_eq!(error.reason, Reason::Collateral);
    assert!(error.message.contains("PCR 0"), "{error}");
}

#[test]
fn sha1_log_against_sha256_quote_rejected() {
    let (Some(go), Some(mut trustee)) = (go_input(), trustee_input()) else {
        return;
    };
    trustee.event_log = go.event_log;
    let error = tpm::verify(&trustee, None, 0).expect_err("bank mismatch");
    assert_eq!(error.reason, Reason::Collateral);
}

#[test]
fn own_layout_round_trips() {
    for input in [go_input(), trustee_input()].into_iter().flatten() {
        let parsed = QuoteInput::from_json(&input.to_json()).expect("round trip");
        assert_eq!(parsed, input);
    }
}

#[test]
fn unknown_layout_rejected() {
    let error = QuoteInput::from_json(br#"{"something":"else"}"#).expect_err("layout");
    assert_eq!(error.reason, Reason::Malformed);
    let error = QuoteInput::from_json(b"[1,2]").expect_err("array");
    assert_eq!(error.reason, Reason::Malformed);
    let error =
        QuoteInput::from_json(br#"{"ak_public":"","quote":"","signature":"","pcrs":{"300":""}}"#)
            .expect_err("PCR index");
    assert_eq!(error.reason, Reason::Malformed);
}

#[test]
fn truncated_structures_rejected() {
    for input in [go_input(), trustee_input()].into_iter().flatten() {
        for len in 0..input.attest.len() {
            assert!(
                tpm::parse_attest(&input.attest[..len]).is_err(),
                "attest {len}"
            );
        }
        for len in 0..input.signature.len() {
            assert!(
                tpm::parse_signature(&input.signature[..len]).is_err(),
                "signature {len}"
            );
        }
        for len in 0..input.ak_public.len() {
            assert!(
                tpm::parse_public(&input.ak_public[..len]).is_err(),
                "AK {len}"
            );
        }
        if let Some(log) = &input.event_log {
            // A log cut at an event boundary is a valid shorter log, so this only checks for panics.
            for len in (0..log.len()).step_by(7) {
                let _ = tpm::parse_event_log(&log[..len]);
            }
        }
    }
}

// Quotes made by keys generated per run.

const SHA256_ID: u16 = 0x000b;

/// Builds a TPMS_ATTEST quote over one bank.
fn build_attest(extra_data: &[u8], selections: &[(u16, &[u8])], pcr_digest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xff54_4347u32.to_be_bytes());
    out.extend_from_slice(&0x8018u16.to_be_bytes());
    let name = [0x00, 0x0b, 0xaa, 0xbb];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(&name);
    out.extend_from_slice(&(extra_data.len() as u16).to_be_bytes());
    out.extend_from_slice(extra_data);
    out.extend_from_slice(&12_345u64.to_be_bytes());
    out.extend_from_slice(&7u32.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(1);
    out.extend_from_slice(&0x0001_0002_0003_0004u64.to_be_bytes());
    out.extend_from_slice(&(selections.len() as u32).to_be_bytes());
    for (bank, pcrs) in selections {
        out.extend_from_slice(&bank.to_be_bytes());
        out.push(3);
        let mut bitmap = [0u8; 3];
        for pcr in *pcrs {
            bitmap[usize::from(pcr / 8)] |= 1 << (pcr % 8);
        }
        out.extend_from_slice(&bitmap);
    }
    out.extend_from_slice(&(pcr_digest.len() as u16).to_be_bytes());
    out.extend_from_slice(pcr_digest);
    out
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    digest(&SHA256, &parts.concat()).as_ref().to_vec()
}

fn test_pcrs(indexes: &[u8]) -> BTreeMap<u8, Vec<u8>> {
    indexes
        .iter()
        .map(|index| (*index, vec![*index; 32]))
        .collect()
}

fn pcr_digest(pcrs: &BTreeMap<u8, Vec<u8>>) -> Vec<u8> {
    let values: Vec<&[u8]> = pcrs.values().map(Vec::as_slice).collect();
    sha256(&values)
}

/// Builds an ECC P-256 TPMT_PUBLIC with the given attributes.
fn ecc_tpmt_public(point: &[u8], attributes: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0023u16.to_be_bytes());
    out.extend_from_slice(&SHA256_ID.to_be_bytes());
    out.extend_from_slice(&attributes.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0x0010u16.to_be_bytes());
    out.extend_from_slice(&0x0018u16.to_be_bytes());
    out.extend_from_slice(&SHA256_ID.to_be_bytes());
    out.extend_from_slice(&0x0003u16.to_be_bytes());
    out.extend_from_slice(&0x0010u16.to_be_bytes());
    out.extend_from_slice(&32u16.to_be_bytes());
    out.extend_from_slice(&point[1..33]);
    out.extend_from_slice(&32u16.to_be_bytes());
    out.extend_from_slice(&point[33..65]);
    out
}

fn ecdsa_signature(fixed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0018u16.to_be_bytes());
    out.extend_from_slice(&SHA256_ID.to_be_bytes());
    for half in [&fixed[..32], &fixed[32..]] {
        out.extend_from_slice(&32u16.to_be_bytes());
        out.extend_from_slice(half);
    }
    out
}

fn rsa_signature(scheme: u16, signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&scheme.to_be_bytes());
    out.extend_from_slice(&SHA256_ID.to_be_bytes());
    out.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    out.extend_from_slice(signature);
    out
}

const AK_ATTRIBUTES: u32 = 0x0005_0472;

fn ecdsa_quote(nonce: &[u8], attributes: u32) -> QuoteInput {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let pcrs = test_pcrs(&[0, 1, 7]);
    let attest = build_attest(nonce, &[(SHA256_ID, &[0, 1, 7])], &pcr_digest(&pcrs));
    let signature = key.sign(&rng, &attest).expect("sign");
    QuoteInput {
        signature: ecdsa_signature(signature.as_ref()),
        ak_public: ecc_tpmt_public(key.public_key().as_ref(), attributes),
        attest,
        pcrs,
        event_log: None,
    }
}

fn rsa_quote(nonce: &[u8], pss: bool) -> QuoteInput {
    let rng = SystemRandom::new();
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("key");
    let pcrs = test_pcrs(&[0, 1, 7]);
    let attest = build_attest(nonce, &[(SHA256_ID, &[0, 1, 7])], &pcr_digest(&pcrs));
    let mut signature = vec![0u8; key.public_modulus_len()];
    let (encoding, scheme) = if pss {
        (&RSA_PSS_SHA256, 0x0016)
    } else {
        (&RSA_PKCS1_SHA256, 0x0014)
    };
    key.sign(encoding, &rng, &attest, &mut signature)
        .expect("sign");
    QuoteInput {
        signature: rsa_signature(scheme, &signature),
        ak_public: key.public_key().as_der().expect("SPKI").as_ref().to_vec(),
        attest,
        pcrs,
        event_log: None,
    }
}

#[test]
fn generated_ecdsa_quote_verifies() {
    let nonce = [0x5a; 64];
    let input = ecdsa_quote(&nonce, AK_ATTRIBUTES);
    let verified = tpm::verify(&input, Some(&nonce), 0).expect("verify");
    let claims = tpm_claims(&verified);
    assert_eq!(claims.pcr_bank, "sha256");
    assert_eq!(claims.pcrs, test_pcrs(&[0, 1, 7]));
    assert_eq!(claims.clock, 12_345);
    assert_eq!(claims.reset_count, 7);
    assert_eq!(claims.restart_count, 1);
    assert!(claims.safe);
    assert_eq!(claims.firmware_version, 0x0001_0002_0003_0004);

    let key = tpm::parse_public(&input.ak_public).expect("AK");
    assert_eq!(claims.ak_sha256.to_vec(), sha256(&[&key.spki_der]));
    assert_eq!(key.spki_der.len(), 91, "P-256 SPKI length");
}

#[test]
fn generated_rsa_quotes_verify() {
    let nonce = [0x11; 32];
    for pss in [false, true] {
        let input = rsa_quote(&nonce, pss);
        let verified = tpm::verify(&input, Some(&nonce), 0);
        assert!(verified.is_ok(), "PSS {pss}: {verified:?}");
        let claims = tpm_claims(verified.as_ref().expect("verified"));
        assert_eq!(
            claims.ak_sha256.to_vec(),
            sha256(&[&input.ak_public]),
            "the SPKI input is hashed as given"
        );
    }
}

#[test]
fn unrestricted_ak_rejected() {
    let nonce = [0x5a; 64];
    // sign without restricted: the key could sign a forged TPMS_ATTEST.
    let input = ecdsa_quote(&nonce, 0x0004_0072);
    let error = tpm::verify(&input, Some(&nonce), 0).expect_err("unrestricted");
    assert_eq!(error.reason, Reason::Policy);
}

#[test]
fn key_type_mismatch_rejected() {
    let nonce = [1; 16];
    let mut input = ecdsa_quote(&nonce, AK_ATTRIBUTES);
    input.ak_public = rsa_quote(&nonce, false).ak_public;
    let error = tpm::verify(&input, None, 0).expect_err("mismatch");
    assert_eq!(error.reason, Reason::Signature);
}

#[test]
fn two_bank_quote_rejected() {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let attest = build_attest(&[], &[(SHA256_ID, &[0]), (0x0004, &[1])], &[0; 32]);
    let signature = key.sign(&rng, &attest).expect("sign");
    let input = QuoteInput {
        signature: ecdsa_signature(signature.as_ref()),
        ak_public: ecc_tpmt_public(key.public_key().as_ref(), AK_ATTRIBUTES),
        attest,
        pcrs: test_pcrs(&[0, 1]),
        event_log: None,
    };
    let error = tpm::verify(&input, None, 0).expect_err("two banks");
    assert_eq!(error.reason, Reason::Malformed);
}

/// Builds a crypto-agile log with SHA-1 and SHA-256 digests, starting at `locality`.
fn agile_log(events: &[(u32, u32, &[u8])], locality: Option<u8>) -> Vec<u8> {
    let mut spec_id = Vec::new();
    spec_id.extend_from_slice(b"Spec ID Event03\0");
    spec_id.extend_from_slice(&0u32.to_le_bytes());
    spec_id.extend_from_slice(&[0, 2, 0, 2]);
    spec_id.extend_from_slice(&2u32.to_le_bytes());
    spec_id.extend_from_slice(&0x0004u16.to_le_bytes());
    spec_id.extend_from_slice(&20u16.to_le_bytes());
    spec_id.extend_from_slice(&SHA256_ID.to_le_bytes());
    spec_id.extend_from_slice(&32u16.to_le_bytes());
    spec_id.push(0);

    let mut log = Vec::new();
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&3u32.to_le_bytes());
    log.extend_from_slice(&[0; 20]);
    log.extend_from_slice(&(spec_id.len() as u32).to_le_bytes());
    log.extend_from_slice(&spec_id);

    let mut records: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    if let Some(locality) = locality {
        let mut data = b"StartupLocality\0".to_vec();
        data.push(locality);
        records.push((0, 3, data));
    }
    records.extend(
        events
            .iter()
            .map(|(pcr, kind, data)| (*pcr, *kind, data.to_vec())),
    );
    for (pcr, kind, data) in records {
        log.extend_from_slice(&pcr.to_le_bytes());
        log.extend_from_slice(&kind.to_le_bytes());
        log.extend_from_slice(&2u32.to_le_bytes());
        log.extend_from_slice(&0x0004u16.to_le_bytes());
        log.extend_from_slice(digest(&SHA1_FOR_LEGACY_USE_ONLY, &data).as_ref());
        log.extend_from_slice(&SHA256_ID.to_le_bytes());
        log.extend_from_slice(&sha256(&[&data]));
        log.extend_from_slice(&(data.len() as u32).to_le_bytes());
        log.extend_from_slice(&data);
    }
    log
}

/// Signs a quote over PCRs 0, 1 and 7 with the given values.
fn quote_over(pcrs: BTreeMap<u8, Vec<u8>>, log: Vec<u8>) -> QuoteInput {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let attest = build_attest(&[], &[(SHA256_ID, &[0, 1, 7])], &pcr_digest(&pcrs));
    let signature = key.sign(&rng, &attest).expect("sign");
    QuoteInput {
        signature: ecdsa_signature(signature.as_ref()),
        ak_public: ecc_tpmt_public(key.public_key().as_ref(), AK_ATTRIBUTES),
        attest,
        pcrs,
        event_log: Some(log),
    }
}

#[test]
fn crypto_agile_log_replays() {
    let events: [(u32, u32, &[u8]); 4] = [
        (0, 8, b"firmware version"),
        (7, 0x8000_0001, b"SecureBoot"),
        (7, 4, b"separator"),
        (9, 13, b"not quoted"),
    ];
    let log = agile_log(&events, Some(3));
    let parsed = tpm::parse_event_log(&log).expect("log");
    assert_eq!(parsed.format, EventLogFormat::CryptoAgile);
    assert_eq!(parsed.events.len(), 5);

    let mut pcr0 = vec![0u8; 32];
    pcr0[31] = 3;
    pcr0 = sha256(&[&pcr0, &sha256(&[b"firmware version"])]);
    let mut pcr7 = vec![0u8; 32];
    pcr7 = sha256(&[&pcr7, &sha256(&[b"SecureBoot"])]);
    pcr7 = sha256(&[&pcr7, &sha256(&[b"separator"])]);
    let pcrs: BTreeMap<u8, Vec<u8>> = [(0, pcr0), (1, vec![0x01; 32]), (7, pcr7)].into();

    let verified = tpm::verify(&quote_over(pcrs.clone(), log.clone()), None, 0).expect("verify");
    assert_eq!(tpm_claims(&verified).replayed_pcrs, vec![0, 7]);

    // Without the StartupLocality event, PCR 0 replays to another value.
    let log = agile_log(&events, None);
    let error = tpm::verify(&quote_over(pcrs, log), None, 0).expect_err("locality");
    assert_eq!(error.reason, Reason::Collateral);
    assert!(error.message.contains("PCR 0"), "{error}");
}

#[test]
fn agile_log_with_unlisted_algorithm_rejected() {
    let mut log = agile_log(&[(0, 8, b"x")], None);
    // The first record after the header starts with pcrIndex, eventType and the digest count,
    // then the first digest's algorithm ID. The header is a 32-byte SHA-1 record around the
    // 37-byte Spec ID event.
    let offset = 32 + 37 + 12;
    log[offset] = 0x12;
    let error = tpm::parse_event_log(&log).expect_err("unlisted algorithm");
    assert_eq!(error.reason, Reason::Malformed);
}

#[test]
fn oversized_event_rejected() {
    let mut log = agile_log(&[(0, 8, b"x")], None);
    let len = log.len();
    // The last record's eventSize sits just before its 1-byte data.
    log[len - 5..len - 1].copy_from_slice(&u32::MAX.to_le_bytes());
    let error = tpm::parse_event_log(&log).expect_err("oversized event");
    assert_eq!(error.reason, Reason::Malformed);
}

/// A deterministic xorshift generator, so a failing mutation can be replayed.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Flips, overwrites or truncates a few bytes of `bytes`.
    fn mutate(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for _ in 0..=(self.next() % 4) {
            if out.is_empty() {
                break;
            }
            let position = (self.next() % out.len() as u64) as usize;
            match self.next() % 3 {
                0 => out[position] ^= 1 << (self.next() % 8),
                1 => out[position] = self.next() as u8,
                _ => out.truncate(position),
            }
        }
        out
    }
}

#[test]
fn mutated_inputs_never_panic() {
    let mut inputs: Vec<QuoteInput> = [go_input(), trustee_input()]
        .into_iter()
        .flatten()
        .collect();
    inputs.push(ecdsa_quote(&[1; 8], AK_ATTRIBUTES));
    let agile = agile_log(&[(0, 8, b"x"), (7, 4, b"y")], Some(3));
    let mut mutator = Mutator(0x9e37_79b9_7f4a_7c15);
    for input in &inputs {
        for _ in 0..2000 {
            let _ = tpm::parse_attest(&mutator.mutate(&input.attest));
            let _ = tpm::parse_signature(&mutator.mutate(&input.signature));
            let _ = tpm::parse_public(&mutator.mutate(&input.ak_public));
            let _ = tpm::parse_event_log(&mutator.mutate(&agile));
            let _ = QuoteInput::from_json(&mutator.mutate(&input.to_json()));
        }
        if let Some(log) = &input.event_log {
            for _ in 0..300 {
                let _ = tpm::parse_event_log(&mutator.mutate(log));
            }
        }
    }
}
