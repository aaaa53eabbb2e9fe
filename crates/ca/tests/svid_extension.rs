//! X.509-SVIDs with caller extensions: the extension is present and non-critical, the CA's own
//! extensions are unchanged, and twid-spiffe, rustls-webpki and the OpenSSL command line still
//! accept the certificate.

// Helper functions outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use twid_ca::{
    CaError, CaSubject, KeyType, PrivateKey, SvidExtension, X509Authority, X509SvidRequest,
};
use twid_spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet, check_leaf, verify_x509_svid};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

mod common;

const HOUR: Duration = Duration::from_secs(3600);

/// An OID under the UUID arc with an arc over 64 bits, like twid's attestation extension.
const OID: &str = "2.25.227360298736076670704709277066504449269.1";

/// The content octets of [`OID`]'s DER encoding.
const OID_CONTENT: &[u8] = &[
    0x69, 0x82, 0xd6, 0x8c, 0x80, 0x8c, 0xa4, 0xff, 0xda, 0x8e, 0xd5, 0x82, 0xc5, 0xe7, 0xe7, 0xa3,
    0x90, 0xd0, 0xd9, 0x75, 0x01,
];

/// A SEQUENCE { INTEGER 1, UTF8String "tdx" }.
const VALUE: &[u8] = &[0x30, 0x08, 0x02, 0x01, 0x01, 0x0c, 0x03, b't', b'd', b'x'];

fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn workload_id() -> SpiffeId {
    SpiffeId::new("spiffe://example.org/workload").unwrap()
}

fn authority(key_type: KeyType, now: SystemTime) -> X509Authority {
    let key = PrivateKey::generate(key_type).unwrap();
    X509Authority::self_signed(&trust_domain(), key, &CaSubject::default(), now, HOUR, None)
        .unwrap()
}

fn extension() -> SvidExtension {
    SvidExtension {
        oid: OID.to_owned(),
        value_der: VALUE.to_vec(),
    }
}

fn sign(
    ca: &X509Authority,
    key: &PrivateKey,
    now: SystemTime,
    extensions: &[SvidExtension],
) -> Result<CertificateDer<'static>, CaError> {
    let id = workload_id();
    let spki = key.public_key_spki_der();
    let dns_names = ["svc.example.org".to_owned()];
    ca.sign_x509_svid_with_extensions(
        &X509SvidRequest {
            spiffe_id: &id,
            public_key_spki_der: &spki,
            ttl: HOUR,
            dns_names: &dns_names,
            now,
        },
        extensions,
    )
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty(), "trailing bytes after certificate");
    cert
}

/// Lists the certificate's extensions as (OID content octets, critical, value).
fn extensions_of(der: &[u8]) -> Vec<(Vec<u8>, bool, Vec<u8>)> {
    parse(der)
        .extensions()
        .iter()
        .map(|e| (e.oid.as_bytes().to_vec(), e.critical, e.value.to_vec()))
        .collect()
}

fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

#[test]
fn extension_is_appended_noncritical() {
    let ca = authority(KeyType::EcP256, fixed_now());
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let plain = sign(&ca, &key, fixed_now(), &[]).unwrap();
    let extended = sign(&ca, &key, fixed_now(), &[extension()]).unwrap();

    let plain_extensions = extensions_of(&plain);
    let mut extended_extensions = extensions_of(&extended);
    let last = extended_extensions.pop().unwrap();
    assert_eq!(last.0, OID_CONTENT);
    assert!(!last.1, "the caller extension is critical");
    assert_eq!(last.2, VALUE);
    // The CA's own extensions keep their order, flags and values. Both leaves certify the
    // same key, so even the key identifiers match.
    assert_eq!(extended_extensions, plain_extensions);
}

#[test]
fn plain_signing_adds_no_extension() {
    let ca = authority(KeyType::EcP256, fixed_now());
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let via_old_api = {
        let id = workload_id();
        let spki = key.public_key_spki_der();
        ca.sign_x509_svid(&X509SvidRequest {
            spiffe_id: &id,
            public_key_spki_der: &spki,
            ttl: HOUR,
            dns_names: &["svc.example.org".to_owned()],
            now: fixed_now(),
        })
        .unwrap()
    };
    let via_new_api = sign(&ca, &key, fixed_now(), &[]).unwrap();
    assert_eq!(extensions_of(&via_old_api), extensions_of(&via_new_api));
    assert!(
        extensions_of(&via_old_api)
            .iter()
            .all(|(oid, _, _)| oid != OID_CONTENT)
    );
}

#[test]
fn extended_leaf_passes_twid_spiffe() {
    for ca_type in KeyType::ALL {
        let ca = authority(ca_type, fixed_now());
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let leaf = sign(&ca, &key, fixed_now(), &[extension()]).unwrap();
        assert_eq!(check_leaf(&leaf).unwrap(), workload_id());
        let bundle =
            X509Bundle::from_authorities(trust_domain(), vec![ca.cert_der().clone()]).unwrap();
        let bundles: X509BundleSet = [bundle].into_iter().collect();
        let id = verify_x509_svid(std::slice::from_ref(&leaf), &bundles, fixed_now())
            .unwrap_or_else(|e| panic!("CA {ca_type}: {e}"));
        assert_eq!(id, workload_id());
        let svid = twid_spiffe::X509Svid::parse_der(&leaf, key.pkcs8_der()).unwrap();
        assert_eq!(svid.spiffe_id(), &workload_id());
    }
}

#[test]
fn extended_leaf_passes_webpki() {
    for ca_type in KeyType::ALL {
        let ca = authority(ca_type, fixed_now());
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let leaf = sign(&ca, &key, fixed_now(), &[extension()]).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(ca.cert_der()).unwrap();
        let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(1_750_000_060));
        for usage in [
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        ] {
            end_entity
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    std::slice::from_ref(&anchor),
                    &[],
                    time,
                    usage,
                    None,
                    None,
                )
                .unwrap_or_else(|e| panic!("CA {ca_type}: {e:?}"));
        }
    }
}

#[test]
fn extended_leaf_passes_openssl() {
    if !common::openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let leaf_path = dir.path().join("leaf.pem");
    // OpenSSL checks validity at the real current time, so these certificates start now.
    let now = SystemTime::now();
    for ca_type in [KeyType::EcP256, KeyType::Rsa2048] {
        let ca = authority(ca_type, now);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let leaf = sign(&ca, &key, now, &[extension()]).unwrap();
        common::write_pem(&ca_path, "CERTIFICATE", ca.cert_der());
        common::write_pem(&leaf_path, "CERTIFICATE", &leaf);
        for purpose in ["any", "sslclient", "sslserver"] {
            let output = common::openssl(&[
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                common::arg(&ca_path),
                common::arg(&leaf_path),
            ]);
            assert!(
                output.status.success(),
                "CA {ca_type}, purpose {purpose}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let output = common::openssl(&["x509", "-noout", "-text", "-in", common::arg(&leaf_path)]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "openssl x509 failed");
        assert!(text.contains(OID), "openssl shows no {OID}:\n{text}");
        assert!(
            !text.contains(&format!("{OID}: critical")),
            "openssl shows the extension as critical:\n{text}"
        );
    }
}

#[test]
fn invalid_extension_is_rejected() {
    let ca = authority(KeyType::EcP256, fixed_now());
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let san = SvidExtension {
        oid: "2.5.29.17".to_owned(),
        value_der: VALUE.to_vec(),
    };
    let error = sign(&ca, &key, fixed_now(), &[san]).unwrap_err();
    assert!(matches!(error, CaError::InvalidExtension { .. }), "{error}");
    let not_der = SvidExtension {
        oid: OID.to_owned(),
        value_der: b"tdx".to_vec(),
    };
    let error = sign(&ca, &key, fixed_now(), &[not_der]).unwrap_err();
    assert!(matches!(error, CaError::InvalidExtension { .. }), "{error}");
}
