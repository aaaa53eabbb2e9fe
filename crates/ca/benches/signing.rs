//! Signing throughput on one core.
//!
//! `ecdsa_p256_sign` and `ecdsa_p256_verify` are the crypto floor of one X.509-SVID: the
//! server verifies the CSR signature and signs the certificate. The verify case parses the
//! public key on every call, as the server must for each new CSR.
//! `parse_csr_and_sign_x509_svid` is that server path; compare it with the sum of the two.
//! `rcgen_leaf_reference` signs an equivalent leaf with rcgen for comparison.
//! `sign_jwt_svid` and `validate_jwt_svid` are the JWT-SVID paths. Compare them with
//! `es256_sign` and `es256_verify`, the raw fixed-width ECDSA P-256 operations they wrap,
//! measured in the same run. Both verify cases parse the public key on every call.

// A benchmark setup failure should abort the run.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
};
use criterion::{Criterion, criterion_group, criterion_main};
use twid_ca::{
    CaSubject, JwtKey, KeyType, PrivateKey, X509Authority, X509SvidRequest, build_csr, parse_csr,
};
use twid_spiffe::{JwtAuthority, JwtBundle, JwtBundleSet, JwtSvid, SpiffeId, TrustDomain};

const HOUR: Duration = Duration::from_secs(3600);

fn raw_ecdsa(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let message = [0x5a_u8; 32];
    c.bench_function("ecdsa_p256_sign", |b| {
        b.iter(|| pair.sign(&rng, black_box(&message)).unwrap())
    });

    let signature = pair.sign(&rng, &message).unwrap();
    let public_key = pair.public_key().as_ref().to_vec();
    c.bench_function("ecdsa_p256_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, black_box(&public_key))
                .verify(black_box(&message), signature.as_ref())
                .unwrap()
        })
    });
}

fn authority(now: SystemTime) -> X509Authority {
    let trust_domain = TrustDomain::new("example.org").unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    X509Authority::self_signed(
        &trust_domain,
        key,
        &CaSubject::default(),
        now,
        24 * HOUR,
        None,
    )
    .unwrap()
}

fn server_path(c: &mut Criterion) {
    let now = SystemTime::now();
    let ca = authority(now);
    let id = SpiffeId::new("spiffe://example.org/spire/agent/join_token/abc").unwrap();
    let csr = build_csr(&PrivateKey::generate(KeyType::EcP256).unwrap()).unwrap();

    c.bench_function("parse_csr_and_sign_x509_svid", |b| {
        b.iter(|| {
            let info = parse_csr(black_box(&csr)).unwrap();
            ca.sign_x509_svid(&X509SvidRequest {
                spiffe_id: &id,
                public_key_spki_der: &info.public_key_spki_der,
                ttl: HOUR,
                dns_names: &[],
                now,
            })
            .unwrap()
        })
    });

    c.bench_function("parse_csr", |b| {
        b.iter(|| parse_csr(black_box(&csr)).unwrap())
    });

    let spki = parse_csr(&csr).unwrap().public_key_spki_der;
    c.bench_function("sign_x509_svid", |b| {
        b.iter(|| {
            ca.sign_x509_svid(&X509SvidRequest {
                spiffe_id: &id,
                public_key_spki_der: black_box(&spki),
                ttl: HOUR,
                dns_names: &[],
                now,
            })
            .unwrap()
        })
    });
}

fn rcgen_reference(c: &mut Criterion) {
    let now = SystemTime::now();
    let ca = authority(now);
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let spki_der = build_csr(&PrivateKey::generate(KeyType::EcP256).unwrap())
        .map(|csr| parse_csr(&csr).unwrap().public_key_spki_der)
        .unwrap();
    drop(ca);

    c.bench_function("rcgen_leaf_reference", |b| {
        b.iter(|| {
            let public_key = rcgen::SubjectPublicKeyInfo::from_der(black_box(&spki_der)).unwrap();
            let mut params = rcgen::CertificateParams::default();
            let mut serial = [0u8; 16];
            aws_lc_rs::rand::fill(&mut serial).unwrap();
            serial[0] &= 0x7f;
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CountryName, "US");
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "SPIRE");
            params.subject_alt_names = vec![rcgen::SanType::URI(
                "spiffe://example.org/spire/agent/join_token/abc"
                    .try_into()
                    .unwrap(),
            )];
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyEncipherment,
                rcgen::KeyUsagePurpose::KeyAgreement,
            ];
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.use_authority_key_identifier_extension = true;
            params.not_before = time::OffsetDateTime::from(now) - time::Duration::seconds(10);
            params.not_after = time::OffsetDateTime::from(now) + time::Duration::hours(1);
            params.signed_by(&public_key, &issuer).unwrap()
        })
    });
}

fn jwt(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    // About the length of a JWT-SVID signing input with one audience.
    let message = [0x5a_u8; 200];
    c.bench_function("es256_sign", |b| {
        b.iter(|| pair.sign(&rng, black_box(&message)).unwrap())
    });
    let signature = pair.sign(&rng, &message).unwrap();
    let public_key = pair.public_key().as_ref().to_vec();
    c.bench_function("es256_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, black_box(&public_key))
                .verify(black_box(&message), signature.as_ref())
                .unwrap()
        })
    });

    let now = SystemTime::now();
    let key = JwtKey::generate(KeyType::EcP256, now, 24 * HOUR).unwrap();
    let subject = SpiffeId::new("spiffe://example.org/workload").unwrap();
    let audience = vec!["db".to_owned()];
    c.bench_function("sign_jwt_svid", |b| {
        b.iter(|| {
            key.sign_jwt_svid(black_box(&subject), &audience, HOUR, now, None)
                .unwrap()
        })
    });

    let (token, _) = key
        .sign_jwt_svid(&subject, &audience, HOUR, now, None)
        .unwrap();
    let mut bundle = JwtBundle::new(TrustDomain::new("example.org").unwrap());
    bundle.add_authority(
        JwtAuthority::from_spki_der(key.key_id(), &key.public_key_spki_der()).unwrap(),
    );
    let bundles: JwtBundleSet = [bundle].into_iter().collect();
    c.bench_function("validate_jwt_svid", |b| {
        b.iter(|| JwtSvid::parse_and_validate(black_box(&token), &bundles, &["db"], now).unwrap())
    });
}

criterion_group!(benches, raw_ecdsa, server_path, jwt, rcgen_reference);
criterion_main!(benches);
