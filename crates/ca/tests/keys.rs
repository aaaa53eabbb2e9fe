//! Private key generation, PKCS#8 import and PEM files.

// Helper functions outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use twid_ca::{CaError, KeyType, PrivateKey};

mod common;

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn every_key_type_round_trips_through_file() {
    let dir = tempfile::tempdir().unwrap();
    for key_type in KeyType::ALL {
        let key = PrivateKey::generate(key_type).unwrap();
        assert_eq!(key.key_type(), key_type);

        let path = dir.path().join(format!("{key_type}.pem"));
        key.write_pem_file(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "{key_type} file mode");

        let read = PrivateKey::read_pem_file(&path).unwrap();
        assert_eq!(read.key_type(), key_type);
        assert_eq!(read.pkcs8_der(), key.pkcs8_der(), "{key_type} PKCS#8");
        assert_eq!(
            read.public_key_spki_der(),
            key.public_key_spki_der(),
            "{key_type} public key"
        );
    }
    // Only the key files remain: no temporary files are left behind.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ec-p256.pem", "ec-p384.pem", "rsa-2048.pem", "rsa-4096.pem"]
    );
}

#[test]
fn pkcs8_import_detects_key_type() {
    for key_type in KeyType::ALL {
        let key = PrivateKey::generate(key_type).unwrap();
        let imported = PrivateKey::from_pkcs8_der(key.pkcs8_der()).unwrap();
        assert_eq!(imported.key_type(), key_type);
        assert_eq!(imported.public_key_spki_der(), key.public_key_spki_der());
    }
}

#[test]
fn pkcs8_import_rejects_other_keys() {
    let p521 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let rsa3072 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072).unwrap();
    let rsa3072_der: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
        aws_lc_rs::encoding::AsDer::as_der(&rsa3072).unwrap();
    let cases: [(&str, &[u8]); 4] = [
        ("P-521", &p521.serialize_der()),
        ("Ed25519", &ed25519.serialize_der()),
        ("RSA 3072", rsa3072_der.as_ref()),
        ("garbage", b"not a key"),
    ];
    for (name, der) in cases {
        let err = PrivateKey::from_pkcs8_der(der).unwrap_err();
        assert!(
            matches!(err, CaError::InvalidPrivateKey(_)),
            "{name}: {err}"
        );
    }
}

#[test]
fn group_or_other_access_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    PrivateKey::generate(KeyType::EcP256)
        .unwrap()
        .write_pem_file(&path)
        .unwrap();
    for insecure in [0o640, 0o604, 0o620, 0o644] {
        fs::set_permissions(&path, fs::Permissions::from_mode(insecure)).unwrap();
        let err = PrivateKey::read_pem_file(&path).unwrap_err();
        match &err {
            CaError::InsecureKeyFile { path: p, mode } => {
                assert_eq!(p, &path);
                assert_eq!(*mode, insecure);
            }
            other => panic!("mode {insecure:o}: unexpected error {other}"),
        }
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("{insecure:04o}")), "{message}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(
        PrivateKey::read_pem_file(&path).is_ok(),
        "mode 0400 must pass"
    );
}

#[test]
fn write_replaces_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    fs::write(&path, "old contents").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let key = PrivateKey::generate(KeyType::EcP384).unwrap();
    key.write_pem_file(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let read = PrivateKey::read_pem_file(&path).unwrap();
    assert_eq!(read.pkcs8_der(), key.pkcs8_der());
}

#[test]
fn write_error_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("key.pem");
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let err = key.write_pem_file(&path).unwrap_err();
    assert!(matches!(err, CaError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing-dir"), "{err}");
}

#[test]
fn read_errors_name_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.pem");
    let err = PrivateKey::read_pem_file(&missing).unwrap_err();
    assert!(matches!(err, CaError::Io { .. }), "{err}");
    assert!(err.to_string().contains("absent.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "hello").unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o600)).unwrap();
    let err = PrivateKey::read_pem_file(&garbage).unwrap_err();
    assert!(matches!(err, CaError::InvalidKeyFile { .. }), "{err}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    let err = PrivateKey::read_pem_file(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn openssl_reads_written_key() {
    if !common::openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for key_type in [KeyType::EcP256, KeyType::Rsa2048] {
        let path = dir.path().join(format!("{key_type}.pem"));
        let key = PrivateKey::generate(key_type).unwrap();
        key.write_pem_file(&path).unwrap();
        let output = common::openssl(&[
            "pkey",
            "-pubout",
            "-outform",
            "DER",
            "-in",
            common::arg(&path),
        ]);
        assert!(
            output.status.success(),
            "openssl pkey failed for {key_type}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.stdout, key.public_key_spki_der(), "{key_type}");
    }
}
