//! The unix attestor against real processes: this test process and children it spawns.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use twid_attestation::AttestationError;
use twid_attestation::workload::unix::{UnixAttestor, UnixAttestorOptions};
use twid_attestation::workload::{PeerCredentials, Selector, WorkloadAttestor};

/// A uid and gid that no test machine is expected to have in its user database.
const UNPRIVILEGED_ID: u32 = 64001;

fn attestor(discover_workload_path: bool, workload_size_limit: i64) -> UnixAttestor {
    UnixAttestor::new(UnixAttestorOptions {
        discover_workload_path,
        workload_size_limit,
    })
}

/// Reads this process's credentials the way the agent does: SO_PEERCRED on a socket pair.
async fn own_peer_credentials() -> PeerCredentials {
    let (ours, _theirs) = tokio::net::UnixStream::pair().expect("socket pair");
    twid_uds::UdsConnection::new(ours)
        .expect("peer credentials")
        .peer()
}

fn values_of(selectors: &[Selector], prefix: &str) -> Vec<String> {
    selectors
        .iter()
        .filter_map(|s| s.value.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Looks a name up in a colon-separated database file (`/etc/passwd`, `/etc/group`) by id.
fn name_in_database(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[2] == id.to_string()).then(|| fields[0].to_owned())
    })
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pid fits in i32")
}

/// Waits until `/proc/<pid>/stat` reports `state`, for at most 10 seconds.
fn wait_for_state(pid: i32, state: char) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
        let after_name = &stat[stat.rfind(')').expect("command name") + 1..];
        if after_name.split_whitespace().next() == Some(&state.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never reached state {state}: {stat}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn own_process_selectors_match() {
    let peer = own_peer_credentials().await;
    let own_pid = i32::try_from(std::process::id()).expect("pid fits in i32");
    assert_eq!(peer.pid, Some(own_pid));

    let selectors = attestor(true, 0).attest(&peer).expect("attest");
    assert!(selectors.iter().all(|s| s.kind == "unix"), "{selectors:?}");

    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    assert_eq!(values_of(&selectors, "uid:"), [uid.to_string()]);
    assert_eq!(values_of(&selectors, "gid:"), [gid.to_string()]);
    let user: Vec<String> = name_in_database("/etc/passwd", uid).into_iter().collect();
    assert_eq!(values_of(&selectors, "user:"), user);
    let group: Vec<String> = name_in_database("/etc/group", gid).into_iter().collect();
    assert_eq!(values_of(&selectors, "group:"), group);

    let groups: BTreeSet<String> = nix::unistd::getgroups()
        .expect("getgroups")
        .iter()
        .map(|g| g.as_raw().to_string())
        .collect();
    let reported: BTreeSet<String> = values_of(&selectors, "supplementary_gid:")
        .into_iter()
        .collect();
    assert_eq!(reported, groups);

    let exe = std::env::current_exe().expect("current exe");
    let expected_path = exe.to_str().expect("utf-8 path").to_owned();
    assert_eq!(values_of(&selectors, "path:"), [expected_path]);
    let expected_hash = sha256_hex(&std::fs::read(&exe).expect("read own executable"));
    assert_eq!(values_of(&selectors, "sha256:"), [expected_hash]);
}

#[tokio::test]
async fn selector_order_follows_spire() {
    let peer = own_peer_credentials().await;
    let selectors = attestor(true, 0).attest(&peer).expect("attest");
    let kinds: Vec<&str> = selectors
        .iter()
        .map(|s| s.value.split_once(':').expect("name:value").0)
        .collect();
    let rank = |kind: &str| match kind {
        "uid" => 0,
        "user" => 1,
        "gid" => 2,
        "group" => 3,
        "supplementary_gid" | "supplementary_group" => 4,
        "path" => 5,
        "sha256" => 6,
        other => panic!("unexpected selector kind {other}"),
    };
    let ranks: Vec<i32> = kinds.iter().map(|k| rank(k)).collect();
    assert!(ranks.is_sorted(), "{kinds:?}");
    assert_eq!(kinds.first(), Some(&"uid"));
    assert_eq!(kinds.last(), Some(&"sha256"));
}

#[tokio::test]
async fn without_path_discovery_no_path_or_hash() {
    let peer = own_peer_credentials().await;
    let selectors = attestor(false, 0).attest(&peer).expect("attest");
    assert!(values_of(&selectors, "path:").is_empty(), "{selectors:?}");
    assert!(values_of(&selectors, "sha256:").is_empty(), "{selectors:?}");
    assert_eq!(values_of(&selectors, "uid:").len(), 1);
}

#[tokio::test]
async fn size_limit_rejects_larger_executable() {
    let peer = own_peer_credentials().await;
    let exe = std::env::current_exe().expect("current exe");
    let size = std::fs::metadata(&exe).expect("metadata").len();
    let limit = i64::try_from(size).expect("size fits in i64");

    let at_limit = attestor(true, limit)
        .attest(&peer)
        .expect("attest at limit");
    assert_eq!(values_of(&at_limit, "sha256:").len(), 1);

    let err = attestor(true, limit - 1)
        .attest(&peer)
        .expect_err("must reject an executable over the limit");
    match &err {
        AttestationError::WorkloadTooLarge {
            pid,
            size: reported,
            limit: configured,
            ..
        } => {
            assert_eq!(Some(*pid), peer.pid);
            assert_eq!(*reported, size);
            assert_eq!(*configured, size - 1);
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("workload size limit"), "{message}");
}

#[tokio::test]
async fn negative_size_limit_skips_hash() {
    let peer = own_peer_credentials().await;
    let selectors = attestor(true, -1).attest(&peer).expect("attest");
    assert_eq!(values_of(&selectors, "path:").len(), 1, "{selectors:?}");
    assert!(values_of(&selectors, "sha256:").is_empty(), "{selectors:?}");
}

#[test]
fn missing_pid_is_rejected() {
    let caller = PeerCredentials {
        uid: 0,
        gid: 0,
        pid: None,
    };
    let err = attestor(true, 0).attest(&caller).expect_err("must reject");
    assert!(
        matches!(err, AttestationError::MissingPid { attestor: "unix" }),
        "{err}"
    );
}

#[test]
fn unknown_pid_is_not_found() {
    // Linux caps pids at 2^22 (PID_MAX_LIMIT), so i32::MAX never names a process.
    let caller = PeerCredentials {
        uid: 0,
        gid: 0,
        pid: Some(i32::MAX),
    };
    let err = attestor(false, 0).attest(&caller).expect_err("must reject");
    assert!(
        matches!(err, AttestationError::ProcessNotFound { pid: i32::MAX }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&i32::MAX.to_string()), "{message}");
}

#[test]
fn reaped_child_is_not_found() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = pid_of(&child);
    child.wait().expect("wait");
    let caller = PeerCredentials {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: Some(pid),
    };
    let err = attestor(true, 0).attest(&caller).expect_err("must reject");
    assert!(
        matches!(err, AttestationError::ProcessNotFound { pid: p } if p == pid),
        "{err}"
    );
}

#[test]
fn zombie_child_is_rejected() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = pid_of(&child);
    wait_for_state(pid, 'Z');
    let caller = PeerCredentials {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: Some(pid),
    };
    let result = attestor(false, 0).attest(&caller);
    child.wait().expect("wait");
    let err = result.expect_err("must reject");
    assert!(
        matches!(err, AttestationError::ProcessExited { pid: p, state: 'Z' } if p == pid),
        "{err}"
    );
}

#[test]
fn uid_mismatch_is_rejected() {
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = pid_of(&child);
    let own_uid = nix::unistd::geteuid().as_raw();
    let claimed_uid = own_uid.wrapping_add(1);
    let caller = PeerCredentials {
        uid: claimed_uid,
        gid: 0,
        pid: Some(pid),
    };
    let result = attestor(false, 0).attest(&caller);
    child.kill().expect("kill");
    child.wait().expect("wait");
    match result.expect_err("must reject") {
        AttestationError::UidMismatch {
            pid: p,
            peer_uid,
            process_uid,
        } => {
            assert_eq!(p, pid);
            assert_eq!(peer_uid, claimed_uid);
            assert_eq!(process_uid, own_uid);
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn child_as_other_uid_attested() {
    if !nix::unistd::geteuid().is_root() {
        println!("not running as root, skipping child_as_other_uid_attested");
        return;
    }
    let mut child = Command::new("sleep")
        .arg("30")
        .uid(UNPRIVILEGED_ID)
        .gid(UNPRIVILEGED_ID)
        .spawn()
        .expect("spawn sleep as uid 64001");
    let pid = pid_of(&child);
    // `spawn` returns after exec, so /proc/<pid>/exe is already `sleep`.

    let caller = PeerCredentials {
        uid: UNPRIVILEGED_ID,
        gid: UNPRIVILEGED_ID,
        pid: Some(pid),
    };
    let attested = attestor(true, 0).attest(&caller);
    let as_root = attestor(false, 0).attest(&PeerCredentials { uid: 0, ..caller });
    child.kill().expect("kill");
    child.wait().expect("wait");

    let selectors = attested.expect("attest child");
    assert_eq!(values_of(&selectors, "uid:"), ["64001"]);
    assert_eq!(values_of(&selectors, "gid:"), ["64001"]);
    let user: Vec<String> = name_in_database("/etc/passwd", UNPRIVILEGED_ID)
        .into_iter()
        .collect();
    assert_eq!(values_of(&selectors, "user:"), user);
    // std clears the supplementary groups when a root parent sets only uid and gid.
    assert!(
        values_of(&selectors, "supplementary_gid:").is_empty(),
        "{selectors:?}"
    );
    let path = values_of(&selectors, "path:");
    assert_eq!(path.len(), 1);
    assert!(path[0].ends_with("/sleep"), "{path:?}");
    let expected_hash = sha256_hex(&std::fs::read(&path[0]).expect("read sleep"));
    assert_eq!(values_of(&selectors, "sha256:"), [expected_hash]);

    let err = as_root.expect_err("a root peer must not match a uid 64001 process");
    assert!(
        matches!(
            err,
            AttestationError::UidMismatch {
                process_uid: 64001,
                ..
            }
        ),
        "{err}"
    );
}
