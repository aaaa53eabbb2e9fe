//! gRPC round trips over `TlsIncoming` and `connect_channel` on loopback TCP.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{AlertDescription, ClientConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_proto::workload::{Jwtsvid, JwtsvidRequest};
use twid_tls::{
    Authorizer, ClientAuth, SvidSource, TlsError, client_config, connect_channel,
    connect_channel_lazy, server_config,
};

use common::{TestCa, TestServer, hex, raw_client, serve, trust};

/// The limit for any single step that should complete at once on loopback.
const STEP: Duration = Duration::from_secs(10);

/// Calls the echo service and returns what it saw of the TLS peer.
async fn peer_seen(channel: Channel) -> Result<Jwtsvid, tonic::Status> {
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let call = client.fetch_jwtsvid(JwtsvidRequest::default());
    let response = tokio::time::timeout(STEP, call)
        .await
        .expect("RPC timed out")?;
    let mut svids = response.into_inner().svids;
    assert_eq!(svids.len(), 1, "the echo service returns one entry");
    Ok(svids.remove(0))
}

/// Starts a server of `ca` at `/server` that requires clients of `ca`'s trust domain.
async fn server_for(ca: &TestCa, svid: SvidSource) -> TestServer {
    let config = server_config(
        svid,
        trust(&[ca]),
        ClientAuth::Required(Authorizer::MemberOf(ca.trust_domain.clone())),
    )
    .unwrap();
    serve(config, |incoming| incoming).await
}

/// Builds a client of this crate that presents `svid` and expects `ca`'s `/server`.
fn client_for(ca: &TestCa, svid: SvidSource) -> Arc<ClientConfig> {
    client_config(
        Some(svid),
        trust(&[ca]),
        Authorizer::Exact(ca.id("/server")),
    )
    .unwrap()
}

async fn channel(server: &TestServer, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    tokio::time::timeout(STEP, connect_channel("127.0.0.1", server.port(), config))
        .await
        .expect("connect timed out")
}

/// Runs a TLS handshake with `config` on a new TCP connection and returns the server's chain.
async fn probe(
    server: &TestServer,
    config: Arc<ClientConfig>,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let tcp = TcpStream::connect(server.address).await?;
    let name = ServerName::try_from(common::SERVER_DNS_NAME).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("handshake timed out")?;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(chain.iter().map(|c| c.clone().into_owned()).collect())
}

#[tokio::test]
async fn round_trip_reports_peer_spiffe_id() {
    let a = TestCa::new("a.test");
    let alice = a.svid("/alice");
    let server = server_for(&a, a.server_svid().source()).await;
    let channel = channel(&server, client_for(&a, alice.source()))
        .await
        .unwrap();

    let seen = peer_seen(channel).await.unwrap();
    assert_eq!(seen.spiffe_id, a.id("/alice").as_str());
    assert_eq!(seen.svid, hex(alice.leaf()));
    let remote: std::net::SocketAddr = seen.hint.parse().unwrap();
    assert!(remote.ip().is_loopback(), "remote address {remote}");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn lazy_channel_connects_on_first_request() {
    let a = TestCa::new("a.test");
    let server = server_for(&a, a.server_svid().source()).await;
    let config = client_for(&a, a.svid("/alice").source());
    let channel = connect_channel_lazy("127.0.0.1", server.port(), config).unwrap();
    assert_eq!(server.calls(), 0);
    let seen = peer_seen(channel).await.unwrap();
    assert_eq!(seen.spiffe_id, a.id("/alice").as_str());
}

#[tokio::test]
async fn foreign_domain_client_rejected_and_server_keeps_serving() {
    let a = TestCa::new("a.test");
    let b = TestCa::new("b.test");
    let server = server_for(&a, a.server_svid().source()).await;

    // The client trusts A, so it accepts the server; the server has no bundle for B.
    let bob = b.svid("/bob");
    let rejected = match channel(&server, client_for(&a, bob.source())).await {
        Ok(channel) => peer_seen(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(
        rejected,
        "a client with a foreign trust domain's SVID got through"
    );
    assert_eq!(server.calls(), 0);

    let alice = a.svid("/alice");
    let channel = channel(&server, client_for(&a, alice.source()))
        .await
        .unwrap();
    let seen = peer_seen(channel).await.unwrap();
    assert_eq!(seen.spiffe_id, a.id("/alice").as_str());
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn exact_server_id_mismatch_fails_connect() {
    let a = TestCa::new("a.test");
    let server = server_for(&a, a.server_svid().source()).await;
    let config = client_config(
        Some(a.svid("/alice").source()),
        trust(&[&a]),
        Authorizer::Exact(a.id("/not-the-server")),
    )
    .unwrap();
    let error = channel(&server, config).await.unwrap_err();
    assert!(
        matches!(error, TlsError::Connect { .. }),
        "unexpected error: {error}"
    );
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn connect_to_closed_port_fails() {
    let a = TestCa::new("a.test");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = client_for(&a, a.svid("/alice").source());
    let result = tokio::time::timeout(STEP, connect_channel("127.0.0.1", port, config))
        .await
        .expect("connect timed out");
    let error = result.unwrap_err();
    assert!(
        matches!(error, TlsError::Connect { .. }),
        "unexpected error: {error}"
    );
}

#[tokio::test]
async fn invalid_host_rejected() {
    let a = TestCa::new("a.test");
    let config = client_for(&a, a.svid("/alice").source());
    let error = connect_channel_lazy("bad host!", 443, config).unwrap_err();
    assert!(
        matches!(error, TlsError::InvalidHost { .. }),
        "unexpected error: {error}"
    );
}

#[tokio::test]
async fn rotated_client_svid_used_by_new_connections() {
    let a = TestCa::new("a.test");
    let server = server_for(&a, a.server_svid().source()).await;
    let first = a.svid("/alice");
    let source = first.source();
    let config = client_for(&a, source.clone());

    let old_channel = channel(&server, config.clone()).await.unwrap();
    assert_eq!(
        peer_seen(old_channel.clone()).await.unwrap().svid,
        hex(first.leaf())
    );

    let second = a.svid("/alice");
    source
        .set(second.chain.clone(), second.key.clone())
        .unwrap();

    // The established connection keeps the certificate it was opened with.
    assert_eq!(
        peer_seen(old_channel).await.unwrap().svid,
        hex(first.leaf())
    );
    // A new connection made with the same configuration presents the new one.
    let new_channel = channel(&server, config).await.unwrap();
    assert_eq!(
        peer_seen(new_channel).await.unwrap().svid,
        hex(second.leaf())
    );
}

#[tokio::test]
async fn rotated_server_svid_presented_to_new_connections() {
    let a = TestCa::new("a.test");
    let first = a.server_svid();
    let source = first.source();
    let server = server_for(&a, source.clone()).await;
    let config = client_for(&a, a.svid("/alice").source());

    assert_eq!(
        probe(&server, config.clone()).await.unwrap()[0],
        *first.leaf()
    );
    let second = a.server_svid();
    source
        .set(second.chain.clone(), second.key.clone())
        .unwrap();
    assert_eq!(probe(&server, config).await.unwrap()[0], *second.leaf());
}

#[tokio::test]
async fn tls12_only_client_rejected() {
    let a = TestCa::new("a.test");
    let server = server_for(&a, a.server_svid().source()).await;
    let alice = a.svid("/alice");
    let tls12 = raw_client(&[a.cert()], Some(&alice), &[&rustls::version::TLS12]);
    let error = probe(&server, tls12).await.unwrap_err();
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {error}"));
    assert_eq!(
        *rustls_error,
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
    );

    // The same client restricted to TLS 1.3 is accepted.
    let tls13 = raw_client(&[a.cert()], Some(&alice), &[&rustls::version::TLS13]);
    probe(&server, tls13).await.unwrap();
}

#[tokio::test]
async fn optional_auth_handler_sees_no_certificate() {
    let a = TestCa::new("a.test");
    let config = server_config(
        a.server_svid().source(),
        trust(&[&a]),
        ClientAuth::Optional(Authorizer::MemberOf(a.trust_domain.clone())),
    )
    .unwrap();
    let server = serve(config, |incoming| incoming).await;
    let anonymous = client_config(None, trust(&[&a]), Authorizer::Exact(a.id("/server"))).unwrap();
    let seen = peer_seen(channel(&server, anonymous).await.unwrap())
        .await
        .unwrap();
    assert_eq!(seen.spiffe_id, "");
    assert_eq!(seen.svid, "");
}

#[tokio::test]
async fn idle_client_does_not_block_others() {
    let a = TestCa::new("a.test");
    let server = server_for(&a, a.server_svid().source()).await;
    // Connects but never sends a ClientHello; the default handshake timeout is far longer
    // than the time allowed for the second client below.
    let _idle = TcpStream::connect(server.address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let config = client_for(&a, a.svid("/alice").source());
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        connect_channel("127.0.0.1", server.port(), config),
    )
    .await
    .expect("second client was blocked by the idle one");
    let seen = peer_seen(connected.unwrap()).await.unwrap();
    assert_eq!(seen.spiffe_id, a.id("/alice").as_str());
}

#[tokio::test]
async fn handshake_timeout_closes_idle_connection() {
    let a = TestCa::new("a.test");
    let config = server_config(
        a.server_svid().source(),
        trust(&[&a]),
        ClientAuth::Required(Authorizer::Any),
    )
    .unwrap();
    let timeout = Duration::from_millis(200);
    let server = serve(config, |incoming| incoming.with_handshake_timeout(timeout)).await;

    let started = Instant::now();
    let mut idle = TcpStream::connect(server.address).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(STEP, idle.read(&mut buf))
        .await
        .expect("server kept the idle connection open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "server sent data to a client that never started a handshake: {read:?}"
    );
    assert!(
        started.elapsed() >= timeout,
        "closed after {:?}, before the {timeout:?} timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn pending_handshake_limit_queues_clients() {
    let a = TestCa::new("a.test");
    let config = server_config(
        a.server_svid().source(),
        trust(&[&a]),
        ClientAuth::Required(Authorizer::Any),
    )
    .unwrap();
    let timeout = Duration::from_millis(500);
    let server = serve(config, |incoming| {
        incoming
            .with_handshake_timeout(timeout)
            .with_max_pending_handshakes(1)
    })
    .await;

    // The idle client takes the only slot until its handshake times out.
    let started = Instant::now();
    let _idle = TcpStream::connect(server.address).await.unwrap();
    let config = client_for(&a, a.svid("/alice").source());
    let seen = peer_seen(channel(&server, config).await.unwrap())
        .await
        .unwrap();
    assert_eq!(seen.spiffe_id, a.id("/alice").as_str());
    assert!(
        started.elapsed() >= timeout,
        "second handshake finished after {:?}, inside the idle client's slot",
        started.elapsed()
    );
}

#[tokio::test]
async fn connection_limit_holds_back_new_clients() {
    let a = TestCa::new("a.test");
    let config = server_config(
        a.server_svid().source(),
        trust(&[&a]),
        ClientAuth::Optional(Authorizer::Any),
    )
    .unwrap();
    let server = serve(config, |incoming| incoming.with_max_connections(1)).await;

    // A client without a certificate, as agents attest, keeps the only slot while open.
    let anonymous = client_config(None, trust(&[&a]), Authorizer::Exact(a.id("/server"))).unwrap();
    let first = channel(&server, anonymous).await.unwrap();
    let seen = peer_seen(first.clone()).await.unwrap();
    assert_eq!(seen.spiffe_id, "");

    let config = client_for(&a, a.svid("/alice").source());
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        connect_channel("127.0.0.1", server.port(), config.clone()),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a second connection was served while the first held the only slot"
    );

    drop(first);
    let second = tokio::time::timeout(STEP, channel(&server, config))
        .await
        .expect("the slot was not freed when the first client disconnected")
        .unwrap();
    let seen = peer_seen(second).await.unwrap();
    assert_eq!(seen.spiffe_id, a.id("/alice").as_str());
}
