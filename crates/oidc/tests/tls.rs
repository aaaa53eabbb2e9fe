//! The discovery listener over HTTPS, including certificate reload.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use twid_ca::KeyType;
use twid_oidc::{OidcConfig, OidcError};
use twid_telemetry::Health;

use common::*;

const ISSUER: &str = "https://localhost";

/// Writes a new self-signed certificate for `localhost` and its key, and returns the
/// certificate DER.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    certified.cert.der().clone()
}

fn tls_config(bind: std::net::SocketAddr, dir: &Path) -> OidcConfig {
    OidcConfig {
        bind,
        issuer: ISSUER.to_owned(),
        tls: Some((dir.join("cert.pem"), dir.join("key.pem"))),
        cors_origins: Vec::new(),
    }
}

/// Fetches `path` over TLS trusting `trusted`, and returns the response with the
/// certificate the server presented.
async fn get_tls(
    addr: std::net::SocketAddr,
    trusted: &[CertificateDer<'static>],
    path: &str,
) -> (HttpResponse, CertificateDer<'static>) {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    (request_on(stream, "GET", path, &[]).await, presented)
}

#[tokio::test]
async fn https_serves_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let key = signing_key(KeyType::EcP256);
    let handle = twid_oidc::serve(
        tls_config(free_loopback_addr().await, dir.path()),
        TestKeys::new(ISSUER, &[&key]),
        ready_health(),
    )
    .await
    .unwrap();
    let (response, presented) =
        get_tls(handle.local_addr(), std::slice::from_ref(&cert), "/keys").await;
    assert_eq!(presented, cert);
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["keys"][0]["kid"], key.key_id());
    handle.shutdown().await;
}

#[tokio::test]
async fn https_reloads_changed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let key = signing_key(KeyType::EcP256);
    let handle = twid_oidc::serve(
        tls_config(free_loopback_addr().await, dir.path()),
        TestKeys::new(ISSUER, &[&key]),
        ready_health(),
    )
    .await
    .unwrap();
    let addr = handle.local_addr();
    let (_, presented) = get_tls(addr, std::slice::from_ref(&first), "/live").await;
    assert_eq!(presented, first);

    let second = write_cert(dir.path());
    // Files are checked at most once per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let trusted = [first.clone(), second.clone()];
    let (response, presented) = get_tls(addr, &trusted, "/live").await;
    assert_eq!(response.status, 200);
    assert_eq!(presented, second);

    // A broken file keeps the last good certificate in use.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (response, presented) = get_tls(addr, &trusted, "/live").await;
    assert_eq!(response.status, 200);
    assert_eq!(presented, second);
    handle.shutdown().await;
}

#[tokio::test]
async fn missing_certificate_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let result = twid_oidc::serve(
        tls_config(free_loopback_addr().await, dir.path()),
        TestKeys::new(ISSUER, &[]),
        Health::new(),
    )
    .await;
    match result {
        Err(error @ OidcError::Tls { .. }) => {
            assert!(error.to_string().contains("cert.pem"), "{error}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn mismatched_key_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("key.pem"), other.serialize_pem()).unwrap();
    let result = twid_oidc::serve(
        tls_config(free_loopback_addr().await, dir.path()),
        TestKeys::new(ISSUER, &[]),
        Health::new(),
    )
    .await;
    assert!(matches!(result, Err(OidcError::Tls { .. })), "{result:?}");
}
