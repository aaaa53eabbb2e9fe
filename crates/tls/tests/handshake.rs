//! TLS handshakes between this crate's configurations (and plain rustls peers) over in-memory
//! pipes, checking why each side accepts or rejects the other.

#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use rustls::{CertificateError, ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use twid_spiffe::X509SvidError;
use twid_tls::{
    Authorizer, ClientAuth, PeerError, SvidSource, TlsError, TrustSource, client_config,
    insecure_client_config, server_config,
};

use common::{LeafSpec, TestCa, TestSvid, raw_client, trust};

/// What each side of one handshake returned.
struct Outcome {
    client: Result<(), rustls::Error>,
    /// The client chain the server saw, when its handshake succeeded.
    server: Result<Option<Vec<CertificateDer<'static>>>, rustls::Error>,
}

impl Outcome {
    fn assert_ok(&self) {
        assert!(self.client.is_ok(), "client failed: {:?}", self.client);
        assert!(self.server.is_ok(), "server failed: {:?}", self.server);
    }

    fn server_peer_error(&self) -> PeerError {
        match &self.server {
            Err(error) => peer_error(error)
                .unwrap_or_else(|| panic!("server error is not a PeerError: {error:?}")),
            Ok(_) => panic!("server accepted the client"),
        }
    }

    fn client_peer_error(&self) -> PeerError {
        match &self.client {
            Err(error) => peer_error(error)
                .unwrap_or_else(|| panic!("client error is not a PeerError: {error:?}")),
            Ok(()) => panic!("client accepted the server"),
        }
    }
}

fn peer_error(error: &rustls::Error) -> Option<PeerError> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PeerError>().cloned()
        }
        _ => None,
    }
}

fn rustls_error(error: io::Error) -> rustls::Error {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(error.to_string()))
}

/// Runs one handshake. On success the server writes two bytes that the client must read, so
/// a client certificate rejected after the client's last flight still fails the client.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let mut stream = acceptor.accept(server_io).await.map_err(rustls_error)?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
        stream.write_all(b"ok").await.map_err(rustls_error)?;
        stream.flush().await.map_err(rustls_error)?;
        Ok(peer)
    });
    let connector = TlsConnector::from(client);
    let client_side = async move {
        let name = ServerName::try_from(common::SERVER_DNS_NAME).unwrap();
        let mut stream = connector
            .connect(name, client_io)
            .await
            .map_err(rustls_error)?;
        let mut buf = [0u8; 2];
        stream.read_exact(&mut buf).await.map_err(rustls_error)?;
        assert_eq!(&buf, b"ok");
        Ok(())
    };
    let client = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .expect("client handshake timed out");
    let server = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server handshake timed out")
        .unwrap();
    Outcome { client, server }
}

/// Builds a server of `ca` at `/server` that requires clients `authorizer` accepts.
fn server(ca: &TestCa, trust: TrustSource, authorizer: Authorizer) -> Arc<ServerConfig> {
    server_config(
        ca.server_svid().source(),
        trust,
        ClientAuth::Required(authorizer),
    )
    .unwrap()
}

/// Builds a client of this crate that presents `svid` and expects `server_ca`'s `/server`.
fn client(svid: &TestSvid, trust: TrustSource, server_ca: &TestCa) -> Arc<ClientConfig> {
    client_config(
        Some(svid.source()),
        trust,
        Authorizer::Exact(server_ca.id("/server")),
    )
    .unwrap()
}

#[tokio::test]
async fn same_domain_mtls_succeeds() {
    let a = TestCa::new("a.test");
    let alice = a.svid("/alice");
    let outcome = handshake(
        server(
            &a,
            trust(&[&a]),
            Authorizer::MemberOf(a.trust_domain.clone()),
        ),
        client(&alice, trust(&[&a]), &a),
    )
    .await;
    outcome.assert_ok();
    let chain = outcome.server.unwrap().expect("server saw no client chain");
    assert_eq!(chain[0], *alice.leaf());
    assert_eq!(twid_tls::peer_spiffe_id(&chain), Some(a.id("/alice")));
}

#[tokio::test]
async fn chain_through_intermediate_succeeds() {
    let a = TestCa::new("a.test");
    let intermediate = a.intermediate();
    let mut alice = intermediate.svid("/alice");
    alice.chain.push(intermediate.cert());
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Any),
        client(&alice, trust(&[&a]), &a),
    )
    .await;
    outcome.assert_ok();
}

#[tokio::test]
async fn client_of_foreign_domain_rejected() {
    let a = TestCa::new("a.test");
    let b = TestCa::new("b.test");
    let bob = b.svid("/bob");
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Any),
        client(&bob, trust(&[&a]), &a),
    )
    .await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::UnknownTrustDomain(td) if td == b.trust_domain
    ));
    assert!(outcome.client.is_err(), "client did not see the rejection");
}

#[tokio::test]
async fn leaf_signed_by_other_domain_rejected() {
    // Both bundles are trusted, but a B identity must chain to B's bundle, not to A's.
    let a = TestCa::new("a.test");
    let b = TestCa::new("b.test");
    let forged = a.issue(LeafSpec::svid(b.id("/bob").as_str()));
    let outcome = handshake(
        server(&a, trust(&[&a, &b]), Authorizer::Any),
        client(&forged, trust(&[&a]), &a),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn member_of_other_domain_unauthorized() {
    let a = TestCa::new("a.test");
    let b = TestCa::new("b.test");
    let bob = b.svid("/bob");
    let outcome = handshake(
        server(
            &a,
            trust(&[&a, &b]),
            Authorizer::MemberOf(a.trust_domain.clone()),
        ),
        client(&bob, trust(&[&a]), &a),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
}

#[tokio::test]
async fn ca_certificate_as_leaf_rejected() {
    let a = TestCa::new("a.test");
    let server_config = server(&a, trust(&[&a]), Authorizer::Any);

    // A CA certificate that carries a workload SPIFFE ID.
    let mut spec = LeafSpec::svid(a.id("/ca-leaf").as_str());
    spec.is_ca = true;
    let ca_leaf = a.issue(spec);
    let outcome = handshake(
        server_config.clone(),
        raw_client(&[a.cert()], Some(&ca_leaf), &[&rustls::version::TLS13]),
    )
    .await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::InvalidSvid(X509SvidError::LeafIsCa)
    ));

    // The trust domain's root itself, whose ID has no path.
    let outcome = handshake(
        server_config,
        raw_client(&[a.cert()], Some(&a.as_leaf()), &[&rustls::version::TLS13]),
    )
    .await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::InvalidSvid(X509SvidError::LeafIdWithoutPath(_))
    ));
}

#[tokio::test]
async fn leaf_without_uri_san_rejected() {
    let a = TestCa::new("a.test");
    let mut spec = LeafSpec::svid("unused");
    spec.uris.clear();
    spec.dns_names = vec!["client.test".to_owned()];
    let no_uri = a.issue(spec);
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Any),
        raw_client(&[a.cert()], Some(&no_uri), &[&rustls::version::TLS13]),
    )
    .await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::InvalidSvid(X509SvidError::UriSanMissing)
    ));
}

#[tokio::test]
async fn leaf_with_two_uri_sans_rejected() {
    let a = TestCa::new("a.test");
    let mut spec = LeafSpec::svid(a.id("/one").as_str());
    spec.uris.push(a.id("/two").as_str().to_owned());
    let two_uris = a.issue(spec);
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Any),
        raw_client(&[a.cert()], Some(&two_uris), &[&rustls::version::TLS13]),
    )
    .await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::InvalidSvid(X509SvidError::MultipleUriSans(2))
    ));
}

#[tokio::test]
async fn expired_leaf_rejected() {
    let a = TestCa::new("a.test");
    let mut spec = LeafSpec::svid(a.id("/old").as_str());
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let expired = a.issue(spec);
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Any),
        client(&expired, trust(&[&a]), &a),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
}

#[tokio::test]
async fn client_leaf_without_client_auth_eku_rejected() {
    let a = TestCa::new("a.test");
    let mut spec = LeafSpec::svid(a.id("/server-only").as_str());
    spec.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_only = a.issue(spec);
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Any),
        client(&server_only, trust(&[&a]), &a),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose)
    );
}

#[tokio::test]
async fn server_exact_mismatch_rejected() {
    let a = TestCa::new("a.test");
    let alice = a.svid("/alice");
    let outcome = handshake(
        server(&a, trust(&[&a]), Authorizer::Exact(a.id("/bob"))),
        client(&alice, trust(&[&a]), &a),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
}

#[tokio::test]
async fn client_exact_mismatch_rejected() {
    let a = TestCa::new("a.test");
    let alice = a.svid("/alice");
    let client = client_config(
        Some(alice.source()),
        trust(&[&a]),
        Authorizer::Exact(a.id("/other-server")),
    )
    .unwrap();
    let outcome = handshake(server(&a, trust(&[&a]), Authorizer::Any), client).await;
    assert_eq!(
        outcome.client.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
}

#[tokio::test]
async fn client_rejects_server_of_foreign_domain() {
    let a = TestCa::new("a.test");
    let b = TestCa::new("b.test");
    let alice = a.svid("/alice");
    let client = client_config(Some(alice.source()), trust(&[&a]), Authorizer::Any).unwrap();
    let outcome = handshake(server(&b, trust(&[&a]), Authorizer::Any), client).await;
    assert!(matches!(
        outcome.client_peer_error(),
        PeerError::UnknownTrustDomain(td) if td == b.trust_domain
    ));
}

#[tokio::test]
async fn one_of_authorizer_accepts_listed_ids() {
    let a = TestCa::new("a.test");
    let listed = Authorizer::OneOf(vec![a.id("/alice"), a.id("/bob")]);
    let outcome = handshake(
        server(&a, trust(&[&a]), listed.clone()),
        client(&a.svid("/bob"), trust(&[&a]), &a),
    )
    .await;
    outcome.assert_ok();
    let outcome = handshake(
        server(&a, trust(&[&a]), listed),
        client(&a.svid("/carol"), trust(&[&a]), &a),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
}

#[tokio::test]
async fn required_auth_rejects_client_without_certificate() {
    let a = TestCa::new("a.test");
    let anonymous = client_config(None, trust(&[&a]), Authorizer::Any).unwrap();
    let outcome = handshake(server(&a, trust(&[&a]), Authorizer::Any), anonymous).await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::NoCertificatesPresented
    );
}

#[tokio::test]
async fn optional_auth_accepts_client_without_certificate() {
    let a = TestCa::new("a.test");
    let config = server_config(
        a.server_svid().source(),
        trust(&[&a]),
        ClientAuth::Optional(Authorizer::Any),
    )
    .unwrap();

    // A client whose SVID source is still empty sends no certificate.
    let empty = client_config(Some(SvidSource::empty()), trust(&[&a]), Authorizer::Any).unwrap();
    let outcome = handshake(config.clone(), empty).await;
    outcome.assert_ok();
    assert_eq!(outcome.server.unwrap(), None);

    // A certificate that is sent must still verify.
    let b = TestCa::new("b.test");
    let outcome = handshake(config, client(&b.svid("/bob"), trust(&[&a]), &a)).await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::UnknownTrustDomain(_)
    ));
}

#[tokio::test]
async fn server_without_svid_fails_handshake() {
    let a = TestCa::new("a.test");
    let config = server_config(SvidSource::empty(), trust(&[&a]), ClientAuth::None).unwrap();
    let client = client_config(None, trust(&[&a]), Authorizer::Any).unwrap();
    let outcome = handshake(config, client).await;
    assert!(outcome.server.is_err(), "server handshake succeeded");
    assert!(outcome.client.is_err(), "client handshake succeeded");
}

#[tokio::test]
async fn insecure_client_checks_only_the_spiffe_id() {
    let a = TestCa::new("a.test");
    let server =
        || server_config(a.server_svid().source(), trust(&[&a]), ClientAuth::None).unwrap();

    // No bundle at all: the chain is not verified, but the ID must match.
    let accepted = insecure_client_config(None, Authorizer::Exact(a.id("/server"))).unwrap();
    handshake(server(), accepted).await.assert_ok();

    let mismatch = insecure_client_config(None, Authorizer::Exact(a.id("/other"))).unwrap();
    let outcome = handshake(server(), mismatch).await;
    assert_eq!(
        outcome.client.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
}

#[tokio::test]
async fn trust_bundle_update_applies_to_next_handshake() {
    let a = TestCa::new("a.test");
    let alice = a.svid("/alice");
    let server_trust = trust(&[&a]);
    let config = server(&a, server_trust.clone(), Authorizer::Any);
    handshake(config.clone(), client(&alice, trust(&[&a]), &a))
        .await
        .assert_ok();

    // A bundle that contains only a leaf has no usable anchor, so the leaf is skipped.
    server_trust.set(a.trust_domain.clone(), vec![alice.leaf().clone()]);
    let outcome = handshake(config.clone(), client(&alice, trust(&[&a]), &a)).await;
    assert_eq!(
        outcome.server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );

    server_trust.set(a.trust_domain.clone(), vec![alice.leaf().clone(), a.cert()]);
    handshake(config.clone(), client(&alice, trust(&[&a]), &a))
        .await
        .assert_ok();

    server_trust.remove_bundle(&a.trust_domain);
    let outcome = handshake(config, client(&alice, trust(&[&a]), &a)).await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::UnknownTrustDomain(_)
    ));
}

#[tokio::test]
async fn reconnect_rechecks_removed_bundle() {
    // Both configurations are reused, so a resumed session, if allowed, would skip the check.
    let a = TestCa::new("a.test");
    let server_trust = trust(&[&a]);
    let server = server(&a, server_trust.clone(), Authorizer::Any);
    let client = client(&a.svid("/alice"), trust(&[&a]), &a);
    handshake(server.clone(), client.clone()).await.assert_ok();

    server_trust.remove_bundle(&a.trust_domain);
    let outcome = handshake(server, client).await;
    assert!(matches!(
        outcome.server_peer_error(),
        PeerError::UnknownTrustDomain(_)
    ));
}

#[test]
fn trust_source_set_bundle_rejects_non_ca() {
    let a = TestCa::new("a.test");
    let source = TrustSource::empty();
    let error = source
        .set_bundle(
            a.trust_domain.clone(),
            &[a.cert(), a.svid("/alice").leaf().clone()],
        )
        .unwrap_err();
    assert!(
        matches!(error, TlsError::TrustAnchorNotCa { index: 1, .. }),
        "unexpected error: {error}"
    );
    assert!(source.trust_domains().is_empty());

    let error = source
        .set_bundle(
            a.trust_domain.clone(),
            &[CertificateDer::from(vec![0x30, 0x00])],
        )
        .unwrap_err();
    assert!(
        matches!(error, TlsError::InvalidTrustAnchor { index: 0, .. }),
        "unexpected error: {error}"
    );

    source
        .set_bundle(a.trust_domain.clone(), &[a.cert()])
        .unwrap();
    assert_eq!(source.trust_domains(), vec![a.trust_domain.clone()]);
}

#[test]
fn svid_source_set_validates_and_keeps_previous() {
    let a = TestCa::new("a.test");
    let alice = a.svid("/alice");
    let bob = a.svid("/bob");
    let source = SvidSource::empty();
    assert_eq!(source.spiffe_id(), None);
    assert!(source.certified_key().is_none());

    source.set(alice.chain.clone(), alice.key.clone()).unwrap();
    assert_eq!(source.spiffe_id(), Some(a.id("/alice")));

    let error = source.set(Vec::new(), alice.key.clone()).unwrap_err();
    assert!(
        matches!(error, TlsError::EmptyChain),
        "unexpected error: {error}"
    );

    let error = source
        .set(bob.chain.clone(), alice.key.clone())
        .unwrap_err();
    assert!(
        matches!(error, TlsError::InvalidKey(_)),
        "unexpected error: {error}"
    );

    let error = source
        .set(bob.chain.clone(), b"not a key".to_vec())
        .unwrap_err();
    assert!(
        matches!(error, TlsError::InvalidKey(_)),
        "unexpected error: {error}"
    );

    let ca_leaf = a.as_leaf();
    let error = source.set(ca_leaf.chain, ca_leaf.key).unwrap_err();
    assert!(
        matches!(error, TlsError::InvalidSvid(_)),
        "unexpected error: {error}"
    );

    // Every failed set left alice in place.
    assert_eq!(source.spiffe_id(), Some(a.id("/alice")));

    source.set(bob.chain.clone(), bob.key.clone()).unwrap();
    assert_eq!(source.spiffe_id(), Some(a.id("/bob")));
}

#[test]
fn authorizer_rules() {
    let a = TestCa::new("a.test");
    let b = TestCa::new("b.test");
    let alice = a.id("/alice");
    let bob = b.id("/bob");
    assert!(Authorizer::Any.authorize(&bob));
    assert!(Authorizer::Exact(alice.clone()).authorize(&alice));
    assert!(!Authorizer::Exact(alice.clone()).authorize(&a.id("/alice/child")));
    assert!(Authorizer::MemberOf(a.trust_domain.clone()).authorize(&alice));
    assert!(!Authorizer::MemberOf(a.trust_domain.clone()).authorize(&bob));
    assert!(Authorizer::OneOf(vec![alice.clone(), bob.clone()]).authorize(&bob));
    assert!(!Authorizer::OneOf(vec![alice.clone()]).authorize(&bob));
    assert!(!Authorizer::OneOf(Vec::new()).authorize(&alice));
}
