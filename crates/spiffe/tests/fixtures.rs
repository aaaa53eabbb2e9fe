//! Third-party SPIFFE fixtures from go-spiffe, java-spiffe and py-spiffe, each checked for
//! the outcome the fixture catalogue states, at its pinned validation time.

use std::path::PathBuf;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use time::macros::datetime;
use twid_spiffe::{
    JwtBundle, JwtError, JwtSvid, SpiffeBundle, SpiffeBundleError, TrustDomain, X509Bundle,
    X509BundleError, X509BundleSet, X509Svid, X509SvidError, split_der_certificates,
    verify_x509_svid,
};

/// Returns the `spiffe` fixture folder, or `None` (after saying so) when it is absent.
fn fixtures() -> Option<PathBuf> {
    let root = std::env::var_os("TWID_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    let dir = root.join("spiffe");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("fixtures not found at {}, skipping", dir.display());
        None
    }
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("test trust domain must be valid")
}

fn at(t: time::OffsetDateTime) -> SystemTime {
    t.into()
}

fn set_of(bundle: X509Bundle) -> X509BundleSet {
    [bundle].into_iter().collect()
}

#[test]
fn go_x509svid_valid_files() {
    let Some(dir) = fixtures() else { return };
    let svid_dir = dir.join("go-spiffe/x509svid");
    let rsa_key = read(&svid_dir, "key-pkcs8-rsa.pem");
    let ec_key = read(&svid_dir, "key-pkcs8-ecdsa.pem");

    let leaf_only = read(&svid_dir, "good-leaf-only.pem");
    let svid = X509Svid::parse_pem(&leaf_only, &rsa_key).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/workload-1");
    assert_eq!(svid.chain().len(), 1);
    assert_eq!(svid.not_after(), at(datetime!(2025-03-29 19:00:37 UTC)));

    let with_ca = read(&svid_dir, "good-leaf-and-intermediate.pem");
    let svid = X509Svid::parse_pem(&with_ca, &ec_key).unwrap();
    assert_eq!(svid.chain().len(), 2);
    // Mismatched key: RSA key against the EC leaf.
    assert_eq!(
        X509Svid::parse_pem(&with_ca, &rsa_key).unwrap_err(),
        X509SvidError::KeyMismatch
    );

    // One file holding both blocks, in either order, is both inputs.
    for name in ["good-cert-and-key.pem", "good-key-and-cert.pem"] {
        let both = read(&svid_dir, name);
        let svid = X509Svid::parse_pem(&both, &both).unwrap();
        assert_eq!(svid.chain().len(), 1, "{name}");
        assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/workload-1");
    }
}

#[test]
fn go_x509svid_chain_verifies_at_pinned_time() {
    // conformance: X5-16
    let Some(dir) = fixtures() else { return };
    let svid_dir = dir.join("go-spiffe/x509svid");
    let svid = X509Svid::parse_pem(
        &read(&svid_dir, "good-leaf-and-intermediate.pem"),
        &read(&svid_dir, "key-pkcs8-ecdsa.pem"),
    )
    .unwrap();
    let bundle =
        X509Bundle::from_authorities(td("example.org"), vec![svid.chain()[1].clone()]).unwrap();
    let bundles = set_of(bundle);
    let pinned = at(datetime!(2020-03-24 14:30:00 UTC));
    let id = verify_x509_svid(svid.chain(), &bundles, pinned).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/workload-1");

    let real_clock = at(datetime!(2026-12-04 00:00:00 UTC));
    let err = verify_x509_svid(svid.chain(), &bundles, real_clock).unwrap_err();
    assert!(matches!(err, X509SvidError::Expired(_)), "{err:?}");
    let early = at(datetime!(2020-03-24 14:00:00 UTC));
    let err = verify_x509_svid(svid.chain(), &bundles, early).unwrap_err();
    assert!(matches!(err, X509SvidError::NotYetValid(_)), "{err:?}");
}

#[test]
fn go_x509svid_invalid_files() {
    let Some(dir) = fixtures() else { return };
    let svid_dir = dir.join("go-spiffe/x509svid");
    let rsa_key = read(&svid_dir, "key-pkcs8-rsa.pem");
    let cases: &[(&str, X509SvidError)] = &[
        // conformance: X5-09
        ("wrong-leaf-ca-true.pem", X509SvidError::LeafIsCa),
        // conformance: X5-12
        (
            "wrong-leaf-no-digital-signature.pem",
            X509SvidError::LeafMissingDigitalSignature,
        ),
        // conformance: X5-13
        (
            "wrong-leaf-cert-sign.pem",
            X509SvidError::LeafHasKeyCertSign,
        ),
        ("wrong-leaf-crl-sign.pem", X509SvidError::LeafHasCrlSign),
        // conformance: X5-03
        ("wrong-leaf-empty-id.pem", X509SvidError::UriSanMissing),
        // conformance: X5-08
        (
            "wrong-intermediate-no-ca.pem",
            X509SvidError::SigningCertNotCa { index: 1 },
        ),
        // conformance: X5-11
        (
            "wrong-intermediate-no-key-cert-sign.pem",
            X509SvidError::SigningCertMissingKeyCertSign { index: 1 },
        ),
        // The key file has no CERTIFICATE block.
        ("key-pkcs8-rsa.pem", X509SvidError::NoCertificates),
        ("not-pem", X509SvidError::NoCertificates),
    ];
    for (name, expected) in cases {
        let certs = read(&svid_dir, name);
        assert_eq!(
            X509Svid::parse_pem(&certs, &rsa_key).as_ref().err(),
            Some(expected),
            "{name}"
        );
    }

    let leaf = read(&svid_dir, "good-leaf-only.pem");
    let err = X509Svid::parse_pem(&read(&svid_dir, "corrupt-cert.pem"), &rsa_key).unwrap_err();
    assert!(
        matches!(err, X509SvidError::MalformedCertificate { index: 0, .. }),
        "{err:?}"
    );
    let err = X509Svid::parse_pem(&leaf, &read(&svid_dir, "corrupt-key.pem")).unwrap_err();
    assert_eq!(err, X509SvidError::MalformedPrivateKey);
    let err = X509Svid::parse_pem(&leaf, &read(&svid_dir, "not-pem")).unwrap_err();
    assert_eq!(err, X509SvidError::NoPrivateKey);
}

#[test]
fn go_x509bundle_files() {
    let Some(dir) = fixtures() else { return };
    let bundle_dir = dir.join("go-spiffe/x509bundle");
    let parse = |name: &str| X509Bundle::parse_pem(td("example.org"), &read(&bundle_dir, name));
    assert_eq!(parse("cert.pem").unwrap().authorities().len(), 1);
    assert_eq!(parse("certs.pem").unwrap().authorities().len(), 2);
    // conformance: BDL-06
    assert!(parse("empty.pem").unwrap().authorities().is_empty());
    assert_eq!(
        parse("not-pem.pem").unwrap_err(),
        X509BundleError::NoCertificates
    );
    let err = parse("corrupted.pem").unwrap_err();
    assert!(
        matches!(err, X509BundleError::MalformedCertificate { .. }),
        "{err:?}"
    );

    let round_trip = X509Bundle::parse_pem(
        td("example.org"),
        parse("certs.pem").unwrap().to_pem().as_bytes(),
    );
    assert_eq!(round_trip.unwrap(), parse("certs.pem").unwrap());
}

#[test]
fn go_jwtbundle_files() {
    // conformance: A5
    let Some(dir) = fixtures() else { return };
    let jwks_dir = dir.join("go-spiffe/jwtbundle");
    let parse = |name: &str| JwtBundle::parse_jwks(td("example.org"), &read(&jwks_dir, name));
    let one = parse("jwks_valid_1.json").unwrap();
    assert_eq!(one.authorities().len(), 1);
    assert!(one.get("C6vs25welZOx6WksNYfbMfiw9l96pMnD").is_some());
    assert_eq!(parse("jwks_valid_2.json").unwrap().authorities().len(), 2);
    // conformance: A4
    assert_eq!(
        parse("jwks_missing_kid.json").unwrap_err(),
        JwtError::JwkMissingKeyId
    );

    // The same files read as SPIFFE bundles: no element has `use`, so none counts.
    // conformance: BDL-08
    let as_bundle = SpiffeBundle::parse(td("example.org"), &read(&jwks_dir, "jwks_valid_2.json"));
    assert!(as_bundle.unwrap().jwt_authorities.is_empty());

    let round_trip = JwtBundle::parse_jwks(td("example.org"), &one.to_jwks()).unwrap();
    assert_eq!(round_trip, one);
}

#[test]
fn go_spiffebundle_files() {
    let Some(dir) = fixtures() else { return };
    let bundle_dir = dir.join("go-spiffe/spiffebundle");
    let parse = |name: &str| SpiffeBundle::parse(td("local"), &read(&bundle_dir, name));

    // conformance: BDL-01, JWT-12
    let one = parse("spiffebundle_valid_1.json").unwrap();
    assert_eq!(one.x509_authorities.len(), 1);
    assert_eq!(one.jwt_authorities.len(), 1);
    assert_eq!((one.refresh_hint, one.sequence_number), (None, None));

    let two = parse("spiffebundle_valid_2.json").unwrap();
    assert_eq!(
        (two.x509_authorities.len(), two.jwt_authorities.len()),
        (1, 6)
    );
    assert_eq!((two.refresh_hint, two.sequence_number), (Some(60), Some(1)));
    assert_eq!(
        SpiffeBundle::parse(td("local"), &two.to_json()).unwrap(),
        two
    );

    // conformance: BDL-05
    let wit = parse("spiffebundle_valid_with_wit.json").unwrap();
    assert_eq!(
        (wit.x509_authorities.len(), wit.jwt_authorities.len()),
        (1, 2)
    );

    // conformance: A4
    let err = parse("spiffebundle_missing_kid.json").unwrap_err();
    assert!(
        matches!(
            err,
            SpiffeBundleError::InvalidJwtAuthority {
                source: JwtError::JwkMissingKeyId,
                ..
            }
        ),
        "{err:?}"
    );
    // conformance: BDL-04
    assert_eq!(
        parse("spiffebundle_no_keys.json").unwrap_err(),
        SpiffeBundleError::MissingKeys
    );
    // conformance: X5-22
    let multiple = parse("spiffebundle_multiple_x509.json").unwrap();
    assert_eq!(
        (
            multiple.x509_authorities.len(),
            multiple.jwt_authorities.len()
        ),
        (1, 1)
    );
}

#[test]
fn jwt_token_files_are_rejected() {
    let Some(dir) = fixtures() else { return };
    let token = |name: &str| String::from_utf8(read(&dir, name)).unwrap();
    // conformance: JWT-03
    for name in [
        "go-spiffe/jwt/hs256-jwtio-example.jwt",
        "java-spiffe/jwt/hs256-spiffe-claims.jwt",
    ] {
        let err = JwtSvid::parse_insecure(&token(name)).unwrap_err();
        assert_eq!(
            err,
            JwtError::UnsupportedAlgorithm("HS256".into()),
            "{name}"
        );
    }
    // conformance: JWT-01
    let err =
        JwtSvid::parse_insecure(&token("py-spiffe/jwt/es256-corrupt-payload.jwt")).unwrap_err();
    assert!(
        matches!(
            err,
            JwtError::InvalidBase64("claims")
                | JwtError::InvalidJson {
                    segment: "claims",
                    ..
                }
        ),
        "{err:?}"
    );
    let err =
        JwtSvid::parse_insecure(&token("py-spiffe/jwt/es256-corrupt-header.jwt")).unwrap_err();
    assert!(
        matches!(
            err,
            JwtError::InvalidBase64("header")
                | JwtError::InvalidJson {
                    segment: "header",
                    ..
                }
        ),
        "{err:?}"
    );
}

#[test]
fn java_leaf_certificates_parse_with_their_keys() {
    // conformance: WL-09
    let Some(dir) = fixtures() else { return };
    let certs = dir.join("java-spiffe/certs");
    for name in ["a", "b", "c", "d", "e"] {
        let cert = read(&certs, &format!("leaf-{name}.crt.der"));
        let key = read(&certs, &format!("leaf-{name}.key.der"));
        let svid = X509Svid::parse_der(&cert, &key).unwrap();
        assert_eq!(svid.spiffe_id().as_str(), format!("spiffe://test/{name}"));
    }
    let other_key = read(&certs, "leaf-b.key.der");
    let err = X509Svid::parse_der(&read(&certs, "leaf-a.crt.der"), &other_key).unwrap_err();
    assert_eq!(err, X509SvidError::KeyMismatch);
}

#[test]
fn java_jwtbundle_files() {
    let Some(dir) = fixtures() else { return };
    let jwks_dir = dir.join("java-spiffe/jwtbundle");
    let parse = |name: &str| JwtBundle::parse_jwks(td("example.org"), &read(&jwks_dir, name));
    assert!(
        parse("jwks_invalid_keytype.json")
            .unwrap()
            .authorities()
            .is_empty()
    );
    let rsa = parse("jwks_valid_RSA_1.json").unwrap();
    assert_eq!(rsa.authorities().len(), 1);
    let jwk = rsa
        .get("14cc39cd-838d-426d-9bb1-77f3468fba96")
        .unwrap()
        .to_jwk(None);
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(jwk.get(private).is_none(), "{private} must not be written");
    }
    assert_eq!(
        parse("jwks_valid_RSA_EC.json").unwrap().authorities().len(),
        2
    );

    // As SPIFFE bundles: `use` "sig" is unknown and OKP is skipped. conformance: BDL-08
    for name in ["jwks_valid_RSA_1.json", "jwks_invalid_keytype.json"] {
        let bundle = SpiffeBundle::parse(td("example.org"), &read(&jwks_dir, name)).unwrap();
        assert!(bundle.jwt_authorities.is_empty(), "{name}");
    }
}

#[test]
fn java_workloadapi_files() {
    let Some(dir) = fixtures() else { return };
    let api = dir.join("java-spiffe/workloadapi");
    let bundle = X509Bundle::parse_der(td("example.org"), &read(&api, "bundle.der")).unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    let svid = X509Svid::parse_der(&read(&api, "svid.der"), &read(&api, "svid.key.der")).unwrap();
    assert_eq!(
        svid.spiffe_id().as_str(),
        "spiffe://example.org/workload-server"
    );
    let when = at(datetime!(2020-05-26 09:00:00 UTC));
    let err = verify_x509_svid(svid.chain(), &set_of(bundle), when).unwrap_err();
    assert!(matches!(err, X509SvidError::ChainInvalid(_)), "{err:?}");

    let json = read(&api, "bundle.json");
    assert_eq!(
        JwtBundle::parse_jwks(td("example.org"), &json)
            .unwrap()
            .authorities()
            .len(),
        3
    );
    let spiffe = SpiffeBundle::parse(td("example.org"), &json).unwrap();
    assert_eq!(spiffe.jwt_authorities.len(), 3);

    let federated = X509Bundle::parse_pem(td("local"), &read(&api, "federated-bundle.pem"));
    assert_eq!(federated.unwrap().authorities().len(), 1);
}

#[test]
fn java_x509svid_files() {
    let Some(dir) = fixtures() else { return };
    let svid_dir = dir.join("java-spiffe/x509svid");
    let go_dir = dir.join("go-spiffe/x509svid");
    let svid = X509Svid::parse_der(&read(&svid_dir, "cert.der"), &read(&svid_dir, "keyEC.der"));
    assert_eq!(
        svid.unwrap().spiffe_id().as_str(),
        "spiffe://example.org/workload-server"
    );

    let pairs = [
        ("good-leaf-and-intermediate.pem", "key-ecdsa-other.pem"),
        ("good-leaf-only.pem", "key-rsa-other.pem"),
    ];
    for (cert, key) in pairs {
        let err = X509Svid::parse_pem(&read(&go_dir, cert), &read(&svid_dir, key)).unwrap_err();
        assert_eq!(err, X509SvidError::KeyMismatch, "{cert} with {key}");
    }

    let corrupted = read(&svid_dir, "corrupted");
    let key = read(&svid_dir, "keyEC.der");
    assert!(X509Svid::parse_pem(&corrupted, &corrupted).is_err());
    assert!(X509Svid::parse_der(&corrupted, &key).is_err());
    assert!(X509Bundle::parse_pem(td("example.org"), &corrupted).is_err());
    assert!(X509Bundle::parse_der(td("example.org"), &corrupted).is_err());
}

#[test]
fn java_internal_files_never_pool_trust_domains() {
    // conformance: FED-06, ID-20
    let Some(dir) = fixtures() else { return };
    let internal = dir.join("java-spiffe/internal");
    let ca_pem = read(&internal, "bundle.pem");
    let other = X509Bundle::parse_pem(td("other.org"), &ca_pem).unwrap();
    let cert2 = pem_chain(&read(&internal, "cert2.pem"));
    let when = at(datetime!(2020-03-19 20:00:00 UTC));
    let id = verify_x509_svid(&cert2, &set_of(other), when).unwrap();
    assert_eq!(id.as_str(), "spiffe://other.org/test");

    let wrong_domain = X509Bundle::parse_pem(td("example.org"), &ca_pem).unwrap();
    let err = verify_x509_svid(&cert2, &set_of(wrong_domain.clone()), when).unwrap_err();
    assert_eq!(err, X509SvidError::NoBundle(td("other.org")));

    let cert = pem_chain(&read(&internal, "cert.pem"));
    let when = at(datetime!(2020-03-20 00:00:00 UTC));
    let err = verify_x509_svid(&cert, &set_of(wrong_domain), when).unwrap_err();
    assert!(matches!(err, X509SvidError::ChainInvalid(_)), "{err:?}");
}

fn pem_chain(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("fixture PEM must parse")
}

#[test]
fn py_x509_certs() {
    // conformance: WL-09, X5-16
    let Some(dir) = fixtures() else { return };
    let certs = dir.join("py-spiffe/x509-certs");
    let chain1 = read(&certs, "1-chain.der");
    let svid1 = X509Svid::parse_der(&chain1, &read(&certs, "1-key.der")).unwrap();
    assert_eq!(svid1.chain().len(), 2);
    assert_eq!(svid1.spiffe_id().as_str(), "spiffe://example.org/service");
    let ca1 = X509Bundle::from_authorities(td("example.org"), vec![svid1.chain()[1].clone()]);
    let bundles1 = set_of(ca1.unwrap());
    let when = at(datetime!(2021-02-09 18:30:00 UTC));
    assert!(verify_x509_svid(svid1.chain(), &bundles1, when).is_ok());
    assert_eq!(
        X509Svid::parse_der(&chain1, &chain1).unwrap_err(),
        X509SvidError::MalformedPrivateKey
    );

    let pem2 = read(&certs, "2-chain.pem");
    let svid2 = X509Svid::parse_pem(&pem2, &read(&certs, "2-key.pem")).unwrap();
    let ca2 = X509Bundle::from_authorities(td("example.org"), vec![svid2.chain()[1].clone()]);
    let when = at(datetime!(2021-02-10 15:00:00 UTC));
    assert!(verify_x509_svid(svid2.chain(), &set_of(ca2.unwrap()), when).is_ok());
    assert_eq!(
        X509Svid::parse_pem(&pem2, &pem2).unwrap_err(),
        X509SvidError::NoPrivateKey
    );

    let svid4 = X509Svid::parse_der(&read(&certs, "4-cert.der"), &read(&certs, "4-key.der"));
    let svid4 = svid4.unwrap();
    assert_eq!(svid4.spiffe_id().as_str(), "spiffe://example.org/service2");
    let when = at(datetime!(2021-03-26 15:00:00 UTC));
    let err = verify_x509_svid(svid4.chain(), &bundles1, when).unwrap_err();
    assert!(matches!(err, X509SvidError::ChainInvalid(_)), "{err:?}");
}

#[test]
fn py_x509_bundle_certs() {
    let Some(dir) = fixtures() else { return };
    let bundle_dir = dir.join("py-spiffe/x509-bundle-certs");
    let parse = |name: &str| X509Bundle::parse_der(td("example.org"), &read(&bundle_dir, name));
    assert_eq!(parse("cert.der").unwrap().authorities().len(), 1);
    assert_eq!(
        parse("federated_bundle.der").unwrap().authorities().len(),
        1
    );

    // Leaf plus CA: both are kept, but the leaf never anchors a chain, so the leaf
    // verifying against a bundle of only itself must fail.
    let both = parse("certs.der").unwrap();
    assert_eq!(both.authorities().len(), 2);
    let leaf_only =
        X509Bundle::from_authorities(td("example.org"), vec![both.authorities()[0].clone()]);
    let chain = split_der_certificates(&read(&bundle_dir, "certs.der")).unwrap();
    let when = at(datetime!(2021-02-09 18:30:00 UTC));
    let err = verify_x509_svid(&chain[..1], &set_of(leaf_only.unwrap()), when).unwrap_err();
    assert_eq!(err, X509SvidError::NoAuthorities(td("example.org")));
}

#[test]
fn py_jwks_files() {
    let Some(dir) = fixtures() else { return };
    let jwks_dir = dir.join("py-spiffe/jwks");
    let parse = |name: &str| JwtBundle::parse_jwks(td("example.org"), &read(&jwks_dir, name));
    assert_eq!(parse("jwks_3_keys.json").unwrap().authorities().len(), 3);
    let err = parse("jwks_ec_missing_x.json").unwrap_err();
    assert!(matches!(err, JwtError::MalformedJwk { .. }), "{err:?}");
}
