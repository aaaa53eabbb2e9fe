//! Test certificate authorities built with rcgen, and a gRPC test service that reports the
//! TLS peer it saw.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use tonic::{Request, Response, Status};
use twid_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use twid_proto::workload::{Jwtsvid, JwtsvidRequest, JwtsvidResponse};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_tls::{SvidSource, TlsConnectInfo, TlsIncoming, TrustSource};

/// A self-signed root CA of one trust domain.
pub struct TestCa {
    pub trust_domain: TrustDomain,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate chain (leaf first) and the leaf's PKCS#8 key.
#[derive(Clone)]
pub struct TestSvid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

impl TestSvid {
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn source(&self) -> SvidSource {
        let source = SvidSource::empty();
        source.set(self.chain.clone(), self.key.clone()).unwrap();
        source
    }
}

/// How [`TestCa::issue`] shapes a leaf.
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub is_ca: bool,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// Returns a conforming X.509-SVID leaf for `uri`, valid for an hour.
    pub fn svid(uri: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![uri.to_owned()],
            dns_names: Vec::new(),
            is_ca: false,
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(1),
        }
    }
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{} test CA", trust_domain.name()),
        );
        params.subject_alt_names = vec![uri_san(&trust_domain.id_string())];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            trust_domain,
            issuer,
        }
    }

    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn id(&self, path: &str) -> SpiffeId {
        self.trust_domain.id_with_path(path).unwrap()
    }

    /// Issues a conforming SVID for `path` in this CA's trust domain.
    pub fn svid(&self, path: &str) -> TestSvid {
        self.issue(LeafSpec::svid(self.id(path).as_str()))
    }

    /// Signs a leaf shaped by `spec`, which need not follow the X.509-SVID rules.
    pub fn issue(&self, spec: LeafSpec) -> TestSvid {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test leaf");
        params.subject_alt_names = spec.uris.iter().map(|uri| uri_san(uri)).collect();
        for name in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into().unwrap()));
        }
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.extended_key_usages = spec.extended_key_usages;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestSvid {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// Issues a conforming server SVID for `/server` that also names [`SERVER_DNS_NAME`], so
    /// clients built by [`raw_client`] accept it.
    pub fn server_svid(&self) -> TestSvid {
        let mut spec = LeafSpec::svid(self.id("/server").as_str());
        spec.dns_names = vec![SERVER_DNS_NAME.to_owned()];
        self.issue(spec)
    }

    /// Creates an intermediate CA of the same trust domain, signed by this CA.
    pub fn intermediate(&self) -> TestCa {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test intermediate CA");
        params.subject_alt_names = vec![uri_san(&self.trust_domain.id_string())];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        let issuer =
            CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &self.issuer).unwrap();
        Self {
            trust_domain: self.trust_domain.clone(),
            issuer,
        }
    }

    /// Returns the CA certificate itself with its key, to present as if it were a leaf.
    pub fn as_leaf(&self) -> TestSvid {
        TestSvid {
            chain: vec![self.cert()],
            key: self.issuer.key().serialize_der(),
        }
    }
}

fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.to_owned().try_into().unwrap())
}

/// The DNS name in [`TestCa::server_svid`] certificates.
pub const SERVER_DNS_NAME: &str = "server.test";

/// Builds a plain rustls client that verifies the server by DNS name [`SERVER_DNS_NAME`]
/// against `roots`, presents `client` without checking it, and speaks only `versions`. It
/// plays peers that this crate's own configurations would reject.
pub fn raw_client(
    roots: &[CertificateDer<'static>],
    client: Option<&TestSvid>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store);
    let mut config = match client {
        Some(svid) => {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.clone()));
            builder
                .with_client_auth_cert(svid.chain.clone(), key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Builds a trust source that contains the bundle of each CA.
pub fn trust(cas: &[&TestCa]) -> TrustSource {
    let trust = TrustSource::empty();
    for ca in cas {
        trust.set(ca.trust_domain.clone(), vec![ca.cert()]);
    }
    trust
}

/// Encodes `bytes` as lowercase hex, to compare certificates inside a string field.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Workload API server whose `FetchJWTSVID` returns, instead of JWT-SVIDs, one entry
/// describing the TLS peer: `spiffe_id` is the peer's SPIFFE ID (empty without a client
/// certificate), `svid` the hex of its leaf DER, and `hint` the peer's address.
#[derive(Clone, Default)]
pub struct PeerEcho {
    pub calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for PeerEcho {
    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let info = request
            .extensions()
            .get::<TlsConnectInfo>()
            .ok_or_else(|| Status::internal("request has no TlsConnectInfo extension"))?;
        let spiffe_id = info
            .peer_spiffe_id()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let leaf = info
            .peer_certificates
            .as_ref()
            .and_then(|chain| chain.first())
            .map(|leaf| hex(leaf))
            .unwrap_or_default();
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id,
                svid: leaf,
                hint: info.remote_addr.to_string(),
            }],
        }))
    }
}

/// A running test server.
pub struct TestServer {
    pub address: SocketAddr,
    pub echo: PeerEcho,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn calls(&self) -> usize {
        self.echo.calls.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves [`PeerEcho`] on a loopback port with `incoming` built from a bound listener.
pub async fn serve(
    config: Arc<rustls::ServerConfig>,
    customize: impl FnOnce(TlsIncoming) -> TlsIncoming,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = customize(TlsIncoming::new(listener, config));
    let echo = PeerEcho::default();
    let service = SpiffeWorkloadApiServer::new(echo.clone());
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    TestServer {
        address,
        echo,
        task,
    }
}
