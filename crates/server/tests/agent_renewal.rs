//! A join-token agent whose RenewAgent replies were lost keeps working with its previous SVID
//! until it first uses a renewed one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use tonic::Code;
use tonic::transport::Channel;
use twid_ca::{KeyType, PrivateKey};
use twid_config::ServerConfig;
use twid_proto::node::attest_agent_request::Step as RequestStep;
use twid_proto::node::attest_agent_response::Step as ResponseStep;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{
    AgentSvid, AttestAgentParams, AttestAgentRequest, AttestationData, RenewAgentRequest,
    SyncRequest,
};
use twid_server::{Server, ServerHandle};
use twid_spiffe::TrustDomain;

#[path = "../src/test_support.rs"]
mod test_support;

use test_support::TestDatastore;

const TRUST_DOMAIN: &str = "example.org";

fn config(dir: &Path, datastore: &TestDatastore) -> ServerConfig {
    // The admin socket's directory must be private to its owner.
    let data_dir = dir.join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut config = ServerConfig::new_dev(TrustDomain::new(TRUST_DOMAIN).unwrap(), &data_dir);
    config.datastore = datastore.config.clone();
    config
}

/// Opens a node API client that presents `svid` (signed for `key`) as TLS client certificate,
/// or no certificate.
fn client(server: &ServerHandle, svid: Option<(&AgentSvid, &PrivateKey)>) -> NodeClient<Channel> {
    let source = svid.map(|(svid, key)| {
        let chain = svid
            .cert_chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        twid_tls::SvidSource::new(chain, key.pkcs8_der().to_vec().into()).unwrap()
    });
    let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
    let tls =
        twid_tls::insecure_client_config(source, twid_tls::Authorizer::Exact(server_id)).unwrap();
    let address = server.node_api_address();
    let channel =
        twid_tls::connect_channel_lazy(&address.ip().to_string(), address.port(), tls).unwrap();
    NodeClient::new(channel)
}

/// Attests with `token` and returns the agent SVID, signed for `key`.
async fn attest(server: &ServerHandle, token: &str, key: &PrivateKey) -> AgentSvid {
    let params = AttestAgentParams {
        data: Some(AttestationData {
            r#type: "join_token".to_owned(),
            payload: token.as_bytes().to_vec(),
        }),
        csr: twid_ca::build_csr(key).unwrap(),
    };
    let request = AttestAgentRequest {
        step: Some(RequestStep::Params(params)),
    };
    let mut responses = client(server, None)
        .attest_agent(futures::stream::iter([request]))
        .await
        .expect("attestation")
        .into_inner();
    let message = responses.message().await.unwrap().expect("one response");
    let Some(ResponseStep::Result(svid)) = message.step else {
        panic!("expected the agent SVID, got {message:?}");
    };
    svid
}

fn serial(svid: &AgentSvid) -> String {
    twid_ca::serial_hex(&CertificateDer::from(svid.cert_chain[0].as_slice())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_renewal_reply_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatastore::new(dir.path());
    let config = config(dir.path(), &database);
    let server = Server::start(config.clone()).await.unwrap();
    let datastore = twid_datastore::Datastore::open(&config.datastore)
        .await
        .unwrap();
    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = "renewal-test-token";
    datastore
        .create_join_token(token, i64::try_from(expires_at).unwrap())
        .await
        .unwrap();

    let old_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let old_svid = attest(&server, token, &old_key).await;
    let mut old_client = client(&server, Some((&old_svid, &old_key)));
    old_client
        .sync(SyncRequest::default())
        .await
        .expect("sync with the first SVID");

    // The server records the renewed SVID, but the agent never reads the reply.
    let new_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let renewed = old_client
        .renew_agent(RenewAgentRequest {
            csr: twid_ca::build_csr(&new_key).unwrap(),
        })
        .await
        .expect("renewal")
        .into_inner()
        .svid
        .expect("renewed SVID");
    let agent_id = twid_spiffe::SpiffeId::new(&old_svid.spiffe_id).unwrap();
    let stored = datastore
        .get_attested_agent(&agent_id)
        .await
        .unwrap()
        .expect("agent record");
    assert_eq!(stored.x509_svid_serial, serial(&renewed));
    assert_eq!(
        stored.previous_x509_svid_serial.as_deref(),
        Some(serial(&old_svid).as_str())
    );

    let mut retry_client = client(&server, Some((&old_svid, &old_key)));
    retry_client
        .sync(SyncRequest::default())
        .await
        .expect("sync with the previous SVID before the new one is used");

    // The retried renewal's reply is lost as well: the first SVID must stay valid.
    let retry_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let retried = retry_client
        .renew_agent(RenewAgentRequest {
            csr: twid_ca::build_csr(&retry_key).unwrap(),
        })
        .await
        .expect("renewal with the previous SVID")
        .into_inner()
        .svid
        .expect("retried SVID");
    let stored = datastore
        .get_attested_agent(&agent_id)
        .await
        .unwrap()
        .expect("agent record");
    assert_eq!(stored.x509_svid_serial, serial(&retried));
    assert_eq!(
        stored.previous_x509_svid_serial.as_deref(),
        Some(serial(&old_svid).as_str()),
        "a renewal with the previous SVID keeps it"
    );
    client(&server, Some((&old_svid, &old_key)))
        .sync(SyncRequest::default())
        .await
        .expect("sync with the previous SVID after a second lost reply");
    let status = client(&server, Some((&renewed, &new_key)))
        .sync(SyncRequest::default())
        .await
        .expect_err("the never-delivered SVID was replaced");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let mut new_client = client(&server, Some((&retried, &retry_key)));
    new_client
        .sync(SyncRequest::default())
        .await
        .expect("sync with the renewed SVID");
    let used = datastore
        .get_attested_agent(&agent_id)
        .await
        .unwrap()
        .expect("agent record");
    assert_eq!(used.previous_x509_svid_serial, None);
    assert_eq!(used.previous_x509_svid_expires_at, None);

    let mut stale_client = client(&server, Some((&old_svid, &old_key)));
    let status = stale_client
        .sync(SyncRequest::default())
        .await
        .expect_err("the previous SVID after the renewed one was used");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("neither its current one"),
        "{status:?}"
    );
    new_client
        .sync(SyncRequest::default())
        .await
        .expect("the renewed SVID keeps working");

    datastore.close().await;
    server.shutdown().await;
}
