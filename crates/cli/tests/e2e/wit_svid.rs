//! WIT-SVIDs: fetched through the agent's Workload API with `twid api fetch wit`, then checked
//! offline with `twid wimse verify`, alone and with a WPT signed with the fetched key.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use twid_wimse::{BoundTokens, JwsAlgorithm, SigningKey, create_wpt};

use crate::common::*;

const WORKLOAD_ID: &str = "spiffe://example.org/workload/wit";

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Decodes the claims of a compact JWS without verifying it.
fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("compact JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Reads a PEM file with one PKCS#8 private key and returns its DER.
fn pkcs8_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let mut reader = pem.as_slice();
    match rustls_pemfile::read_one(&mut reader).unwrap() {
        Some(rustls_pemfile::Item::Pkcs8Key(key)) => key.secret_pkcs8_der().to_vec(),
        other => panic!("expected a PKCS#8 key in {}, got {other:?}", path.display()),
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn fetched_wit_verifies_with_wpt() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", own_uid());
    server.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let out = dir.path().join("wit");
    let out_arg = out.to_str().unwrap().to_owned();
    let fetch = || {
        run(&[
            "api",
            "fetch",
            "wit",
            "--write",
            &out_arg,
            "--output",
            "json",
            "--timeout",
            "15s",
            "--socket-path",
            agent.socket_arg(),
        ])
    };
    let mut fetched = fetch();
    // The agent needs its first sync before it serves the entry.
    wait_until(Duration::from_secs(30), "a WIT-SVID", || {
        fetched = fetch();
        fetched.status.success()
    });
    assert!(
        fetched.status.success(),
        "fetch wit failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&fetched.stderr),
        agent.log()
    );
    let listing: serde_json::Value = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(listing["svids"][0]["spiffe_id"], WORKLOAD_ID);

    let wit_path = out.join("wit.0.jwt");
    let key_path = out.join("wit.0.key");
    let jwk_path = out.join("wit.0.key.jwk");
    assert_eq!(mode_of(&wit_path), 0o600);
    assert_eq!(mode_of(&key_path), 0o600);
    assert_eq!(mode_of(&jwk_path), 0o600);

    let wit = std::fs::read_to_string(&wit_path).unwrap();
    let claims = claims_of(&wit);
    assert_eq!(claims["sub"], WORKLOAD_ID);
    assert_eq!(claims["iss"], "spiffe://example.org/spire/server");
    assert_eq!(claims["cnf"]["jwk"]["alg"], "ES256");
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    let record: serde_json::Value = serde_json::from_str(&run_ok(&[
        "log",
        "show",
        "--jti",
        claims["jti"].as_str().unwrap(),
        "--output",
        "json",
        "--socket-path",
        server.socket_arg(),
    ]))
    .unwrap();
    assert_eq!(record["kind"], "wit");
    assert_eq!(record["spiffe_id"], WORKLOAD_ID);

    let jwk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jwk_path).unwrap()).unwrap();
    assert_eq!(jwk["x"], claims["cnf"]["jwk"]["x"]);
    assert!(jwk["d"].is_string(), "the key file has no private member");

    let bundle = run_ok(&[
        "bundle",
        "show",
        "--format",
        "spiffe",
        "--socket-path",
        server.socket_arg(),
    ]);
    let bundle_path = write_file(dir.path(), "bundle.json", &bundle);
    let wit_arg = wit_path.to_str().unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "wimse",
            "verify",
            "--bundle",
            &bundle_path,
            "--trust-domain",
            "example.org",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    let accepted = verify(&["--wit", wit_arg]);
    assert!(
        accepted.status.success(),
        "wimse verify rejected the WIT: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&accepted.stdout).unwrap();
    assert_eq!(report["wit"]["claims"]["sub"], WORKLOAD_ID);

    let workload_key = SigningKey::from_pkcs8(JwsAlgorithm::ES256, &pkcs8_der(&key_path)).unwrap();
    let audience = "https://service.example.org/";
    let wpt = create_wpt(
        &workload_key,
        &wit,
        audience,
        Duration::from_secs(60),
        None,
        &BoundTokens::default(),
        SystemTime::now(),
    )
    .unwrap();
    let with_proof = verify(&["--wit", &wit, "--wpt", &wpt, "--audience", audience]);
    assert!(
        with_proof.status.success(),
        "wimse verify rejected the WPT: {}",
        String::from_utf8_lossy(&with_proof.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&with_proof.stdout).unwrap();
    assert_eq!(report["wpt"]["claims"]["aud"], audience);

    check_with_python(dir.path(), &bundle, &wit, &wpt, audience);

    let wrong_audience = verify(&[
        "--wit",
        &wit,
        "--wpt",
        &wpt,
        "--audience",
        "https://other.example.org/",
    ]);
    assert_eq!(wrong_audience.status.code(), Some(1));

    // Replace the subject in the payload and keep the signature: verification must fail.
    let mut parts: Vec<String> = wit.split('.').map(str::to_owned).collect();
    let mut tampered_claims = claims.clone();
    tampered_claims["sub"] = "spiffe://example.org/workload/other".into();
    parts[1] = URL_SAFE_NO_PAD.encode(tampered_claims.to_string());
    let tampered = parts.join(".");
    let rejected = verify(&["--wit", &tampered]);
    assert_eq!(rejected.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("the WIT is not valid"), "{stderr}");
}

/// Verifies the WIT and WPT with PyJWT and jwcrypto through the WIMSE check script, under the
/// JWT keys of the SPIFFE bundle `bundle`.
fn check_with_python(dir: &Path, bundle: &str, wit: &str, wpt: &str, audience: &str) {
    let Some(python) = python() else { return };
    let bundle: serde_json::Value = serde_json::from_str(bundle).unwrap();
    let jwt_keys: Vec<serde_json::Value> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["use"] == "jwt-svid")
        .map(|key| {
            // jwcrypto verifies only with keys whose `use`, when present, is `sig`.
            let mut key = key.clone();
            key.as_object_mut().unwrap().remove("use");
            key
        })
        .collect();

    let request = serde_json::json!({
        "issuer_jwks": { "example.org": { "keys": jwt_keys } },
        "cases": [{
            "name": "fetched",
            "wit": wit,
            "wpt": wpt,
            "audience": audience,
            "access_token": null,
        }],
    });
    let input = dir.join("wimse_in.json");
    let output = dir.join("wimse_out.json");
    std::fs::write(&input, request.to_string()).unwrap();
    let status = std::process::Command::new(&python)
        .arg(repo_root().join("tests/python/wimse_check.py"))
        .arg(&input)
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success(), "wimse_check.py failed: {status}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let result = &report["results"]["fetched"];
    assert_eq!(
        result["ok"], true,
        "PyJWT or jwcrypto: {}",
        result["errors"]
    );
}

#[test]
fn fetch_wit_unknown_id_denied() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", own_uid());
    server.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    // Wait until the entry is served, so the denial below comes from the ID filter.
    wait_until(Duration::from_secs(30), "a WIT-SVID", || {
        run(&[
            "api",
            "fetch",
            "wit",
            "--timeout",
            "15s",
            "--socket-path",
            agent.socket_arg(),
        ])
        .status
        .success()
    });

    let denied = run(&[
        "api",
        "fetch",
        "wit",
        "--spiffe-id",
        "spiffe://example.org/not-mine",
        "--socket-path",
        agent.socket_arg(),
    ]);
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("not an identity of this caller"),
        "{stderr}"
    );
}
