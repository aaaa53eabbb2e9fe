use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request};
use twid_attestation::AttestationError;
use twid_attestation::workload::unix::{UnixAttestor, UnixAttestorOptions};
use twid_proto::types::{Entry, JwtAuthority, Selector as ProtoSelector};
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use twid_proto::workload::*;
use twid_uds::PeerCredentials;

use super::*;
use crate::cache::{CachedEntry, CachedSvid, TrustDomainBundle};
use crate::test_support::{with_header, workload_client};

/// Issues `token-<entry>-<audience>` tokens and counts the calls.
#[derive(Default)]
struct CountingIssuer {
    calls: AtomicUsize,
}

impl JwtIssuer for CountingIssuer {
    fn issue(
        &self,
        entry_id: String,
        audience: Vec<String>,
    ) -> futures::future::BoxFuture<'static, Result<IssuedJwt, Status>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let token = format!("token-{entry_id}-{}-{call}", audience.join(","));
        let now = crate::sync::unix_now();
        Box::pin(async move {
            Ok(IssuedJwt {
                token,
                issued_at: now,
                expires_at: now + 3600,
            })
        })
    }
}

/// An attestor that always fails, as one does for a process that exited.
struct FailingAttestor;

impl WorkloadAttestor for FailingAttestor {
    fn name(&self) -> &'static str {
        "failing"
    }

    fn attest(
        &self,
        _caller: &PeerCredentials,
    ) -> Result<Vec<twid_types::Selector>, AttestationError> {
        Err(AttestationError::MissingPid {
            attestor: "failing",
        })
    }
}

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

fn self_signed_svid(spiffe_id: &str) -> (CachedSvid, Vec<u8>) {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    let uri = spiffe_id.try_into().expect("URI SAN");
    leaf_params.subject_alt_names = vec![SanType::URI(uri)];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let svid = CachedSvid {
        chain: vec![leaf.der().to_vec()],
        key_pkcs8: leaf_key.serialize_der(),
        not_before: 0,
        not_after: i64::MAX / 2,
    };
    (svid, ca.der().to_vec())
}

fn entry(id: &str, spiffe_id: &str, selector: &str, hint: &str) -> CachedEntry {
    let (kind, value) = selector.split_once(':').expect("type:value");
    let (svid, _) = self_signed_svid(spiffe_id);
    let entry = Entry {
        id: id.to_owned(),
        spiffe_id: spiffe_id.to_owned(),
        selectors: vec![ProtoSelector {
            r#type: kind.to_owned(),
            value: value.to_owned(),
        }],
        hint: hint.to_owned(),
        ..Entry::default()
    };
    CachedEntry::new(entry, Some(Arc::new(svid)))
}

/// A P-256 JWT signing key with its authority entry.
struct JwtKey {
    pkcs8: Vec<u8>,
    authority: JwtAuthority,
}

fn jwt_key(kid: &str) -> JwtKey {
    let key = rcgen::KeyPair::generate().expect("JWT key");
    JwtKey {
        pkcs8: key.serialize_der(),
        authority: JwtAuthority {
            key_id: kid.to_owned(),
            public_key: rcgen::PublicKeyData::subject_public_key_info(&key),
            expires_at: 0,
        },
    }
}

/// Signs an ES256 JWT-SVID for `sub` with `key`.
fn sign_jwt(key: &JwtKey, sub: &str, audience: &str, exp: i64) -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let header = json!({ "alg": "ES256", "kid": key.authority.key_id, "typ": "JWT" });
    let claims = json!({ "sub": sub, "aud": [audience], "exp": exp, "iat": exp - 300 });
    let input = twid_spiffe::encode_signing_input(&header, &claims);
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.pkcs8)
        .expect("P-256 PKCS#8");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = signer.sign(&rng, input.as_bytes()).expect("sign");
    twid_spiffe::assemble(&input, signature.as_ref())
}

fn snapshot_with_key(entries: Vec<CachedEntry>, key: &JwtKey) -> Snapshot {
    let (_, ca) = self_signed_svid("spiffe://example.org/ca");
    Snapshot {
        generation: 0,
        trust_domain_id: "spiffe://example.org".to_owned(),
        entries,
        x509_authorities: vec![ca],
        jwt_authorities: vec![key.authority.clone()],
        federated: BTreeMap::new(),
        revoked: Arc::default(),
    }
}

fn snapshot(entries: Vec<CachedEntry>) -> Snapshot {
    snapshot_with_key(entries, &jwt_key("k1"))
}

struct Harness {
    dir: tempfile::TempDir,
    cache: Cache,
    issuer: Arc<CountingIssuer>,
    shutdown: watch::Sender<bool>,
    client: SpiffeWorkloadApiClient<Channel>,
}

async fn start_with(first_sync_timeout: Duration, attestor: Arc<dyn WorkloadAttestor>) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("api.sock");
    let incoming = crate::listener::bind(&path).expect("bind test socket");
    let cache = Cache::new("spiffe://example.org".to_owned());
    let issuer = Arc::new(CountingIssuer::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let api = WorkloadApi::new(
        cache.clone(),
        attestor,
        Arc::clone(&issuer) as Arc<dyn JwtIssuer>,
        first_sync_timeout,
    )
    .with_shutdown(shutdown_rx);
    tokio::spawn(
        Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(api))
            .serve_with_incoming(incoming),
    );
    Harness {
        client: workload_client(path).await,
        dir,
        cache,
        issuer,
        shutdown,
    }
}

async fn start(first_sync_timeout: Duration) -> Harness {
    let attestor = Arc::new(UnixAttestor::new(UnixAttestorOptions::default()));
    start_with(first_sync_timeout, attestor).await
}

fn own_entry(id: &str, spiffe_id: &str, hint: &str) -> CachedEntry {
    entry(id, spiffe_id, &format!("unix:uid:{}", own_uid()), hint)
}

fn jwt_request(audience: &[&str], spiffe_id: &str) -> Request<JwtsvidRequest> {
    with_header(JwtsvidRequest {
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        spiffe_id: spiffe_id.to_owned(),
    })
}

#[tokio::test]
async fn every_rpc_rejects_missing_header() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let c = &mut h.client;
    let codes = [
        c.fetch_x509svid(X509svidRequest {})
            .await
            .err()
            .map(|s| s.code()),
        c.fetch_x509_bundles(X509BundlesRequest {})
            .await
            .err()
            .map(|s| s.code()),
        c.fetch_jwt_bundles(JwtBundlesRequest {})
            .await
            .err()
            .map(|s| s.code()),
        c.fetch_jwtsvid(JwtsvidRequest::default())
            .await
            .err()
            .map(|s| s.code()),
        c.validate_jwtsvid(ValidateJwtsvidRequest::default())
            .await
            .err()
            .map(|s| s.code()),
        c.fetch_witsvid(WitsvidRequest::default())
            .await
            .err()
            .map(|s| s.code()),
        c.fetch_wit_bundles(WitBundlesRequest {})
            .await
            .err()
            .map(|s| s.code()),
    ];
    for code in codes {
        assert_eq!(code, Some(Code::InvalidArgument));
    }
}

#[tokio::test]
async fn header_with_other_value_is_rejected() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let mut request = Request::new(X509svidRequest {});
    let value = "yes".parse().expect("ASCII metadata");
    request.metadata_mut().insert("workload.spiffe.io", value);
    let status = h
        .client
        .fetch_x509svid(request)
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("security header missing"));
}

#[tokio::test]
async fn caller_without_entry_is_denied() {
    let mut h = start(Duration::from_secs(1)).await;
    let other = entry("e1", "spiffe://example.org/w", "unix:uid:4000000000", "");
    h.cache.publish(snapshot(vec![other]));
    let status = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("no identity is registered for this caller"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&format!("uid {}", own_uid())),
        "{}",
        status.message()
    );
    let denied = [
        h.client
            .fetch_jwtsvid(jwt_request(&["a"], ""))
            .await
            .err()
            .map(|s| s.code()),
        h.client
            .fetch_x509_bundles(with_header(X509BundlesRequest {}))
            .await
            .err()
            .map(|s| s.code()),
        h.client
            .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
            .await
            .err()
            .map(|s| s.code()),
        h.client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: "a".to_owned(),
                svid: "x.y.z".to_owned(),
            }))
            .await
            .err()
            .map(|s| s.code()),
    ];
    for code in denied {
        assert_eq!(code, Some(Code::PermissionDenied));
    }
}

#[tokio::test]
async fn failed_attestation_is_denied_with_reason() {
    let mut h = start_with(Duration::from_secs(1), Arc::new(FailingAttestor)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let status = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("workload attestation failed"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn caller_with_own_uid_gets_svid_and_bundle() {
    let mut h = start(Duration::from_secs(1)).await;
    let snap = snapshot(vec![own_entry("e1", "spiffe://example.org/w", "")]);
    let expected_key = snap.entries[0]
        .svid
        .as_ref()
        .expect("svid")
        .key_pkcs8
        .clone();
    let expected_bundle = snap.bundle_concat();
    h.cache.publish(snap);
    let mut stream = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream
        .next()
        .await
        .expect("first message")
        .expect("ok message");
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/w");
    assert_eq!(first.svids[0].x509_svid_key, expected_key);
    assert_eq!(first.svids[0].bundle, expected_bundle);
    assert!(first.federated_bundles.is_empty());
    assert!(h.dir.path().join("api.sock").exists());
}

#[tokio::test]
async fn stream_sends_full_state_after_change() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/a",
        "",
    )]));
    let mut stream = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("first").expect("ok");
    assert_eq!(first.svids.len(), 1);
    h.cache.publish(snapshot(vec![
        own_entry("e1", "spiffe://example.org/a", ""),
        own_entry("e2", "spiffe://example.org/b", ""),
    ]));
    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("second message in time")
        .expect("stream open")
        .expect("ok");
    let ids: Vec<&str> = second.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/b"]);
}

#[tokio::test]
async fn stream_ends_when_identity_is_removed() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/a",
        "",
    )]));
    let mut stream = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    stream.next().await.expect("first").expect("ok");
    h.cache.publish(snapshot(Vec::new()));
    let status = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("status in time")
        .expect("stream item")
        .expect_err("the stream must end with an error");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn stream_ends_on_shutdown() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/a",
        "",
    )]));
    let mut stream = h
        .client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    stream.next().await.expect("first").expect("ok");
    h.shutdown.send(true).expect("stream receivers alive");
    let status = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("status in time")
        .expect("stream item")
        .expect_err("the stream must end with an error");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn duplicate_hint_keeps_first_svid() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![
        own_entry("e1", "spiffe://example.org/a", "db"),
        own_entry("e2", "spiffe://example.org/b", "db"),
        own_entry("e3", "spiffe://example.org/c", ""),
    ]));
    let mut stream = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("first").expect("ok");
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/c"]);
}

#[tokio::test]
async fn call_before_first_sync_is_unavailable() {
    let mut h = start(Duration::from_millis(100)).await;
    let status = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("unavailable");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn bundles_are_keyed_by_trust_domain() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let mut x509 = h
        .client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = x509.next().await.expect("first").expect("ok");
    assert_eq!(first.bundles.len(), 1);
    assert!(first.bundles.contains_key("spiffe://example.org"));
    let mut jwt = h
        .client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = jwt.next().await.expect("first").expect("ok");
    let document: serde_json::Value =
        serde_json::from_slice(&first.bundles["spiffe://example.org"]).expect("JWKS JSON");
    assert_eq!(document["keys"][0]["kid"], "k1");
    assert_eq!(document["keys"][0]["use"], "jwt-svid");
}

#[tokio::test]
async fn federated_bundles_reach_entries_that_federate() {
    let mut h = start(Duration::from_secs(1)).await;
    let mut federating = own_entry("e1", "spiffe://example.org/w", "");
    Arc::make_mut(&mut federating.entry).federates_with = vec!["partner.test".to_owned()];
    let mut snap = snapshot(vec![federating]);
    let (_, partner_ca) = self_signed_svid("spiffe://partner.test/ca");
    let partner_key = jwt_key("partner-k1");
    snap.federated.insert(
        "partner.test".to_owned(),
        TrustDomainBundle {
            x509_authorities: vec![partner_ca.clone()],
            jwt_authorities: vec![partner_key.authority.clone()],
        },
    );
    snap.federated
        .insert("unrelated.test".to_owned(), TrustDomainBundle::default());
    h.cache.publish(snap);

    let mut svids = h
        .client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = svids.next().await.expect("first").expect("ok");
    let federated: Vec<&str> = first.federated_bundles.keys().map(String::as_str).collect();
    assert_eq!(federated, ["spiffe://partner.test"]);
    assert_eq!(first.federated_bundles["spiffe://partner.test"], partner_ca);

    let mut bundles = h
        .client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = bundles.next().await.expect("first").expect("ok");
    let mut ids: Vec<&str> = first.bundles.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["spiffe://example.org", "spiffe://partner.test"]);

    let token = sign_jwt(
        &partner_key,
        "spiffe://partner.test/client",
        "me",
        crate::sync::unix_now() + 600,
    );
    let validated = h
        .client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "me".to_owned(),
            svid: token,
        }))
        .await
        .expect("token of a federated trust domain validates")
        .into_inner();
    assert_eq!(validated.spiffe_id, "spiffe://partner.test/client");
}

#[tokio::test]
async fn jwt_svid_requires_audience_and_own_id() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let missing = h
        .client
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .expect_err("rejected");
    assert_eq!(missing.code(), Code::InvalidArgument);
    let foreign = h
        .client
        .fetch_jwtsvid(jwt_request(&["a"], "spiffe://example.org/other"))
        .await
        .expect_err("rejected");
    assert_eq!(foreign.code(), Code::PermissionDenied);
    let ok = h
        .client
        .fetch_jwtsvid(jwt_request(&["b", "a"], "spiffe://example.org/w"))
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(ok.svids.len(), 1);
    assert_eq!(ok.svids[0].spiffe_id, "spiffe://example.org/w");
    assert_eq!(ok.svids[0].svid, "token-e1-a,b-0");
}

#[tokio::test]
async fn jwt_svid_is_cached_per_audience() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let mut fetch = async |audience: &[&str]| {
        h.client
            .fetch_jwtsvid(jwt_request(audience, ""))
            .await
            .expect("issued")
            .into_inner()
            .svids[0]
            .svid
            .clone()
    };
    let first = fetch(&["a", "b"]).await;
    let same_set = fetch(&["b", "a", "a"]).await;
    let other = fetch(&["c"]).await;
    assert_eq!(first, same_set);
    assert_ne!(first, other);
    assert_eq!(h.issuer.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn jwt_svid_for_every_identity() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![
        own_entry("e1", "spiffe://example.org/a", "first"),
        own_entry("e2", "spiffe://example.org/b", "second"),
    ]));
    let response = h
        .client
        .fetch_jwtsvid(jwt_request(&["aud"], ""))
        .await
        .expect("issued")
        .into_inner();
    let ids: Vec<(&str, &str)> = response
        .svids
        .iter()
        .map(|s| (s.spiffe_id.as_str(), s.hint.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("spiffe://example.org/a", "first"),
            ("spiffe://example.org/b", "second")
        ]
    );
}

#[tokio::test]
async fn validate_requires_both_fields() {
    let mut h = start(Duration::from_secs(1)).await;
    h.cache.publish(snapshot(vec![own_entry(
        "e1",
        "spiffe://example.org/w",
        "",
    )]));
    let status = h
        .client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".to_owned(),
            svid: String::new(),
        }))
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = h
        .client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: String::new(),
            svid: "x.y.z".to_owned(),
        }))
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = h
        .client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".to_owned(),
            svid: "not.a.jwt".to_owned(),
        }))
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn validate_checks_signature_audience_and_trust_domain() {
    let mut h = start(Duration::from_secs(1)).await;
    let key = jwt_key("k1");
    h.cache.publish(snapshot_with_key(
        vec![own_entry("e1", "spiffe://example.org/w", "")],
        &key,
    ));
    let exp = crate::sync::unix_now() + 600;
    let mut validate = async |token: String, audience: &str| {
        h.client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token,
            }))
            .await
    };

    let valid = validate(
        sign_jwt(&key, "spiffe://example.org/client", "svc", exp),
        "svc",
    )
    .await
    .expect("valid token")
    .into_inner();
    assert_eq!(valid.spiffe_id, "spiffe://example.org/client");
    let claims = valid.claims.expect("claims");
    let sub = claims.fields["sub"].kind.clone();
    assert_eq!(
        sub,
        Some(prost_types::value::Kind::StringValue(
            "spiffe://example.org/client".to_owned()
        ))
    );

    let cases = [
        (
            "wrong audience",
            sign_jwt(&key, "spiffe://example.org/c", "other", exp),
        ),
        (
            "expired",
            sign_jwt(&key, "spiffe://example.org/c", "svc", exp - 1200),
        ),
        (
            "unknown key",
            sign_jwt(&jwt_key("k1"), "spiffe://example.org/c", "svc", exp),
        ),
        (
            "foreign trust domain",
            sign_jwt(&key, "spiffe://elsewhere.test/c", "svc", exp),
        ),
    ];
    for (case, token) in cases {
        let status = validate(token, "svc").await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
    }
}

mod wit_svid {
    use super::*;
    use crate::workload_api::wit::IssuedWit;

    /// Issues `wit-<entry>-<call>` tokens that live `lifetime` seconds and counts the calls.
    struct ShortLivedWitIssuer {
        calls: AtomicUsize,
        lifetime: i64,
    }

    impl WitIssuer for ShortLivedWitIssuer {
        fn issue(
            &self,
            entry_id: String,
            public_key: Vec<u8>,
        ) -> futures::future::BoxFuture<'static, Result<IssuedWit, Status>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let now = crate::sync::unix_now();
            let lifetime = self.lifetime;
            Box::pin(async move {
                if public_key.is_empty() {
                    return Err(Status::invalid_argument("no public key"));
                }
                Ok(IssuedWit {
                    token: format!("wit-{entry_id}-{call}"),
                    issued_at: now,
                    expires_at: now + lifetime,
                })
            })
        }
    }

    async fn start_wit(
        lifetime: i64,
    ) -> (tempfile::TempDir, Cache, SpiffeWorkloadApiClient<Channel>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("api.sock");
        let incoming = crate::listener::bind(&path).expect("bind test socket");
        let cache = Cache::new("spiffe://example.org".to_owned());
        let attestor = Arc::new(UnixAttestor::new(UnixAttestorOptions::default()));
        let api = WorkloadApi::new(
            cache.clone(),
            attestor,
            Arc::new(CountingIssuer::default()),
            Duration::from_secs(1),
        )
        .with_wit(Arc::new(ShortLivedWitIssuer {
            calls: AtomicUsize::new(0),
            lifetime,
        }));
        tokio::spawn(
            Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(api))
                .serve_with_incoming(incoming),
        );
        let client = workload_client(path).await;
        (dir, cache, client)
    }

    #[tokio::test]
    async fn wit_stream_sends_token_and_jwk() {
        let (_dir, cache, mut client) = start_wit(3600).await;
        cache.publish(snapshot(vec![
            own_entry("e1", "spiffe://example.org/a", "internal"),
            own_entry("e2", "spiffe://example.org/b", "external"),
        ]));
        let mut stream = client
            .fetch_witsvid(with_header(WitsvidRequest::default()))
            .await
            .expect("stream opens")
            .into_inner();
        let first = stream.next().await.expect("first").expect("ok");
        assert_eq!(first.svids.len(), 2);
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/a");
        assert_eq!(first.svids[0].hint, "internal");
        assert!(first.svids[0].wit_svid.starts_with("wit-e1-"));
        let jwk: serde_json::Value =
            serde_json::from_str(&first.svids[0].wit_svid_key).expect("JWK JSON");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["alg"], "ES256");
        assert!(jwk["d"].is_string());
        assert_ne!(
            first.svids[0].wit_svid_key, first.svids[1].wit_svid_key,
            "each identity needs its own key"
        );

        let mut only_b = client
            .fetch_witsvid(with_header(WitsvidRequest {
                spiffe_id: "spiffe://example.org/b".to_owned(),
            }))
            .await
            .expect("stream opens")
            .into_inner();
        let message = only_b.next().await.expect("first").expect("ok");
        assert_eq!(message.svids.len(), 1);
        assert_eq!(message.svids[0].spiffe_id, "spiffe://example.org/b");
        assert_eq!(
            message.svids[0].wit_svid, first.svids[1].wit_svid,
            "a WIT before half its lifetime is reused"
        );

        let status = client
            .fetch_witsvid(with_header(WitsvidRequest {
                spiffe_id: "spiffe://example.org/other".to_owned(),
            }))
            .await
            .expect_err("unknown identity");
        assert_eq!(status.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn wit_stream_renews_at_half_life() {
        let (_dir, cache, mut client) = start_wit(2).await;
        cache.publish(snapshot(vec![own_entry(
            "e1",
            "spiffe://example.org/a",
            "",
        )]));
        let mut stream = client
            .fetch_witsvid(with_header(WitsvidRequest::default()))
            .await
            .expect("stream opens")
            .into_inner();
        let first = stream.next().await.expect("first").expect("ok");
        let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a renewed WIT within 5 s")
            .expect("second")
            .expect("ok");
        assert_ne!(first.svids[0].wit_svid, second.svids[0].wit_svid);
        assert_ne!(first.svids[0].wit_svid_key, second.svids[0].wit_svid_key);
    }

    #[tokio::test]
    async fn wit_bundles_are_jwk_sets() {
        let (_dir, cache, mut client) = start_wit(3600).await;
        cache.publish(snapshot(vec![own_entry(
            "e1",
            "spiffe://example.org/a",
            "",
        )]));
        let mut stream = client
            .fetch_wit_bundles(with_header(WitBundlesRequest {}))
            .await
            .expect("stream opens")
            .into_inner();
        let message = stream.next().await.expect("first").expect("ok");
        let jwks = message
            .bundles
            .get("spiffe://example.org")
            .expect("local trust domain");
        let jwks: serde_json::Value = serde_json::from_str(jwks).expect("JSON");
        assert_eq!(jwks["keys"][0]["kid"], "k1");
    }
}

mod revoked_tokens {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::revocation::Revoked;
    use crate::workload_api::wit::IssuedWit;

    /// Returns an unsigned compact JWS whose payload carries `jti`.
    fn token_with_jti(jti: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(json!({ "jti": jti }).to_string());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    /// Issues JWT-SVIDs and WITs with `jti` `jti-<call>`; WIT signing fails after `wit_limit`
    /// calls, as the server refuses revoked entries.
    struct JtiIssuer {
        calls: AtomicUsize,
        wit_limit: usize,
    }

    impl JwtIssuer for JtiIssuer {
        fn issue(
            &self,
            _entry_id: String,
            _audience: Vec<String>,
        ) -> futures::future::BoxFuture<'static, Result<IssuedJwt, Status>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let now = crate::sync::unix_now();
            Box::pin(async move {
                Ok(IssuedJwt {
                    token: token_with_jti(&format!("jti-{call}")),
                    issued_at: now,
                    expires_at: now + 3600,
                })
            })
        }
    }

    impl WitIssuer for JtiIssuer {
        fn issue(
            &self,
            _entry_id: String,
            _public_key: Vec<u8>,
        ) -> futures::future::BoxFuture<'static, Result<IssuedWit, Status>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let now = crate::sync::unix_now();
            let refused = call >= self.wit_limit;
            Box::pin(async move {
                if refused {
                    return Err(Status::unavailable("the entry's credentials were revoked"));
                }
                Ok(IssuedWit {
                    token: token_with_jti(&format!("jti-{call}")),
                    issued_at: now,
                    expires_at: now + 3600,
                })
            })
        }
    }

    async fn start_api(
        issuer: Arc<JtiIssuer>,
    ) -> (tempfile::TempDir, Cache, SpiffeWorkloadApiClient<Channel>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("api.sock");
        let incoming = crate::listener::bind(&path).expect("bind test socket");
        let cache = Cache::new("spiffe://example.org".to_owned());
        let attestor = Arc::new(UnixAttestor::new(UnixAttestorOptions::default()));
        let api = WorkloadApi::new(
            cache.clone(),
            attestor,
            Arc::clone(&issuer) as Arc<dyn JwtIssuer>,
            Duration::from_secs(1),
        )
        .with_wit(issuer);
        tokio::spawn(
            Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(api))
                .serve_with_incoming(incoming),
        );
        let client = workload_client(path).await;
        (dir, cache, client)
    }

    fn revoking(jtis: &[&str]) -> Snapshot {
        let mut next = snapshot(vec![own_entry("e1", "spiffe://example.org/w", "")]);
        let jtis = jtis.iter().map(|jti| (*jti).to_owned()).collect();
        next.revoked = Arc::new(Revoked::new(Vec::new(), jtis));
        next
    }

    #[tokio::test]
    async fn revoked_jwt_svid_is_replaced() {
        let issuer = Arc::new(JtiIssuer {
            calls: AtomicUsize::new(0),
            wit_limit: usize::MAX,
        });
        let (_dir, cache, mut client) = start_api(Arc::clone(&issuer)).await;
        cache.publish(revoking(&[]));
        let mut fetch = async || {
            client
                .fetch_jwtsvid(jwt_request(&["aud"], ""))
                .await
                .expect("issued")
                .into_inner()
                .svids[0]
                .svid
                .clone()
        };
        let first = fetch().await;
        assert_eq!(first, token_with_jti("jti-0"));
        assert_eq!(fetch().await, first, "an unrevoked token is reused");

        cache.publish(revoking(&["jti-0"]));
        let replaced = fetch().await;
        assert_eq!(replaced, token_with_jti("jti-1"));
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn revoked_wit_is_not_served_when_renewal_fails() {
        let issuer = Arc::new(JtiIssuer {
            calls: AtomicUsize::new(0),
            wit_limit: 1,
        });
        let (_dir, cache, mut client) = start_api(issuer).await;
        cache.publish(revoking(&[]));
        let mut stream = client
            .fetch_witsvid(with_header(WitsvidRequest::default()))
            .await
            .expect("stream opens")
            .into_inner();
        let first = stream.next().await.expect("first").expect("ok");
        assert_eq!(first.svids[0].wit_svid, token_with_jti("jti-0"));

        cache.publish(revoking(&["jti-0"]));
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream did not react to the revocation within 5 s")
            .expect("a status");
        let status = ended.expect_err("the revoked WIT must not be sent again");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}
