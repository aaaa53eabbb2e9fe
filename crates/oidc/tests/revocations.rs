//! The signed revocation list at `/revocations`: served from a [`RevocationSource`] as given,
//! 503 while the source fails, and absent without a source.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use twid_ca::KeyType;
use twid_oidc::RevocationSource;

use common::*;

const ISSUER: &str = "https://oidc.example.org";

/// Returns the stored list, or fails while it is `None`.
struct TestList(Mutex<Option<String>>);

impl RevocationSource for TestList {
    fn signed_list(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>> {
        let list = self.0.lock().unwrap().clone().map(Bytes::from);
        Box::pin(async move { list.ok_or_else(|| "no JWT key yet".to_owned()) })
    }
}

#[tokio::test]
async fn revocations_served_from_source() {
    let key = signing_key(KeyType::EcP256);
    let list = Arc::new(TestList(Mutex::new(Some(
        "header.payload.signature".to_owned(),
    ))));
    let handle = twid_oidc::serve_with_revocations(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        TestKeys::new(ISSUER, &[&key]),
        Some(list.clone()),
        ready_health(),
    )
    .await
    .unwrap();
    let addr = handle.local_addr();

    let response = get(addr, "/revocations").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/jwt"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.body, "header.payload.signature");

    *list.0.lock().unwrap() = None;
    let response = get(addr, "/revocations").await;
    assert_eq!(response.status, 503);
    assert!(
        response.body.contains("revocation list is unavailable"),
        "{}",
        response.body
    );
    assert!(!response.body.contains("no JWT key"), "{}", response.body);
    handle.shutdown().await;
}

#[tokio::test]
async fn revocations_absent_without_source() {
    let key = signing_key(KeyType::EcP256);
    let handle = start(
        plain_config(free_loopback_addr().await, ISSUER, &[]),
        TestKeys::new(ISSUER, &[&key]),
    )
    .await;
    let response = get(handle.local_addr(), "/revocations").await;
    assert_eq!(response.status, 404);
    handle.shutdown().await;
}
