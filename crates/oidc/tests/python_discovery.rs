//! PyJWT and jwcrypto, as OIDC relying parties, verify our JWT-SVIDs from the discovery
//! document alone, over plain HTTP and over HTTPS.
//!
//! The interpreter is `$TWID_PYTHON`, else the repository's `.venv/bin/python` (created by
//! scripts/test.sh); without it the tests print a skip line and pass.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use twid_ca::KeyType;
use twid_oidc::OidcConfig;

use common::*;

const AUDIENCE: &str = "sts.amazonaws.com";

fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TWID_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"));
    if path.exists() {
        Some(path)
    } else {
        println!("python venv not found at {}, skipping", path.display());
        None
    }
}

/// Runs the PyJWT and jwcrypto relying parties on `tokens` and returns one result object per token.
fn verify_with_python(
    python: &Path,
    discovery_url: &str,
    cafile: Option<&Path>,
    tokens: &[String],
) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc_relying_party.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(discovery_url)
        .arg(AUDIENCE)
        .args(tokens);
    if let Some(cafile) = cafile {
        command.arg("--cafile").arg(cafile);
    }
    // Keep every request on loopback whatever proxy the environment names.
    for variable in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(variable);
    }
    command.env("NO_PROXY", "*");
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python relying party failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Returns `token` with one claim changed and the signature kept.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = "spiffe://example.org/admin".into();
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{claims}.{}", parts[0], parts[2])
}

fn assert_results(results: &[Value], issuer: &str) {
    assert_eq!(results.len(), 6, "{results:?}");
    for library in ["pyjwt", "jwcrypto"] {
        for result in &results[..3] {
            let result = &result[library];
            assert_eq!(result["ok"], true, "{library}: {result}");
            assert_eq!(result["sub"], "spiffe://example.org/workload", "{library}");
            assert_eq!(result["iss"], issuer, "{library}");
        }
        let labels = ["tampered", "wrong audience", "wrong issuer"];
        for (result, label) in results[3..].iter().zip(labels) {
            let result = &result[library];
            assert_eq!(result["ok"], false, "{library} accepted the {label} token");
        }
    }
    let pyjwt_errors = [("Signature", 3), ("Audience", 4), ("Issuer", 5)];
    for (expected, index) in pyjwt_errors {
        let error = results[index]["pyjwt"]["error"].as_str().unwrap();
        assert!(error.contains(expected), "token {index}: {error}");
    }
    // jwcrypto 1.6 reports a signature that no key of the set verifies as "Missing Key".
    let jwcrypto_errors = [("Missing Key", 3), ("'aud'", 4), ("'iss'", 5)];
    for (expected, index) in jwcrypto_errors {
        let error = results[index]["jwcrypto"]["error"].as_str().unwrap();
        assert!(error.contains(expected), "token {index}: {error}");
    }
}

/// Tokens from ES256, ES384 and RS256 keys, then a tampered one, one for another audience
/// and one with another issuer.
fn tokens(issuer: &str) -> (Vec<twid_ca::JwtKey>, Vec<String>) {
    let keys = vec![
        signing_key(KeyType::EcP256),
        signing_key(KeyType::EcP384),
        signing_key(KeyType::Rsa2048),
    ];
    let mut tokens: Vec<String> = keys.iter().map(|key| sign(key, issuer, AUDIENCE)).collect();
    tokens.push(tamper(&tokens[0]));
    tokens.push(sign(&keys[0], issuer, "other-audience"));
    tokens.push(sign(&keys[0], "https://other.example.org", AUDIENCE));
    (keys, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_verify_over_http() {
    let Some(python) = python() else { return };
    let bind = free_loopback_addr().await;
    let issuer = format!("http://{bind}");
    let (keys, tokens) = tokens(&issuer);
    let key_refs: Vec<_> = keys.iter().collect();
    let handle = start(
        plain_config(bind, &issuer, &[]),
        TestKeys::new(&issuer, &key_refs),
    )
    .await;
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let results =
        tokio::task::spawn_blocking(move || verify_with_python(&python, &discovery, None, &tokens))
            .await
            .unwrap();
    assert_results(&results, &issuer);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_verify_over_https() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();

    let bind = free_loopback_addr().await;
    let issuer = format!("https://localhost:{}", bind.port());
    let (keys, tokens) = tokens(&issuer);
    let key_refs: Vec<_> = keys.iter().collect();
    let config = OidcConfig {
        bind,
        issuer: issuer.clone(),
        tls: Some((cert_path.clone(), key_path)),
        cors_origins: Vec::new(),
    };
    let handle = start(config, TestKeys::new(&issuer, &key_refs)).await;
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let results = tokio::task::spawn_blocking(move || {
        verify_with_python(&python, &discovery, Some(&cert_path), &tokens)
    })
    .await
    .unwrap();
    assert_results(&results, &issuer);
    handle.shutdown().await;
}
