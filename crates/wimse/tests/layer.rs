//! The tower layer on a real axum router, driven with `oneshot`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use common::{AUDIENCE, Fixture, subject};
use http::{HeaderName, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use twid_wimse::{
    BoundTokens, JwsAlgorithm, Proof, WIT_HEADER, WPT_HEADER, WimseAuthConfig, WimseAuthLayer, Wit,
};

async fn whoami(Extension(wit): Extension<Wit>, Extension(proof): Extension<Proof>) -> String {
    assert!(!proof.jti.is_empty());
    wit.subject.to_string()
}

fn config(fixture: &Fixture) -> WimseAuthConfig {
    WimseAuthConfig::new(fixture.issuer_keys.clone(), vec![AUDIENCE.into()])
}

fn router(config: WimseAuthConfig) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .layer(WimseAuthLayer::new(config))
}

/// Builds a GET /whoami request with the given headers.
fn request(headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get("/whoami");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn valid_request_reaches_handler() {
    let fixture = Fixture::new(JwsAlgorithm::ES256, JwsAlgorithm::EdDSA, SystemTime::now());
    let router = router(config(&fixture));
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let (status, _, body) = send(
        &router,
        request(&[(WIT_HEADER, &fixture.wit), (WPT_HEADER, &proof)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, subject().as_str());
}

#[tokio::test]
async fn missing_headers_are_rejected() {
    let fixture = Fixture::es256(SystemTime::now());
    let router = router(config(&fixture));
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let cases = [
        (vec![], "missing WIMSE header"),
        (
            vec![(WIT_HEADER, fixture.wit.as_str())],
            "missing WIMSE header",
        ),
        (vec![(WPT_HEADER, proof.as_str())], "missing WIMSE header"),
    ];
    for (headers, reason) in cases {
        let (status, headers, body) = send(&router, request(&headers)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(body.contains(reason), "{body}");
    }
}

#[tokio::test]
async fn two_proof_headers_are_rejected() {
    let fixture = Fixture::es256(SystemTime::now());
    let first = fixture.proof(AUDIENCE, SystemTime::now());
    let second = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, first.as_str()),
        (WPT_HEADER, second.as_str()),
    ];
    let (status, _, body) = send(&router(config(&fixture)), request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("repeated WIMSE header"), "{body}");

    let mut unauthorized = config(&fixture);
    unauthorized.rejection_status = StatusCode::UNAUTHORIZED;
    let (status, response_headers, _) = send(&router(unauthorized), request(&headers)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        response_headers["www-authenticate"],
        "WIMSE error_description=\"repeated WIMSE header\""
    );
}

#[tokio::test]
async fn two_wit_headers_are_rejected() {
    let fixture = Fixture::es256(SystemTime::now());
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, proof.as_str()),
    ];
    let (status, _, body) = send(&router(config(&fixture)), request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("repeated WIMSE header"), "{body}");
}

#[tokio::test]
async fn malformed_header_value_is_rejected() {
    let fixture = Fixture::es256(SystemTime::now());
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let padded = format!("{proof}=");
    let headers = [(WIT_HEADER, fixture.wit.as_str()), (WPT_HEADER, &padded)];
    let (status, _, body) = send(&router(config(&fixture)), request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("malformed WIMSE header"), "{body}");
}

#[tokio::test]
async fn host_header_is_ignored() {
    let fixture = Fixture::es256(SystemTime::now());
    let router = router(config(&fixture));
    // A proof for the host the request claims is still rejected: audiences come only from
    // configuration.
    let attacker = "https://attacker.example.net/whoami";
    let proof = fixture.proof(attacker, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, proof.as_str()),
        ("host", "attacker.example.net"),
        ("x-forwarded-host", "attacker.example.net"),
    ];
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("WPT audience not accepted"), "{body}");

    // A proof for the configured audience passes whatever the Host header contains.
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, proof.as_str()),
        ("host", "internal-name.cluster.local"),
        ("x-forwarded-host", "attacker.example.net"),
    ];
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn replayed_request_is_rejected() {
    let fixture = Fixture::es256(SystemTime::now());
    let router = router(config(&fixture));
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [(WIT_HEADER, fixture.wit.as_str()), (WPT_HEADER, &proof)];
    let (status, _, _) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("WPT replayed"), "{body}");
}

#[tokio::test]
async fn expired_proof_is_rejected_by_layer() {
    let fixture = Fixture::es256(SystemTime::now());
    let proof = fixture.proof(AUDIENCE, SystemTime::now() - Duration::from_secs(600));
    let headers = [(WIT_HEADER, fixture.wit.as_str()), (WPT_HEADER, &proof)];
    let (status, _, body) = send(&router(config(&fixture)), request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("WPT expired"), "{body}");
}

#[tokio::test]
async fn wrong_typ_is_rejected_by_layer() {
    let fixture = Fixture::es256(SystemTime::now());
    // The WIT sent as its own proof has the wrong typ.
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, fixture.wit.as_str()),
    ];
    let (status, _, body) = send(&router(config(&fixture)), request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid WPT typ"), "{body}");
}

#[tokio::test]
async fn untrusted_issuer_is_rejected_by_layer() {
    let fixture = Fixture::es256(SystemTime::now());
    let stranger = Fixture::es256(SystemTime::now());
    let proof = stranger.proof(AUDIENCE, SystemTime::now());
    let headers = [(WIT_HEADER, stranger.wit.as_str()), (WPT_HEADER, &proof)];
    let (status, _, body) = send(&router(config(&fixture)), request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid signature"), "{body}");
}

#[tokio::test]
async fn bearer_token_must_be_bound() {
    let fixture = Fixture::es256(SystemTime::now());
    let router = router(config(&fixture));
    let unbound = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, unbound.as_str()),
        ("authorization", "Bearer access-token"),
    ];
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("bound token hash mismatch"), "{body}");

    let tokens = BoundTokens::default()
        .with_access_token("access-token")
        .with_transaction_token("txn");
    let bound = fixture.proof_binding(AUDIENCE, &tokens, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, bound.as_str()),
        ("authorization", "Bearer access-token"),
        ("txn-token", "txn"),
    ];
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn configured_other_token_is_bound() {
    let fixture = Fixture::es256(SystemTime::now());
    let mut config = config(&fixture);
    config.other_token_headers = vec![HeaderName::from_static("x-context")];
    let router = router(config);
    let tokens = BoundTokens::default().with_other_token("x-context", "ctx");
    let bound = fixture.proof_binding(AUDIENCE, &tokens, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, bound.as_str()),
        ("x-context", "ctx"),
    ];
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let unbound = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [
        (WIT_HEADER, fixture.wit.as_str()),
        (WPT_HEADER, unbound.as_str()),
        ("x-context", "ctx"),
    ];
    let (status, _, _) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rotated_issuer_keys_apply() {
    let fixture = Fixture::es256(SystemTime::now());
    let config = WimseAuthConfig::new(twid_wimse::IssuerKeys::new(), vec![AUDIENCE.into()]);
    let keys = config.issuer_keys.clone();
    let router = router(config);
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [(WIT_HEADER, fixture.wit.as_str()), (WPT_HEADER, &proof)];
    let (status, _, _) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    keys.replace(fixture.issuer_keys.clone());
    let proof = fixture.proof(AUDIENCE, SystemTime::now());
    let headers = [(WIT_HEADER, fixture.wit.as_str()), (WPT_HEADER, &proof)];
    let (status, _, body) = send(&router, request(&headers)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
