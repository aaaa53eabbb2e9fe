//! `twid helper` against a real agent: the SVID, key, bundle and JWT-SVID files, their modes,
//! rewrites across SVID rotations, and the renew signal to a pid-file process and a `cmd`
//! child.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use twid_spiffe::x509::{X509BundleSet, verify_x509_svid};
use twid_spiffe::{TrustDomain, X509Bundle, X509Svid};

use crate::common::*;

const WORKLOAD_ID: &str = "spiffe://example.org/helper";

/// A server, an agent and an entry that gives this test process `WORKLOAD_ID`.
struct Deployment {
    dir: TempDir,
    server: ServerProcess,
    agent: AgentProcess,
}

impl Deployment {
    fn start(server_extra: &str) -> Self {
        let dir = TempDir::new();
        let server = ServerProcess::start(dir.path(), server_extra);
        let token = server.generate_token();
        let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
        server.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
        let agent = AgentProcess::start(dir.path(), &server, &token);
        Self { dir, server, agent }
    }

    fn cert_dir(&self) -> PathBuf {
        let path = self.dir.path().join("certs");
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    fn logs(&self) -> String {
        format!(
            "server log:\n{}\nagent log:\n{}",
            self.server.log(),
            self.agent.log()
        )
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Reads the SVID, key and bundle files, checks that the key matches the leaf, that the leaf
/// names `WORKLOAD_ID` and that the chain verifies against the bundle file, and returns the
/// leaf certificate.
fn try_read_svid(cert_dir: &Path) -> Result<Vec<u8>, String> {
    let read =
        |name: &str| std::fs::read(cert_dir.join(name)).map_err(|error| format!("{name}: {error}"));
    let certs = read("svid.pem")?;
    let key = read("svid_key.pem")?;
    let bundle = read("svid_bundle.pem")?;
    let svid =
        X509Svid::parse_pem(&certs, &key).map_err(|error| format!("SVID and key: {error}"))?;
    if svid.spiffe_id().to_string() != WORKLOAD_ID {
        return Err(format!("SVID names {}", svid.spiffe_id()));
    }
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut bundles = X509BundleSet::new();
    let parsed =
        X509Bundle::parse_pem(trust_domain, &bundle).map_err(|error| format!("bundle: {error}"))?;
    bundles.insert(parsed);
    verify_x509_svid(svid.chain(), &bundles, SystemTime::now())
        .map_err(|error| format!("SVID does not verify against the bundle file: {error:?}"))?;
    Ok(svid.leaf().to_vec())
}

/// Like [`try_read_svid`], but waits out a rewrite that happens between reading two files.
fn read_checked_svid(cert_dir: &Path) -> Vec<u8> {
    let mut last = Err(String::new());
    for _ in 0..20 {
        last = try_read_svid(cert_dir);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    last.unwrap_or_else(|error| panic!("invalid helper files in {}: {error}", cert_dir.display()))
}

/// Returns the pid that the helper logged for its `cmd` child.
fn logged_cmd_pid(helper_log: &str) -> i32 {
    let line = helper_log
        .lines()
        .find(|line| line.contains("started cmd"))
        .expect("the helper should log the cmd start");
    let pid = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("pid="))
        .expect("the start line should carry pid=");
    pid.parse().unwrap()
}

/// A child process that gets SIGTERM when dropped, so that a failed test leaves no helper,
/// and through the helper no `cmd` child, running.
pub(crate) struct StopOnDrop(pub(crate) Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            stop(&mut self.0);
        }
    }
}

pub(crate) fn spawn_helper(config: &Path, log: &Path) -> StopOnDrop {
    let log = std::fs::File::create(log).unwrap();
    let child = twid()
        .args(["helper", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("helper should start");
    StopOnDrop(child)
}

/// Returns whether this process ignores SIGHUP, from the `SigIgn` mask in /proc/self/status
/// (bit 0 is signal 1, SIGHUP).
fn sighup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 == 1)
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// Starts a shell that writes its pid to `pid_file` and appends a line to `hup_log` on each
/// SIGHUP.
fn spawn_signal_target(pid_file: &Path, hup_log: &Path) -> StopOnDrop {
    let script = format!(
        "trap 'echo hup >> {log}' HUP; echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; \
         while :; do sleep 0.1; done",
        log = hup_log.display(),
        pid = pid_file.display(),
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("sh should start");
    let target = StopOnDrop(child);
    wait_until(Duration::from_secs(5), "the pid file", || pid_file.exists());
    target
}

/// Sends SIGTERM and waits up to 10 s for the exit status, then kills the process.
pub(crate) fn stop(child: &mut Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    panic!(
        "process {} ignored SIGTERM for 10 s and was killed ({status})",
        child.id()
    );
}

#[test]
fn helper_follows_two_svid_rotations() {
    // Workload SVIDs rotate quickly. The agent keeps its own SVID for an hour, so that a renewal
    // delayed by a loaded machine cannot lock it out of the server.
    let deployment = Deployment::start("  default_x509_svid_ttl = \"20s\"\n  agent_ttl = \"1h\"");
    let cert_dir = deployment.cert_dir();
    let work = deployment.dir.path();

    let pid_file = work.join("target.pid");
    let pid_hups = work.join("target.hups");
    let mut target = spawn_signal_target(&pid_file, &pid_hups);

    // cmd_args is split at whitespace, so the child's script lives in a file.
    let cmd_starts = work.join("cmd.starts");
    let cmd_hups = work.join("cmd.hups");
    let script = write_file(
        work,
        "cmd.sh",
        &format!(
            "trap 'echo hup >> {hups}' HUP\ntrap 'exit 0' TERM\necho started >> {starts}\n\
             while :; do sleep 0.1; done\n",
            hups = cmd_hups.display(),
            starts = cmd_starts.display(),
        ),
    );
    let config = write_file(
        work,
        "helper.conf",
        &format!(
            "agent_address = \"{socket}\"\ncert_dir = \"{certs}\"\ncmd = \"/bin/sh\"\n\
             cmd_args = \"{script}\"\nrenew_signal = \"SIGHUP\"\npid_file_name = \"{pid}\"\n\
             jwt_svids = [{{jwt_audience = \"helper-test\", jwt_svid_file_name = \"jwt.token\"}}]\n",
            socket = deployment.agent.socket.display(),
            certs = cert_dir.display(),
            pid = pid_file.display(),
        ),
    );
    let helper_log = work.join("helper.log");
    let mut helper = spawn_helper(Path::new(&config), &helper_log);

    wait_until(Duration::from_secs(30), "the helper's first files", || {
        cert_dir.join("jwt.token").exists()
    });
    assert_eq!(mode(&cert_dir.join("svid.pem")), 0o644);
    assert_eq!(mode(&cert_dir.join("svid_bundle.pem")), 0o644);
    assert_eq!(mode(&cert_dir.join("svid_key.pem")), 0o600);
    assert_eq!(mode(&cert_dir.join("jwt.token")), 0o600);
    let token = std::fs::read_to_string(cert_dir.join("jwt.token")).unwrap();
    let jwt = twid_spiffe::jwt::JwtSvid::parse_insecure(token.trim()).unwrap();
    assert_eq!(jwt.spiffe_id.to_string(), WORKLOAD_ID);

    // Each distinct leaf is one SVID the helper wrote; the first plus two rotations is three.
    let mut leaves = vec![read_checked_svid(&cert_dir)];
    wait_until(
        Duration::from_secs(90),
        "two SVID rotations in the files",
        || {
            let leaf = read_checked_svid(&cert_dir);
            if !leaves.contains(&leaf) {
                leaves.push(leaf);
            }
            leaves.len() >= 3
        },
    );
    // A shell cannot trap a signal that was ignored when it started, and child processes
    // inherit that (a test run under nohup, for example), so the handlers would never run.
    let hup_ignored = sighup_ignored();
    if hup_ignored {
        println!(
            "SIGHUP is ignored by this test process (started under nohup?); the helper's \
             signals are checked in its log only"
        );
    }
    // The signal follows the file writes; a loaded machine can delay the handler's output.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let signals_seen = || line_count(&pid_hups) >= 2 && line_count(&cmd_hups) >= 2;
    while !hup_ignored && !signals_seen() {
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for SIGHUP after each rotation: {} to the pid_file process, \
                 {} to cmd, {} distinct leaves; helper log:\n{}",
                line_count(&pid_hups),
                line_count(&cmd_hups),
                leaves.len(),
                std::fs::read_to_string(&helper_log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let helper_text = std::fs::read_to_string(&helper_log).unwrap_or_default();
    if hup_ignored {
        let to_cmd = helper_text.matches("target=\"cmd\"").count();
        let to_pid_file = helper_text.matches("target=\"pid_file_name\"").count();
        assert!(to_cmd >= 2, "helper log:\n{helper_text}");
        assert!(to_pid_file >= 2, "helper log:\n{helper_text}");
    }
    assert_eq!(
        line_count(&cmd_starts),
        1,
        "cmd should start once and then only be signalled; helper log:\n{helper_text}"
    );
    assert!(
        helper_text.contains("wrote the X.509-SVID files"),
        "helper log:\n{helper_text}\n{}",
        deployment.logs()
    );
    assert!(
        !helper_text.contains("BEGIN PRIVATE KEY") && !helper_text.contains(token.trim()),
        "the helper must not log key material or tokens"
    );

    let cmd_pid = nix::unistd::Pid::from_raw(logged_cmd_pid(&helper_text));
    let status = stop(&mut helper.0);
    assert!(status.success(), "helper exit status {status}");
    // The helper stops its cmd child when it stops.
    wait_until(Duration::from_secs(5), "the cmd child to exit", || {
        nix::sys::signal::kill(cmd_pid, None).is_err()
    });
    stop(&mut target.0);
}

#[test]
fn helper_daemon_mode_false_writes_once() {
    let deployment = Deployment::start("");
    let cert_dir = deployment.cert_dir();
    let work = deployment.dir.path();
    let config = write_file(
        work,
        "helper.conf",
        &format!(
            "agent_address = \"{socket}\"\ncert_dir = \"{certs}\"\ndaemon_mode = true\n\
             svid_file_name = \"svid.pem\"\nkey_file_mode = 0640\ncert_file_mode = 0444\n\
             add_intermediates_to_bundle = true\n",
            socket = deployment.agent.socket.display(),
            certs = cert_dir.display(),
        ),
    );
    // Both spellings override daemon_mode = true in the file.
    for flag in [
        ["--daemon-mode", "false"].as_slice(),
        &["-daemon-mode=false"],
    ] {
        for name in ["svid.pem", "svid_key.pem", "svid_bundle.pem"] {
            let _ = std::fs::remove_file(cert_dir.join(name));
        }
        let output = twid()
            .args(["helper", "--config", &config])
            .args(flag)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "helper {flag:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            deployment.logs()
        );
        read_checked_svid(&cert_dir);
        assert_eq!(mode(&cert_dir.join("svid.pem")), 0o444);
        assert_eq!(mode(&cert_dir.join("svid_bundle.pem")), 0o444);
        assert_eq!(mode(&cert_dir.join("svid_key.pem")), 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(&cert_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

#[test]
fn helper_daemon_mode_false_waits_for_socket() {
    let deployment = Deployment::start("");
    let cert_dir = deployment.cert_dir();
    let work = deployment.dir.path();
    // The socket path appears only after the helper started, as in an init container that
    // races the agent.
    let late_socket = work.join("late.sock");
    let config = write_file(
        work,
        "late.conf",
        &format!(
            "agent_address = \"{socket}\"\ncert_dir = \"{certs}\"\ndaemon_mode = false\n",
            socket = late_socket.display(),
            certs = cert_dir.display(),
        ),
    );
    let child = twid()
        .args(["helper", "--config", &config, "--timeout", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::os::unix::fs::symlink(&deployment.agent.socket, &late_socket).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "helper did not wait for the socket: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_checked_svid(&cert_dir);
}

#[test]
fn helper_writes_der_files() {
    let deployment = Deployment::start("");
    let cert_dir = deployment.cert_dir();
    let config = write_file(
        deployment.dir.path(),
        "helper.conf",
        &format!(
            "agent_address = \"{socket}\"\ncert_dir = \"{certs}\"\ndaemon_mode = false\n\
             file_format = \"der\"\nsvid_file_name = \"svid.der\"\n\
             svid_key_file_name = \"svid_key.der\"\nsvid_bundle_file_name = \"bundle.der\"\n",
            socket = deployment.agent.socket.display(),
            certs = cert_dir.display(),
        ),
    );
    let output = run(&["helper", "--config", &config]);
    assert!(
        output.status.success(),
        "helper failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        deployment.logs()
    );

    let chain = std::fs::read(cert_dir.join("svid.der")).unwrap();
    let key = std::fs::read(cert_dir.join("svid_key.der")).unwrap();
    let svid = X509Svid::parse_der(&chain, &key).expect("DER SVID and key should match");
    assert_eq!(svid.spiffe_id().to_string(), WORKLOAD_ID);

    let bundle = std::fs::read(cert_dir.join("bundle.der")).unwrap();
    let authorities = twid_spiffe::x509::split_der_certificates(&bundle).unwrap();
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut bundles = X509BundleSet::new();
    bundles.insert(X509Bundle::from_authorities(trust_domain, authorities).unwrap());
    let verified = verify_x509_svid(svid.chain(), &bundles, SystemTime::now());
    assert!(verified.is_ok(), "DER SVID does not verify: {verified:?}");
    assert_eq!(mode(&cert_dir.join("svid_key.der")), 0o600);
}

#[test]
fn helper_rejects_missing_cert_dir() {
    let dir = TempDir::new();
    let config = write_file(
        dir.path(),
        "helper.conf",
        &format!(
            "agent_address = \"{}\"\ncert_dir = \"{}\"\n",
            dir.path().join("agent.sock").display(),
            dir.path().join("absent").display()
        ),
    );
    let output = run(&["helper", "--config", &config, "--daemon-mode", "false"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a directory"), "{stderr}");
}
