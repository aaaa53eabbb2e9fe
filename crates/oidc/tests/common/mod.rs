//! Shared helpers: a key source, signing keys and a minimal HTTP/1.1 client.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use twid_ca::{JwtKey, KeyType};
use twid_oidc::{KeySource, OidcConfig, OidcHandle};
use twid_spiffe::SpiffeId;
use twid_spiffe::jwt::JwtAuthority;
use twid_telemetry::Health;

/// A key source whose keys the test replaces at will.
pub struct TestKeys {
    pub issuer: String,
    pub keys: Mutex<Vec<Value>>,
}

impl KeySource for TestKeys {
    fn issuer(&self) -> String {
        self.issuer.clone()
    }

    fn jwks(&self) -> Vec<Value> {
        self.keys.lock().unwrap().clone()
    }
}

impl TestKeys {
    pub fn new(issuer: &str, keys: &[&JwtKey]) -> Arc<Self> {
        Arc::new(Self {
            issuer: issuer.to_owned(),
            keys: Mutex::new(keys.iter().map(|key| jwk(key)).collect()),
        })
    }
}

/// Returns the key's public JWK as a SPIFFE bundle writes it (`use` = `jwt-svid`, no `alg`).
pub fn jwk(key: &JwtKey) -> Value {
    JwtAuthority::from_spki_der(key.key_id(), &key.public_key_spki_der())
        .unwrap()
        .to_jwk(Some("jwt-svid"))
}

pub fn signing_key(key_type: KeyType) -> JwtKey {
    JwtKey::generate(key_type, SystemTime::now(), Duration::from_secs(3600)).unwrap()
}

/// Signs a JWT-SVID for `audience` with `iss` = `issuer`.
pub fn sign(key: &JwtKey, issuer: &str, audience: &str) -> String {
    let subject = SpiffeId::new("spiffe://example.org/workload").unwrap();
    let mut extra = Map::new();
    extra.insert("iss".into(), issuer.into());
    key.sign_jwt_svid(
        &subject,
        &[audience.to_owned()],
        Duration::from_secs(300),
        SystemTime::now(),
        Some(&extra),
    )
    .unwrap()
    .0
}

/// Returns a loopback address whose port was free a moment ago.
pub async fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

pub fn plain_config(bind: SocketAddr, issuer: &str, cors_origins: &[&str]) -> OidcConfig {
    OidcConfig {
        bind,
        issuer: issuer.to_owned(),
        tls: None,
        cors_origins: cors_origins
            .iter()
            .map(|origin| (*origin).to_owned())
            .collect(),
    }
}

pub fn ready_health() -> Health {
    let health = Health::new();
    health.set_ready(true);
    health
}

pub async fn start(config: OidcConfig, keys: Arc<TestKeys>) -> OidcHandle {
    twid_oidc::serve(config, keys, ready_health())
        .await
        .unwrap()
}

/// A parsed HTTP response; header names are lowercase.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.body))
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn request_on<S>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify; what arrived before is the response.
    let read = stream.read_to_end(&mut bytes).await;
    if bytes.is_empty() {
        read.unwrap();
    }

    let response = String::from_utf8(bytes).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("response has a header end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    request_on(stream, method, path, headers).await
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[]).await
}
