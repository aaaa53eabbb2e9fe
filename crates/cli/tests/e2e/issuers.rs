//! Named JWT issuers: the AWS federation configuration file, tokens with the issuer's `iss` and
//! TTL, the OIDC discovery endpoint it enables, and key file rotation.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::common::{AgentProcess, ServerProcess, TempDir, agent_id, free_port, run, wait_until};

const ISSUER: &str = "https://spire-oidc.example.org";

/// Writes a private key with `openssl`: `args` selects the key type and format.
fn openssl_key(path: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .arg("-out")
        .arg(path)
        .status()
        .expect("openssl should run");
    assert!(status.success(), "openssl {args:?} failed");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Returns the JSON `[header, claims]` of a compact JWS.
fn decode_jwt(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = token.split('.');
    let mut next_json = || {
        let part = parts.next().expect("JWT part");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    (next_json(), next_json())
}

fn fetch_jwt(agent: &AgentProcess, audience: &str) -> String {
    let output = run(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        audience,
        "--output",
        "json",
        "--socket-path",
        agent.socket_arg(),
    ]);
    assert!(
        output.status.success(),
        "fetch jwt failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["svids"][0]["svid"].as_str().unwrap().to_owned()
}

/// Sends an HTTP/1.1 GET and returns the status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn served_kids(port: u16) -> Vec<String> {
    let (status, body) = http_get(port, "/keys");
    assert_eq!(status, 200, "GET /keys: {body}");
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn aws_issuer_config_signs_and_serves_keys() {
    let dir = TempDir::new();
    let key_file = dir.path().join("jwt-key.pem");
    // SEC1 "EC PRIVATE KEY", the form `openssl ecparam -genkey` writes.
    openssl_key(
        &key_file,
        &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
    );
    let oidc_port = free_port();
    // The AWS federation example of docs/configuration.md; only paths, addresses and ports
    // differ.
    let blocks = format!(
        r#"
jwt_issuer "aws" {{
  issuer = "{ISSUER}"
  key_file = "{key}"
  audience = ["sts.amazonaws.com"]
  ttl = "5m"
}}

endpoints {{
  oidc_discovery {{
    enabled = true
    issuer = "{ISSUER}"
    cors_origins = ["*"]
    bind_port = {oidc_port}
  }}
}}
"#,
        key = key_file.display(),
    );
    let server = ServerProcess::start_with_blocks(
        dir.path(),
        &format!("  public_url = \"{ISSUER}\""),
        &blocks,
    );
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    server.create_entry("spiffe://example.org/aws", &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let aws_token = fetch_jwt(&agent, "sts.amazonaws.com");
    let (header, claims) = decode_jwt(&aws_token);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "spiffe://example.org/aws");
    assert_eq!(claims["aud"], serde_json::json!(["sts.amazonaws.com"]));
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 300);
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let issuer_kid = header["kid"].as_str().unwrap().to_owned();

    let other_token = fetch_jwt(&agent, "other-service");
    let (other_header, other_claims) = decode_jwt(&other_token);
    assert!(other_claims.get("iss").is_none(), "{other_claims}");
    // Default-key tokens carry a random jti so the issuance log can name them.
    assert!(
        other_claims["jti"]
            .as_str()
            .is_some_and(|jti| !jti.is_empty()),
        "{other_claims}"
    );
    assert_ne!(other_header["kid"].as_str().unwrap(), issuer_kid);

    // The issuer's key is in the trust domain bundle, so the Workload API validates its tokens.
    let validate = run(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "sts.amazonaws.com",
        "--svid",
        &aws_token,
        "--socket-path",
        agent.socket_arg(),
    ]);
    assert!(
        validate.status.success(),
        "validate failed: {}",
        String::from_utf8_lossy(&validate.stderr)
    );

    let (status, body) = http_get(oidc_port, "/.well-known/openid-configuration");
    assert_eq!(status, 200, "{body}");
    let document: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(document["issuer"], ISSUER);
    assert_eq!(document["jwks_uri"], format!("{ISSUER}/keys"));
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    let (_, body) = http_get(oidc_port, "/keys");
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kid"], issuer_kid.as_str());
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(keys[0]["kty"], "EC");
    assert!(
        server.log().contains("plain HTTP"),
        "no plain HTTP warning in the server log"
    );

    // Rotation by replacing the file: the new key is served next to the old one, which stays
    // published while tokens it signed may still be valid.
    let next_key = dir.path().join("jwt-key.next.pem");
    openssl_key(
        &next_key,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
    );
    std::fs::rename(&next_key, &key_file).unwrap();
    wait_until(Duration::from_secs(15), "the rotated issuer key", || {
        served_kids(oidc_port).len() == 2
    });
    let kids = served_kids(oidc_port);
    assert_eq!(kids[0], issuer_kid);
    let (status, body) = http_get(oidc_port, "/.well-known/openid-configuration");
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "ES384"])
    );

    // A key file that cannot be read keeps the last good key and logs the file.
    std::fs::write(&key_file, "not a key").unwrap();
    wait_until(
        Duration::from_secs(15),
        "the key file error in the log",
        || server.log().contains("keeping the last good key"),
    );
    assert_eq!(served_kids(oidc_port), kids);
}

#[test]
fn unreadable_issuer_key_fails_startup() {
    let dir = TempDir::new();
    let missing = dir.path().join("missing.pem");
    let config = dir.path().join("server.conf");
    std::fs::write(
        &config,
        format!(
            "server {{\n  trust_domain = \"example.org\"\n  data_dir = \"{data}\"\n  \
             bind_address = \"127.0.0.1\"\n  bind_port = {port}\n  socket_path = \"{socket}\"\n}}\n\
             jwt_issuer \"aws\" {{\n  issuer = \"{ISSUER}\"\n  key_file = \"{key}\"\n  \
             audience = [\"sts.amazonaws.com\"]\n}}\n",
            data = dir.path().join("data").display(),
            port = free_port(),
            socket = dir.path().join("server.sock").display(),
            key = missing.display(),
        ),
    )
    .unwrap();
    let output = crate::common::twid()
        .args(["server", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("jwt_issuer \"aws\""), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}
