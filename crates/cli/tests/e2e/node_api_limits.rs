//! Limits that keep unauthenticated callers of the node API from holding its resources: a
//! deadline on the first attestation message and a bound on request size.

use std::time::{Duration, Instant};

use tonic::Code;
use twid_proto::node::attest_agent_request::Step as RequestStep;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{AttestAgentParams, AttestAgentRequest, AttestationData};
use twid_server::{Server, ServerHandle};
use twid_spiffe::TrustDomain;

use crate::common::{TRUST_DOMAIN, TempDir};

async fn start() -> (TempDir, ServerHandle) {
    let dir = TempDir::new();
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let config = dir.dev_server_config(trust_domain);
    let server = Server::start(config).await.expect("server should start");
    (dir, server)
}

async fn client(server: &ServerHandle) -> NodeClient<tonic::transport::Channel> {
    let address = server.node_api_address();
    let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
    let tls =
        twid_tls::insecure_client_config(None, twid_tls::Authorizer::Exact(server_id)).unwrap();
    let channel =
        twid_tls::connect_channel_lazy(&address.ip().to_string(), address.port(), tls).unwrap();
    NodeClient::new(channel).max_encoding_message_size(64 * 1024 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_attestation_stream_times_out() {
    let (_dir, server) = start().await;
    let mut client = client(&server).await;
    // Keep the request stream open without sending anything.
    let (sender, receiver) = tokio::sync::mpsc::channel::<AttestAgentRequest>(1);
    let started = Instant::now();
    let status = client
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect_err("a stream without params must end with an error");
    drop(sender);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no attestation params"),
        "{status:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(30),
        "the stream ended after {elapsed:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_rejected() {
    let (_dir, server) = start().await;
    let mut client = client(&server).await;
    let params = AttestAgentParams {
        data: Some(AttestationData {
            r#type: "join_token".to_owned(),
            payload: vec![b'x'; 5 * 1024 * 1024],
        }),
        csr: Vec::new(),
    };
    let request = AttestAgentRequest {
        step: Some(RequestStep::Params(params)),
    };
    let status = client
        .attest_agent(tokio_stream::iter([request]))
        .await
        .expect_err("a 5 MiB request must be rejected");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    server.shutdown().await;
}
