//! CA rotation seen from a workload: across two rotations, the SVID a workload has always
//! verifies against the bundle it was last sent.

use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio_stream::StreamExt as _;
use twid_proto::workload::X509svidRequest;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_spiffe::x509::{X509BundleSet, split_der_certificates, verify_x509_svid};
use twid_spiffe::{TrustDomain, X509Bundle};

use crate::common::*;

fn bundle_set(der: &[u8]) -> X509BundleSet {
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut set = X509BundleSet::new();
    set.insert(X509Bundle::from_authorities(td, split_der_certificates(der).unwrap()).unwrap());
    set
}

#[test]
fn svids_verify_across_two_ca_rotations() {
    let dir = TempDir::new();
    // Prepare at 30 s, activate at 50 s: two activations within about 100 s.
    let server = ServerProcess::start(
        dir.path(),
        "  ca_ttl = \"60s\"\n  default_x509_svid_ttl = \"20s\"",
    );
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(
        "spiffe://example.org/rotating",
        &agent_id(&token),
        &[&selector],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let seen_cas = runtime.block_on(async {
        let path = agent.socket.clone();
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
        let mut client =
            SpiffeWorkloadApiClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("workload.spiffe.io", "true".parse().unwrap());
                Ok(request)
            });
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut held: Option<(Vec<CertificateDer<'static>>, Vec<u8>)> = None;
        let mut seen_cas: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(115);
        let mut check = tokio::time::interval(Duration::from_millis(500));
        while Instant::now() < deadline {
            tokio::select! {
                message = stream.next() => {
                    let response = message.expect("stream ended").expect("stream failed");
                    let svid = &response.svids[0];
                    let chain = split_der_certificates(&svid.x509_svid).unwrap();
                    for ca in split_der_certificates(&svid.bundle).unwrap() {
                        if !seen_cas.contains(&ca.to_vec()) {
                            seen_cas.push(ca.to_vec());
                        }
                    }
                    held = Some((chain, svid.bundle.clone()));
                }
                _ = check.tick() => {}
            }
            if let Some((chain, bundle)) = &held {
                let result = verify_x509_svid(chain, &bundle_set(bundle), SystemTime::now());
                assert!(
                    result.is_ok(),
                    "held SVID failed to verify: {result:?}\nserver log:\n{}",
                    server.log()
                );
            }
        }
        seen_cas
    });
    assert!(
        seen_cas.len() >= 3,
        "expected two rotations, saw {} CA certificates",
        seen_cas.len()
    );
}
