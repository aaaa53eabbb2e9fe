//! Envoy SDS v3 on the agent's socket, driven by a client built from the Envoy protos
//! (envoy-types on tonic), and two rustls services that take their TLS material only from
//! SDS responses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use twid_spiffe::x509::{X509BundleSet, verify_x509_svid};
use twid_spiffe::{SpiffeId, TrustDomain, X509Bundle};
use twid_tls::{Authorizer, ClientAuth, SvidSource, TrustSource};

use crate::common::*;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
const ID_A: &str = "spiffe://example.org/sds-a";
const ID_B: &str = "spiffe://example.org/sds-b";

async fn sds_client(path: PathBuf) -> SecretDiscoveryServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    SecretDiscoveryServiceClient::new(channel)
}

fn request(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "envoy-test".to_owned(),
            cluster: "test".to_owned(),
            ..Node::default()
        }),
        resource_names: names.iter().map(|name| (*name).to_owned()).collect(),
        type_url: SECRET_TYPE.to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// Decodes every resource, checking the response envelope on the way.
fn secrets(response: &DiscoveryResponse) -> BTreeMap<String, Secret> {
    assert_eq!(response.type_url, SECRET_TYPE);
    assert!(
        !response.version_info.is_empty(),
        "response without version"
    );
    assert!(!response.nonce.is_empty(), "response without nonce");
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE);
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            (secret.name.clone(), secret)
        })
        .collect()
}

fn inline_bytes(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => bytes.clone(),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Returns the chain and PKCS#8 key of a `tls_certificate` secret.
fn tls_material(secret: &Secret) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
    let Some(secret::Type::TlsCertificate(certificate)) = &secret.r#type else {
        panic!("{} is not a tls_certificate secret", secret.name);
    };
    let chain = pem_certificates(&inline_bytes(certificate.certificate_chain.as_ref()));
    let key = PrivatePkcs8KeyDer::from_pem_slice(&inline_bytes(certificate.private_key.as_ref()))
        .unwrap();
    (chain, key)
}

fn validation_context(secret: &Secret) -> &CertificateValidationContext {
    let Some(secret::Type::ValidationContext(context)) = &secret.r#type else {
        panic!("{} is not a validation_context secret", secret.name);
    };
    context
}

/// Returns the trust domains and CA certificates of a SPIFFE validator secret.
fn spiffe_bundles(secret: &Secret) -> BTreeMap<String, Vec<CertificateDer<'static>>> {
    let context = validation_context(secret);
    assert!(
        context.trusted_ca.is_none(),
        "{}: trusted_ca set next to the SPIFFE validator",
        secret.name
    );
    let config = context
        .custom_validator_config
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no custom_validator_config", secret.name));
    assert_eq!(config.name, SPIFFE_VALIDATOR);
    let typed = config.typed_config.as_ref().unwrap();
    assert_eq!(
        typed.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let validator = SpiffeCertValidatorConfig::decode(typed.value.as_slice()).unwrap();
    validator
        .trust_domains
        .iter()
        .map(|td| {
            let certs = pem_certificates(&inline_bytes(td.trust_bundle.as_ref()));
            assert!(!certs.is_empty(), "empty bundle for {}", td.name);
            (td.name.clone(), certs)
        })
        .collect()
}

fn leaf_id(chain: &[CertificateDer<'_>]) -> String {
    twid_spiffe::check_leaf(&chain[0]).unwrap().to_string()
}

fn verifies(chain: &[CertificateDer<'static>], bundle: &[CertificateDer<'static>]) -> bool {
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut set = X509BundleSet::new();
    set.insert(X509Bundle::from_authorities(td, bundle.to_vec()).unwrap());
    verify_x509_svid(chain, &set, SystemTime::now()).is_ok()
}

/// Starts a server (with `extra` server settings) and an agent with two entries for this
/// process's uid, `ID_A` created first so that it is the default SVID.
fn start(dir: &TempDir, extra: &str) -> (ServerProcess, AgentProcess) {
    let server = ServerProcess::start(dir.path(), extra);
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(ID_A, &agent_id(&token), &[&selector]);
    // Identities are ordered by creation time in whole seconds, then by random entry ID, so
    // a second apart makes ID_A the default.
    std::thread::sleep(Duration::from_millis(1_100));
    server.create_entry(ID_B, &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);
    (server, agent)
}

/// A StreamSecrets stream with a handle to send further requests on it.
struct SdsStream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl SdsStream {
    async fn open(client: &mut SecretDiscoveryServiceClient<Channel>, names: &[&str]) -> Self {
        let (requests, receiver) = mpsc::channel(8);
        requests.send(request(names)).await.unwrap();
        let responses = client
            .stream_secrets(ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn next(&mut self, within: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(within, self.responses.next()).await {
            Ok(Some(message)) => Some(message.expect("SDS stream failed")),
            Ok(None) => panic!("SDS stream ended"),
            Err(_) => None,
        }
    }

    async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        let mut ack = request(names);
        ack.version_info = response.version_info.clone();
        ack.response_nonce = response.nonce.clone();
        self.requests.send(ack).await.unwrap();
    }
}

#[test]
fn sds_serves_default_rootca_and_all() {
    let dir = TempDir::new();
    let (_server, agent) = start(&dir, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The agent binds its socket before the first sync, so this request is usually held
        // until the cache is ready; the response must be the same as after the sync.
        let mut client = sds_client(agent.socket.clone()).await;
        let response = client
            .fetch_secrets(request(&["default", "ROOTCA", "ALL"]))
            .await
            .unwrap_or_else(|status| panic!("FetchSecrets failed: {status}\n{}", agent.log()))
            .into_inner();
        let fetched = secrets(&response);
        let names: Vec<&str> = fetched.keys().map(String::as_str).collect();
        assert_eq!(names, ["ALL", "ROOTCA", "default"]);

        let (chain, key) = tls_material(&fetched["default"]);
        assert_eq!(leaf_id(&chain), ID_A);
        SvidSource::new(chain.clone(), key).expect("key matches the SVID");
        let rootca = spiffe_bundles(&fetched["ROOTCA"]);
        assert_eq!(rootca.keys().collect::<Vec<_>>(), [TRUST_DOMAIN]);
        assert!(verifies(&chain, &rootca[TRUST_DOMAIN]));
        let all = spiffe_bundles(&fetched["ALL"]);
        assert_eq!(all, rootca);

        let by_id = client
            .fetch_secrets(request(&[ID_B, TRUST_DOMAIN]))
            .await
            .unwrap()
            .into_inner();
        let by_id = secrets(&by_id);
        assert_eq!(leaf_id(&tls_material(&by_id[ID_B]).0), ID_B);
        assert_eq!(spiffe_bundles(&by_id[TRUST_DOMAIN]), rootca);

        let unknown = client
            .fetch_secrets(request(&["spiffe://example.org/not-mine"]))
            .await
            .expect_err("unknown resource name");
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        let mut wrong_type = request(&["default"]);
        wrong_type.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned();
        let wrong_type = client
            .fetch_secrets(wrong_type)
            .await
            .expect_err("wrong type URL");
        assert_eq!(wrong_type.code(), tonic::Code::InvalidArgument);
        let delta = client
            .delta_secrets(tokio_stream::iter([DeltaDiscoveryRequest::default()]))
            .await
            .expect_err("DeltaSecrets");
        assert_eq!(delta.code(), tonic::Code::Unimplemented);

        // A connection made after the first sync receives the same SPIFFE validator.
        let mut late = sds_client(agent.socket.clone()).await;
        let mut stream = SdsStream::open(&mut late, &["default", "ROOTCA"]).await;
        let first = stream
            .next(Duration::from_secs(10))
            .await
            .expect("response");
        let streamed = secrets(&first);
        assert_eq!(
            streamed.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ROOTCA", "default"]
        );
        assert_eq!(spiffe_bundles(&streamed["ROOTCA"]), rootca);

        stream.ack(&first, &["default", "ROOTCA"]).await;
        assert!(
            stream.next(Duration::from_secs(2)).await.is_none(),
            "an ACK was answered"
        );

        let mut nack = request(&["default", "ROOTCA"]);
        nack.version_info = first.version_info.clone();
        nack.response_nonce = first.nonce.clone();
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "test proxy rejected the secret".to_owned(),
            details: Vec::new(),
        });
        stream.requests.send(nack).await.unwrap();
        assert!(
            stream.next(Duration::from_secs(2)).await.is_none(),
            "a NACK was answered"
        );
        wait_until(Duration::from_secs(5), "the NACK in the agent log", || {
            agent.log().contains("test proxy rejected the secret")
        });

        let mut change = request(&["ALL"]);
        change.version_info = first.version_info.clone();
        change.response_nonce = first.nonce.clone();
        stream.requests.send(change).await.unwrap();
        let changed = stream
            .next(Duration::from_secs(10))
            .await
            .expect("response");
        assert_ne!(changed.nonce, first.nonce);
        assert_ne!(changed.version_info, first.version_info);
        let changed = secrets(&changed);
        assert_eq!(
            changed.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ALL"]
        );
    });
}

/// TLS material of one service, updated from its SDS stream.
#[derive(Clone)]
struct Material {
    svid: SvidSource,
    trust: TrustSource,
}

impl Material {
    fn new() -> Self {
        Self {
            svid: SvidSource::empty(),
            trust: TrustSource::empty(),
        }
    }

    /// Applies one response that carries `svid_name` and `ROOTCA`; returns the CA certificates.
    fn apply(&self, response: &DiscoveryResponse, svid_name: &str) -> Vec<Vec<u8>> {
        let secrets = secrets(response);
        let names: BTreeSet<&str> = secrets.keys().map(String::as_str).collect();
        assert_eq!(names, BTreeSet::from([svid_name, "ROOTCA"]));
        let (chain, key) = tls_material(&secrets[svid_name]);
        self.svid.update(chain, key).unwrap();
        let mut cas = Vec::new();
        for (name, certs) in spiffe_bundles(&secrets["ROOTCA"]) {
            cas.extend(certs.iter().map(|c| c.to_vec()));
            self.trust.set(TrustDomain::new(&name).unwrap(), certs);
        }
        cas
    }
}

/// Follows an SDS stream for `svid_name` and `ROOTCA`, ACKs each response and applies it to
/// `material`; sends each CA set on `cas`.
fn follow(
    mut stream: SdsStream,
    material: Material,
    svid_name: &'static str,
    cas: mpsc::UnboundedSender<Vec<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let names = [svid_name, "ROOTCA"];
        while let Some(message) = stream.responses.next().await {
            let Ok(response) = message else { break };
            let seen = material.apply(&response, svid_name);
            let _ = cas.send(seen);
            stream.ack(&response, &names).await;
        }
    })
}

/// Serves TLS on `listener`: each accepted connection reads `ping` and writes `pong`.
fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buffer = [0u8; 4];
                if tls.read_exact(&mut buffer).await.is_ok() && &buffer == b"ping" {
                    let _ = tls.write_all(b"pong").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    })
}

/// Connects with `config` and exchanges ping and pong; returns the error of a failed step.
async fn exchange(
    address: std::net::SocketAddr,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<(), String> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("sds-a.test").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"ping")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buffer = [0u8; 4];
    tls.read_exact(&mut buffer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &buffer != b"pong" {
        return Err(format!("unexpected reply {buffer:?}"));
    }
    Ok(())
}

/// Returns a client configuration whose SVID is `spiffe://foreign.test/client`, signed by a
/// CA that the agent's trust domain does not know, trusting `trust` for the server.
fn foreign_client(trust: TrustSource) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    leaf_params.subject_alt_names = vec![SanType::URI(
        "spiffe://foreign.test/client".try_into().unwrap(),
    )];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let svid = SvidSource::new(
        vec![leaf.der().clone()],
        PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
    )
    .unwrap();
    twid_tls::client_config(
        Some(svid),
        trust,
        Authorizer::Exact(SpiffeId::new(ID_A).unwrap()),
    )
    .unwrap()
}

#[test]
fn sds_mtls_survives_ca_rotation() {
    let dir = TempDir::new();
    // Prepare at 30 s, activate at 50 s: two activations within about 100 s.
    let (server, agent) = start(
        &dir,
        "  ca_ttl = \"60s\"\n  default_x509_svid_ttl = \"20s\"",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let seen_cas = runtime.block_on(async {
        let service_a = Material::new();
        let service_b = Material::new();
        let (cas_tx, mut cas_rx) = mpsc::unbounded_channel();
        let mut client = sds_client(agent.socket.clone()).await;
        let stream_a = SdsStream::open(&mut client, &[ID_A, "ROOTCA"]).await;
        let stream_b = SdsStream::open(&mut client, &[ID_B, "ROOTCA"]).await;
        let follow_a = follow(stream_a, service_a.clone(), ID_A, cas_tx.clone());
        let follow_b = follow(stream_b, service_b.clone(), ID_B, cas_tx);
        wait_for_material(&service_a).await;
        wait_for_material(&service_b).await;

        let server_config = twid_tls::server_config(
            service_a.svid.clone(),
            service_a.trust.clone(),
            ClientAuth::Required(Authorizer::Exact(SpiffeId::new(ID_B).unwrap())),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let serving = serve_tls(listener, server_config);
        let client_config = twid_tls::client_config(
            Some(service_b.svid.clone()),
            service_b.trust.clone(),
            Authorizer::Exact(SpiffeId::new(ID_A).unwrap()),
        )
        .unwrap();

        exchange(address, Arc::clone(&client_config))
            .await
            .unwrap_or_else(|error| panic!("first mTLS exchange failed: {error}"));
        let foreign = exchange(address, foreign_client(service_b.trust.clone())).await;
        assert!(foreign.is_err(), "a foreign trust domain peer was accepted");
        // A peer of the right trust domain with the wrong SPIFFE ID is rejected too.
        let wrong_id = twid_tls::client_config(
            Some(service_a.svid.clone()),
            service_a.trust.clone(),
            Authorizer::Exact(SpiffeId::new(ID_A).unwrap()),
        )
        .unwrap();
        assert!(
            exchange(address, wrong_id).await.is_err(),
            "a client with an unauthorized SPIFFE ID was accepted"
        );

        let mut seen_cas: Vec<Vec<u8>> = Vec::new();
        let mut exchanges = 0;
        let deadline = Instant::now() + Duration::from_secs(115);
        while Instant::now() < deadline {
            while let Ok(cas) = cas_rx.try_recv() {
                for ca in cas {
                    if !seen_cas.contains(&ca) {
                        seen_cas.push(ca);
                    }
                }
            }
            if let Err(error) = exchange(address, Arc::clone(&client_config)).await {
                panic!(
                    "mTLS exchange {exchanges} failed after {} CA certificates: {error}\n\
                     server log:\n{}",
                    seen_cas.len(),
                    server.log()
                );
            }
            exchanges += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        serving.abort();
        follow_a.abort();
        follow_b.abort();
        seen_cas
    });
    assert!(
        seen_cas.len() >= 3,
        "expected two CA rotations pushed over SDS, saw {} CA certificates",
        seen_cas.len()
    );
}

async fn wait_for_material(material: &Material) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while material.svid.spiffe_id().is_none() || material.trust.trust_domains().is_empty() {
        assert!(Instant::now() < deadline, "no SDS response within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
