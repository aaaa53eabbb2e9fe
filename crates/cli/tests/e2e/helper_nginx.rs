//! nginx serving mTLS with files that `twid helper` keeps fresh: the helper starts nginx as
//! its `cmd`, sends SIGHUP after each SVID rotation, and a client with its own SVID gets a 200
//! from the reloaded server every time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_tls::{Authorizer, SvidSource, TrustSource};

use crate::common::*;
use crate::helper::{spawn_helper, stop};

const NGINX: &str = "/usr/sbin/nginx";
const WEB_ID: &str = "spiffe://example.org/web";
const CLIENT_ID: &str = "spiffe://example.org/client";

/// The status line and the server's leaf certificate of one HTTPS request.
struct Reply {
    status_line: String,
    server_leaf: Vec<u8>,
}

/// Sends `GET /` over TLS and returns the status line and the server's leaf certificate.
async fn get(port: u16, client: Option<SvidSource>, trust: TrustSource) -> Result<Reply, String> {
    let server_id = SpiffeId::new(WEB_ID).unwrap();
    let config = twid_tls::client_config(client, trust, Authorizer::Exact(server_id))
        .map_err(|error| error.to_string())?;
    // twid-tls offers only ALPN h2, which an HTTP/1.1 nginx listener rejects.
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    let server_leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.to_vec())
        .ok_or("no server certificate")?;

    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|error| format!("write: {error}"))?;
    let mut response = Vec::new();
    // nginx may close without close_notify; what was read until then is enough.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default().to_owned();
    Ok(Reply {
        status_line,
        server_leaf,
    })
}

/// Fetches the client's own SVID and the bundle with `twid api fetch x509 --write`.
fn client_material(agent: &AgentProcess, dir: &Path) -> (SvidSource, TrustSource) {
    let output = run_ok(&[
        "api",
        "fetch",
        "x509",
        "--socket-path",
        agent.socket_arg(),
        "--output",
        "json",
        "--write",
        dir.to_str().unwrap(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    let index = json["svids"]
        .as_array()
        .unwrap()
        .iter()
        .position(|svid| svid["spiffe_id"] == CLIENT_ID)
        .expect("the client SVID should be among the caller's SVIDs");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("svid.{index}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key_pem = std::fs::read(dir.join(format!("svid.{index}.key"))).unwrap();
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem).unwrap();
    let bundle: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("bundle.{index}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let trust = TrustSource::new(HashMap::from([(
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        bundle,
    )]))
    .unwrap();
    (SvidSource::new(chain, key).unwrap(), trust)
}

fn file_leaf(cert_dir: &Path) -> Option<Vec<u8>> {
    let pem = std::fs::read(cert_dir.join("svid.pem")).ok()?;
    let first = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    Some(first.to_vec())
}

fn nginx_config(dir: &Path, cert_dir: &Path, port: u16) -> PathBuf {
    let temp = dir.join("nginx-temp");
    std::fs::create_dir_all(&temp).unwrap();
    let text = format!(
        "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n  \
         proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n  \
         uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n  \
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
         ssl_certificate {certs}/svid.pem;\n    ssl_certificate_key {certs}/svid_key.pem;\n    \
         ssl_client_certificate {certs}/svid_bundle.pem;\n    ssl_verify_client on;\n    \
         location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        dir = dir.display(),
        temp = temp.display(),
        certs = cert_dir.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn helper_keeps_nginx_serving_mtls_across_rotations() {
    if !Path::new(NGINX).exists() {
        println!("{NGINX} not found, skipping (scripts/test.sh installs the nginx package)");
        return;
    }
    let dir = TempDir::new();
    let work = dir.path();
    // Only workload SVIDs rotate quickly; the agent keeps its own SVID for an hour.
    let server = ServerProcess::start(
        work,
        "  default_x509_svid_ttl = \"20s\"\n  agent_ttl = \"1h\"",
    );
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    for (id, hint) in [(WEB_ID, "web"), (CLIENT_ID, "client")] {
        run_ok(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            &agent_id(&token),
            "--selector",
            &selector,
            "--hint",
            hint,
            "--socket-path",
            server.socket_arg(),
        ]);
    }
    let agent = AgentProcess::start(work, &server, &token);

    let cert_dir = work.join("certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let port = free_port();
    let nginx_conf = nginx_config(work, &cert_dir, port);
    let helper_conf = write_file(
        work,
        "helper.conf",
        &format!(
            "agent_address = \"{socket}\"\ncert_dir = \"{certs}\"\nhint = \"web\"\n\
             cmd = \"{NGINX}\"\ncmd_args = \"-c {conf} -e {errors}\"\nrenew_signal = \"SIGHUP\"\n",
            socket = agent.socket.display(),
            certs = cert_dir.display(),
            conf = nginx_conf.display(),
            errors = work.join("nginx-error.log").display(),
        ),
    );
    let mut helper = spawn_helper(Path::new(&helper_conf), &work.join("helper.log"));
    let logs = || {
        let nginx_log = std::fs::read_to_string(work.join("nginx-error.log")).unwrap_or_default();
        let nginx_tail: Vec<&str> = nginx_log.lines().rev().take(20).collect();
        let agent_log = std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();
        let agent_tail: Vec<&str> = agent_log.lines().rev().take(30).collect();
        format!(
            "helper log:\n{}\nlast nginx error log lines, newest first:\n{}\n\
             last agent log lines, newest first:\n{}",
            std::fs::read_to_string(work.join("helper.log")).unwrap_or_default(),
            nginx_tail.join("\n"),
            agent_tail.join("\n")
        )
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client_dir = work.join("client");
    let mut served_leaves: Vec<Vec<u8>> = Vec::new();
    // The first SVID, then two rotations: each time nginx must present the SVID now in the
    // file and accept the client.
    while served_leaves.len() < 3 {
        let mut reply = None;
        let mut last_error = String::from("no SVID file yet");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while reply.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let Some(leaf) = file_leaf(&cert_dir) else {
                continue;
            };
            if served_leaves.contains(&leaf) {
                continue;
            }
            let (client, trust) = client_material(&agent, &client_dir);
            match runtime.block_on(get(port, Some(client), trust)) {
                Ok(answer) if answer.server_leaf == leaf => reply = Some(answer),
                Ok(_) => last_error = "nginx presents an older SVID than the file".to_owned(),
                Err(error) => last_error = error,
            }
        }
        let reply = reply.unwrap_or_else(|| {
            panic!(
                "nginx served no new SVID within 60 s after {} rotation(s): {last_error}\n{}",
                served_leaves.len(),
                logs()
            )
        });
        assert_eq!(reply.status_line, "HTTP/1.1 200 OK", "{}", logs());
        served_leaves.push(reply.server_leaf);
    }
    let helper_text = std::fs::read_to_string(work.join("helper.log")).unwrap();
    assert!(helper_text.contains("sent signal"), "{}", logs());
    assert_eq!(
        helper_text.matches("started cmd").count(),
        1,
        "nginx should be reloaded, not restarted\n{}",
        logs()
    );

    // Without a client certificate nginx responds with 400 instead of serving the page.
    let (_, trust) = client_material(&agent, &client_dir);
    let anonymous = runtime.block_on(get(port, None, trust)).unwrap();
    assert!(
        anonymous.status_line.starts_with("HTTP/1.1 400"),
        "anonymous client got {:?}",
        anonymous.status_line
    );

    let status = stop(&mut helper.0);
    assert!(status.success(), "helper exit status {status}\n{}", logs());
    // The helper stops nginx, its cmd, on the way out, and nginx removes its pid file.
    wait_until(Duration::from_secs(10), "nginx to exit", || {
        !work.join("nginx.pid").exists()
    });
}
