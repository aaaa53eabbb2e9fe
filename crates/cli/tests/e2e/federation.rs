//! SPIFFE federation between two trust domains, each with its own server and agent on the
//! datastore that `TWID_TEST_DATASTORE` selects: bundle endpoints over `https_spiffe`, bundles
//! delivered to workloads, a rustls handshake across the domains, and refused bundles from a
//! mock endpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_tls::{Authorizer, ClientAuth, SvidSource, TrustSource};

use crate::common::{
    AgentProcess, ServerProcess, TempDir, free_port, run, run_ok, server_datastore, wait_until,
};

const DOMAIN_A: &str = "a.org";
const DOMAIN_B: &str = "b.org";

/// One trust domain's processes and ports.
struct Domain {
    name: &'static str,
    dir: TempDir,
    server: ServerProcess,
}

/// The `https_spiffe` serving profile of a bundle endpoint.
const SERVE_SPIFFE: &str = "profile \"https_spiffe\" {}";

/// Writes a server configuration for `name` with a bundle endpoint on `endpoint_port` with
/// the serving `profile` block, the `https_spiffe` relationship with `other` (whose bundle
/// endpoint listens on `other_port`), and `extra` inside the `federation` block, then starts
/// the server.
fn start_server(
    name: &'static str,
    endpoint_port: u16,
    profile: &str,
    other: &str,
    other_port: u16,
    extra: &str,
) -> Domain {
    let dir = TempDir::new();
    let port = free_port();
    let socket = dir.path().join("private/server.sock");
    let config = dir.path().join("server.conf");
    let text = format!(
        r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  trust_domain = "{name}"
  data_dir = "{data}"
  socket_path = "{socket}"
  log_level = "DEBUG"
  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {endpoint_port}
      refresh_hint = "1m"
      {profile}
    }}
    federates_with "{other}" {{
      bundle_endpoint_url = "https://127.0.0.1:{other_port}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://{other}/spire/server"
      }}
    }}
{extra}
  }}
}}
"#,
        data = dir.path().join("server-data").display(),
        socket = socket.display(),
    );
    let (database, blocks) = server_datastore("");
    std::fs::write(&config, text + &blocks).unwrap();
    let mut server = ServerProcess {
        child: None,
        dir: dir.path().to_path_buf(),
        port,
        socket,
        config,
        database,
    };
    server.spawn();
    Domain { name, dir, server }
}

/// Starts an agent of `domain` with a join token and returns it once its socket exists.
fn start_agent(domain: &Domain, token: &str) -> AgentProcess {
    let dir = domain.dir.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let bundle = dir.join("bootstrap.pem");
    domain.server.write_bundle(&bundle);
    let config = dir.join("agent.conf");
    let text = format!(
        "agent {{\n  trust_domain = \"{td}\"\n  server_address = \"127.0.0.1\"\n  \
         server_port = \"{port}\"\n  socket_path = \"{socket}\"\n  data_dir = \"{data}\"\n  \
         trust_bundle_path = \"{bundle}\"\n  join_token = \"{token}\"\n  \
         log_level = \"DEBUG\"\n}}\n\
         plugins {{\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{}}\n  }}\n}}\n",
        td = domain.name,
        port = domain.server.port,
        socket = socket.display(),
        data = dir.join("agent-data").display(),
        bundle = bundle.display(),
    );
    std::fs::write(&config, text).unwrap();

    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = crate::common::twid()
        .args(["agent", "run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent should start");
    let agent = AgentProcess {
        child: Some(child),
        socket,
        dir,
    };
    let socket = agent.socket.clone();
    wait_until(Duration::from_secs(30), "the agent socket", || {
        socket.exists()
    });
    agent
}

/// Copies `from`'s bundle, in the SPIFFE format, into `to` with `twid bundle set`.
fn exchange_bundle(from: &Domain, to: &Domain) {
    let json = run_ok(&[
        "bundle",
        "show",
        "--format",
        "spiffe",
        "--socket-path",
        from.server.socket_arg(),
    ]);
    let path = to.dir.path().join(format!("{}.json", from.name));
    std::fs::write(&path, json).unwrap();
    let id = format!("spiffe://{}", from.name);
    let out = run_ok(&[
        "bundle",
        "set",
        "--id",
        &id,
        "--path",
        path.to_str().unwrap(),
        "--socket-path",
        to.server.socket_arg(),
    ]);
    assert!(out.contains("set (sequence"), "{out}");
}

fn show_relationship(domain: &Domain, trust_domain: &str) -> Value {
    let out = run_ok(&[
        "federation",
        "show",
        "--trust-domain",
        trust_domain,
        "--output",
        "json",
        "--socket-path",
        domain.server.socket_arg(),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// Registers a workload entry for the current uid that federates with `federates_with`.
fn create_workload_entry(domain: &Domain, token: &str, federates_with: &str) -> String {
    let spiffe_id = format!("spiffe://{}/workload", domain.name);
    let parent = format!("spiffe://{}/spire/agent/join_token/{token}", domain.name);
    let selector = format!("unix:uid:{}", nix::unistd::getuid());
    run_ok(&[
        "entry",
        "create",
        "--spiffe-id",
        &spiffe_id,
        "--parent-id",
        &parent,
        "--selector",
        &selector,
        "--federates-with",
        federates_with,
        "--socket-path",
        domain.server.socket_arg(),
    ]);
    spiffe_id
}

/// Fetches the workload's X.509-SVID and bundles into `dir` and returns the chain, key and
/// the federated bundle's certificates.
fn fetch_svid(agent: &AgentProcess, dir: &Path) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
    let dir_text = dir.to_str().unwrap();
    wait_until(
        Duration::from_secs(30),
        "an SVID with a federated bundle",
        || {
            run(&[
                "api",
                "fetch",
                "x509",
                "--socket-path",
                agent.socket_arg(),
                "--write",
                dir_text,
            ])
            .status
            .success()
                && dir.join("federated_bundle.0.0.pem").exists()
        },
    );
    let certs = std::fs::read(dir.join("svid.0.pem")).unwrap();
    let key = std::fs::read(dir.join("svid.0.key")).unwrap();
    let svid = twid_spiffe::X509Svid::parse_pem(&certs, &key).unwrap();
    (
        svid.chain().to_vec(),
        svid.private_key_der().secret_pkcs8_der().to_vec(),
    )
}

fn pem_certs(path: &Path, trust_domain: &str) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    let td = TrustDomain::new(trust_domain).unwrap();
    twid_spiffe::X509Bundle::parse_pem(td, &pem)
        .unwrap()
        .authorities()
        .to_vec()
}

/// Calls FetchX509Bundles on the agent socket and returns the first response's bundles, keyed
/// by trust domain ID.
async fn fetch_x509_bundles(socket: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let path = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let mut client =
        twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::with_interceptor(
            channel,
            |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("workload.spiffe.io", "true".parse().unwrap());
                Ok(request)
            },
        );
    let mut stream = client
        .fetch_x509_bundles(twid_proto::workload::X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap().bundles
}

/// Builds a trust source with one bundle per trust domain.
fn trust(bundles: &[(&str, Vec<CertificateDer<'static>>)]) -> TrustSource {
    let source = TrustSource::empty();
    for (name, certs) in bundles {
        source.set(TrustDomain::new(name).unwrap(), certs.clone());
    }
    source
}

/// Runs one mutual TLS handshake between a server and a client SVID and returns whether
/// both sides completed it. The server accepts clients of `client_domain`; the client
/// accepts only `server_id`.
async fn handshake(
    server: (Vec<CertificateDer<'static>>, Vec<u8>),
    server_trust: TrustSource,
    client: (Vec<CertificateDer<'static>>, Vec<u8>),
    client_trust: TrustSource,
    client_domain: &str,
    server_id: SpiffeId,
) -> bool {
    let server_svid = SvidSource::empty();
    server_svid.set(server.0, server.1).unwrap();
    let client_svid = SvidSource::empty();
    client_svid.set(client.0, client.1).unwrap();
    let server_config = twid_tls::server_config(
        server_svid,
        server_trust,
        ClientAuth::Required(Authorizer::MemberOf(
            TrustDomain::new(client_domain).unwrap(),
        )),
    )
    .unwrap();
    let client_config = twid_tls::client_config(
        Some(client_svid),
        client_trust,
        Authorizer::Exact(server_id),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            // One application byte proves the server side finished the handshake.
            Ok(mut stream) => {
                stream.write_all(b"k").await.is_ok() && stream.shutdown().await.is_ok()
            }
            Err(_) => false,
        }
    });

    let connector = tokio_rustls::TlsConnector::from(client_config);
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("workload").unwrap();
    let client_ok = match connector.connect(name, tcp).await {
        Ok(mut stream) => {
            // TLS 1.3 reports a rejected client certificate only after the handshake, so
            // the client counts as connected once it reads the server's byte.
            let mut byte = [0u8; 1];
            matches!(stream.read(&mut byte).await, Ok(1))
        }
        Err(_) => false,
    };
    let server_ok = server_task.await.unwrap();
    client_ok && server_ok
}

/// Returns the PEM X.509 CA key of a server's disk key manager and the CA certificate that
/// matches it among `authorities`.
fn server_ca(
    domain: &Domain,
    authorities: &[CertificateDer<'static>],
) -> (rcgen::KeyPair, CertificateDer<'static>) {
    let keys_dir = domain.dir.path().join("server-data/keys");
    for entry in std::fs::read_dir(&keys_dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(pem) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(key) = rcgen::KeyPair::from_pem(&pem) else {
            continue;
        };
        let public = rcgen::PublicKeyData::subject_public_key_info(&key);
        for cert in authorities {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
            if parsed.public_key().raw == public.as_slice() {
                return (key, cert.clone());
            }
        }
    }
    panic!("no key in {} matches a CA certificate", keys_dir.display());
}

/// Runs `twid api validate jwt` for audience `a-service` on `agent`.
fn validate_jwt(agent: &AgentProcess, token: &str) -> std::process::Output {
    run(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "a-service",
        "--svid",
        token,
        "--socket-path",
        agent.socket_arg(),
    ])
}

/// Signs an ES256 JWT-SVID for `subject` and audience `a-service` with the one JWT key in
/// the domain's disk key manager (`jwt-<kid>.pem`).
fn sign_jwt(domain: &Domain, subject: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let keys_dir = domain.dir.path().join("server-data/keys");
    let mut keys: Vec<PathBuf> = std::fs::read_dir(&keys_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("jwt-")
        })
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "expected one JWT key in {}",
        keys_dir.display()
    );
    let path = keys.remove(0);
    let kid = path
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .strip_prefix("jwt-")
        .unwrap()
        .to_owned();
    let pkcs8 = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&path).unwrap())
        .unwrap()
        .serialize_der();
    let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
    )
    .unwrap();
    let now = unix_now();
    let header = serde_json::json!({ "alg": "ES256", "kid": kid, "typ": "JWT" });
    let claims = serde_json::json!({
        "sub": subject,
        "aud": ["a-service"],
        "iat": now,
        "exp": now + 300,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// Signs a leaf X.509-SVID for `spiffe_id` with the CA key and certificate given.
fn forge_svid(
    spiffe_id: &str,
    ca_key: &rcgen::KeyPair,
    ca_cert: &CertificateDer<'static>,
) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(spiffe_id).unwrap(),
    )];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![CertificateDer::from(cert.der().to_vec())],
        key.serialize_der(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn federation_two_domains_https_spiffe() {
    let a_endpoint = free_port();
    let b_endpoint = free_port();
    let a = start_server(DOMAIN_A, a_endpoint, SERVE_SPIFFE, DOMAIN_B, b_endpoint, "");
    let b = start_server(DOMAIN_B, b_endpoint, SERVE_SPIFFE, DOMAIN_A, a_endpoint, "");

    // Without a first bundle, an https_spiffe endpoint cannot be authenticated.
    let refused = run(&[
        "federation",
        "refresh",
        "--trust-domain",
        DOMAIN_B,
        "--socket-path",
        a.server.socket_arg(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("twid bundle set"), "{stderr}");

    exchange_bundle(&b, &a);
    exchange_bundle(&a, &b);
    for (domain, other) in [(&a, DOMAIN_B), (&b, DOMAIN_A)] {
        run_ok(&[
            "federation",
            "refresh",
            "--trust-domain",
            other,
            "--socket-path",
            domain.server.socket_arg(),
        ]);
        let shown = show_relationship(domain, other);
        assert_eq!(shown["bundle_endpoint_profile"], "https_spiffe");
        assert_eq!(shown["last_error"], "", "{shown}");
        assert!(shown["last_refresh"].as_i64().unwrap() > 0, "{shown}");
        assert!(shown["bundle_sequence"].as_u64().unwrap() >= 1, "{shown}");
        // The endpoint's refresh hint of one minute schedules the next fetch.
        let next =
            shown["next_refresh"].as_i64().unwrap() - shown["last_refresh"].as_i64().unwrap();
        assert!((55..=65).contains(&next), "{shown}");
    }

    let token_a = a.server.generate_token();
    let token_b = b.server.generate_token();
    let id_a = create_workload_entry(&a, &token_a, DOMAIN_B);
    let id_b = create_workload_entry(&b, &token_b, DOMAIN_A);
    let agent_a = start_agent(&a, &token_a);
    let agent_b = start_agent(&b, &token_b);

    let fetched_a = a.dir.path().join("fetched");
    let fetched_b = b.dir.path().join("fetched");
    let svid_a = fetch_svid(&agent_a, &fetched_a);
    let svid_b = fetch_svid(&agent_b, &fetched_b);

    // Each workload received the other domain's bundle, equal to that server's own bundle.
    let own_a = pem_certs(&fetched_a.join("bundle.0.pem"), DOMAIN_A);
    let own_b = pem_certs(&fetched_b.join("bundle.0.pem"), DOMAIN_B);
    let b_seen_by_a = pem_certs(&fetched_a.join("federated_bundle.0.0.pem"), DOMAIN_B);
    let a_seen_by_b = pem_certs(&fetched_b.join("federated_bundle.0.0.pem"), DOMAIN_A);
    assert_eq!(b_seen_by_a, own_b);
    assert_eq!(a_seen_by_b, own_a);

    // FetchX509Bundles returns both trust domains as well, each with its own authorities.
    let bundles = fetch_x509_bundles(&agent_a.socket).await;
    let mut names: Vec<&str> = bundles.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["spiffe://a.org", "spiffe://b.org"]);
    assert_eq!(
        bundles["spiffe://b.org"],
        twid_spiffe::x509::concat_der(&own_b)
    );
    assert_eq!(
        bundles["spiffe://a.org"],
        twid_spiffe::x509::concat_der(&own_a)
    );

    // A workload of B serves, a workload of A connects: each checks the peer against the
    // peer's own trust domain's bundle.
    let server_trust = trust(&[(DOMAIN_B, own_b.clone()), (DOMAIN_A, a_seen_by_b.clone())]);
    let client_trust = trust(&[(DOMAIN_A, own_a.clone()), (DOMAIN_B, b_seen_by_a.clone())]);
    assert!(
        handshake(
            svid_b.clone(),
            server_trust.clone(),
            svid_a.clone(),
            client_trust.clone(),
            DOMAIN_A,
            SpiffeId::new(&id_b).unwrap(),
        )
        .await,
        "the cross-domain handshake failed"
    );

    // Without the federated bundle of A, B's workload rejects A's SVID.
    let b_only = trust(&[(DOMAIN_B, own_b.clone())]);
    assert!(
        !handshake(
            svid_b.clone(),
            b_only,
            svid_a.clone(),
            client_trust.clone(),
            DOMAIN_A,
            SpiffeId::new(&id_b).unwrap(),
        )
        .await,
        "an SVID of a.org was accepted without a.org's bundle"
    );

    // An SVID that names b.org but is signed by a.org's CA chains to a bundle the validator
    // holds, but not to b.org's, so it is rejected.
    let (a_key, a_cert) = server_ca(&a, &own_a);
    let forged = forge_svid("spiffe://b.org/forged", &a_key, &a_cert);
    assert!(
        handshake(
            svid_b.clone(),
            server_trust.clone(),
            forge_svid("spiffe://a.org/genuine-shape", &a_key, &a_cert),
            client_trust.clone(),
            DOMAIN_A,
            SpiffeId::new(&id_b).unwrap(),
        )
        .await,
        "the forging harness itself is broken: an a.org SVID signed by a.org's CA failed"
    );
    let server_accepting_b = (svid_a.clone(), client_trust.clone());
    assert!(
        !handshake(
            server_accepting_b.0,
            server_accepting_b.1,
            forged,
            server_trust,
            DOMAIN_B,
            SpiffeId::new(&id_a).unwrap(),
        )
        .await,
        "an SVID of b.org signed by a.org's CA was accepted"
    );

    // JWT-SVIDs: A's agent validates B's token against b.org's JWT bundle, and rejects a
    // token naming b.org that A's own JWT key signed.
    let token_path = fetched_b.join("token.jwt");
    run_ok(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "a-service",
        "--write-token",
        token_path.to_str().unwrap(),
        "--socket-path",
        agent_b.socket_arg(),
    ]);
    let token = std::fs::read_to_string(&token_path).unwrap();
    let validated = validate_jwt(&agent_a, token.trim());
    assert!(validated.status.success(), "{validated:?}");
    let stdout = String::from_utf8_lossy(&validated.stdout);
    assert!(stdout.contains(&id_b), "{stdout}");
    let genuine_shape = sign_jwt(&a, "spiffe://a.org/workload");
    let control = validate_jwt(&agent_a, &genuine_shape);
    assert!(
        control.status.success(),
        "the JWT forging harness itself is broken: {control:?}"
    );
    let forged_jwt = sign_jwt(&a, "spiffe://b.org/forged");
    let rejected = validate_jwt(&agent_a, &forged_jwt);
    assert!(
        !rejected.status.success(),
        "a b.org JWT-SVID signed by a.org's key was accepted"
    );
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("invalid JWT-SVID"), "{stderr}");

    // A new X.509 authority of B reaches A's workloads through A's fetch from B's endpoint.
    run_ok(&[
        "localauthority",
        "x509",
        "prepare",
        "--socket-path",
        b.server.socket_arg(),
    ]);
    let b_pem = run_ok(&["bundle", "show", "--socket-path", b.server.socket_arg()]);
    let b_rotated =
        twid_spiffe::X509Bundle::parse_pem(TrustDomain::new(DOMAIN_B).unwrap(), b_pem.as_bytes())
            .unwrap()
            .authorities()
            .to_vec();
    assert_eq!(b_rotated.len(), 2);
    let refreshed = run_ok(&[
        "federation",
        "refresh",
        "--trust-domain",
        DOMAIN_B,
        "--socket-path",
        a.server.socket_arg(),
    ]);
    assert!(refreshed.contains("updated"), "{refreshed}");
    let expected = twid_spiffe::x509::concat_der(&b_rotated);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let bundles = fetch_x509_bundles(&agent_a.socket).await;
        if bundles["spiffe://b.org"] == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a.org's workload did not receive b.org's new authority"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mock bundle endpoint over HTTPS (web PKI profile, with a test CA) that returns the body
/// registered for each request path.
struct MockEndpoint {
    port: u16,
    ca_file: PathBuf,
}

/// A test web PKI: a CA file and a leaf certificate for 127.0.0.1 signed by it.
struct WebPki {
    ca_file: PathBuf,
    leaf_pem: String,
    leaf_der: Vec<u8>,
    key_pem: String,
    key_der: Vec<u8>,
}

/// Creates a CA and a leaf for the IP address 127.0.0.1, and writes the CA to `dir`.
fn web_pki(dir: &Path) -> WebPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let mut leaf_params = rcgen::CertificateParams::default();
    leaf_params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
        127, 0, 0, 1,
    ]))];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let ca_file = dir.join("web-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    WebPki {
        ca_file,
        leaf_pem: leaf.pem(),
        leaf_der: leaf.der().to_vec(),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    }
}

async fn start_mock(dir: &Path, bodies: Vec<(&'static str, Vec<u8>)>) -> MockEndpoint {
    let pki = web_pki(dir);
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(pki.leaf_der.clone())],
            PrivatePkcs8KeyDer::from(pki.key_der.clone()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(bodies);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let bodies = Arc::clone(&bodies);
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = bodies
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, body)| body.clone())
                    .unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    MockEndpoint {
        port,
        ca_file: pki.ca_file,
    }
}

/// Returns a SPIFFE bundle document with one self-signed CA whose URI SAN names
/// `san_domain`, valid from `not_before` to `not_after` (unix seconds).
fn bundle_document(san_domain: &str, not_before: i64, not_after: i64) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(format!("spiffe://{san_domain}")).unwrap(),
    )];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    let bundle =
        twid_spiffe::X509Bundle::parse_pem(TrustDomain::new(san_domain).unwrap(), pem.as_bytes())
            .unwrap();
    let mut spiffe = twid_spiffe::bundle::SpiffeBundle::new(TrustDomain::new(san_domain).unwrap());
    spiffe.x509_authorities = bundle.authorities().to_vec();
    spiffe.to_json()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn federation_rejects_bad_bundles() {
    let scratch = TempDir::new();
    let now = unix_now();
    let mock = start_mock(
        scratch.path(),
        vec![
            (
                "/wrong-domain",
                bundle_document("evil.org", now - 60, now + 3600),
            ),
            ("/expired", bundle_document("d.org", now - 7200, now - 3600)),
            ("/malformed", b"{\"keys\": 7}".to_vec()),
        ],
    )
    .await;
    let web = |name: &str, path: &str| {
        format!(
            "    federates_with \"{name}\" {{\n      bundle_endpoint_url = \
             \"https://127.0.0.1:{port}{path}\"\n      bundle_endpoint_profile \"https_web\" {{\n        \
             ca_file_path = \"{ca}\"\n      }}\n    }}\n",
            port = mock.port,
            ca = mock.ca_file.display(),
        )
    };
    let extra = format!(
        "{}{}{}",
        web("c.org", "/wrong-domain"),
        web("d.org", "/expired"),
        web("e.org", "/malformed")
    );
    let a = start_server(
        DOMAIN_A,
        free_port(),
        SERVE_SPIFFE,
        DOMAIN_B,
        free_port(),
        &extra,
    );

    // d.org has a valid bundle first; a rejected fetch must keep it.
    let valid = bundle_document("d.org", now - 60, now + 3600);
    let valid_path = scratch.path().join("d.json");
    std::fs::write(&valid_path, &valid).unwrap();
    run_ok(&[
        "bundle",
        "set",
        "--id",
        "d.org",
        "--path",
        valid_path.to_str().unwrap(),
        "--socket-path",
        a.server.socket_arg(),
    ]);

    let cases = [
        ("c.org", "belongs to trust domain evil.org"),
        ("d.org", "expired or not yet valid"),
        ("e.org", "malformed bundle"),
    ];
    for (trust_domain, reason) in cases {
        let output = run(&[
            "federation",
            "refresh",
            "--trust-domain",
            trust_domain,
            "--socket-path",
            a.server.socket_arg(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{trust_domain}: refresh succeeded"
        );
        assert!(stderr.contains(reason), "{trust_domain}: {stderr}");
        let shown = show_relationship(&a, trust_domain);
        assert!(
            shown["last_error"].as_str().unwrap().contains(reason),
            "{trust_domain}: {shown}"
        );
        wait_until(
            Duration::from_secs(10),
            "the refusal in the server log",
            || {
                a.server.log().lines().any(|line| {
                    line.contains("WARN")
                        && line.contains("federated bundle refresh failed")
                        && line.contains(trust_domain)
                        && line.contains(reason)
                })
            },
        );
    }
    assert_eq!(show_relationship(&a, "c.org")["bundle_sequence"], 0);
    assert_eq!(show_relationship(&a, "d.org")["bundle_sequence"], 1);

    // `twid bundle set` applies the same checks.
    let wrong_path = scratch.path().join("wrong.json");
    std::fs::write(
        &wrong_path,
        bundle_document("evil.org", now - 60, now + 3600),
    )
    .unwrap();
    let output = run(&[
        "bundle",
        "set",
        "--id",
        "c.org",
        "--path",
        wrong_path.to_str().unwrap(),
        "--socket-path",
        a.server.socket_arg(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("evil.org"));

    // The relationship verbs round-trip through the admin API, and create stores the first
    // bundle it is given.
    let socket = a.server.socket_arg();
    let f_bundle = scratch.path().join("f.json");
    std::fs::write(&f_bundle, bundle_document("f.org", now - 60, now + 3600)).unwrap();
    run_ok(&[
        "federation",
        "create",
        "--trust-domain",
        "f.org",
        "--bundle-endpoint-url",
        "https://127.0.0.1:1/bundle",
        "--bundle-endpoint-profile",
        "https_spiffe",
        "--endpoint-spiffe-id",
        "spiffe://f.org/spire/server",
        "--trust-domain-bundle-path",
        f_bundle.to_str().unwrap(),
        "--socket-path",
        socket,
    ]);
    assert_eq!(show_relationship(&a, "f.org")["bundle_sequence"], 1);
    let duplicate = run(&[
        "federation",
        "create",
        "--trust-domain",
        "f.org",
        "--bundle-endpoint-url",
        "https://127.0.0.1:1/bundle",
        "--bundle-endpoint-profile",
        "https_web",
        "--socket-path",
        socket,
    ]);
    assert!(!duplicate.status.success());
    run_ok(&[
        "federation",
        "update",
        "--trust-domain",
        "f.org",
        "--bundle-endpoint-url",
        "https://127.0.0.1:2/other",
        "--bundle-endpoint-profile",
        "https_web",
        "--socket-path",
        socket,
    ]);
    let shown = show_relationship(&a, "f.org");
    assert_eq!(shown["bundle_endpoint_url"], "https://127.0.0.1:2/other");
    assert_eq!(shown["bundle_endpoint_profile"], "https_web");
    let own = run(&[
        "federation",
        "create",
        "--trust-domain",
        DOMAIN_A,
        "--bundle-endpoint-url",
        "https://127.0.0.1:1/bundle",
        "--bundle-endpoint-profile",
        "https_web",
        "--socket-path",
        socket,
    ]);
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("own trust domain"));
    let list = run_ok(&[
        "federation",
        "list",
        "--output",
        "json",
        "--socket-path",
        socket,
    ]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trust_domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.org", "c.org", "d.org", "e.org", "f.org"]);
    run_ok(&[
        "federation",
        "delete",
        "--trust-domain",
        "f.org",
        "--socket-path",
        socket,
    ]);
    let missing = run(&[
        "federation",
        "show",
        "--trust-domain",
        "f.org",
        "--socket-path",
        socket,
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no federation relationship"));
}

#[test]
fn federation_https_web_endpoint() {
    let scratch = TempDir::new();
    let pki = web_pki(scratch.path());
    let cert_file = scratch.path().join("serving.pem");
    let key_file = scratch.path().join("serving.key");
    std::fs::write(&cert_file, &pki.leaf_pem).unwrap();
    std::fs::write(&key_file, &pki.key_pem).unwrap();
    let serve_web = format!(
        "profile \"https_web\" {{\n        serving_cert_file {{\n          \
         cert_file_path = \"{}\"\n          key_file_path = \"{}\"\n        }}\n      }}",
        cert_file.display(),
        key_file.display()
    );
    let b_endpoint = free_port();
    let b = start_server(DOMAIN_B, b_endpoint, &serve_web, DOMAIN_A, free_port(), "");
    // a.org reaches b.org's web endpoint under two names: as b.org, which must succeed
    // without a first bundle, and as b.orgx.org, which must fail because the served CA names
    // b.org.
    let web_relationship = |trust_domain: &str| {
        format!(
            "    federates_with \"{trust_domain}\" {{\n      bundle_endpoint_url = \
             \"https://127.0.0.1:{b_endpoint}\"\n      bundle_endpoint_profile \"https_web\" {{\n        \
             ca_file_path = \"{ca}\"\n      }}\n    }}\n",
            ca = pki.ca_file.display(),
        )
    };
    let relationships = format!(
        "{}{}",
        web_relationship(DOMAIN_B),
        web_relationship("b.orgx.org")
    );
    let a = start_server_with_relationships(DOMAIN_A, &relationships);

    let refreshed = run_ok(&[
        "federation",
        "refresh",
        "--trust-domain",
        DOMAIN_B,
        "--socket-path",
        a.server.socket_arg(),
    ]);
    // The refresh task may have fetched the bundle first, so this refresh may find it
    // unchanged; either way exactly one bundle was stored.
    assert!(refreshed.contains("(sequence 1)"), "{refreshed}");
    let shown = show_relationship(&a, DOMAIN_B);
    assert_eq!(shown["bundle_endpoint_profile"], "https_web");
    assert_eq!(shown["bundle_sequence"], 1);

    let wrong = run(&[
        "federation",
        "refresh",
        "--trust-domain",
        "b.orgx.org",
        "--socket-path",
        a.server.socket_arg(),
    ]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("belongs to trust domain b.org"), "{stderr}");
    assert_eq!(show_relationship(&a, "b.orgx.org")["bundle_sequence"], 0);
    drop(b);
}

/// Starts a server for `name` without a bundle endpoint, with `relationships` as the whole
/// body of its `federation` block.
fn start_server_with_relationships(name: &'static str, relationships: &str) -> Domain {
    let dir = TempDir::new();
    let port = free_port();
    let socket = dir.path().join("private/server.sock");
    let config = dir.path().join("server.conf");
    let text = format!(
        "server {{\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  \
         trust_domain = \"{name}\"\n  data_dir = \"{data}\"\n  socket_path = \"{socket}\"\n  \
         log_level = \"DEBUG\"\n  federation {{\n{relationships}  }}\n}}\n",
        data = dir.path().join("server-data").display(),
        socket = socket.display(),
    );
    let (database, blocks) = server_datastore("");
    std::fs::write(&config, text + &blocks).unwrap();
    let mut server = ServerProcess {
        child: None,
        dir: dir.path().to_path_buf(),
        port,
        socket,
        config,
        database,
    };
    server.spawn();
    Domain { name, dir, server }
}
