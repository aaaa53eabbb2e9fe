//! Nitro Enclaves attestation document verification against real AWS documents, and against
//! documents that the test kit signs under a test root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ciborium::Value;
use twid_evidence::claims::NitroClaims;
use twid_evidence::nitro;
use twid_evidence::{Claims, Kind, Reason, TrustAnchors, Verified, VerifyError};
use twid_evidence_testkit::nitro::{self as kit, DocumentSpec, TestNitro};

fn nitro_dir() -> Option<PathBuf> {
    let base = std::env::var_os("TWID_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"));
    let dir = base.join("attestation/nitro");
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

fn read_base64(dir: &Path, name: &str) -> Vec<u8> {
    let text = String::from_utf8(read(dir, name)).expect("base64 file is text");
    let compact: String = text.split_whitespace().collect();
    STANDARD.decode(compact).expect("base64 decodes")
}

fn production() -> TrustAnchors {
    TrustAnchors::production(Kind::Nitro)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("32 bytes")
}

fn nitro_claims(verified: &Verified) -> &NitroClaims {
    match &verified.claims {
        Claims::Nitro(claims) => claims,
        other => panic!("expected Nitro claims, got {other:?}"),
    }
}

fn reason<T: std::fmt::Debug>(result: Result<T, VerifyError>) -> Reason {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => {
            println!("rejected as expected: {error}");
            error.reason
        }
    }
}

fn pcr(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).expect("PCR hex")
}

/// Checks that the document has PCR0 to PCR15, with `set` as listed and the rest zero.
fn assert_pcrs(pcrs: &BTreeMap<u8, Vec<u8>>, set: &[(u8, &str)]) {
    assert_eq!(pcrs.len(), 16);
    for index in 0u8..16 {
        let expected = set
            .iter()
            .find(|(set_index, _)| *set_index == index)
            .map(|(_, value)| pcr(value))
            .unwrap_or_else(|| vec![0u8; 48]);
        assert_eq!(pcrs.get(&index), Some(&expected), "PCR{index}");
    }
}

const BETA_PCR3: &str = "4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa";

/// A fixture document with its validity window (Unix seconds) and a time inside it.
struct Sample {
    bytes: Vec<u8>,
    not_before: i64,
    not_after: i64,
    now: i64,
}

fn beta_valid(dir: &Path) -> Sample {
    Sample {
        bytes: read(dir, "evervault_beta_valid_attestation_doc.cose"),
        not_before: 1_665_651_479, // 2022-10-13T08:57:59Z
        not_after: 1_665_662_282,  // 2022-10-13T11:58:02Z
        now: 1_665_651_600,
    }
}

fn beta_debug(dir: &Path) -> Sample {
    Sample {
        bytes: read(dir, "evervault_beta_debug_mode_attestation_doc.cose"),
        not_before: 1_665_582_591, // 2022-10-12T13:49:51Z
        not_after: 1_665_593_394,  // 2022-10-12T16:49:54Z
        now: 1_665_583_200,
    }
}

fn ga(dir: &Path) -> Sample {
    Sample {
        bytes: read_base64(dir, "evervault_ga_valid_attestation_doc.b64"),
        not_before: 1_695_047_829, // 2023-09-18T14:37:09Z
        not_after: 1_695_058_632,  // 2023-09-18T17:37:12Z
        now: 1_695_049_411,
    }
}

#[test]
fn beta_valid_document_claims() {
    let Some(dir) = nitro_dir() else { return };
    let sample = beta_valid(&dir);
    let verified = nitro::verify(&sample.bytes, &production(), sample.now).expect("verifies");

    assert_eq!(verified.kind, Kind::Nitro);
    assert_eq!(verified.tcb_status, None);
    assert!(verified.advisory_ids.is_empty());
    assert_eq!(verified.collateral_issued_at, None);
    assert_eq!(verified.valid_until, Some(sample.not_after));
    assert_eq!(verified.evidence_sha256, sha256(&sample.bytes));

    let claims = nitro_claims(&verified);
    assert_eq!(claims.module_id, "i-020b6af9246d90e92-enc0183d09086c24190");
    assert_eq!(claims.digest, "SHA384");
    assert_eq!(claims.timestamp_ms, 1_665_651_482_136);
    assert!(!claims.debug);
    assert!(!verified.debug());
    assert_pcrs(
        &claims.pcrs,
        &[
            (
                0,
                "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
            ),
            (
                1,
                "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
            ),
            (
                2,
                "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a",
            ),
            (3, BETA_PCR3),
            (
                4,
                "1f442c86d494a88185642086d904ed89f62fb66ee9997d7b1a4f040faab3bba4244c768a584e5778195b3afc715637c6",
            ),
            (
                8,
                "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb",
            ),
        ],
    );
    let nonce = claims.nonce.as_deref().expect("nonce present");
    assert_eq!(nonce.len(), 256);
    assert_eq!(hex::encode(&nonce[..8]), "cb3dc2eb76c0c134");
    assert_eq!(claims.public_key, None);
    assert_eq!(claims.user_data, None);
    assert_eq!(verified.bound_data(), None);
}

#[test]
fn beta_debug_document_claims() {
    let Some(dir) = nitro_dir() else { return };
    let sample = beta_debug(&dir);
    let verified = nitro::verify(&sample.bytes, &production(), sample.now).expect("verifies");

    assert_eq!(verified.valid_until, Some(sample.not_after));
    assert_eq!(verified.evidence_sha256, sha256(&sample.bytes));
    let claims = nitro_claims(&verified);
    assert_eq!(claims.module_id, "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1");
    assert_eq!(claims.digest, "SHA384");
    assert_eq!(claims.timestamp_ms, 1_665_582_606_081);
    assert!(claims.debug);
    assert!(verified.debug());
    assert_pcrs(
        &claims.pcrs,
        &[
            (3, BETA_PCR3),
            (
                4,
                "615fa5b1a8838d392d8e54aacc3d9ac0db87d63cb826516c4cc94307c986fe465b29f3f54a55a2f121265528ae0aa6a7",
            ),
        ],
    );
    assert_eq!(claims.user_data.as_deref(), Some(&b"hello, world!"[..]));
    assert_eq!(
        claims.public_key.as_deref(),
        Some(&b"my super secret key"[..])
    );
    assert_eq!(claims.nonce, None);
}

#[test]
fn ga_document_claims() {
    let Some(dir) = nitro_dir() else { return };
    let sample = ga(&dir);
    let verified = nitro::verify(&sample.bytes, &production(), sample.now).expect("verifies");

    assert_eq!(verified.valid_until, Some(sample.not_after));
    assert_eq!(verified.evidence_sha256, sha256(&sample.bytes));
    let claims = nitro_claims(&verified);
    assert_eq!(claims.module_id, "i-0918f6c55e3b61d89-enc018aa8b8e2285d13");
    assert_eq!(claims.digest, "SHA384");
    assert_eq!(claims.timestamp_ms, 1_695_049_410_860);
    assert!(claims.debug);
    assert_pcrs(
        &claims.pcrs,
        &[
            (3, BETA_PCR3),
            (
                4,
                "d0531b1400dd43288c82c226c16bf647c637dd5e4d9b4f7a8aaadc6d6760b854a06c7008cca0d15ca80094dd33a65065",
            ),
        ],
    );
    assert_eq!(claims.nonce.as_ref().map(Vec::len), Some(256));
    assert_eq!(claims.public_key, None);

    // user_data is the DER SubjectPublicKeyInfo of the TLS certificate the enclave served.
    let tls_cert = read(&dir, "evervault_ga_valid_certificate.der");
    let (_, parsed) = x509_parser::parse_x509_certificate(&tls_cert).expect("TLS cert parses");
    let spki = parsed.tbs_certificate.subject_pki.raw;
    assert_eq!(claims.user_data.as_deref(), Some(spki));
    assert_eq!(
        hex::encode(sha256(spki)),
        "60af8483d3d91b0f5dbb375a5137090b5c6feaad56fdee37b5570c15f91d556f"
    );
}

#[test]
fn fixture_validity_boundaries() {
    let Some(dir) = nitro_dir() else { return };
    for sample in [beta_valid(&dir), beta_debug(&dir), ga(&dir)] {
        let verify = |now| nitro::verify(&sample.bytes, &production(), now);
        assert!(verify(sample.not_before).is_ok());
        assert!(verify(sample.not_after).is_ok());
        assert_eq!(reason(verify(sample.not_before - 1)), Reason::Expired);
        assert_eq!(reason(verify(sample.not_after + 1)), Reason::Expired);
    }
}

#[test]
fn module_id_flip_fails_signature() {
    let Some(dir) = nitro_dir() else { return };
    for mut sample in [beta_valid(&dir), beta_debug(&dir), ga(&dir)] {
        sample.bytes[23] ^= 0x01;
        let result = nitro::verify(&sample.bytes, &production(), sample.now);
        assert_eq!(reason(result), Reason::Signature);
    }
}

#[test]
fn signature_flip_fails_signature() {
    let Some(dir) = nitro_dir() else { return };
    for mut sample in [beta_valid(&dir), beta_debug(&dir), ga(&dir)] {
        let last = sample.bytes.len() - 1;
        sample.bytes[last] ^= 0x01;
        let result = nitro::verify(&sample.bytes, &production(), sample.now);
        assert_eq!(reason(result), Reason::Signature);
    }
}

#[test]
fn fixtures_fail_under_other_root() {
    let Some(dir) = nitro_dir() else { return };
    let test_chain = TestNitro::new();
    let mut other = TrustAnchors::new();
    other.add_certificate(test_chain.root_der());
    for sample in [beta_valid(&dir), beta_debug(&dir), ga(&dir)] {
        let result = nitro::verify(&sample.bytes, &other, sample.now);
        assert_eq!(reason(result), Reason::Chain);
        let result = nitro::verify(&sample.bytes, &TrustAnchors::new(), sample.now);
        assert_eq!(reason(result), Reason::Chain);
    }
}

#[test]
fn fixture_root_is_aws_root() {
    let Some(dir) = nitro_dir() else { return };
    let sample = beta_valid(&dir);
    let document = nitro::parse_document(&sample.bytes).expect("parses");
    assert_eq!(document.cabundle.len(), 4);
    assert_eq!(document.algorithm, Some(nitro::ALG_ES384));
    assert_eq!(document.signature.len(), 96);
    assert_eq!(
        hex::encode(sha256(&document.cabundle[0])),
        twid_evidence::roots::production::AWS_NITRO_ROOT_G1
    );

    // The PEM root file contains the same certificate, and trusting it in full works as well.
    let pem = String::from_utf8(read(&dir, "aws_nitro_enclaves_root_G1.pem")).expect("text");
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let root = STANDARD.decode(body).expect("base64");
    assert_eq!(root, document.cabundle[0]);
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(&root);
    assert!(nitro::verify(&sample.bytes, &anchors, sample.now).is_ok());
}

#[test]
fn fixture_tagged_form_verifies() {
    let Some(dir) = nitro_dir() else { return };
    let sample = beta_valid(&dir);
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&sample.bytes);
    let verified = nitro::verify(&tagged, &production(), sample.now).expect("tagged verifies");
    assert_eq!(verified.evidence_sha256, sha256(&tagged));
    assert_eq!(
        nitro_claims(&verified).module_id,
        "i-020b6af9246d90e92-enc0183d09086c24190"
    );

    let mut other_tag = vec![0xd1];
    other_tag.extend_from_slice(&sample.bytes);
    assert_eq!(reason(nitro::parse_document(&other_tag)), Reason::Malformed);
}

// Documents from the test kit.

fn test_anchors(chain: &TestNitro) -> TrustAnchors {
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(chain.root_der());
    anchors
}

#[test]
fn generated_document_round_trip() {
    let chain = TestNitro::new();
    let spec = DocumentSpec {
        user_data: Some(b"user data".to_vec()),
        nonce: Some(vec![7; 32]),
        public_key: Some(vec![4; 65]),
        ..DocumentSpec::default()
    };
    let document = chain.document(&spec);
    let verified =
        nitro::verify(&document, &test_anchors(&chain), kit::NOW).expect("generated verifies");

    assert_eq!(verified.kind, Kind::Nitro);
    assert_eq!(verified.valid_until, Some(kit::LEAF_NOT_AFTER));
    assert_eq!(verified.evidence_sha256, sha256(&document));
    let claims = nitro_claims(&verified);
    assert_eq!(claims.module_id, spec.module_id);
    assert_eq!(claims.digest, "SHA384");
    assert_eq!(claims.timestamp_ms, kit::DEFAULT_TIMESTAMP_MS);
    assert_eq!(claims.pcrs, spec.pcrs);
    assert_eq!(claims.user_data, spec.user_data);
    assert_eq!(claims.nonce, spec.nonce);
    assert_eq!(claims.public_key, spec.public_key);
    assert!(!claims.debug);
    assert_eq!(verified.bound_data(), Some(&b"user data"[..]));
}

#[test]
fn generated_tagged_document_verifies() {
    let chain = TestNitro::new();
    let document = chain.document(&DocumentSpec {
        tagged: true,
        ..DocumentSpec::default()
    });
    assert_eq!(document.first(), Some(&0xd2));
    assert!(nitro::verify(&document, &test_anchors(&chain), kit::NOW).is_ok());
}

#[test]
fn generated_debug_document_verifies() {
    let chain = TestNitro::new();
    let mut spec = DocumentSpec::default();
    spec.pcrs.insert(0, vec![0; 48]);
    let document = chain.document(&spec);
    let verified = nitro::verify(&document, &test_anchors(&chain), kit::NOW).expect("verifies");
    assert!(nitro_claims(&verified).debug);
    assert!(verified.debug());
}

#[test]
fn generated_document_without_pcr0_is_debug() {
    let chain = TestNitro::new();
    let mut spec = DocumentSpec::default();
    spec.pcrs.remove(&0);
    let document = chain.document(&spec);
    let verified = nitro::verify(&document, &test_anchors(&chain), kit::NOW).expect("verifies");
    assert!(nitro_claims(&verified).debug);
}

#[test]
fn generated_byte_flips_fail() {
    let chain = TestNitro::new();
    let anchors = test_anchors(&chain);
    let document = chain.document(&DocumentSpec::default());
    // Flip one bit in every byte in turn: each result must be rejected, never accepted and
    // never a panic.
    for index in 0..document.len() {
        let mut flipped = document.clone();
        flipped[index] ^= 0x01;
        assert!(
            nitro::verify(&flipped, &anchors, kit::NOW).is_err(),
            "flip at byte {index} verified"
        );
    }
}

#[test]
fn generated_signature_flip_fails() {
    let chain = TestNitro::new();
    let mut document = chain.document(&DocumentSpec::default());
    let last = document.len() - 1;
    document[last] ^= 0x80;
    let result = nitro::verify(&document, &test_anchors(&chain), kit::NOW);
    assert_eq!(reason(result), Reason::Signature);
}

#[test]
fn generated_untrusted_root_fails() {
    let chain = TestNitro::new();
    let other = TestNitro::new();
    let document = chain.document(&DocumentSpec::default());
    assert_eq!(
        reason(nitro::verify(&document, &test_anchors(&other), kit::NOW)),
        Reason::Chain
    );
    assert_eq!(
        reason(nitro::verify(&document, &production(), kit::NOW)),
        Reason::Chain
    );
}

#[test]
fn generated_leaf_validity_boundaries() {
    let chain = TestNitro::new();
    let anchors = test_anchors(&chain);
    let document = chain.document(&DocumentSpec::default());
    let verify = |now| nitro::verify(&document, &anchors, now);
    assert!(verify(kit::LEAF_NOT_BEFORE).is_ok());
    assert!(verify(kit::LEAF_NOT_AFTER).is_ok());
    assert_eq!(reason(verify(kit::LEAF_NOT_BEFORE - 1)), Reason::Expired);
    assert_eq!(reason(verify(kit::LEAF_NOT_AFTER + 1)), Reason::Expired);
}

#[test]
fn generated_cabundle_swap_fails_chain() {
    let chain = TestNitro::new();
    let mut spec_payload = chain.payload(&DocumentSpec::default());
    // Reverse the cabundle so the leaf no longer follows its issuer.
    for (key, value) in &mut spec_payload {
        if *key == Value::Text("cabundle".to_owned())
            && let Value::Array(items) = value
        {
            items.reverse();
        }
    }
    let document = chain.sign_payload(
        &kit::encode(&Value::Map(spec_payload)),
        kit::ALG_ES384,
        false,
    );
    let result = nitro::verify(&document, &test_anchors(&chain), kit::NOW);
    assert_eq!(reason(result), Reason::Chain);
}

#[test]
fn generated_root_only_as_anchor() {
    let chain = TestNitro::new();
    // Drop the root from the cabundle and give it in full as an anchor instead.
    let mut payload = chain.payload(&DocumentSpec::default());
    for (key, value) in &mut payload {
        if *key == Value::Text("cabundle".to_owned())
            && let Value::Array(items) = value
        {
            items.remove(0);
        }
    }
    let document = chain.sign_payload(&kit::encode(&Value::Map(payload)), kit::ALG_ES384, false);
    assert!(nitro::verify(&document, &test_anchors(&chain), kit::NOW).is_ok());

    let mut pinned_only = TrustAnchors::new();
    pinned_only
        .add_fingerprint(&hex::encode(sha256(chain.root_der())))
        .expect("fingerprint");
    let result = nitro::verify(&document, &pinned_only, kit::NOW);
    assert_eq!(reason(result), Reason::Chain);
}

#[test]
fn generated_wrong_algorithm_fails() {
    let chain = TestNitro::new();
    let payload = kit::encode(&Value::Map(chain.payload(&DocumentSpec::default())));
    for alg in [-7, -36, -37, 0] {
        let document = chain.sign_payload(&payload, alg, false);
        let result = nitro::verify(&document, &test_anchors(&chain), kit::NOW);
        assert_eq!(reason(result), Reason::Malformed, "alg {alg}");
    }
}

/// Signs the default payload with `field` removed or replaced by `value`.
fn document_with_field(chain: &TestNitro, field: &str, value: Option<Value>) -> Vec<u8> {
    let mut payload = chain.payload(&DocumentSpec::default());
    let key = Value::Text(field.to_owned());
    payload.retain(|(existing, _)| *existing != key);
    if let Some(value) = value {
        payload.push((key, value));
    }
    chain.sign_payload(&kit::encode(&Value::Map(payload)), kit::ALG_ES384, false)
}

#[test]
fn missing_mandatory_fields_fail() {
    let chain = TestNitro::new();
    for field in [
        "module_id",
        "digest",
        "timestamp",
        "pcrs",
        "certificate",
        "cabundle",
    ] {
        let document = document_with_field(&chain, field, None);
        assert_eq!(
            reason(nitro::parse_document(&document)),
            Reason::Malformed,
            "{field}"
        );
    }
}

#[test]
fn optional_fields_may_be_absent() {
    let chain = TestNitro::new();
    let anchors = test_anchors(&chain);
    for field in ["public_key", "user_data", "nonce"] {
        let document = document_with_field(&chain, field, None);
        assert!(
            nitro::verify(&document, &anchors, kit::NOW).is_ok(),
            "{field}"
        );
    }
}

#[test]
fn oversized_user_fields_fail() {
    let chain = TestNitro::new();
    let anchors = test_anchors(&chain);
    for field in ["public_key", "user_data", "nonce"] {
        let at_limit = document_with_field(&chain, field, Some(Value::Bytes(vec![1; 1024])));
        assert!(
            nitro::verify(&at_limit, &anchors, kit::NOW).is_ok(),
            "{field}"
        );
        let over = document_with_field(&chain, field, Some(Value::Bytes(vec![1; 1025])));
        assert_eq!(
            reason(nitro::parse_document(&over)),
            Reason::Malformed,
            "{field}"
        );
    }
}

#[test]
fn digest_names_are_checked() {
    let chain = TestNitro::new();
    let anchors = test_anchors(&chain);
    for (digest, length) in [("SHA256", 32), ("SHA384", 48), ("SHA512", 64)] {
        let spec = DocumentSpec {
            digest: digest.to_owned(),
            pcrs: (0u8..16)
                .map(|index| (index, vec![index + 1; length]))
                .collect(),
            ..DocumentSpec::default()
        };
        let verified = nitro::verify(&chain.document(&spec), &anchors, kit::NOW)
            .unwrap_or_else(|error| panic!("{digest}: {error}"));
        assert_eq!(nitro_claims(&verified).digest, digest);
    }
    for digest in ["SHA1", "sha384", ""] {
        let spec = DocumentSpec {
            digest: digest.to_owned(),
            ..DocumentSpec::default()
        };
        assert_eq!(
            reason(nitro::parse_document(&chain.document(&spec))),
            Reason::Malformed,
            "{digest:?}"
        );
    }
}

#[test]
fn bad_pcrs_fail() {
    let chain = TestNitro::new();
    let mut too_short = DocumentSpec::default();
    too_short.pcrs.insert(5, vec![0; 20]);
    let mut wrong_for_digest = DocumentSpec::default();
    wrong_for_digest.pcrs.insert(5, vec![0; 32]);
    let too_many = DocumentSpec {
        pcrs: (0u8..33).map(|index| (index, vec![1; 48])).collect(),
        ..DocumentSpec::default()
    };
    let index_too_high = DocumentSpec {
        pcrs: [(32u8, vec![1; 48])].into_iter().collect(),
        ..DocumentSpec::default()
    };
    let empty = DocumentSpec {
        pcrs: BTreeMap::new(),
        ..DocumentSpec::default()
    };
    for (name, spec) in [
        ("20-byte PCR", too_short),
        ("32-byte PCR under SHA384", wrong_for_digest),
        ("33 PCRs", too_many),
        ("PCR index 32", index_too_high),
        ("no PCRs", empty),
    ] {
        let document = chain.document(&spec);
        assert_eq!(
            reason(nitro::parse_document(&document)),
            Reason::Malformed,
            "{name}"
        );
    }
}

#[test]
fn wrong_field_types_fail() {
    let chain = TestNitro::new();
    let cases = [
        ("module_id", Value::Bytes(b"i-0".to_vec())),
        ("module_id", Value::Text(String::new())),
        ("timestamp", Value::Text("now".to_owned())),
        ("timestamp", Value::from(0)),
        ("timestamp", Value::from(-1)),
        ("pcrs", Value::Array(Vec::new())),
        ("certificate", Value::Text("cert".to_owned())),
        ("cabundle", Value::Array(Vec::new())),
        (
            "cabundle",
            Value::Array(vec![Value::Text("cert".to_owned())]),
        ),
        ("user_data", Value::Text("text".to_owned())),
        ("nonce", Value::from(1)),
    ];
    for (field, value) in cases {
        let description = format!("{field} = {value:?}");
        let document = document_with_field(&chain, field, Some(value));
        assert_eq!(
            reason(nitro::parse_document(&document)),
            Reason::Malformed,
            "{description}"
        );
    }
}

#[test]
fn parse_rejects_non_cose_input() {
    let cases: [&[u8]; 6] = [
        b"",
        b"\x80",
        b"\xa0",
        b"\x84\x40\xa0\xf6\x40",
        b"\x84\x40\xa0\x40\x40",
        b"\xd2\x84\x40\xa0\x41\xa0",
    ];
    for case in cases {
        assert_eq!(
            reason(nitro::parse_document(case)),
            Reason::Malformed,
            "{}",
            hex::encode(case)
        );
    }
}

#[test]
fn trailing_bytes_fail() {
    let chain = TestNitro::new();
    let mut document = chain.document(&DocumentSpec::default());
    document.push(0);
    assert_eq!(reason(nitro::parse_document(&document)), Reason::Malformed);
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
fn random_mutations_never_panic() {
    let chain = TestNitro::new();
    let anchors = test_anchors(&chain);
    let document = chain.document(&DocumentSpec {
        user_data: Some(vec![9; 40]),
        ..DocumentSpec::default()
    });
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let mut mutated = document.clone();
        for _ in 0..=random.below(4) {
            let index = random.below(mutated.len());
            mutated[index] = random.next() as u8;
        }
        if round % 3 == 0 {
            let length = random.below(mutated.len());
            mutated.truncate(length);
        }
        let parsed = nitro::parse_document(&mutated);
        let verified = nitro::verify(&mutated, &anchors, kit::NOW);
        if parsed.is_err() {
            assert!(
                verified.is_err(),
                "round {round}: verify accepted an unparsable document"
            );
        }
    }
}
