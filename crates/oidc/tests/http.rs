//! The discovery listener over plain HTTP: routes, headers, readiness and AWS checks.

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::json;
use twid_ca::KeyType;
use twid_oidc::{OidcError, check_aws_requirements};
use twid_telemetry::Health;

use common::*;

const ISSUER: &str = "https://oidc.example.org";

#[tokio::test]
async fn discovery_document_passes_aws_checks() {
    let ec = signing_key(KeyType::EcP256);
    let rsa = signing_key(KeyType::Rsa2048);
    let keys = TestKeys::new(ISSUER, &[&ec, &rsa]);
    let handle = start(plain_config(free_loopback_addr().await, ISSUER, &[]), keys).await;
    let addr = handle.local_addr();

    let document = get(addr, "/.well-known/openid-configuration").await;
    assert_eq!(document.status, 200);
    assert_eq!(document.header("content-type"), Some("application/json"));
    let document = document.json();
    assert_eq!(document["issuer"], ISSUER);
    assert_eq!(document["jwks_uri"], "https://oidc.example.org/keys");
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        json!(["ES256", "RS256"])
    );

    let jwks = get(addr, "/keys").await;
    assert_eq!(jwks.status, 200);
    let jwks = jwks.json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![ec.key_id(), rsa.key_id()]);
    assert_eq!(
        check_aws_requirements(&document, &jwks),
        Vec::<String>::new()
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn keys_follow_source_changes() {
    let first = signing_key(KeyType::EcP256);
    let next = signing_key(KeyType::EcP384);
    let keys = TestKeys::new(ISSUER, &[&first]);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        keys.clone(),
    )
    .await;
    let addr = handle.local_addr();
    assert_eq!(
        get(addr, "/keys").await.json()["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    keys.keys.lock().unwrap().push(jwk(&next));
    let jwks = get(addr, "/keys").await.json();
    assert_eq!(jwks["keys"][1]["kid"], next.key_id());
    assert_eq!(jwks["keys"][1]["alg"], "ES384");
    let document = get(addr, "/.well-known/openid-configuration").await.json();
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        json!(["ES256", "ES384"])
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn keys_capped_at_aws_maximum() {
    let keys: Vec<_> = (0..101).map(|_| signing_key(KeyType::EcP256)).collect();
    let refs: Vec<_> = keys.iter().collect();
    let source = TestKeys::new(ISSUER, &refs);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        source,
    )
    .await;
    let jwks = get(handle.local_addr(), "/keys").await.json();
    let published = jwks["keys"].as_array().unwrap();
    assert_eq!(published.len(), 100);
    assert_eq!(published[0]["kid"], keys[0].key_id());
    assert_eq!(published[99]["kid"], keys[99].key_id());
    handle.shutdown().await;
}

#[tokio::test]
async fn cache_and_cors_headers() {
    let key = signing_key(KeyType::EcP256);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &["*"]),
        TestKeys::new(ISSUER, &[&key]),
    )
    .await;
    let addr = handle.local_addr();
    for path in ["/keys", "/.well-known/openid-configuration"] {
        let response = request(addr, "GET", path, &[("Origin", "https://app.example")]).await;
        assert_eq!(
            response.header("cache-control"),
            Some("public, max-age=300"),
            "{path}"
        );
        assert_eq!(
            response.header("access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
    }
    let live = get(addr, "/live").await;
    assert_eq!(live.header("cache-control"), Some("no-store"));
    handle.shutdown().await;
}

#[tokio::test]
async fn cors_listed_origins_only() {
    let key = signing_key(KeyType::EcP256);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &["https://app.example"]),
        TestKeys::new(ISSUER, &[&key]),
    )
    .await;
    let addr = handle.local_addr();
    let allowed = request(addr, "GET", "/keys", &[("Origin", "https://app.example")]).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));
    let other = request(addr, "GET", "/keys", &[("Origin", "https://evil.example")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    handle.shutdown().await;
}

#[tokio::test]
async fn head_and_options_handled() {
    let key = signing_key(KeyType::EcP256);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &["*"]),
        TestKeys::new(ISSUER, &[&key]),
    )
    .await;
    let addr = handle.local_addr();
    let head = request(addr, "HEAD", "/keys", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(head.header("content-type"), Some("application/json"));

    let preflight = request(
        addr,
        "OPTIONS",
        "/.well-known/openid-configuration",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, HEAD, OPTIONS")
    );
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));

    assert_eq!(request(addr, "OPTIONS", "/nothing", &[]).await.status, 404);
    assert_eq!(request(addr, "POST", "/keys", &[]).await.status, 405);
    assert_eq!(get(addr, "/nothing").await.status, 404);
    handle.shutdown().await;
}

#[tokio::test]
async fn issuer_path_prefix_served() {
    let issuer = "https://oidc.example.org/tenant-a";
    let key = signing_key(KeyType::EcP256);
    let handle = start(
        plain_config(free_loopback_addr().await, issuer, &[]),
        TestKeys::new(issuer, &[&key]),
    )
    .await;
    let addr = handle.local_addr();
    let document = get(addr, "/tenant-a/.well-known/openid-configuration").await;
    assert_eq!(document.status, 200);
    assert_eq!(
        document.json()["jwks_uri"],
        "https://oidc.example.org/tenant-a/keys"
    );
    let jwks = get(addr, "/tenant-a/keys").await;
    assert_eq!(jwks.json()["keys"][0]["kid"], key.key_id());
    assert_eq!(get(addr, "/tenant-a/live").await.status, 404);
    handle.shutdown().await;
}

#[tokio::test]
async fn ready_needs_health_and_keys() {
    let health = Health::new();
    let source = TestKeys::new(ISSUER, &[]);
    let handle = twid_oidc::serve(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        source.clone(),
        health.clone(),
    )
    .await
    .unwrap();
    let addr = handle.local_addr();
    assert_eq!(get(addr, "/live").await.status, 200);
    assert_eq!(get(addr, "/ready").await.status, 503);

    health.set_ready(true);
    let no_keys = get(addr, "/ready").await;
    assert_eq!(no_keys.status, 503);
    assert_eq!(no_keys.json()["reason"], "no signing keys to publish");

    source
        .keys
        .lock()
        .unwrap()
        .push(jwk(&signing_key(KeyType::EcP256)));
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"ready": true}));
    handle.shutdown().await;
}

#[tokio::test]
async fn issuer_mismatch_rejected() {
    let source = TestKeys::new("https://other.example.org", &[]);
    let result = twid_oidc::serve(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        source,
        Health::new(),
    )
    .await;
    assert!(
        matches!(result, Err(OidcError::IssuerMismatch { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn invalid_issuer_rejected() {
    let issuer = "https://oidc.example.org/?tenant=a";
    let result = twid_oidc::serve(
        plain_config(free_loopback_addr().await, issuer, &[]),
        TestKeys::new(issuer, &[]),
        Health::new(),
    )
    .await;
    assert!(
        matches!(result, Err(OidcError::InvalidIssuer { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_listener() {
    let key = signing_key(KeyType::EcP256);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        TestKeys::new(ISSUER, &[&key]),
    )
    .await;
    let addr = handle.local_addr();
    assert_eq!(get(addr, "/live").await.status, 200);
    handle.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
