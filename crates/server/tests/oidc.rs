//! The OIDC discovery endpoint started by `Server::start` serves the keys of the configured
//! issuer, as `ServerHandle::oidc_keys` reports them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use twid_config::{JwtIssuerConfig, OidcDiscoveryConfig, ServerConfig};
use twid_server::Server;
use twid_spiffe::TrustDomain;

#[path = "../src/test_support.rs"]
mod test_support;

use test_support::TestDatastore;

const ISSUER: &str = "https://oidc.example.org";

async fn http_get(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("HTTP status line");
    let (_, body) = response.split_once("\r\n\r\n").expect("HTTP body");
    (status, serde_json::from_str(body).unwrap())
}

fn config(dir: &std::path::Path, datastore: &TestDatastore, oidc_enabled: bool) -> ServerConfig {
    // The admin socket's directory must be private to its owner.
    let data_dir = dir.join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut config = ServerConfig::new_dev(TrustDomain::new("example.org").unwrap(), &data_dir);
    config.datastore = datastore.config.clone();
    config.jwt_issuers = vec![JwtIssuerConfig {
        name: "aws".to_owned(),
        issuer: ISSUER.to_owned(),
        key_file: None,
        audience: vec!["sts.amazonaws.com".to_owned()],
        ttl: None,
    }];
    config.oidc_discovery = Some(OidcDiscoveryConfig {
        enabled: oidc_enabled,
        issuer: ISSUER.to_owned(),
        bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        bind_port: 0,
        tls_cert_file: None,
        tls_key_file: None,
        cors_origins: vec!["*".to_owned()],
    });
    config
}

#[tokio::test]
async fn server_serves_issuer_keys() {
    let dir = tempfile::tempdir().unwrap();
    let datastore = TestDatastore::new(dir.path());
    let server = Server::start(config(dir.path(), &datastore, true))
        .await
        .unwrap();
    let address = server.oidc_address().expect("OIDC endpoint address");
    let expected = server.oidc_keys().jwks(ISSUER).expect("issuer keys");
    assert_eq!(expected.len(), 1);
    assert_eq!(server.oidc_keys().issuers(), vec![ISSUER.to_owned()]);

    let (status, jwks) = http_get(address, "/keys").await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"], serde_json::Value::Array(expected));

    let (status, document) = http_get(address, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    assert_eq!(document["issuer"], ISSUER);
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        serde_json::json!(server.oidc_keys().algorithms(ISSUER).unwrap())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn disabled_endpoint_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let datastore = TestDatastore::new(dir.path());
    let server = Server::start(config(dir.path(), &datastore, false))
        .await
        .unwrap();
    assert!(server.oidc_address().is_none());
    assert!(server.oidc_keys().jwks(ISSUER).is_some());
    server.shutdown().await;
}
