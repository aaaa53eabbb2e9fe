//! Test helpers: certificates that pass the X.509-SVID rules, a Workload API client, and an
//! in-process node API server with the authentication rules of the real one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::codegen::BoxStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use twid_proto::node::node_server::{Node, NodeServer};
use twid_proto::node::{
    AgentSvid, AttestAgentRequest, AttestAgentResponse, BatchNewX509SvidRequest,
    BatchNewX509SvidResponse, NewJwtSvidRequest, NewJwtSvidResponse, RenewAgentRequest,
    RenewAgentResponse, SyncHint, SyncRequest, SyncResponse, WatchRequest, X509SvidResult,
    attest_agent_request, attest_agent_response,
};
use twid_proto::types::{Bundle, Entry};
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_spiffe::TrustDomain;
use twid_tls::{Authorizer, ClientAuth, SvidSource, TrustSource};

/// A self-signed CA of one trust domain.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, DER.
    pub(crate) der: Vec<u8>,
}

impl TestCa {
    /// Creates a CA whose URI SAN is `spiffe://<trust_domain>`.
    pub(crate) fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let uri = format!("spiffe://{trust_domain}");
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().expect("URI"))];
        let der = params
            .self_signed(&key)
            .expect("CA certificate")
            .der()
            .to_vec();
        Self {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    /// Signs an X.509-SVID leaf for `key` with the URI SAN `spiffe_id`.
    pub(crate) fn leaf(&self, key: &KeyPair, spiffe_id: &str) -> Vec<u8> {
        let params = leaf_params(spiffe_id, Duration::from_secs(3600));
        params
            .signed_by(key, &self.issuer)
            .expect("leaf certificate")
            .der()
            .to_vec()
    }

    /// Signs an X.509-SVID leaf for the key of a DER CSR, valid for `ttl` from now.
    fn sign_csr(&self, csr: &[u8], spiffe_id: &str, ttl: Duration) -> Result<Vec<u8>, Status> {
        let der = CertificateSigningRequestDer::from(csr.to_vec());
        let mut request = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| Status::invalid_argument(format!("invalid CSR: {e}")))?;
        request.params = leaf_params(spiffe_id, ttl);
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(cert.der().to_vec())
    }
}

fn leaf_params(spiffe_id: &str, ttl: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("URI"))];
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(1);
    params.not_after = now + time::Duration::try_from(ttl).expect("TTL fits");
    params
}

fn serial_hex(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects a Workload API client to the Unix socket at `path`.
pub(crate) async fn workload_client(path: PathBuf) -> SpiffeWorkloadApiClient<Channel> {
    let channel = Endpoint::try_from("http://localhost")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the Workload API socket");
    SpiffeWorkloadApiClient::new(channel)
}

/// Wraps `message` in a request with the Workload API security header.
pub(crate) fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = "true".parse().expect("ASCII metadata");
    request.metadata_mut().insert("workload.spiffe.io", value);
    request
}

/// Call counts and agent records of a [`FakeNode`].
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    /// Join tokens not used yet.
    pub(crate) tokens: HashSet<String>,
    /// Agent SPIFFE ID to the serial (hex) of its current SVID.
    pub(crate) agents: HashMap<String, String>,
    pub(crate) attestations: usize,
    pub(crate) syncs: usize,
    pub(crate) renewals: usize,
    pub(crate) signed_svids: usize,
    /// Entry ID to the serials (hex) of every SVID signed for it.
    pub(crate) issued: HashMap<String, Vec<String>>,
    /// Watch streams opened.
    pub(crate) watches: usize,
    /// Lowercase hex serials that Sync lists as revoked.
    pub(crate) revoked_serials: Vec<String>,
    /// `jti` values that Sync lists as revoked.
    pub(crate) revoked_jtis: Vec<String>,
    /// Entry IDs that BatchNewX509Svid refuses to sign.
    pub(crate) refused_entries: HashSet<String>,
    /// Signing requests refused for entries in `refused_entries`.
    pub(crate) refusals: usize,
    /// Whether Watch returns Unimplemented, as on a server without it.
    pub(crate) watch_unimplemented: bool,
    /// Whether every authenticated call fails as for a revoked agent SVID.
    pub(crate) agent_revoked: bool,
    /// A status that every BatchNewX509Svid call fails with, as when the server cannot
    /// record issuances.
    pub(crate) signing_failure: Option<tonic::Code>,
    /// BatchNewX509Svid calls that failed with `signing_failure`.
    pub(crate) failed_signings: usize,
}

/// An in-process node API server. Like the real server, it authenticates every call but
/// AttestAgent by the serial number of the connection's client certificate, which must be the
/// agent's current SVID.
pub(crate) struct FakeNode {
    ca: TestCa,
    trust_domain: TrustDomain,
    pub(crate) agent_ttl: Duration,
    pub(crate) svid_ttl: Duration,
    pub(crate) entries: Mutex<Vec<Entry>>,
    state: Mutex<FakeState>,
    /// The revision of the latest change; Watch streams send a hint for each new value.
    hints: watch::Sender<u64>,
}

impl FakeNode {
    /// Creates a server for `example.org` that accepts `tokens` once each.
    pub(crate) fn new(tokens: &[&str], agent_ttl: Duration, svid_ttl: Duration) -> Arc<Self> {
        let state = FakeState {
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            ..FakeState::default()
        };
        Arc::new(Self {
            ca: TestCa::new("example.org"),
            trust_domain: TrustDomain::new("example.org").expect("trust domain"),
            agent_ttl,
            svid_ttl,
            entries: Mutex::new(Vec::new()),
            state: Mutex::new(state),
            hints: watch::channel(0).0,
        })
    }

    /// Appends `entry` to the entries that Sync returns.
    pub(crate) fn add_entry(&self, entry: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    /// Sends a sync hint to every open Watch stream.
    pub(crate) fn notify(&self) {
        self.hints.send_modify(|revision| *revision += 1);
    }

    /// Revokes the current SVIDs of `entry_ids`: Sync lists their serials, signing them is
    /// refused from now on, and watchers get a hint.
    pub(crate) fn revoke_entries(&self, entry_ids: &[&str]) {
        {
            let mut state = self.state();
            for id in entry_ids {
                let serials = state.issued.get(*id).cloned().unwrap_or_default();
                state.revoked_serials.extend(serials);
                state.refused_entries.insert((*id).to_owned());
            }
        }
        self.notify();
    }

    /// Returns the CA certificate, DER.
    pub(crate) fn ca_der(&self) -> &[u8] {
        &self.ca.der
    }

    /// Returns the CA as PEM, as an operator's trust bundle file contains it.
    pub(crate) fn ca_pem(&self) -> String {
        let certs = vec![CertificateDer::from(self.ca.der.clone())];
        twid_spiffe::X509Bundle::from_authorities(self.trust_domain.clone(), certs)
            .expect("bundle")
            .to_pem()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bundle(&self) -> Bundle {
        Bundle {
            trust_domain: self.trust_domain.name().to_owned(),
            x509_authorities: vec![self.ca.der.clone()],
            ..Bundle::default()
        }
    }

    /// Serves on 127.0.0.1 until `shutdown` turns true; returns the bound address.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        address: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> SocketAddr {
        let key = KeyPair::generate().expect("server key");
        let leaf = self.ca.leaf(&key, "spiffe://example.org/spire/server");
        let svid = SvidSource::new(
            vec![CertificateDer::from(leaf)],
            rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
        .expect("server SVID");
        let trust = TrustSource::new(HashMap::from([(
            self.trust_domain.clone(),
            vec![CertificateDer::from(self.ca.der.clone())],
        )]))
        .expect("trust");
        let client_auth = ClientAuth::Optional(Authorizer::MemberOf(self.trust_domain.clone()));
        let tls = twid_tls::server_config(svid, trust, client_auth).expect("TLS config");
        let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
        let bound = listener.local_addr().expect("address");
        let incoming = twid_tls::TlsIncoming::new(listener, tls);
        let service = NodeServer::new(FakeService(Arc::clone(self), shutdown.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await
                .expect("fake node server");
        });
        bound
    }

    /// Runs the challenge exchange of an evidence attestor. The fake accepts evidence whose
    /// bytes are exactly the binding report data of its nonce and the CSR's key, and issues
    /// `spiffe://example.org/spire/agent/<attestor>/fake` with the agent TTL.
    fn attest_evidence(
        self: Arc<Self>,
        attestor: String,
        csr: Vec<u8>,
        mut requests: Streaming<AttestAgentRequest>,
    ) -> BoxStream<AttestAgentResponse> {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let nonce = rand::random::<[u8; 32]>().to_vec();
            let challenge = AttestAgentResponse {
                step: Some(attest_agent_response::Step::Challenge(nonce.clone())),
            };
            if sender.send(Ok(challenge)).await.is_err() {
                return;
            }
            let result = self
                .finish_evidence(&attestor, &csr, &nonce, &mut requests)
                .await;
            let _ = sender
                .send(result.map(|svid| AttestAgentResponse {
                    step: Some(attest_agent_response::Step::Result(svid)),
                }))
                .await;
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
    }

    async fn finish_evidence(
        &self,
        attestor: &str,
        csr: &[u8],
        nonce: &[u8],
        requests: &mut Streaming<AttestAgentRequest>,
    ) -> Result<AgentSvid, Status> {
        let message = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no challenge response"))?;
        let Some(attest_agent_request::Step::ChallengeResponse(envelope)) = message.step else {
            return Err(Status::invalid_argument("no challenge response"));
        };
        let envelope = twid_evidence::Envelope::from_json(&envelope)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let spki = {
            use x509_parser::prelude::FromDer as _;
            let (_, request) =
                x509_parser::certification_request::X509CertificationRequest::from_der(csr)
                    .map_err(|e| Status::invalid_argument(format!("invalid CSR: {e}")))?;
            request.certification_request_info.subject_pki.raw.to_vec()
        };
        if envelope.evidence != twid_evidence::binding::report_data(nonce, &spki) {
            return Err(Status::permission_denied("evidence rejected: binding"));
        }
        let agent_id = format!("spiffe://example.org/spire/agent/{attestor}/fake");
        let cert = self.ca.sign_csr(csr, &agent_id, self.agent_ttl)?;
        {
            let mut state = self.state();
            state.attestations += 1;
            state.agents.insert(agent_id.clone(), serial_hex(&cert));
        }
        Ok(AgentSvid {
            cert_chain: vec![cert],
            spiffe_id: agent_id,
            bundle: Some(self.bundle()),
        })
    }

    /// Returns the agent ID of the request's client certificate if it is a current SVID.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let leaf = request
            .extensions()
            .get::<twid_tls::TlsConnectInfo>()
            .and_then(|info| info.peer_certificates.as_ref())
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let spiffe_id = twid_spiffe::check_leaf(&leaf)
            .map_err(|e| Status::unauthenticated(e.to_string()))?
            .to_string();
        let serial = serial_hex(&leaf);
        if self.state().agent_revoked {
            return Err(Status::permission_denied(format!(
                "the SVID of agent {spiffe_id} (serial {serial}) was revoked by revocation 1; \
                 the agent must attest again"
            )));
        }
        match self.state().agents.get(&spiffe_id) {
            Some(current) if *current == serial => Ok(spiffe_id),
            Some(_) => Err(Status::permission_denied(format!(
                "the SVID presented by agent {spiffe_id} is not its current one"
            ))),
            None => Err(Status::permission_denied(format!(
                "agent {spiffe_id} is not attested"
            ))),
        }
    }
}

/// The node service over a [`FakeNode`]; Watch streams end when the receiver turns true.
struct FakeService(Arc<FakeNode>, watch::Receiver<bool>);

#[tonic::async_trait]
impl Node for FakeService {
    async fn attest_agent(
        &self,
        request: Request<Streaming<AttestAgentRequest>>,
    ) -> Result<Response<BoxStream<AttestAgentResponse>>, Status> {
        let node = &self.0;
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no params"))?;
        let Some(attest_agent_request::Step::Params(params)) = first.step else {
            return Err(Status::invalid_argument("no params"));
        };
        let data = params.data.unwrap_or_default();
        if data.r#type != "join_token" {
            let stream = Arc::clone(node).attest_evidence(data.r#type, params.csr, requests);
            return Ok(Response::new(stream));
        }
        let token = String::from_utf8(data.payload).unwrap_or_default();
        if !node.state().tokens.remove(&token) {
            return Err(Status::permission_denied(
                "join token does not exist or has already been used",
            ));
        }
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
        let cert = node.ca.sign_csr(&params.csr, &agent_id, node.agent_ttl)?;
        {
            let mut state = node.state();
            state.attestations += 1;
            state.agents.insert(agent_id.clone(), serial_hex(&cert));
        }
        let response = AttestAgentResponse {
            step: Some(attest_agent_response::Step::Result(AgentSvid {
                cert_chain: vec![cert],
                spiffe_id: agent_id,
                bundle: Some(node.bundle()),
            })),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            response,
        )]))))
    }

    async fn renew_agent(
        &self,
        request: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        let node = &self.0;
        let agent_id = node.authenticate(&request)?;
        let cert = node
            .ca
            .sign_csr(&request.get_ref().csr, &agent_id, node.agent_ttl)?;
        {
            let mut state = node.state();
            state.renewals += 1;
            state.agents.insert(agent_id.clone(), serial_hex(&cert));
        }
        Ok(Response::new(RenewAgentResponse {
            svid: Some(AgentSvid {
                cert_chain: vec![cert],
                spiffe_id: agent_id,
                bundle: Some(node.bundle()),
            }),
        }))
    }

    async fn sync(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<BoxStream<SyncResponse>>, Status> {
        let node = &self.0;
        node.authenticate(&request)?;
        node.state().syncs += 1;
        let entries = node
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (revoked_x509_serials, revoked_jtis) = {
            let state = node.state();
            (state.revoked_serials.clone(), state.revoked_jtis.clone())
        };
        // This server keeps no change history, so every response is a full set.
        let digest: twid_types::EntriesDigest = entries
            .iter()
            .map(|entry| twid_types::EntriesDigest::term(&entry.id, entry.revision_number))
            .collect();
        let response = SyncResponse {
            entries_count: entries.len() as u64,
            entries,
            bundle: Some(node.bundle()),
            federated_bundles: Vec::new(),
            revoked_x509_serials,
            revoked_jtis,
            full: true,
            entries_digest: digest.to_bytes().to_vec(),
            ..SyncResponse::default()
        };
        let stream: BoxStream<SyncResponse> = Box::pin(tokio_stream::once(Ok(response)));
        Ok(Response::new(stream))
    }

    async fn batch_new_x509_svid(
        &self,
        request: Request<BatchNewX509SvidRequest>,
    ) -> Result<Response<BatchNewX509SvidResponse>, Status> {
        let node = &self.0;
        node.authenticate(&request)?;
        let failure = node.state().signing_failure;
        if let Some(code) = failure {
            node.state().failed_signings += 1;
            return Err(Status::new(code, "signing fails in this test"));
        }
        let entries = node
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut results = Vec::new();
        for params in &request.get_ref().params {
            if node.state().refused_entries.contains(&params.entry_id) {
                node.state().refusals += 1;
                results.push(X509SvidResult {
                    entry_id: params.entry_id.clone(),
                    error: "the entry's SVIDs were revoked".to_owned(),
                    revoked: true,
                    ..X509SvidResult::default()
                });
                continue;
            }
            let Some(entry) = entries.iter().find(|e| e.id == params.entry_id) else {
                results.push(X509SvidResult {
                    entry_id: params.entry_id.clone(),
                    error: "not authorized".to_owned(),
                    ..X509SvidResult::default()
                });
                continue;
            };
            let cert = node
                .ca
                .sign_csr(&params.csr, &entry.spiffe_id, node.svid_ttl)?;
            {
                let mut state = node.state();
                state.signed_svids += 1;
                let serials = state.issued.entry(entry.id.clone()).or_default();
                serials.push(serial_hex(&cert));
            }
            results.push(X509SvidResult {
                entry_id: entry.id.clone(),
                cert_chain: vec![cert],
                expires_at: 0,
                error: String::new(),
                revoked: false,
            });
        }
        Ok(Response::new(BatchNewX509SvidResponse { results }))
    }

    async fn new_jwt_svid(
        &self,
        request: Request<NewJwtSvidRequest>,
    ) -> Result<Response<NewJwtSvidResponse>, Status> {
        self.0.authenticate(&request)?;
        Err(Status::unimplemented("the fake server signs no JWT-SVIDs"))
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<BoxStream<SyncHint>>, Status> {
        let node = &self.0;
        node.authenticate(&request)?;
        {
            let mut state = node.state();
            if state.watch_unimplemented {
                return Err(Status::unimplemented("Watch is not supported"));
            }
            state.watches += 1;
        }
        let mut changes = node.hints.subscribe();
        let mut shutdown = self.1.clone();
        let stream = async_stream::stream! {
            let first = *changes.borrow_and_update();
            yield Ok(SyncHint { revision: first, reason: "connected".to_owned() });
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                let revision = *changes.borrow_and_update();
                yield Ok(SyncHint { revision, reason: "entry".to_owned() });
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
