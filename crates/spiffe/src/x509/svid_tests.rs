use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::*;
use crate::x509::{X509Bundle, X509BundleSet, verify_x509_svid};
use crate::{SpiffeId, TrustDomain};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

fn uri_sans(uris: &[&str]) -> Vec<SanType> {
    uris.iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect()
}

fn ca(uri: &str) -> Ca {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "SPIFFE");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = uri_sans(&[uri]);
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca { params, key, der }
}

fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names = uri_sans(uris);
    params
}

fn issue(params: &CertificateParams, issuer: &Ca) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&issuer.params, &issuer.key);
    let der = params.signed_by(&key, &issuer).unwrap().der().clone();
    (der, key)
}

fn pkcs8(key: &KeyPair) -> PrivatePkcs8KeyDer<'static> {
    PrivatePkcs8KeyDer::from(key.serialize_der())
}

fn bundles(td: &str, cas: &[&Ca]) -> X509BundleSet {
    let certs = cas.iter().map(|c| c.der.clone()).collect();
    let bundle = X509Bundle::from_authorities(TrustDomain::new(td).unwrap(), certs).unwrap();
    [bundle].into_iter().collect()
}

fn leaf_error(params: &CertificateParams) -> X509SvidError {
    let (der, _) = issue(params, &ca("spiffe://example.org"));
    check_leaf(&der).unwrap_err()
}

#[test]
fn accepts_issued_chain_and_verifies_it() {
    let root = ca("spiffe://example.org");
    let (leaf, key) = issue(&leaf_params(&["spiffe://example.org/w"]), &root);
    let svid = X509Svid::from_parts(vec![leaf.clone()], pkcs8(&key)).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/w");
    assert_eq!(svid.leaf(), &leaf);

    let now = SystemTime::now();
    let id = verify_x509_svid(svid.chain(), &bundles("example.org", &[&root]), now).unwrap();
    assert_eq!(id, SpiffeId::new("spiffe://example.org/w").unwrap());
}

#[test]
fn verify_uses_intermediates() {
    let root = ca("spiffe://example.org");
    let mut mid_params = root.params.clone();
    mid_params.distinguished_name = rcgen::DistinguishedName::new();
    mid_params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    let (mid_der, mid_key) = issue(&mid_params, &root);
    let mid = Ca {
        params: mid_params,
        key: mid_key,
        der: mid_der,
    };
    let (leaf, key) = issue(&leaf_params(&["spiffe://example.org/w"]), &mid);

    let chain = vec![leaf, mid.der.clone()];
    let svid = X509Svid::parse_der(&concat_der(&chain), &key.serialize_der()).unwrap();
    assert_eq!(svid.chain(), chain.as_slice());
    let set = bundles("example.org", &[&root]);
    assert!(verify_x509_svid(&chain, &set, SystemTime::now()).is_ok());
    // Without the intermediate the leaf has no path to the root.
    let err = verify_x509_svid(&chain[..1], &set, SystemTime::now()).unwrap_err();
    assert!(matches!(err, X509SvidError::ChainInvalid(_)), "{err:?}");
}

#[test]
fn rejects_leaf_without_basic_constraints() {
    // conformance: X5-09 (choice for A6)
    let mut params = leaf_params(&["spiffe://example.org/w"]);
    params.is_ca = IsCa::NoCa;
    assert_eq!(
        leaf_error(&params),
        X509SvidError::LeafMissingBasicConstraints
    );
}

#[test]
fn rejects_leaf_with_two_uri_sans() {
    // conformance: X5-01, X5-02
    let params = leaf_params(&["spiffe://example.org/w", "https://example.org/x"]);
    assert_eq!(leaf_error(&params), X509SvidError::MultipleUriSans(2));
}

#[test]
fn rejects_leaf_id_without_path() {
    // conformance: X5-04
    let params = leaf_params(&["spiffe://example.org"]);
    let expected = SpiffeId::new("spiffe://example.org").unwrap();
    assert_eq!(
        leaf_error(&params),
        X509SvidError::LeafIdWithoutPath(expected)
    );
}

#[test]
fn rejects_non_spiffe_uri() {
    // conformance: X5-17
    let err = leaf_error(&leaf_params(&["https://example.org/w"]));
    assert!(
        matches!(err, X509SvidError::InvalidSpiffeId { .. }),
        "{err:?}"
    );
}

#[test]
fn rejects_leaf_without_key_usage() {
    // conformance: X5-10
    let mut params = leaf_params(&["spiffe://example.org/w"]);
    params.key_usages.clear();
    assert_eq!(leaf_error(&params), X509SvidError::LeafMissingKeyUsage);
}

#[test]
fn rejects_ca_certificate_as_leaf() {
    // conformance: X5-07
    let root = ca("spiffe://example.org/ca");
    assert_eq!(check_leaf(&root.der).unwrap_err(), X509SvidError::LeafIsCa);
}

#[test]
fn rejects_signing_cert_id_with_path() {
    // conformance: X5-06
    let bad_ca = ca("spiffe://example.org/ca");
    let (leaf, key) = issue(&leaf_params(&["spiffe://example.org/w"]), &bad_ca);
    let err = X509Svid::from_parts(vec![leaf, bad_ca.der.clone()], pkcs8(&key)).unwrap_err();
    assert!(
        matches!(err, X509SvidError::SigningCertIdWithPath { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn rejects_key_of_another_leaf() {
    let root = ca("spiffe://example.org");
    let (leaf, _) = issue(&leaf_params(&["spiffe://example.org/w"]), &root);
    let other = KeyPair::generate().unwrap();
    let err = X509Svid::from_parts(vec![leaf], pkcs8(&other)).unwrap_err();
    assert_eq!(err, X509SvidError::KeyMismatch);
}

#[test]
fn accepts_p384_and_rsa_leaf_keys() {
    let root = ca("spiffe://example.org");
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_RSA_SHA256] {
        let key = KeyPair::generate_for(alg).unwrap();
        let issuer = Issuer::from_params(&root.params, &root.key);
        let params = leaf_params(&["spiffe://example.org/w"]);
        let leaf = params.signed_by(&key, &issuer).unwrap().der().clone();
        assert!(X509Svid::from_parts(vec![leaf], pkcs8(&key)).is_ok());
    }
}

#[test]
fn never_checks_against_another_trust_domain() {
    // conformance: ID-20, FED-06
    let evil = ca("spiffe://evil.org");
    let (leaf, _) = issue(&leaf_params(&["spiffe://example.org/w"]), &evil);
    let now = SystemTime::now();
    let err = verify_x509_svid(
        std::slice::from_ref(&leaf),
        &bundles("evil.org", &[&evil]),
        now,
    );
    assert_eq!(
        err.unwrap_err(),
        X509SvidError::NoBundle(TrustDomain::new("example.org").unwrap())
    );

    let real = ca("spiffe://example.org");
    let err = verify_x509_svid(&[leaf], &bundles("example.org", &[&real]), now).unwrap_err();
    assert!(matches!(err, X509SvidError::ChainInvalid(_)), "{err:?}");
}

#[test]
fn reports_expiry_distinctly() {
    // conformance: X5-16
    let root = ca("spiffe://example.org");
    let (leaf, _) = issue(&leaf_params(&["spiffe://example.org/w"]), &root);
    let set = bundles("example.org", &[&root]);
    let far_future = SystemTime::now() + Duration::from_secs(10_000 * 365 * 86_400);
    let err = verify_x509_svid(std::slice::from_ref(&leaf), &set, far_future).unwrap_err();
    assert!(matches!(err, X509SvidError::Expired(_)), "{err:?}");
    let err = verify_x509_svid(&[leaf], &set, SystemTime::UNIX_EPOCH).unwrap_err();
    assert!(matches!(err, X509SvidError::NotYetValid(_)), "{err:?}");
}

#[test]
fn empty_bundle_rejects_every_svid() {
    // conformance: BDL-06
    let root = ca("spiffe://example.org");
    let (leaf, _) = issue(&leaf_params(&["spiffe://example.org/w"]), &root);
    let td = TrustDomain::new("example.org").unwrap();
    let set: X509BundleSet = [X509Bundle::new(td.clone())].into_iter().collect();
    let err = verify_x509_svid(&[leaf], &set, SystemTime::now()).unwrap_err();
    assert_eq!(err, X509SvidError::NoAuthorities(td));
}

#[test]
fn split_and_concat_round_trip() {
    let a = ca("spiffe://a.org").der;
    let b = ca("spiffe://b.org").der;
    let joined = concat_der(&[a.clone(), b.clone()]);
    assert_eq!(split_der_certificates(&joined).unwrap(), vec![a, b]);
    assert_eq!(
        split_der_certificates(&[]).unwrap_err(),
        X509SvidError::NoCertificates
    );
    assert!(matches!(
        split_der_certificates(b"junk"),
        Err(X509SvidError::Der(_))
    ));
}

#[test]
fn bundle_pem_and_der_round_trip() {
    let td = TrustDomain::new("example.org").unwrap();
    let mut bundle = X509Bundle::new(td.clone());
    let root = ca("spiffe://example.org");
    bundle.add_authority(root.der.clone());
    bundle.add_authority(root.der.clone());
    assert_eq!(bundle.authorities().len(), 1);
    assert!(bundle.contains(&root.der));
    assert_eq!(
        X509Bundle::parse_pem(td.clone(), bundle.to_pem().as_bytes()).unwrap(),
        bundle
    );
    assert_eq!(X509Bundle::parse_der(td, &bundle.to_der()).unwrap(), bundle);
}
