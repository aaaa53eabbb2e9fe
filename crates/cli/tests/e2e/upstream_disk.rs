//! `UpstreamAuthority "disk"` end to end: openssl makes a root CA and an upstream intermediate
//! CA, and a server signs its X.509 authorities with the intermediate. The bundle that the
//! server and the Workload API publish contains only the root, and `openssl verify` accepts the
//! workload's X.509-SVID against the root with the rest of its chain as untrusted
//! intermediates, before and after a manual rotation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use x509_parser::extensions::ParsedExtension;

use crate::common::*;

const WORKLOAD_ID: &str = "spiffe://example.org/upstream/workload";
const TIMEOUT: Duration = Duration::from_secs(30);

/// The files of an upstream CA made by openssl.
struct UpstreamPki {
    root: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl should run");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes a P-256 root CA and an intermediate CA under it, as an operator would with openssl.
fn make_pki(dir: &Path) -> UpstreamPki {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-days",
            "30",
            "-subj",
            "/O=Example/CN=Example Root CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key.pem",
            "-out",
            "ca.csr",
            "-subj",
            "/O=Example/CN=Example Upstream CA",
        ],
    );
    std::fs::write(
        dir.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "ca.crt.pem",
            "-days",
            "10",
            "-extfile",
            "ca.ext",
        ],
    );
    let key = dir.join("ca.key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    UpstreamPki {
        root: dir.join("root.pem"),
        cert: dir.join("ca.crt.pem"),
        key,
    }
}

fn plugin_block(pki: &UpstreamPki) -> String {
    format!(
        "plugins {{\n  UpstreamAuthority \"disk\" {{\n    plugin_data {{\n      \
         key_file_path = \"{}\"\n      cert_file_path = \"{}\"\n      \
         bundle_file_path = \"{}\"\n    }}\n  }}\n}}\n",
        pki.key.display(),
        pki.cert.display(),
        pki.root.display()
    )
}

fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    certs
        .iter()
        .map(|cert| {
            let body = base64::engine::general_purpose::STANDARD.encode(cert);
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|chunk| std::str::from_utf8(chunk).unwrap())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect()
}

fn authority_key_id(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .map(|id| hex::encode(id.0))
        .expect("the certificate has an authority key identifier")
}

/// The workload's X.509-SVID chain and bundle, as `twid api fetch x509 --write` stores them.
struct Fetched {
    chain: Vec<CertificateDer<'static>>,
    bundle: Vec<CertificateDer<'static>>,
}

/// Fetches the workload's X.509-SVID into `out` until `accept` takes it.
fn fetch_until(
    agent: &AgentProcess,
    out: &Path,
    what: &str,
    accept: impl Fn(&Fetched) -> bool,
) -> Fetched {
    let mut fetched = None;
    wait_until(TIMEOUT, what, || {
        let output = run(&[
            "api",
            "fetch",
            "x509",
            "--socket-path",
            agent.socket_arg(),
            "--write",
            out.to_str().unwrap(),
        ]);
        if !output.status.success() {
            return false;
        }
        let current = Fetched {
            chain: pem_certificates(&std::fs::read(out.join("svid.0.pem")).unwrap()),
            bundle: pem_certificates(&std::fs::read(out.join("bundle.0.pem")).unwrap()),
        };
        let accepted = accept(&current);
        fetched = Some(current);
        accepted
    });
    fetched.unwrap()
}

/// Runs `openssl verify` on the leaf with the root as the only trust anchor and the rest of
/// the chain as untrusted intermediates.
fn openssl_verify(dir: &Path, root: &Path, chain: &[CertificateDer<'_>]) {
    let leaf = dir.join("leaf.pem");
    let intermediates = dir.join("intermediates.pem");
    std::fs::write(&leaf, to_pem(&chain[..1])).unwrap();
    std::fs::write(&intermediates, to_pem(&chain[1..])).unwrap();
    let output = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(&intermediates)
        .arg(&leaf)
        .output()
        .expect("openssl should run");
    assert!(
        output.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fetches the SVID with py-spiffe, which parses the chain and the bundle, and checks that
/// the bundle it received is the root and that openssl accepts the chain it wrote. Skips
/// without the test venv.
fn pyspiffe_check(dir: &Path, agent: &AgentProcess, root_path: &Path, root: &[CertificateDer<'_>]) {
    let Some(python) = python() else { return };
    let out = dir.join("py");
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
        "py-spiffe check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["x509_spiffe_id"], WORKLOAD_ID);
    assert_eq!(
        pem_certificates(&std::fs::read(out.join("bundle.pem")).unwrap()),
        root,
        "py-spiffe's bundle is the root"
    );
    // py-spiffe's cert_chain starts with the leaf.
    let leaf = pem_certificates(&std::fs::read(out.join("leaf.pem")).unwrap());
    let chain = pem_certificates(&std::fs::read(out.join("chain.pem")).unwrap());
    assert_eq!(chain.len(), 3, "py-spiffe received the whole chain");
    assert_eq!(chain[0], leaf[0]);
    openssl_verify(&out, root_path, &chain);
}

fn show_x509(server: &ServerProcess) -> Value {
    let out = run_ok(&[
        "localauthority",
        "x509",
        "show",
        "--socket-path",
        server.socket_arg(),
        "--output",
        "json",
    ]);
    serde_json::from_str(&out).unwrap()
}

fn step(server: &ServerProcess, verb: &str, authority_id: Option<&str>) -> Value {
    let mut args = vec!["localauthority", "x509", verb];
    if let Some(id) = authority_id {
        args.extend(["--authority-id", id]);
    }
    args.extend(["--socket-path", server.socket_arg(), "--output", "json"]);
    serde_json::from_str(&run_ok(&args)).unwrap()
}

#[test]
fn upstream_disk_chains_to_root() {
    let dir = TempDir::new();
    let pki = make_pki(&dir.path().join("upstream"));
    let root = pem_certificates(&std::fs::read(&pki.root).unwrap());
    let upstream_cert = pem_certificates(&std::fs::read(&pki.cert).unwrap());

    let server = ServerProcess::start_with_blocks(dir.path(), "", &plugin_block(&pki));
    let bundle_pem = run_ok(&["bundle", "show", "--socket-path", server.socket_arg()]);
    assert_eq!(
        pem_certificates(bundle_pem.as_bytes()),
        root,
        "the server's bundle contains only the upstream root"
    );

    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);

    let first = fetch_until(
        &agent,
        &dir.path().join("svid-1"),
        "the first X.509-SVID",
        |_| true,
    );
    assert_eq!(first.bundle, root, "the Workload API bundle is the root");
    assert_eq!(
        first.chain.len(),
        3,
        "the chain is the leaf, the server's intermediate and the upstream certificate"
    );
    assert_eq!(first.chain[2], upstream_cert[0]);
    openssl_verify(dir.path(), &pki.root, &first.chain);

    pyspiffe_check(dir.path(), &agent, &pki.root, &root);

    // `show` names the upstream on a line of its own and in JSON.
    let shown = show_x509(&server);
    let active = shown["active"][0]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(authority_key_id(&first.chain[0]), active);
    assert_eq!(
        authority_key_id(&first.chain[1]),
        shown["upstream"]["authority_id"]
    );
    assert_eq!(shown["upstream"]["roots"], 1);
    let pretty = run_ok(&[
        "localauthority",
        "x509",
        "show",
        "--socket-path",
        server.socket_arg(),
    ]);
    assert!(
        pretty.contains("Upstream authority: "),
        "show prints the upstream line: {pretty}"
    );

    // A manual rotation: prepare and activate a new intermediate, then taint the old one so
    // that the agent replaces the workload's SVID at once.
    let prepared = step(&server, "prepare", None)["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    step(&server, "activate", Some(&prepared));
    let tainted = step(&server, "taint", Some(&active));
    assert!(
        tainted["notice"]
            .as_str()
            .unwrap_or_default()
            .contains("Agents replace"),
        "{tainted}"
    );
    let second = fetch_until(
        &agent,
        &dir.path().join("svid-2"),
        "an X.509-SVID from the new intermediate",
        |fetched| authority_key_id(&fetched.chain[0]) == prepared,
    );
    assert_eq!(second.bundle, root, "the bundle is still only the root");
    assert_eq!(second.chain.len(), 3);
    assert_ne!(second.chain[1], first.chain[1]);
    openssl_verify(dir.path(), &pki.root, &second.chain);

    // Revoking the old intermediate leaves the bundle as it was, and the output says so.
    let revoked = step(&server, "revoke", Some(&active));
    assert!(
        revoked["notice"]
            .as_str()
            .unwrap_or_default()
            .contains("The trust bundle is unchanged"),
        "{revoked}"
    );
    let bundle_pem = run_ok(&["bundle", "show", "--socket-path", server.socket_arg()]);
    assert_eq!(pem_certificates(bundle_pem.as_bytes()), root);
    let after = fetch_until(&agent, &dir.path().join("svid-3"), "an X.509-SVID", |_| {
        true
    });
    assert_eq!(after.bundle, root);
    openssl_verify(dir.path(), &pki.root, &after.chain);

    assert!(
        !server.log().contains("PRIVATE KEY"),
        "the server log contains no key material"
    );
}

#[test]
fn upstream_disk_rejects_readable_key() {
    let dir = TempDir::new();
    let pki = make_pki(&dir.path().join("upstream"));
    std::fs::set_permissions(
        &pki.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let config = dir.path().join("server.conf");
    std::fs::write(
        &config,
        format!(
            "server {{\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  \
             trust_domain = \"{TRUST_DOMAIN}\"\n  data_dir = \"{data}\"\n  \
             socket_path = \"{socket}\"\n}}\n{blocks}",
            port = free_port(),
            data = dir.path().join("server-data").display(),
            socket = dir.path().join("private/server.sock").display(),
            blocks = plugin_block(&pki),
        ),
    )
    .unwrap();
    let output = twid()
        .args(["server", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the server started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key_file_path"), "{stderr}");
    assert!(stderr.contains(&pki.key.display().to_string()), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// Returns the configuration blocks of a replica on `database` with its own key directory
/// under `dir`, signed by the upstream CA of `pki`.
fn replica_blocks(dir: &Path, database: &TestDatabase, pki: &UpstreamPki) -> String {
    format!(
        "plugins {{\n{datastore}  KeyManager \"disk\" {{\n    plugin_data {{\n      \
         keys_path = \"{keys}\"\n    }}\n  }}\n  UpstreamAuthority \"disk\" {{\n    \
         plugin_data {{\n      key_file_path = \"{key}\"\n      cert_file_path = \"{cert}\"\n      \
         bundle_file_path = \"{root}\"\n    }}\n  }}\n}}\n",
        datastore = database.plugin_block(),
        keys = dir.join("keys").display(),
        key = pki.key.display(),
        cert = pki.cert.display(),
        root = pki.root.display(),
    )
}

#[test]
fn upstream_disk_replicas_share_root() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let pki_dir = TempDir::new();
    let pki = make_pki(pki_dir.path());
    let root = pem_certificates(&std::fs::read(&pki.root).unwrap());
    let dir_a = TempDir::new();
    let dir_b = TempDir::new();
    let a = ServerProcess::start_with_blocks(
        dir_a.path(),
        "",
        &replica_blocks(dir_a.path(), &database, &pki),
    );
    let b = ServerProcess::start_with_blocks(
        dir_b.path(),
        "",
        &replica_blocks(dir_b.path(), &database, &pki),
    );

    // Each replica signs with its own intermediate under the same root.
    let active_a = show_x509(&a)["active"][0]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let active_b = show_x509(&b)["active"][0]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(active_a, active_b, "each replica has its own intermediate");

    // A prepares another intermediate; both bundles stay the one root, listed once.
    step(&a, "prepare", None);
    for server in [&a, &b] {
        let bundle = run_ok(&["bundle", "show", "--socket-path", server.socket_arg()]);
        assert_eq!(pem_certificates(bundle.as_bytes()), root);
    }

    // A workload under an agent of B gets an SVID from B's intermediate that verifies
    // against the root.
    let token = b.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    b.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir_b.path(), &b, &token);
    let fetched = fetch_until(&agent, &dir_b.path().join("svid"), "an X.509-SVID", |_| {
        true
    });
    assert_eq!(fetched.bundle, root);
    assert_eq!(authority_key_id(&fetched.chain[0]), active_b);
    openssl_verify(dir_b.path(), &pki.root, &fetched.chain);
}
