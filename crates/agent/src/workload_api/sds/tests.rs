use std::collections::BTreeMap;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use twid_attestation::workload::unix::{UnixAttestor, UnixAttestorOptions};
use twid_proto::types::{Entry, Selector as ProtoSelector};
use twid_uds::PeerCredentials;

use super::super::caller::Identity;
use super::*;
use crate::cache::{CachedEntry, CachedSvid, Snapshot, TrustDomainBundle};

fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("numeric effective uid")
}

fn self_signed(spiffe_id: &str) -> (CachedSvid, Vec<u8>) {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    leaf_params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("URI"))];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let svid = CachedSvid {
        chain: vec![leaf.der().to_vec()],
        key_pkcs8: leaf_key.serialize_der(),
        not_before: 0,
        not_after: i64::MAX / 2,
    };
    (svid, ca.der().to_vec())
}

fn entry(spiffe_id: &str, uid: u32, federates_with: &[&str], signed: bool) -> CachedEntry {
    let entry = Entry {
        id: spiffe_id.to_owned(),
        spiffe_id: spiffe_id.to_owned(),
        selectors: vec![ProtoSelector {
            r#type: "unix".to_owned(),
            value: format!("uid:{uid}"),
        }],
        federates_with: federates_with.iter().map(|s| (*s).to_owned()).collect(),
        ..Entry::default()
    };
    let svid = signed.then(|| Arc::new(self_signed(spiffe_id).0));
    CachedEntry::new(entry, svid)
}

fn snapshot(entries: Vec<CachedEntry>) -> Snapshot {
    let (_, local_ca) = self_signed("spiffe://example.org/ca");
    let (_, federated_ca) = self_signed("spiffe://partner.test/ca");
    Snapshot {
        generation: 1,
        trust_domain_id: "spiffe://example.org".to_owned(),
        entries,
        x509_authorities: vec![local_ca],
        jwt_authorities: Vec::new(),
        federated: BTreeMap::from([(
            "partner.test".to_owned(),
            TrustDomainBundle {
                x509_authorities: vec![federated_ca],
                jwt_authorities: Vec::new(),
            },
        )]),
        revoked: Arc::default(),
    }
}

fn caller(uid: u32) -> Identity {
    Identity {
        peer: PeerCredentials {
            uid,
            gid: uid,
            pid: None,
        },
        selectors: vec![twid_types::Selector::new(
            "unix".to_owned(),
            format!("uid:{uid}"),
        )],
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn decode(resources: &Resources) -> BTreeMap<String, Secret> {
    let Resources::Ready(resources) = resources else {
        panic!("resources are pending");
    };
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            let secret = Secret::decode(any.value.as_slice()).expect("Secret");
            (secret.name.clone(), secret)
        })
        .collect()
}

/// Returns the trust domain names of a SPIFFE validator secret, or `None` for `trusted_ca`.
fn validator_domains(secret: &Secret) -> Option<Vec<String>> {
    let Some(secret::Type::ValidationContext(context)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    if context.trusted_ca.is_some() {
        assert!(context.custom_validator_config.is_none());
        return None;
    }
    let config = context.custom_validator_config.as_ref().expect("validator");
    assert_eq!(config.name, "envoy.tls.cert_validator.spiffe");
    let typed = config.typed_config.as_ref().expect("typed config");
    let validator = SpiffeCertValidatorConfig::decode(typed.value.as_slice()).expect("config");
    Some(
        validator
            .trust_domains
            .into_iter()
            .map(|td| td.name)
            .collect(),
    )
}

fn is_tls_certificate(secret: &Secret) -> bool {
    matches!(secret.r#type, Some(secret::Type::TlsCertificate(_)))
}

#[test]
fn build_serves_named_resources() {
    let snap = snapshot(vec![
        entry("spiffe://example.org/a", 7, &["partner.test"], true),
        entry("spiffe://example.org/b", 7, &[], true),
    ]);
    let config = SdsConfig::default();
    let request = names(&[
        "default",
        "ROOTCA",
        "ALL",
        "spiffe://example.org/b",
        "partner.test",
        "spiffe://example.org",
    ]);
    let built = decode(&build(&snap, &caller(7), &request, &config).expect("build"));
    assert_eq!(built.len(), 6);
    assert!(is_tls_certificate(&built["default"]));
    assert!(is_tls_certificate(&built["spiffe://example.org/b"]));
    assert_eq!(
        validator_domains(&built["ROOTCA"]),
        Some(names(&["example.org"]))
    );
    assert_eq!(
        validator_domains(&built["ALL"]),
        Some(names(&["example.org", "partner.test"]))
    );
    assert_eq!(
        validator_domains(&built["partner.test"]),
        Some(names(&["partner.test"]))
    );
    assert_eq!(
        validator_domains(&built["spiffe://example.org"]),
        Some(names(&["example.org"]))
    );
}

#[test]
fn build_with_no_names_serves_everything() {
    let snap = snapshot(vec![
        entry("spiffe://example.org/a", 7, &["partner.test"], true),
        entry("spiffe://example.org/b", 7, &[], true),
    ]);
    let built = decode(&build(&snap, &caller(7), &[], &SdsConfig::default()).expect("build"));
    let keys: Vec<&str> = built.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ALL",
            "ROOTCA",
            "spiffe://example.org/a",
            "spiffe://example.org/b",
            "spiffe://partner.test",
        ]
    );
}

#[test]
fn build_trusted_ca_when_validator_disabled() {
    let snap = snapshot(vec![entry("spiffe://example.org/a", 7, &[], true)]);
    let config = SdsConfig {
        disable_spiffe_cert_validation: true,
        default_bundle_name: "bundle".to_owned(),
        ..SdsConfig::default()
    };
    let built = decode(&build(&snap, &caller(7), &names(&["bundle"]), &config).expect("build"));
    assert_eq!(validator_domains(&built["bundle"]), None);
    let all = build(&snap, &caller(7), &names(&["ALL"]), &config).expect_err("ALL rejected");
    assert_eq!(all.code(), Code::InvalidArgument);
    let everything = decode(&build(&snap, &caller(7), &[], &config).expect("build"));
    assert!(!everything.contains_key("ALL"));
}

#[test]
fn build_rejects_unknown_names_and_callers() {
    let snap = snapshot(vec![entry("spiffe://example.org/a", 7, &[], true)]);
    let config = SdsConfig::default();
    let unknown = build(
        &snap,
        &caller(7),
        &names(&["spiffe://example.org/x"]),
        &config,
    )
    .expect_err("unknown name");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("spiffe://example.org/x"));
    let unfederated =
        build(&snap, &caller(7), &names(&["partner.test"]), &config).expect_err("not federated");
    assert_eq!(unfederated.code(), Code::InvalidArgument);
    let stranger = build(&snap, &caller(8), &names(&["default"]), &config).expect_err("no entry");
    assert_eq!(stranger.code(), Code::PermissionDenied);
}

#[test]
fn build_waits_for_unsigned_svid() {
    let snap = snapshot(vec![entry("spiffe://example.org/a", 7, &[], false)]);
    let built = build(
        &snap,
        &caller(7),
        &names(&["default"]),
        &SdsConfig::default(),
    );
    assert_eq!(built.expect("build"), Resources::Pending);
}

fn discovery_request(names_list: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names(names_list),
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        ..DiscoveryRequest::default()
    }
}

#[test]
fn classify_follows_xds_rules() {
    let mut state = StreamState::default();
    let first = discovery_request(&["default"], "", "");
    assert_eq!(classify(&mut state, &first), Incoming::Respond);
    let response = state.respond(Vec::new());
    assert_eq!(response.version_info, "1");
    let nonce = response.nonce.clone();

    let ack = discovery_request(&["default"], "1", &nonce);
    assert_eq!(classify(&mut state, &ack), Incoming::Ignore);
    let stale = discovery_request(&["ROOTCA"], "0", "old-nonce");
    assert_eq!(classify(&mut state, &stale), Incoming::Ignore);
    let mut nack = discovery_request(&["default"], "0", &nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad secret".to_owned(),
        details: Vec::new(),
    });
    assert_eq!(classify(&mut state, &nack), Incoming::Ignore);
    let change = discovery_request(&["default", "ROOTCA"], "1", &nonce);
    assert_eq!(classify(&mut state, &change), Incoming::Respond);

    let same = state.respond(Vec::new());
    assert_eq!(
        same.version_info, "1",
        "unchanged resources keep the version"
    );
    assert_ne!(same.nonce, nonce, "every response has a new nonce");
}

async fn sds_client(path: std::path::PathBuf) -> SecretDiscoveryServiceClient<Channel> {
    let channel = Endpoint::try_from("http://localhost")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("connect to the SDS socket");
    SecretDiscoveryServiceClient::new(channel)
}

#[tokio::test]
async fn request_before_first_sync_gets_validator() {
    let cache = Cache::new("spiffe://example.org".to_owned());
    let (_dir, mut client) = serve(&cache).await;
    let pending = tokio::spawn(async move {
        client
            .fetch_secrets(discovery_request(&["default", "ROOTCA", "ALL"], "", ""))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "answered before the first sync");

    let mut first = snapshot(vec![entry("spiffe://example.org/a", own_uid(), &[], true)]);
    first.generation = 0;
    cache.publish(first);
    let response = pending.await.expect("task").expect("FetchSecrets");
    let response = response.into_inner();
    assert!(!response.nonce.is_empty());
    let built = decode(&Resources::Ready(response.resources));
    assert!(is_tls_certificate(&built["default"]));
    assert_eq!(
        validator_domains(&built["ROOTCA"]),
        Some(names(&["example.org"]))
    );
    assert_eq!(
        validator_domains(&built["ALL"]),
        Some(names(&["example.org"]))
    );
}

/// Serves SDS over a fresh socket with `cache`; returns a connected client.
async fn serve(cache: &Cache) -> (tempfile::TempDir, SecretDiscoveryServiceClient<Channel>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("api.sock");
    let incoming = crate::listener::bind(&path).expect("bind test socket");
    let attestor = Arc::new(UnixAttestor::new(UnixAttestorOptions::default()));
    let service = SecretDiscovery::new(
        cache.clone(),
        attestor,
        SdsConfig::default(),
        Duration::from_secs(10),
    );
    tokio::spawn(
        Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(service))
            .serve_with_incoming(incoming),
    );
    let client = sds_client(path).await;
    (dir, client)
}

#[tokio::test]
async fn stream_pushes_only_requested_changes() {
    let uid = own_uid();
    let cache = Cache::new("spiffe://example.org".to_owned());
    let mine = entry("spiffe://example.org/a", uid, &[], true);
    let other = entry("spiffe://example.org/b", uid, &[], true);
    let mut state = snapshot(vec![mine.clone(), other]);
    cache.publish(state.clone());
    let (_dir, mut client) = serve(&cache).await;

    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let names = ["spiffe://example.org/a"];
    requests
        .send(discovery_request(&names, "", ""))
        .await
        .expect("send");
    let mut responses = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("StreamSecrets")
        .into_inner();
    let first = responses.next().await.expect("response").expect("ok");
    assert_eq!(first.version_info, "1");
    requests
        .send(discovery_request(&names, "1", &first.nonce))
        .await
        .expect("send");

    // Renewing the SVID of the entry the stream did not request changes nothing it receives.
    state.entries[1] = entry("spiffe://example.org/b", uid, &[], true);
    cache.publish(state.clone());
    let quiet = tokio::time::timeout(Duration::from_millis(500), responses.next()).await;
    assert!(quiet.is_err(), "pushed a change of an unrequested resource");

    state.entries[0] = entry("spiffe://example.org/a", uid, &[], true);
    cache.publish(state);
    let pushed = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("push after rotation")
        .expect("response")
        .expect("ok");
    assert_eq!(pushed.version_info, "2");
    assert_ne!(pushed.nonce, first.nonce);
    let built = decode(&Resources::Ready(pushed.resources));
    assert_eq!(
        built.keys().map(String::as_str).collect::<Vec<_>>(),
        ["spiffe://example.org/a"]
    );
    assert_ne!(
        decode(&Resources::Ready(first.resources)),
        built,
        "the push carries the renewed SVID"
    );
}
