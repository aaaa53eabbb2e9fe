//! AWS IAM federation: `twid aws credentials` against moto's STS and against a stand-in STS
//! that verifies tokens, `twid aws trust-policy`, the `aws_identity` example, and
//! `twid api fetch jwt --write-token`. Every STS here listens on 127.0.0.1.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use twid_spiffe::{JwtBundleSet, SpiffeBundle, TrustDomain};

use crate::common::*;
use crate::sts_standin::{StandInPolicy, StandInSts};

const WORKLOAD_ID: &str = "spiffe://example.org/workload/aws";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";
const PROVIDER: &str = "spire-oidc.example.org";

/// A server and an agent that serve [`WORKLOAD_ID`] to this test process's uid.
struct Deployment {
    dir: TempDir,
    server: ServerProcess,
    agent: AgentProcess,
}

impl Deployment {
    fn start(server_extra: &str) -> Self {
        Self::start_in(TempDir::new(), server_extra, "")
    }

    /// Starts in `dir`, with `blocks` appended after the server block.
    fn start_in(dir: TempDir, server_extra: &str, blocks: &str) -> Self {
        let server = ServerProcess::start_with_blocks(dir.path(), server_extra, blocks);
        let token = server.generate_token();
        let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
        server.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
        let agent = AgentProcess::start(dir.path(), &server, &token);
        let deployment = Self { dir, server, agent };
        // The entry reaches the agent with its next sync.
        wait_until(Duration::from_secs(30), "a JWT-SVID from the agent", || {
            deployment.fetch_token("sts.amazonaws.com").is_some()
        });
        deployment
    }

    fn fetch_token(&self, audience: &str) -> Option<String> {
        let output = run(&[
            "api",
            "fetch",
            "jwt",
            "--audience",
            audience,
            "--output",
            "json",
            "--socket-path",
            self.agent.socket_arg(),
        ]);
        if !output.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["svids"][0]["svid"].as_str().map(str::to_owned)
    }

    /// Returns the trust domain's JWT keys from `twid bundle show --format spiffe`.
    fn jwt_bundles(&self) -> JwtBundleSet {
        let json = run_ok(&[
            "bundle",
            "show",
            "--format",
            "spiffe",
            "--socket-path",
            self.server.socket_arg(),
        ]);
        let bundle =
            SpiffeBundle::parse(TrustDomain::new(TRUST_DOMAIN).unwrap(), json.as_bytes()).unwrap();
        let mut set = JwtBundleSet::new();
        set.insert(bundle.jwt_bundle());
        set
    }

    fn credentials(&self, endpoint: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "aws",
            "credentials",
            "--role-arn",
            ROLE_ARN,
            "--sts-endpoint",
            endpoint,
            "--socket-path",
            self.agent.socket_arg(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    }
}

fn trust_policy_for(spiffe_id: &str) -> serde_json::Value {
    trust_policy_with_provider(spiffe_id, PROVIDER)
}

fn trust_policy_with_provider(spiffe_id: &str, provider: &str) -> serde_json::Value {
    let out = run_ok(&[
        "aws",
        "trust-policy",
        "--account-id",
        "123456789012",
        "--provider",
        provider,
        "--spiffe-id",
        spiffe_id,
    ]);
    serde_json::from_str(&out).unwrap()
}

fn stand_in(deployment: &Deployment, spiffe_id: &str, clock_offset: Duration) -> StandInSts {
    StandInSts::start(StandInPolicy {
        bundles: deployment.jwt_bundles(),
        trust_policy: trust_policy_for(spiffe_id),
        role_arn: ROLE_ARN.to_owned(),
        // Tokens carry iss only from a configured jwt_issuer; this deployment has none.
        require_issuer: false,
        clock_offset,
    })
}

/// Parses `credential_process` output and checks its shape.
fn check_credential_process(stdout: &[u8]) -> twid_aws::Credentials {
    let json: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    assert_eq!(json["Version"], 1);
    let text = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
    let credentials = twid_aws::Credentials {
        access_key_id: text("AccessKeyId"),
        secret_access_key: text("SecretAccessKey"),
        session_token: text("SessionToken"),
        expiration: text("Expiration"),
    };
    assert!(!credentials.access_key_id.is_empty());
    assert!(!credentials.secret_access_key.is_empty());
    assert!(!credentials.session_token.is_empty());
    time::OffsetDateTime::parse(
        &credentials.expiration,
        &time::format_description::well_known::Rfc3339,
    )
    .expect("Expiration should be RFC 3339");
    credentials
}

fn caller_identity(
    endpoint: &str,
    credentials: &twid_aws::Credentials,
) -> twid_aws::CallerIdentity {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sts = twid_aws::StsClient::new(endpoint).unwrap();
    runtime
        .block_on(sts.get_caller_identity(credentials))
        .unwrap()
}

/// Returns the `aws_identity` example, which `cargo test` builds next to the test binaries.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples/aws_identity");
    assert!(
        path.exists(),
        "{} is missing: run the tests with cargo test, which builds the examples",
        path.display()
    );
    path
}

fn run_example(deployment: &Deployment, endpoint: &str) -> std::process::Output {
    Command::new(example_binary())
        .arg(ROLE_ARN)
        .env("SPIFFE_ENDPOINT_SOCKET", deployment.agent.endpoint())
        .env("AWS_ENDPOINT_URL_STS", endpoint)
        .output()
        .unwrap()
}

/// Asserts that a failed command printed exactly one error line containing every part.
fn assert_one_error_line(output: &std::process::Output, parts: &[&str]) {
    assert!(!output.status.success(), "the command succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for part in parts {
        assert!(lines[0].contains(part), "{part:?} missing from: {stderr}");
    }
    assert!(output.stdout.is_empty(), "credentials printed on failure");
}

#[test]
fn trust_policy_command_output() {
    let policy = trust_policy_for(WORKLOAD_ID);
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Action"], "sts:AssumeRoleWithWebIdentity");
    assert_eq!(
        statement["Principal"]["Federated"],
        format!("arn:aws:iam::123456789012:oidc-provider/{PROVIDER}")
    );
    let equals = &statement["Condition"]["StringEquals"];
    assert_eq!(equals[format!("{PROVIDER}:sub")], WORKLOAD_ID);
    assert_eq!(equals[format!("{PROVIDER}:aud")], "sts.amazonaws.com");

    let custom = run_ok(&[
        "aws",
        "trust-policy",
        "--account-id",
        "123456789012",
        "--provider",
        "https://oidc.example.org/",
        "--spiffe-id",
        WORKLOAD_ID,
        "--audience",
        "custom-aud",
    ]);
    let custom: serde_json::Value = serde_json::from_str(&custom).unwrap();
    assert_eq!(
        custom["Statement"][0]["Condition"]["StringEquals"]["oidc.example.org:aud"],
        "custom-aud"
    );

    let bad = run(&[
        "aws",
        "trust-policy",
        "--account-id",
        "1234",
        "--provider",
        PROVIDER,
        "--spiffe-id",
        WORKLOAD_ID,
    ]);
    assert_one_error_line(&bad, &["invalid AWS account ID", "1234"]);
}

/// A running `moto_server` on 127.0.0.1; killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(python: &Path) -> Option<Self> {
        let moto = python.parent().unwrap().join("moto_server");
        if !moto.exists() {
            println!("moto_server not in the venv, skipping (run scripts/test.sh)");
            return None;
        }
        let port = free_port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(60), "moto_server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(Self { child, port })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn credentials_from_moto_sts() {
    let Some(python) = python() else { return };
    let Some(moto) = Moto::start(&python) else {
        return;
    };
    let deployment = Deployment::start("");
    let output = deployment.credentials(&moto.endpoint(), &["--duration", "15m"]);
    assert!(
        output.status.success(),
        "twid aws credentials failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let credentials = check_credential_process(&output.stdout);
    assert!(credentials.access_key_id.starts_with("ASIA"));
    let expiry = time::OffsetDateTime::parse(
        &credentials.expiration,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = expiry - time::OffsetDateTime::now_utc();
    assert!(
        lifetime > time::Duration::minutes(14) && lifetime <= time::Duration::minutes(15),
        "--duration 15m should give 15 minute credentials, got {lifetime}"
    );

    // moto maps the access key back to the assumed role; the session name comes from the
    // SPIFFE ID.
    let identity = caller_identity(&moto.endpoint(), &credentials);
    assert_eq!(identity.account, "123456789012");
    assert_eq!(
        identity.arn,
        "arn:aws:sts::123456789012:assumed-role/app/example.org-workload-aws"
    );

    let example = run_example(&deployment, &moto.endpoint());
    let stdout = String::from_utf8_lossy(&example.stdout);
    assert!(
        example.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&example.stderr)
    );
    assert!(
        stdout.contains(
            "Caller ARN:    arn:aws:sts::123456789012:assumed-role/app/aws-identity-example"
        ),
        "{stdout}"
    );
}

#[test]
fn standin_sts_accepts_valid_token() {
    let deployment = Deployment::start("");
    let sts = stand_in(&deployment, WORKLOAD_ID, Duration::ZERO);
    let output = deployment.credentials(&sts.endpoint(), &["--session-name", "e2e-session"]);
    assert!(
        output.status.success(),
        "twid aws credentials failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let credentials = check_credential_process(&output.stdout);
    let expiry = time::OffsetDateTime::parse(
        &credentials.expiration,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = expiry - time::OffsetDateTime::now_utc();
    assert!(
        lifetime > time::Duration::minutes(55) && lifetime <= time::Duration::hours(1),
        "default --duration should be 1h, got {lifetime}"
    );

    // The stand-in checks the SigV4 signature with the secret it issued.
    let identity = caller_identity(&sts.endpoint(), &credentials);
    assert_eq!(
        identity.arn,
        "arn:aws:sts::123456789012:assumed-role/app/e2e-session"
    );
    let mut wrong_secret = credentials.clone();
    wrong_secret.secret_access_key.push('x');
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime
        .block_on(
            twid_aws::StsClient::new(&sts.endpoint())
                .unwrap()
                .get_caller_identity(&wrong_secret),
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("SignatureDoesNotMatch"),
        "{error}"
    );

    let example = run_example(&deployment, &sts.endpoint());
    let stdout = String::from_utf8_lossy(&example.stdout);
    assert!(
        example.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&example.stderr)
    );
    assert!(
        stdout.contains(&format!("JWT-SVID for {WORKLOAD_ID}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Caller ARN:    arn:aws:sts::123456789012:assumed-role/app/aws-identity-example"
        ),
        "{stdout}"
    );
}

/// Replaces the claims segment of a token and keeps the original signature.
fn with_claims(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    let encoded = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{encoded}.{}", parts[0], parts[2])
}

#[test]
fn standin_sts_rejects_bad_tokens() {
    let deployment = Deployment::start("");
    let sts = stand_in(&deployment, WORKLOAD_ID, Duration::ZERO);

    let wrong_audience = deployment.credentials(&sts.endpoint(), &["--audience", "other.example"]);
    assert_one_error_line(
        &wrong_audience,
        &[
            "InvalidIdentityToken",
            "Incorrect token audience",
            "request ID standin-",
        ],
    );

    let later = stand_in(&deployment, WORKLOAD_ID, Duration::from_secs(24 * 3600));
    let expired = deployment.credentials(&later.endpoint(), &[]);
    assert_one_error_line(
        &expired,
        &[
            "ExpiredTokenException",
            "request ID standin-",
            "check the clock",
        ],
    );

    let other_workload = stand_in(
        &deployment,
        "spiffe://example.org/workload/other",
        Duration::ZERO,
    );
    let denied = deployment.credentials(&other_workload.endpoint(), &[]);
    assert_one_error_line(
        &denied,
        &["AccessDenied", "request ID standin-", "trust policy"],
    );

    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let network = deployment.credentials(&unreachable, &[]);
    assert_one_error_line(&network, &["failed to reach STS", &unreachable]);

    // Tampered tokens go through the library, since the command always sends a fresh one.
    let token = deployment.fetch_token("sts.amazonaws.com").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = twid_aws::StsClient::new(&sts.endpoint()).unwrap();
    let assume = |token: String| {
        runtime.block_on(
            client.assume_role_with_web_identity(&twid_aws::AssumeRoleRequest {
                role_arn: ROLE_ARN.to_owned(),
                session_name: "tamper-test".to_owned(),
                web_identity_token: token,
                duration: None,
            }),
        )
    };
    // The untouched token passes, so the rejections below are caused by the edits.
    assume(token.clone()).expect("the untouched token should be accepted");
    let later_exp = with_claims(&token, |claims| {
        claims["exp"] = serde_json::json!(claims["exp"].as_i64().unwrap() + 3600);
    });
    let other_sub = with_claims(&token, |claims| {
        claims["sub"] = serde_json::json!("spiffe://example.org/workload/other");
    });
    let mut flipped_signature = token.clone();
    let last = flipped_signature.pop().unwrap();
    flipped_signature.push(if last == 'A' { 'B' } else { 'A' });
    for (case, tampered) in [
        ("later exp", later_exp),
        ("other sub", other_sub),
        ("flipped signature", flipped_signature),
    ] {
        let error = assume(tampered).unwrap_err();
        let twid_aws::StsError::Service {
            code, request_id, ..
        } = &error
        else {
            panic!("{case}: expected a service error, got {error:?}");
        };
        assert_eq!(code, "InvalidIdentityToken", "{case}: {error}");
        assert!(request_id.starts_with("standin-"), "{case}: {error}");
    }
}

#[test]
fn write_token_file_and_watch() {
    let deployment = Deployment::start("  default_jwt_svid_ttl = \"10s\"");
    let file = deployment.dir.path().join("aws-token");

    let once = run(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "sts.amazonaws.com",
        "--write-token",
        file.to_str().unwrap(),
        "--socket-path",
        deployment.agent.socket_arg(),
    ]);
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    let svid = twid_spiffe::JwtSvid::parse_and_validate(
        &first,
        &deployment.jwt_bundles(),
        &["sts.amazonaws.com"],
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(svid.spiffe_id.as_str(), WORKLOAD_ID);
    std::fs::remove_file(&file).unwrap();

    let mut watcher = twid()
        .args([
            "api",
            "fetch",
            "jwt",
            "--audience",
            "sts.amazonaws.com",
            "--write-token",
            file.to_str().unwrap(),
            "--watch",
            "--socket-path",
            deployment.agent.socket_arg(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the token file", || file.exists());
    let written = std::fs::read_to_string(&file).unwrap();
    // A 10 s token is refreshed at half its lifetime, 5 s after it was issued.
    wait_until(Duration::from_secs(15), "a refreshed token", || {
        std::fs::read_to_string(&file).is_ok_and(|now| now != written)
    });
    let refreshed = std::fs::read_to_string(&file).unwrap();
    let refreshed_svid =
        twid_spiffe::JwtSvid::parse_insecure(&refreshed).expect("the refreshed token should parse");
    assert_eq!(refreshed_svid.spiffe_id.as_str(), WORKLOAD_ID);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(deployment.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let pid = nix::unistd::Pid::from_raw(watcher.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = watcher.wait().unwrap();
    assert!(
        status.success(),
        "--watch should exit cleanly on SIGTERM: {status:?}"
    );

    let without_file = run(&["api", "fetch", "jwt", "--audience", "a", "--watch"]);
    assert!(
        !without_file.status.success(),
        "--watch without --write-token accepted"
    );
}

/// Returns the JWT keys that the OIDC discovery endpoint on `port` serves at `/keys`, as AWS
/// reads them after discovery.
fn oidc_jwks(port: u16) -> JwtBundleSet {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /keys HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET /keys: {head}");
    let jwks: serde_json::Value = serde_json::from_str(body).unwrap();
    let mut bundle = twid_spiffe::JwtBundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
    for key in jwks["keys"].as_array().unwrap() {
        bundle.add_authority(twid_spiffe::JwtAuthority::from_jwk(key).unwrap());
    }
    assert!(!bundle.authorities().is_empty(), "no keys served: {body}");
    let mut set = JwtBundleSet::new();
    set.insert(bundle);
    set
}

#[test]
fn standin_sts_with_issuer_config() {
    let dir = TempDir::new();
    let key_file = dir.path().join("jwt-key.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key_file)
        .status()
        .expect("openssl should run");
    assert!(status.success());
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let oidc_port = free_port();
    let issuer = format!("https://{PROVIDER}");
    let blocks = format!(
        "jwt_issuer \"aws\" {{\n  issuer = \"{issuer}\"\n  key_file = \"{key}\"\n  \
         audience = [\"sts.amazonaws.com\"]\n  ttl = \"5m\"\n}}\n\
         endpoints {{\n  oidc_discovery {{\n    enabled = true\n    issuer = \"{issuer}\"\n    \
         bind_port = {oidc_port}\n  }}\n}}\n",
        key = key_file.display(),
    );
    let deployment = Deployment::start_in(dir, &format!("  public_url = \"{issuer}\""), &blocks);
    wait_until(
        Duration::from_secs(10),
        "the OIDC discovery endpoint",
        || std::net::TcpStream::connect(("127.0.0.1", oidc_port)).is_ok(),
    );

    // Keys come from the discovery endpoint, and iss must name the provider, as in AWS.
    let sts = StandInSts::start(StandInPolicy {
        bundles: oidc_jwks(oidc_port),
        trust_policy: trust_policy_for(WORKLOAD_ID),
        role_arn: ROLE_ARN.to_owned(),
        require_issuer: true,
        clock_offset: Duration::ZERO,
    });
    let output = deployment.credentials(&sts.endpoint(), &[]);
    assert!(
        output.status.success(),
        "twid aws credentials failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_credential_process(&output.stdout);

    // The 5 minute issuer TTL outlives a 4 minute clock offset but not a 6 minute one.
    for (offset, accepted) in [(240, true), (360, false)] {
        let shifted = StandInSts::start(StandInPolicy {
            bundles: oidc_jwks(oidc_port),
            trust_policy: trust_policy_for(WORKLOAD_ID),
            role_arn: ROLE_ARN.to_owned(),
            require_issuer: true,
            clock_offset: Duration::from_secs(offset),
        });
        let output = deployment.credentials(&shifted.endpoint(), &[]);
        assert_eq!(
            output.status.success(),
            accepted,
            "offset {offset}s: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let other_provider = StandInSts::start(StandInPolicy {
        bundles: oidc_jwks(oidc_port),
        trust_policy: trust_policy_with_provider(WORKLOAD_ID, "other-oidc.example.org"),
        role_arn: ROLE_ARN.to_owned(),
        require_issuer: true,
        clock_offset: Duration::ZERO,
    });
    let wrong_issuer = deployment.credentials(&other_provider.endpoint(), &[]);
    assert_one_error_line(
        &wrong_issuer,
        &[
            "InvalidIdentityToken",
            "No OpenIDConnect provider",
            "request ID standin-",
        ],
    );
}

/// Runs `tests/python/aws_sdk_check.py` with a clean environment, so that no AWS setting of
/// the machine (and no instance metadata lookup) takes part.
fn boto3_identity(
    python: &Path,
    home: &Path,
    profile: &str,
    endpoint: &str,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut command = Command::new(python);
    command
        .arg(repo_root().join("tests/python/aws_sdk_check.py"))
        .arg(profile)
        .arg(endpoint)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_STS", endpoint);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "boto3 check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn boto3_uses_process_and_token_file() {
    let Some(python) = python() else { return };
    let Some(moto) = Moto::start(&python) else {
        return;
    };
    let deployment = Deployment::start("");
    let home = deployment.dir.path();
    let twid = env!("CARGO_BIN_EXE_twid");
    std::fs::write(
        home.join("aws-config"),
        format!(
            "[profile twid]\ncredential_process = {twid} aws credentials --role-arn {ROLE_ARN} \
             --session-name boto3-process --sts-endpoint {endpoint} --socket-path {socket}\n",
            endpoint = moto.endpoint(),
            socket = deployment.agent.socket_arg(),
        ),
    )
    .unwrap();
    std::fs::write(home.join("aws-credentials"), "").unwrap();

    let process = boto3_identity(&python, home, "twid", &moto.endpoint(), &[]);
    assert_eq!(process["method"], "custom-process");
    assert_eq!(process["account"], "123456789012");
    assert_eq!(
        process["arn"],
        "arn:aws:sts::123456789012:assumed-role/app/boto3-process"
    );

    let token_file = home.join("aws-token");
    run_ok(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "sts.amazonaws.com",
        "--write-token",
        token_file.to_str().unwrap(),
        "--socket-path",
        deployment.agent.socket_arg(),
    ]);
    let web_identity = boto3_identity(
        &python,
        home,
        "-",
        &moto.endpoint(),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", ROLE_ARN),
            ("AWS_ROLE_SESSION_NAME", "boto3-token-file"),
        ],
    );
    assert_eq!(web_identity["method"], "assume-role-with-web-identity");
    assert_eq!(
        web_identity["arn"],
        "arn:aws:sts::123456789012:assumed-role/app/boto3-token-file"
    );
}
