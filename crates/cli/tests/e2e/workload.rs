//! A workload's view: SVIDs from the Workload API, checked by third-party clients.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn openssl_verify(ca: &str, untrusted: &str, leaf: &str) -> std::process::Output {
    Command::new("openssl")
        .args(["verify", "-CAfile", ca, "-untrusted", untrusted, leaf])
        .output()
        .expect("openssl should run")
}

#[test]
fn pyspiffe_gets_svids_that_openssl_and_pyjwt_accept() {
    let Some(python) = python() else { return };
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", own_uid());
    server.create_entry(
        "spiffe://example.org/workload/py",
        &agent_id(&token),
        &[&selector],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let out = dir.path().join("py");
    std::fs::create_dir(&out).unwrap();
    let output = Command::new(&python)
        .arg(repo_root().join("tests/python/workload_check.py"))
        .arg(&out)
        .arg("spiffe://example.org/audience")
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "py-spiffe check failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["x509_spiffe_id"],
        "spiffe://example.org/workload/py"
    );
    assert_eq!(summary["jwt_spiffe_id"], "spiffe://example.org/workload/py");
    assert_eq!(summary["pyjwt_sub"], "spiffe://example.org/workload/py");
    assert_eq!(
        summary["validated_spiffe_id"],
        "spiffe://example.org/workload/py"
    );
    assert_eq!(summary["jwks_has_private_members"], false);

    let path = |name: &str| out.join(name).to_str().unwrap().to_owned();
    let verified = openssl_verify(&path("bundle.pem"), &path("chain.pem"), &path("leaf.pem"));
    assert!(
        verified.status.success(),
        "openssl rejected the SVID: {}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // The same chain against an unrelated CA must fail, or the check above proves nothing.
    let foreign = twid_test_ca("foreign.test");
    let foreign_pem = write_file(dir.path(), "foreign.pem", &foreign);
    let rejected = openssl_verify(&foreign_pem, &path("chain.pem"), &path("leaf.pem"));
    assert!(
        !rejected.status.success(),
        "openssl accepted the SVID against a foreign CA"
    );
}

/// Returns the PEM certificate of a fresh self-signed CA for `trust_domain`.
fn twid_test_ca(trust_domain: &str) -> String {
    let td = twid_spiffe::TrustDomain::new(trust_domain).unwrap();
    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let ca = twid_ca::X509Authority::self_signed(
        &td,
        key,
        &twid_ca::CaSubject::default(),
        std::time::SystemTime::now(),
        Duration::from_secs(3600),
        None,
    )
    .unwrap();
    twid_spiffe::X509Bundle::from_authorities(td, vec![ca.cert_der().clone()])
        .unwrap()
        .to_pem()
}

#[test]
fn workloads_get_only_their_own_identity() {
    if !is_root() {
        println!("not running as root, skipping: this test starts workloads under other uids");
        return;
    }
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let parent = agent_id(&token);
    server.create_entry("spiffe://example.org/a", &parent, &["unix:uid:64001"]);
    server.create_entry("spiffe://example.org/b", &parent, &["unix:uid:64002"]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let fetch_as = |uid: u32| {
        twid()
            .args([
                "api",
                "fetch",
                "x509",
                "--output",
                "json",
                "--timeout",
                "15s",
            ])
            .args(["--socket-path", agent.socket_arg()])
            .uid(uid)
            .gid(65534)
            .output()
            .unwrap()
    };
    let ids_of = |output: &std::process::Output| -> Vec<String> {
        assert!(
            output.status.success(),
            "fetch failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            agent.log()
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["svids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|svid| svid["spiffe_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_of(&fetch_as(64001)), ["spiffe://example.org/a"]);
    assert_eq!(ids_of(&fetch_as(64002)), ["spiffe://example.org/b"]);

    let stranger = fetch_as(64003);
    assert!(!stranger.status.success());
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        stderr.contains("no identity issued"),
        "unexpected error: {stderr}"
    );
}

#[test]
fn request_without_security_header_is_invalid_argument() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", own_uid());
    server.create_entry("spiffe://example.org/w", &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = unix_channel(&agent.socket).await;
        let mut client =
            twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
        let status = client
            .fetch_x509_bundles(twid_proto::workload::X509BundlesRequest {})
            .await
            .expect_err("a request without the header must fail");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = client
            .fetch_jwtsvid(twid_proto::workload::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            })
            .await
            .expect_err("a request without the header must fail");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    });
}

async fn unix_channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

#[test]
fn workloads_complete_mtls_with_their_svids() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", own_uid());
    let parent = agent_id(&token);
    server.create_entry("spiffe://example.org/client", &parent, &[&selector]);
    server.create_entry("spiffe://example.org/server", &parent, &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let out = dir.path().join("svids");
    let out_arg = out.to_str().unwrap();
    wait_until(Duration::from_secs(20), "two SVIDs", || {
        let output = run(&[
            "api",
            "fetch",
            "x509",
            "--socket-path",
            agent.socket_arg(),
            "--write",
            out_arg,
        ]);
        output.status.success() && out.join("svid.1.pem").exists()
    });
    mtls::check_handshakes(&out);

    // A fetch under umask 000 sets each mode exactly.
    let written = dir.path().join("written");
    let output = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_twid"))
        .args([
            "api",
            "fetch",
            "x509",
            "--socket-path",
            agent.socket_arg(),
            "--write",
        ])
        .arg(&written)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("svid.1.key"), "{stdout}");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&written), 0o755);
    assert_eq!(mode(&written.join("svid.0.pem")), 0o644);
    assert_eq!(mode(&written.join("bundle.0.pem")), 0o644);
    assert_eq!(mode(&written.join("svid.0.key")), 0o600);

    // The next fetch removes the files of SVIDs it does not return, and no other file.
    let stale = [
        "svid.7.pem",
        "svid.7.key",
        "bundle.7.pem",
        "federated_bundle.0.3.pem",
    ];
    for name in stale {
        std::fs::write(written.join(name), b"old").unwrap();
    }
    std::fs::write(written.join("notes.txt"), b"mine").unwrap();
    let written_arg = written.to_str().unwrap();
    let output = run(&[
        "api",
        "fetch",
        "x509",
        "--socket-path",
        agent.socket_arg(),
        "--write",
        written_arg,
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for name in stale {
        assert!(!written.join(name).exists(), "{name} should be removed");
        assert!(stdout.contains(name), "{stdout}");
    }
    assert!(written.join("notes.txt").exists(), "other files stay");
    assert!(written.join("svid.1.pem").exists());

    // A path that names a file is rejected, and the message names the problem.
    let output = run(&[
        "api",
        "fetch",
        "x509",
        "--socket-path",
        agent.socket_arg(),
        "--write",
        written.join("notes.txt").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a directory"), "{stderr}");
}

pub(crate) mod mtls {
    //! rustls handshakes between two workloads that use SVIDs written by `twid api fetch`.

    use std::path::Path;

    use rustls_pki_types::CertificateDer;
    use twid_spiffe::{SpiffeId, TrustDomain};
    use twid_tls::{Authorizer, ClientAuth, SvidSource, TrustSource};

    fn load(dir: &Path, index: usize) -> (Vec<CertificateDer<'static>>, Vec<u8>, SpiffeId) {
        let certs = std::fs::read(dir.join(format!("svid.{index}.pem"))).unwrap();
        let key = std::fs::read(dir.join(format!("svid.{index}.key"))).unwrap();
        let svid = twid_spiffe::X509Svid::parse_pem(&certs, &key).unwrap();
        (
            svid.chain().to_vec(),
            svid.private_key_der().secret_pkcs8_der().to_vec(),
            svid.spiffe_id().clone(),
        )
    }

    fn trust(dir: &Path) -> TrustSource {
        let pem = std::fs::read(dir.join("bundle.0.pem")).unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let bundle = twid_spiffe::X509Bundle::parse_pem(td.clone(), &pem).unwrap();
        let source = TrustSource::empty();
        source.set(td, bundle.authorities().to_vec());
        source
    }

    /// Runs one handshake and returns whether both sides completed it.
    pub(crate) async fn handshake(
        server: (Vec<CertificateDer<'static>>, Vec<u8>),
        client: (Vec<CertificateDer<'static>>, Vec<u8>),
        trust: TrustSource,
        server_id: SpiffeId,
    ) -> bool {
        let server_svid = SvidSource::empty();
        server_svid.set(server.0, server.1).unwrap();
        let client_svid = SvidSource::empty();
        client_svid.set(client.0, client.1).unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let server_config = twid_tls::server_config(
            server_svid,
            trust.clone(),
            ClientAuth::Required(Authorizer::MemberOf(td)),
        )
        .unwrap();
        let client_config =
            twid_tls::client_config(Some(client_svid), trust, Authorizer::Exact(server_id))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let server_task = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut stream) => {
                    // One application byte proves the server side finished the handshake.
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
                use tokio::io::AsyncReadExt as _;
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

    pub(crate) fn check_handshakes(dir: &Path) {
        let (chain0, key0, id0) = load(dir, 0);
        let (chain1, key1, _id1) = load(dir, 1);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let trust = trust(dir);
        assert!(
            runtime.block_on(handshake(
                (chain0.clone(), key0.clone()),
                (chain1, key1),
                trust.clone(),
                id0.clone()
            )),
            "mTLS between two workloads of the trust domain failed"
        );

        // A client whose SVID comes from a foreign trust domain's CA is refused.
        let td = TrustDomain::new("foreign.test").unwrap();
        let ca_key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
        let now = std::time::SystemTime::now();
        let ca = twid_ca::X509Authority::self_signed(
            &td,
            ca_key,
            &twid_ca::CaSubject::default(),
            now,
            std::time::Duration::from_secs(3600),
            None,
        )
        .unwrap();
        let leaf_key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
        let foreign_id = td.id_with_path("/client").unwrap();
        let leaf = ca
            .sign_x509_svid(&twid_ca::X509SvidRequest {
                spiffe_id: &foreign_id,
                public_key_spki_der: &leaf_key.public_key_spki_der(),
                ttl: std::time::Duration::from_secs(600),
                dns_names: &[],
                now,
            })
            .unwrap();
        let foreign_client = (vec![leaf], leaf_key.pkcs8_der().to_vec());
        assert!(
            !runtime.block_on(handshake((chain0, key0), foreign_client, trust, id0)),
            "a client with a foreign trust domain's SVID completed mTLS"
        );
    }
}
