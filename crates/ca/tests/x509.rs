//! CA certificates, CSR checks and X.509-SVID issuance, checked with x509-parser,
//! rustls-webpki, twid-spiffe and the OpenSSL command line.

// Helper functions outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use twid_ca::{
    CaError, CaSubject, KeyType, PrivateKey, X509Authority, X509SvidRequest, build_csr, not_after,
    parse_csr, serial_hex,
};
use twid_spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet, verify_x509_svid};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

mod common;

const HOUR: Duration = Duration::from_secs(3600);

fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn workload_id() -> SpiffeId {
    SpiffeId::new("spiffe://example.org/workload").unwrap()
}

/// Returns a fixed signing time, so expected validity times are exact.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn authority(key_type: KeyType, ttl: Duration) -> X509Authority {
    let key = PrivateKey::generate(key_type).unwrap();
    X509Authority::self_signed(
        &trust_domain(),
        key,
        &CaSubject::default(),
        now(),
        ttl,
        None,
    )
    .unwrap()
}

fn sign_leaf(
    ca: &X509Authority,
    key: &PrivateKey,
    ttl: Duration,
    dns_names: &[String],
) -> CertificateDer<'static> {
    let id = workload_id();
    let spki = key.public_key_spki_der();
    ca.sign_x509_svid(&X509SvidRequest {
        spiffe_id: &id,
        public_key_spki_der: &spki,
        ttl,
        dns_names,
        now: now(),
    })
    .unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty(), "trailing bytes after certificate");
    cert
}

fn extension<'a>(
    cert: &'a X509Certificate<'_>,
    oid: &str,
) -> &'a x509_parser::extensions::X509Extension<'a> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)
        .unwrap_or_else(|| panic!("extension {oid} missing"))
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    match extension(cert, "2.5.29.14").parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => id.0.to_vec(),
        other => panic!("unexpected SKI {other:?}"),
    }
}

fn bundle_set(ca: &X509Authority) -> X509BundleSet {
    let bundle = X509Bundle::from_authorities(trust_domain(), vec![ca.cert_der().clone()]).unwrap();
    [bundle].into_iter().collect()
}

fn webpki_verify(
    ca: &X509Authority,
    leaf: &CertificateDer<'_>,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca.cert_der()).unwrap();
    let end_entity = webpki::EndEntityCert::try_from(leaf)?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(unix(now()) + 60));
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            time,
            usage,
            None,
            None,
        )
        .map(|_| ())
}

#[test]
fn ca_certificate_has_required_fields() {
    for key_type in KeyType::ALL {
        let ca = authority(key_type, HOUR);
        let cert = parse(ca.cert_der());
        assert_eq!(cert.version().0, 2, "{key_type}: not v3");
        assert_eq!(cert.subject().to_string(), "C=US, O=SPIFFE", "{key_type}");
        assert_eq!(
            cert.issuer().as_raw(),
            cert.subject().as_raw(),
            "{key_type}"
        );

        let bc = extension(&cert, "2.5.29.19");
        assert!(bc.critical, "{key_type}: basicConstraints not critical");
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca, "{key_type}: cA not set");
        assert_eq!(constraints.path_len_constraint, None);

        let ku_ext = extension(&cert, "2.5.29.15");
        assert!(ku_ext.critical, "{key_type}: keyUsage not critical");
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign(), "{key_type}: {ku}");
        assert!(ku.crl_sign(), "{key_type}: {ku}");
        assert!(!ku.digital_signature(), "{key_type}: {ku}");

        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            [GeneralName::URI("spiffe://example.org")],
            "{key_type}"
        );
        assert_eq!(subject_key_id(&cert).len(), 20, "{key_type}");

        assert_eq!(unix(ca.not_before()), unix(now()) - 10, "{key_type}");
        assert_eq!(unix(ca.not_after()), unix(now()) + 3600, "{key_type}");
        assert_eq!(not_after(ca.cert_der()).unwrap(), ca.not_after());
        assert_eq!(ca.key_type(), key_type);
        assert_eq!(ca.trust_domain(), Some(&trust_domain()));

        cert.verify_signature(None)
            .unwrap_or_else(|e| panic!("{key_type}: self-signature does not verify: {e}"));
        let serial = cert.raw_serial();
        assert!(
            serial.len() <= 17 && serial[0] & 0x80 == 0,
            "{key_type}: serial {serial:02x?}"
        );
    }
}

#[test]
fn ca_subject_and_serial_are_configurable() {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let subject = CaSubject {
        country: vec!["DE".into()],
        organization: vec!["Acme".into(), "Acme Labs".into()],
        common_name: Some("Acme Root".into()),
    };
    let ca = X509Authority::self_signed(&trust_domain(), key, &subject, now(), HOUR, Some(0x80))
        .unwrap();
    let cert = parse(ca.cert_der());
    assert_eq!(
        cert.subject().to_string(),
        "C=DE, O=Acme, O=Acme Labs, CN=Acme Root"
    );
    assert_eq!(serial_hex(ca.cert_der()).unwrap(), "0080");

    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let ca = X509Authority::self_signed(&trust_domain(), key, &subject, now(), HOUR, Some(0x1234))
        .unwrap();
    assert_eq!(serial_hex(ca.cert_der()).unwrap(), "1234");
}

#[test]
fn ca_rejects_bad_parameters() {
    let make = |subject: &CaSubject, ttl: Duration, serial: Option<u128>| {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        X509Authority::self_signed(&trust_domain(), key, subject, now(), ttl, serial).unwrap_err()
    };
    let empty = CaSubject {
        country: vec![],
        organization: vec![],
        common_name: None,
    };
    assert!(matches!(
        make(&empty, HOUR, None),
        CaError::InvalidSubject(_)
    ));
    assert!(matches!(
        make(&CaSubject::default(), HOUR, Some(0)),
        CaError::InvalidSerial
    ));
    assert!(matches!(
        make(&CaSubject::default(), Duration::from_millis(999), None),
        CaError::InvalidTtl(_)
    ));
    let far = Duration::from_secs(9000 * 365 * 86400);
    assert!(matches!(
        make(&CaSubject::default(), far, None),
        CaError::TimeOutOfRange(_)
    ));
}

#[test]
fn leaf_has_x509_svid_fields() {
    let ca = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let dns = vec![
        "api.example.org".to_owned(),
        "*.internal.example.org".to_owned(),
    ];
    let leaf = sign_leaf(&ca, &key, Duration::from_secs(600), &dns);
    let cert = parse(&leaf);
    let ca_cert = parse(ca.cert_der());

    assert_eq!(cert.version().0, 2);
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    assert_eq!(
        cert.subject().to_string(),
        "C=US, O=SPIRE, CN=api.example.org"
    );
    assert_eq!(cert.public_key().raw, key.public_key_spki_der().as_slice());

    let bc = extension(&cert, "2.5.29.19");
    assert!(bc.critical, "basicConstraints not critical");
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);

    let ku_ext = extension(&cert, "2.5.29.15");
    assert!(ku_ext.critical, "keyUsage not critical");
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature(), "{ku}");
    assert!(ku.key_encipherment(), "{ku}");
    assert!(ku.key_agreement(), "{ku}");
    assert!(!ku.key_cert_sign(), "{ku}");
    assert!(!ku.crl_sign(), "{ku}");

    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(eku.client_auth);
    assert!(!eku.any);
    assert!(eku.other.is_empty());

    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(!san.critical);
    assert_eq!(
        san.value.general_names,
        [
            GeneralName::URI("spiffe://example.org/workload"),
            GeneralName::DNSName("api.example.org"),
            GeneralName::DNSName("*.internal.example.org"),
        ]
    );

    let aki = match extension(&cert, "2.5.29.35").parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().unwrap().0.to_vec()
        }
        other => panic!("unexpected AKI {other:?}"),
    };
    assert_eq!(aki, subject_key_id(&ca_cert));
    assert_eq!(subject_key_id(&cert).len(), 20);

    assert_eq!(
        cert.validity().not_before.timestamp() as u64,
        unix(now()) - 10
    );
    assert_eq!(
        cert.validity().not_after.timestamp() as u64,
        unix(now()) + 600
    );
    assert_eq!(
        twid_spiffe::check_leaf(&leaf).unwrap(),
        workload_id(),
        "twid-spiffe leaf rules"
    );
}

#[test]
fn leaf_without_dns_names_has_no_common_name() {
    let ca = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = sign_leaf(&ca, &key, HOUR, &[]);
    let cert = parse(&leaf);
    assert_eq!(cert.subject().to_string(), "C=US, O=SPIRE");
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        [GeneralName::URI("spiffe://example.org/workload")]
    );

    // A DNS name longer than the 64-character commonName bound stays a SAN only.
    let long = format!("{}.example.org", "a".repeat(60));
    let leaf = sign_leaf(&ca, &key, HOUR, std::slice::from_ref(&long));
    assert_eq!(parse(&leaf).subject().to_string(), "C=US, O=SPIRE");
}

#[test]
fn leaf_expiry_is_capped_at_ca() {
    let ca = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = sign_leaf(&ca, &key, 10 * HOUR, &[]);
    assert_eq!(not_after(&leaf).unwrap(), ca.not_after());
    let short = sign_leaf(&ca, &key, Duration::from_secs(90), &[]);
    assert_eq!(unix(not_after(&short).unwrap()), unix(now()) + 90);
}

#[test]
fn expired_ca_refuses_to_sign() {
    let ca = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = workload_id();
    let spki = key.public_key_spki_der();
    let err = ca
        .sign_x509_svid(&X509SvidRequest {
            spiffe_id: &id,
            public_key_spki_der: &spki,
            ttl: HOUR,
            dns_names: &[],
            now: ca.not_after(),
        })
        .unwrap_err();
    assert!(matches!(err, CaError::Expired { .. }), "{err}");
}

#[test]
fn leaf_request_checks() {
    let ca = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let spki = key.public_key_spki_der();
    let good_id = workload_id();
    let foreign = SpiffeId::new("spiffe://other.org/workload").unwrap();
    let no_path = SpiffeId::new("spiffe://example.org").unwrap();
    let p521 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let p521_spki = rcgen::PublicKeyData::subject_public_key_info(&p521);
    let bad_dns = vec!["bad_name.example.org".to_owned()];

    let sign = |id: &SpiffeId, spki: &[u8], ttl: Duration, dns: &[String]| {
        ca.sign_x509_svid(&X509SvidRequest {
            spiffe_id: id,
            public_key_spki_der: spki,
            ttl,
            dns_names: dns,
            now: now(),
        })
        .unwrap_err()
    };
    assert!(matches!(
        sign(&foreign, &spki, HOUR, &[]),
        CaError::ForeignTrustDomain { .. }
    ));
    assert!(matches!(
        sign(&no_path, &spki, HOUR, &[]),
        CaError::IdWithoutPath(_)
    ));
    assert!(matches!(
        sign(&good_id, &spki, Duration::ZERO, &[]),
        CaError::InvalidTtl(_)
    ));
    assert!(matches!(
        sign(&good_id, &spki, HOUR, &bad_dns),
        CaError::InvalidDnsName(_)
    ));
    assert!(matches!(
        sign(&good_id, &p521_spki, HOUR, &[]),
        CaError::UnsupportedPublicKey(_)
    ));
    assert!(matches!(
        sign(&good_id, b"junk", HOUR, &[]),
        CaError::UnsupportedPublicKey(_)
    ));
}

#[test]
fn leaves_get_distinct_serials() {
    let ca = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..200 {
        let serial = serial_hex(&sign_leaf(&ca, &key, HOUR, &[])).unwrap();
        assert!(serial.len() <= 34, "serial {serial} longer than 17 octets");
        assert!(serials.insert(serial), "serial repeated");
    }
}

#[test]
fn csr_round_trips_every_key_type() {
    for key_type in KeyType::ALL {
        let key = PrivateKey::generate(key_type).unwrap();
        let csr = build_csr(&key).unwrap();
        let info = parse_csr(&csr).unwrap_or_else(|e| panic!("{key_type}: {e}"));
        assert_eq!(
            info.public_key_spki_der,
            key.public_key_spki_der(),
            "{key_type}"
        );
    }
}

#[test]
fn csr_requesting_ca_still_gets_leaf() {
    let ca = authority(KeyType::EcP256, HOUR);
    let subject_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example.org".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let csr = params.serialize_request(&subject_key).unwrap();

    // The request really contains cA=true, or this test proves nothing.
    let (_, parsed_csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr.der()).unwrap();
    let requests_ca = parsed_csr
        .requested_extensions()
        .unwrap()
        .any(|ext| matches!(ext, ParsedExtension::BasicConstraints(bc) if bc.ca));
    assert!(requests_ca, "CSR does not request cA=true");

    let info = parse_csr(csr.der()).unwrap();
    let id = workload_id();
    let leaf = ca
        .sign_x509_svid(&X509SvidRequest {
            spiffe_id: &id,
            public_key_spki_der: &info.public_key_spki_der,
            ttl: HOUR,
            dns_names: &[],
            now: now(),
        })
        .unwrap();
    let cert = parse(&leaf);
    assert!(
        !cert.basic_constraints().unwrap().unwrap().value.ca,
        "leaf is a CA"
    );
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(!ku.key_cert_sign(), "{ku}");
    assert!(!ku.crl_sign(), "{ku}");
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        [GeneralName::URI("spiffe://example.org/workload")]
    );
    webpki_verify(&ca, &leaf, webpki::KeyUsage::client_auth()).unwrap();
}

#[test]
fn csr_with_bad_signature_is_rejected() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aaaa");
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    assert!(parse_csr(&csr).is_ok(), "unmodified CSR must verify");

    // A changed subject byte invalidates the signature over the request info.
    let mut changed_info = csr.clone();
    let at = changed_info.windows(4).position(|w| w == b"aaaa").unwrap();
    changed_info[at] = b'b';
    let err = parse_csr(&changed_info).unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr(_)), "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");

    // A changed signature byte: the last byte is inside the ECDSA s value.
    let mut changed_signature = csr.clone();
    *changed_signature.last_mut().unwrap() ^= 0x01;
    let err = parse_csr(&changed_signature).unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr(_)), "{err}");
}

#[test]
fn csr_rejects_malformed_input() {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut csr = build_csr(&key).unwrap();
    csr.push(0);
    let err = parse_csr(&csr).unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");
    assert!(matches!(
        parse_csr(b"junk").unwrap_err(),
        CaError::InvalidCsr(_)
    ));
    assert!(matches!(
        parse_csr(&[]).unwrap_err(),
        CaError::InvalidCsr(_)
    ));
}

#[test]
fn csr_bit_flips_never_yield_unsignable_keys() {
    let ca = authority(KeyType::EcP256, HOUR);
    let id = workload_id();
    let csr = build_csr(&PrivateKey::generate(KeyType::EcP256).unwrap()).unwrap();
    let mut accepted = 0;
    for index in 0..csr.len() {
        for bit in 0..8 {
            let mut mutated = csr.clone();
            mutated[index] ^= 1 << bit;
            let Ok(info) = parse_csr(&mutated) else {
                continue;
            };
            accepted += 1;
            ca.sign_x509_svid(&X509SvidRequest {
                spiffe_id: &id,
                public_key_spki_der: &info.public_key_spki_der,
                ttl: HOUR,
                dns_names: &[],
                now: now(),
            })
            .unwrap_or_else(|e| panic!("byte {index} bit {bit}: accepted key not signable: {e}"));
        }
    }
    // Every flipped bit either breaks the signature or leaves non-DER input.
    assert_eq!(accepted, 0, "mutated requests were accepted");
}

#[test]
fn csr_with_sha1_signature_is_rejected() {
    if !common::openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    let csr_path = dir.path().join("csr.der");
    let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
    key.write_pem_file(&key_path).unwrap();
    let output = common::openssl(&[
        "req",
        "-new",
        "-sha1",
        "-subj",
        "/CN=sha1",
        "-outform",
        "DER",
        "-key",
        common::arg(&key_path),
        "-out",
        common::arg(&csr_path),
    ]);
    if !output.status.success() {
        println!(
            "openssl cannot create SHA-1 requests here, skipping: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    let csr = std::fs::read(&csr_path).unwrap();
    let err = parse_csr(&csr).unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");

    // The same key with SHA-256 passes, so the algorithm alone caused the rejection.
    let output = common::openssl(&[
        "req",
        "-new",
        "-sha256",
        "-subj",
        "/CN=sha256",
        "-outform",
        "DER",
        "-key",
        common::arg(&key_path),
        "-out",
        common::arg(&csr_path),
    ]);
    assert!(output.status.success());
    parse_csr(&std::fs::read(&csr_path).unwrap()).unwrap();
}

#[test]
fn leaf_verifies_with_webpki() {
    for ca_type in KeyType::ALL {
        let ca = authority(ca_type, HOUR);
        for leaf_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(leaf_type).unwrap();
            let leaf = sign_leaf(&ca, &key, HOUR, &["svc.example.org".to_owned()]);
            for usage in [
                webpki::KeyUsage::client_auth(),
                webpki::KeyUsage::server_auth(),
            ] {
                webpki_verify(&ca, &leaf, usage)
                    .unwrap_or_else(|e| panic!("CA {ca_type}, leaf {leaf_type}: {e:?}"));
            }
            let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
            let name = ServerName::try_from("svc.example.org").unwrap();
            end_entity
                .verify_is_valid_for_subject_name(&name)
                .unwrap_or_else(|e| panic!("CA {ca_type}, leaf {leaf_type}: {e:?}"));
        }
    }
    // A leaf of another CA must not verify, or the checks above prove nothing.
    let ca = authority(KeyType::EcP256, HOUR);
    let other = authority(KeyType::EcP256, HOUR);
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = sign_leaf(&other, &key, HOUR, &[]);
    assert!(webpki_verify(&ca, &leaf, webpki::KeyUsage::client_auth()).is_err());
}

#[test]
fn leaf_verifies_with_twid_spiffe() {
    for ca_type in KeyType::ALL {
        let ca = authority(ca_type, HOUR);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let leaf = sign_leaf(&ca, &key, HOUR, &[]);
        let id = verify_x509_svid(std::slice::from_ref(&leaf), &bundle_set(&ca), now())
            .unwrap_or_else(|e| panic!("CA {ca_type}: {e}"));
        assert_eq!(id, workload_id());

        let svid = twid_spiffe::X509Svid::parse_der(&leaf, key.pkcs8_der()).unwrap();
        assert_eq!(svid.spiffe_id(), &workload_id());

        let later = ca.not_after() + Duration::from_secs(1);
        assert!(
            verify_x509_svid(&[leaf], &bundle_set(&ca), later).is_err(),
            "expired leaf passed"
        );
    }
}

#[test]
fn leaf_verifies_with_openssl() {
    if !common::openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let other = authority(KeyType::EcP256, HOUR);
    common::write_pem(&path("other.pem"), "CERTIFICATE", other.cert_der());
    // OpenSSL checks validity at the real current time, so these certificates start now.
    let real_now = SystemTime::now();
    for ca_type in KeyType::ALL {
        let ca_key = PrivateKey::generate(ca_type).unwrap();
        let ca = X509Authority::self_signed(
            &trust_domain(),
            ca_key,
            &CaSubject::default(),
            real_now,
            HOUR,
            None,
        )
        .unwrap();
        for leaf_type in [KeyType::EcP256, KeyType::Rsa2048] {
            let key = PrivateKey::generate(leaf_type).unwrap();
            let id = workload_id();
            let spki = key.public_key_spki_der();
            let leaf = ca
                .sign_x509_svid(&X509SvidRequest {
                    spiffe_id: &id,
                    public_key_spki_der: &spki,
                    ttl: HOUR,
                    dns_names: &["svc.example.org".to_owned()],
                    now: real_now,
                })
                .unwrap();
            common::write_pem(&path("ca.pem"), "CERTIFICATE", ca.cert_der());
            common::write_pem(&path("leaf.pem"), "CERTIFICATE", &leaf);
            for purpose in ["any", "sslclient", "sslserver"] {
                let output = common::openssl(&[
                    "verify",
                    "-x509_strict",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    common::arg(&path("ca.pem")),
                    common::arg(&path("leaf.pem")),
                ]);
                assert!(
                    output.status.success(),
                    "CA {ca_type}, leaf {leaf_type}, purpose {purpose}: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let rejected = common::openssl(&[
                "verify",
                "-CAfile",
                common::arg(&path("other.pem")),
                common::arg(&path("leaf.pem")),
            ]);
            assert!(
                !rejected.status.success(),
                "openssl accepted a leaf of another CA"
            );

            // OpenSSL prints the serial as uppercase hex without DER's sign octet.
            let output = common::openssl(&[
                "x509",
                "-noout",
                "-serial",
                "-in",
                common::arg(&path("leaf.pem")),
            ]);
            let printed = String::from_utf8(output.stdout).unwrap();
            let printed = printed
                .trim()
                .strip_prefix("serial=")
                .unwrap()
                .to_lowercase();
            let ours = serial_hex(&leaf).unwrap();
            assert_eq!(ours.strip_prefix("00").unwrap_or(&ours), printed);
        }
    }
}

#[test]
fn authority_from_parts_round_trips() {
    let key = PrivateKey::generate(KeyType::EcP384).unwrap();
    let stored_key = key.pkcs8_der().to_vec();
    let ca = X509Authority::self_signed(
        &trust_domain(),
        key,
        &CaSubject::default(),
        now(),
        HOUR,
        None,
    )
    .unwrap();
    let loaded = X509Authority::from_parts(
        ca.cert_der().clone(),
        PrivateKey::from_pkcs8_der(&stored_key).unwrap(),
    )
    .unwrap();
    assert_eq!(loaded.not_before(), ca.not_before());
    assert_eq!(loaded.not_after(), ca.not_after());
    assert_eq!(loaded.key_type(), KeyType::EcP384);
    let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = sign_leaf(&loaded, &leaf_key, HOUR, &[]);
    webpki_verify(&ca, &leaf, webpki::KeyUsage::client_auth()).unwrap();
}

#[test]
fn authority_from_parts_rejects_mismatches() {
    let ca = authority(KeyType::EcP256, HOUR);
    let wrong_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let err = X509Authority::from_parts(ca.cert_der().clone(), wrong_key).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");

    // A leaf certificate cannot become an authority.
    let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = sign_leaf(&ca, &leaf_key, HOUR, &[]);
    let err = X509Authority::from_parts(leaf, leaf_key).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let err = X509Authority::from_parts(CertificateDer::from(b"junk".to_vec()), key).unwrap_err();
    assert!(matches!(err, CaError::InvalidCertificate(_)), "{err}");
}

#[test]
fn from_parts_keeps_external_issuer_bytes() {
    // rcgen writes the CA subject with a PrintableString common name, an encoding this crate
    // never produces. Leaves must copy it byte for byte to chain.
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let rcgen_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::PrintableString("External CA".try_into().unwrap()),
    );
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org".try_into().unwrap(),
    )];
    params.not_before = time::OffsetDateTime::from(now()) - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::from(now()) + time::Duration::hours(1);
    let ca_cert = params.self_signed(&rcgen_key).unwrap();

    let ca = X509Authority::from_parts(ca_cert.der().clone(), key).unwrap();
    assert_eq!(ca.trust_domain(), Some(&trust_domain()));
    let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = sign_leaf(&ca, &leaf_key, 10 * HOUR, &[]);
    assert_eq!(
        parse(&leaf).issuer().as_raw(),
        parse(ca.cert_der()).subject().as_raw()
    );
    assert_eq!(
        not_after(&leaf).unwrap(),
        ca.not_after(),
        "leaf outlives the CA"
    );
    webpki_verify(&ca, &leaf, webpki::KeyUsage::server_auth()).unwrap();
    verify_x509_svid(&[leaf], &bundle_set(&ca), now()).unwrap();
}
