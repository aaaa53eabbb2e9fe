//! The agent side of revocation and sync hints, end to end: a join-token agent with 1,000
//! entries in ten groups of 100 (each group selects `unix:uid:0` and its own `unix:gid`), one
//! `twid api watch x509` client per group, and `twid revoke --selector unix:gid:<G>`.
//!
//! The agent syncs every 10 minutes here, so every change the clients see within the test's
//! timeouts came through the server's Watch hints. `crates/cli/benches/revoke.rs` reuses these
//! helpers.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twid_proto::admin::CreateEntryRequest;
use twid_proto::types::{Entry, Selector};

use super::common::{AgentProcess, ServerProcess, TRUST_DOMAIN, TempDir, agent_id, twid};

#[allow(dead_code)]
#[path = "../../src/client.rs"]
mod client;

/// Entry groups, one watch client each.
pub(crate) const GROUPS: u32 = 10;
/// Entries per group.
pub(crate) const GROUP_SIZE: u32 = 100;
/// The first group's gid; group `g` selects `FIRST_GID + g`. Group ids this high are normally
/// unused, so that no other process matches the entries.
pub(crate) const FIRST_GID: u32 = 61_000;

/// One line that `twid api watch x509` printed.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    /// When the client received the update, Unix milliseconds.
    pub(crate) received_unix_ms: u64,
    /// Lowercase hex serials of the SVIDs in the update; empty for an error line.
    pub(crate) serials: BTreeSet<String>,
    /// The gRPC code of an error line, such as `PermissionDenied`.
    pub(crate) error_code: Option<String>,
}

/// A running `twid api watch x509` process and the lines it printed so far.
pub(crate) struct WatchClient {
    child: Child,
    updates: Arc<Mutex<Vec<Update>>>,
}

impl WatchClient {
    /// Starts `twid api watch x509` against `socket` with group id `gid` (the process keeps
    /// this process's uid). Changing the gid needs root.
    pub(crate) fn start(socket: &Path, gid: Option<u32>) -> Self {
        let mut command = twid();
        command
            .args(["api", "watch", "x509", "--socket-path"])
            .arg(socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(gid) = gid {
            command.gid(gid);
        }
        let mut child = command.spawn().expect("twid api watch should start");
        let stdout = child.stdout.take().expect("piped stdout");
        let updates = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&updates);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let update = parse_update(&line);
                sink.lock().unwrap().push(update);
            }
        });
        Self { child, updates }
    }

    /// Returns every update received so far.
    pub(crate) fn updates(&self) -> Vec<Update> {
        self.updates.lock().unwrap().clone()
    }

    /// Returns the latest update, if any.
    pub(crate) fn latest(&self) -> Option<Update> {
        self.updates.lock().unwrap().last().cloned()
    }
}

impl Drop for WatchClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_update(line: &str) -> Update {
    let json: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|error| panic!("bad line {line:?}: {error}"));
    let serials = json["svids"]
        .as_array()
        .expect("svids array")
        .iter()
        .map(|svid| svid["serial"].as_str().expect("serial").to_owned())
        .collect();
    Update {
        received_unix_ms: json["received_unix_ms"].as_u64().expect("receive time"),
        serials,
        error_code: json["error"]["code"].as_str().map(str::to_owned),
    }
}

/// Returns the current time in Unix milliseconds.
pub(crate) fn unix_millis() -> u64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(elapsed.as_millis()).unwrap()
}

/// Starts an agent like [`AgentProcess::start`] does, but with `sync_interval`, so that only
/// the server's hints make it sync within a test.
pub(crate) fn start_agent(
    dir: &Path,
    server: &ServerProcess,
    token: &str,
    sync_interval: &str,
    log_level: &str,
) -> AgentProcess {
    let socket = dir.join("agent.sock");
    let bundle = dir.join("bootstrap.pem");
    server.write_bundle(&bundle);
    let config = dir.join("agent.conf");
    let text = format!(
        "agent {{\n  trust_domain = \"{TRUST_DOMAIN}\"\n  server_address = \"127.0.0.1\"\n  \
         server_port = \"{port}\"\n  socket_path = \"{socket}\"\n  data_dir = \"{data}\"\n  \
         trust_bundle_path = \"{bundle}\"\n  join_token = \"{token}\"\n  \
         log_level = \"{log_level}\"\n  \
         experimental {{\n    sync_interval = \"{sync_interval}\"\n  }}\n}}\n\
         plugins {{\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{}}\n  }}\n}}\n",
        port = server.port,
        socket = socket.display(),
        data = dir.join("agent-data").display(),
        bundle = bundle.display(),
    );
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = twid()
        .args(["agent", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent should start");
    let mut agent = AgentProcess {
        child: Some(child),
        socket: socket.clone(),
        dir: dir.to_path_buf(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        let exited = agent
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        assert!(
            exited.is_none() && std::time::Instant::now() < deadline,
            "the agent did not create its socket ({exited:?}); log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

/// Returns the gid of group `group`.
pub(crate) fn group_gid(group: u32) -> u32 {
    FIRST_GID + group
}

/// Registers `GROUPS * GROUP_SIZE` entries under `parent_id` through the admin API; group `g`
/// selects `unix:uid:<uid>` and `unix:gid:<FIRST_GID + g>`.
pub(crate) fn register_groups(admin_socket: &Path, parent_id: &str, uid: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut admin = client::admin(admin_socket).await.unwrap();
        for group in 0..GROUPS {
            for index in 0..GROUP_SIZE {
                let entry = Entry {
                    spiffe_id: format!("spiffe://{TRUST_DOMAIN}/group{group}/workload{index}"),
                    parent_id: parent_id.to_owned(),
                    selectors: vec![
                        Selector {
                            r#type: "unix".into(),
                            value: format!("uid:{uid}"),
                        },
                        Selector {
                            r#type: "unix".into(),
                            value: format!("gid:{}", group_gid(group)),
                        },
                    ],
                    ..Entry::default()
                };
                admin
                    .create_entry(CreateEntryRequest { entry: Some(entry) })
                    .await
                    .unwrap();
            }
        }
    });
}

/// Polls `check` every 10 ms until it returns a value or `timeout` passes.
pub(crate) fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until every client's latest update has a full group of SVIDs, and returns the serials
/// per client.
pub(crate) fn wait_all_signed(clients: &[WatchClient], timeout: Duration) -> Vec<BTreeSet<String>> {
    wait_for(timeout, "every group's SVIDs", || {
        let latest: Vec<BTreeSet<String>> = clients
            .iter()
            .filter_map(|client| client.latest().map(|update| update.serials))
            .collect();
        let complete = latest.len() == clients.len()
            && latest
                .iter()
                .all(|serials| serials.len() == GROUP_SIZE as usize);
        complete.then_some(latest)
    })
}

/// Runs `twid revoke --selector <selector>`, which must succeed.
pub(crate) fn revoke_selector(server: &ServerProcess, selector: &str) {
    let output = twid()
        .args(["revoke", "--selector", selector, "--socket-path"])
        .arg(server.socket_arg())
        .output()
        .expect("twid revoke should run");
    assert!(
        output.status.success(),
        "twid revoke --selector {selector} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server, an agent and one watch client per group, all running.
pub(crate) struct Fleet {
    pub(crate) server: ServerProcess,
    pub(crate) agent: AgentProcess,
    /// The agent's SPIFFE ID, the parent of every entry.
    pub(crate) agent_id: String,
    pub(crate) clients: Vec<WatchClient>,
    /// The serials each client held once every SVID was signed.
    pub(crate) initial: Vec<BTreeSet<String>>,
    // Dropped last, after the processes that use it.
    _dir: TempDir,
}

impl Fleet {
    /// Starts the fleet and waits until every client has its group's 100 SVIDs.
    pub(crate) fn start(agent_log_level: &str) -> Self {
        let dir = TempDir::new();
        let server = ServerProcess::start(dir.path(), "");
        let token = server.generate_token();
        let uid = nix::unistd::geteuid().as_raw();
        let parent = agent_id(&token);
        register_groups(&server.socket, &parent, uid);
        let agent = start_agent(dir.path(), &server, &token, "10m", agent_log_level);
        let clients: Vec<WatchClient> = (0..GROUPS)
            .map(|group| WatchClient::start(&agent.socket, Some(group_gid(group))))
            .collect();
        let initial = wait_all_signed(&clients, Duration::from_secs(120));
        Self {
            server,
            agent,
            agent_id: parent,
            clients,
            initial,
            _dir: dir,
        }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.agent.socket.clone()
    }
}

/// Waits until `client` prints an update without SVIDs received at or after `since_ms`, and
/// returns it.
pub(crate) fn wait_emptied(client: &WatchClient, since_ms: u64, timeout: Duration) -> Update {
    wait_for(
        timeout,
        "the revoked group's client to lose its SVIDs",
        || {
            client
                .updates()
                .into_iter()
                .find(|update| update.received_unix_ms >= since_ms && update.serials.is_empty())
        },
    )
}

#[test]
fn revoked_group_loses_only_its_svids() {
    if !super::common::is_root() {
        println!("not running as root, skipping: watch clients need setgid to their group");
        return;
    }
    let fleet = Fleet::start("DEBUG");
    let revoked_group = 3;
    let revoked_serials = fleet.initial[revoked_group as usize].clone();
    let before = unix_millis();
    revoke_selector(
        &fleet.server,
        &format!("unix:gid:{}", group_gid(revoked_group)),
    );
    let emptied = wait_emptied(
        &fleet.clients[revoked_group as usize],
        before,
        Duration::from_secs(30),
    );
    println!(
        "group {revoked_group} lost its SVIDs {} ms after twid revoke started",
        emptied.received_unix_ms.saturating_sub(before)
    );
    assert_eq!(
        emptied.error_code.as_deref(),
        Some("PermissionDenied"),
        "a caller left without identities gets PermissionDenied: {emptied:?}"
    );

    // A new entry in group 0 makes the server send a hint, so the agent syncs again with the
    // revoked serials listed and their re-signing refused.
    fleet.server.create_entry(
        &format!("spiffe://{TRUST_DOMAIN}/group0/added"),
        &fleet.agent_id,
        &[
            &format!("unix:uid:{}", nix::unistd::geteuid().as_raw()),
            &format!("unix:gid:{}", group_gid(0)),
        ],
    );
    wait_for(Duration::from_secs(30), "the added entry's SVID", || {
        let latest = fleet.clients[0].latest()?;
        (latest.serials.len() == GROUP_SIZE as usize + 1).then_some(())
    });

    for (group, client) in fleet.clients.iter().enumerate() {
        let updates = client.updates();
        for update in updates.iter().filter(|u| u.received_unix_ms >= before) {
            let served: Vec<&String> = update.serials.intersection(&revoked_serials).collect();
            assert!(
                served.is_empty(),
                "group {group} was served revoked serials after the revocation: {served:?}"
            );
        }
        if group == revoked_group as usize || group == 0 {
            continue;
        }
        let latest = client.latest().expect("an update");
        assert_eq!(
            latest.serials, fleet.initial[group],
            "group {group} must keep its exact serials"
        );
    }
    let group0 = fleet.clients[0].latest().expect("an update");
    assert!(
        group0.serials.is_superset(&fleet.initial[0]),
        "group 0 must keep its serials"
    );
    let revoked_latest = fleet.clients[revoked_group as usize]
        .latest()
        .expect("an update");
    assert!(revoked_latest.serials.is_empty(), "{revoked_latest:?}");

    // A new caller in the revoked group is refused too.
    let output = twid()
        .args(["api", "fetch", "x509", "--socket-path"])
        .arg(fleet.socket())
        .gid(group_gid(revoked_group))
        .output()
        .expect("twid api fetch should run");
    assert!(
        !output.status.success(),
        "a caller in the revoked group got SVIDs: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no identity issued"), "{stderr}");
}

#[test]
fn hint_syncs_long_before_interval() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    let parent = agent_id(&token);
    server.create_entry(
        &format!("spiffe://{TRUST_DOMAIN}/first"),
        &parent,
        &[&selector],
    );
    let agent = start_agent(dir.path(), &server, &token, "10m", "DEBUG");
    let client = WatchClient::start(&agent.socket, None);
    wait_for(Duration::from_secs(30), "the first SVID", || {
        let latest = client.latest()?;
        (latest.serials.len() == 1).then_some(())
    });

    server.create_entry(
        &format!("spiffe://{TRUST_DOMAIN}/second"),
        &parent,
        &[&selector],
    );
    // The sync interval is 10 minutes, so only the server's hint can bring the new entry
    // within this timeout.
    wait_for(Duration::from_secs(30), "the new entry's SVID", || {
        let latest = client.latest()?;
        (latest.serials.len() == 2).then_some(())
    });
    let log = agent.log();
    assert!(log.contains("sync hint received"), "agent log:\n{log}");
}
