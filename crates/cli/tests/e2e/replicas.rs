//! Two `twid server run` replicas on one PostgreSQL database. Replica A and replica B share
//! the database and have their own data directories, CA key directories (`KeyManager "disk"`),
//! CA keys and listen ports. The trust bundle of each is the union of both replicas'
//! authorities. An agent attests to B with a 10-minute sync interval, so it syncs within a
//! test only when B's Watch stream sends it a hint. Changes made through A's admin API reach B
//! only as PostgreSQL notifications.
//!
//! The PostgreSQL requirements and the skip rule are those of `issuance_log_postgres.rs`.
//! `crates/cli/benches/replicas.rs` reuses [`Replicas`] to measure the propagation latency.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::common::*;
use crate::revoke_agent::start_agent;

/// Functional bound for a change made through A to reach the workload through B's agent. The
/// notification itself takes milliseconds; the bound leaves room for a loaded machine.
pub(crate) const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's sync interval, far longer than any test, so that only hints make it sync.
pub(crate) const SYNC_INTERVAL: &str = "10m";

/// Two server processes on one fresh PostgreSQL database.
pub(crate) struct Replicas {
    // Fields drop in order: the servers stop before their directories and the database go.
    pub(crate) a: ServerProcess,
    pub(crate) b: ServerProcess,
    _dir_a: TempDir,
    pub(crate) dir_b: TempDir,
    _database: TestDatabase,
}

impl Replicas {
    /// Creates a database and starts A, then B, or returns `None` (with a skip line) when
    /// PostgreSQL is not available.
    pub(crate) fn start() -> Option<Self> {
        let database = TestDatabase::create()?;
        let dir_a = TempDir::new();
        let dir_b = TempDir::new();
        let a = start_replica(dir_a.path(), &database.url());
        let b = start_replica(dir_b.path(), &database.url());
        Some(Self {
            a,
            b,
            _dir_a: dir_a,
            dir_b,
            _database: database,
        })
    }

    /// Starts an agent attested to B, with a join token from B, and returns it with its
    /// SPIFFE ID once its Watch stream is open and the sync that the stream's first hint causes
    /// is over. The agent logs at debug level, because that wait reads its sync rounds from
    /// the log.
    pub(crate) fn start_agent_on_b(&self) -> (AgentProcess, String) {
        let token = self.b.generate_token();
        let agent = start_agent(self.dir_b.path(), &self.b, &token, SYNC_INTERVAL, "DEBUG");
        wait_watching_and_idle(&agent);
        (agent, agent_id(&token))
    }
}

/// Starts a replica whose CA keys are in `<dir>/keys`, a directory no other replica reads.
fn start_replica(dir: &Path, database_url: &str) -> ServerProcess {
    let keys = dir.join("keys");
    let blocks = format!(
        "plugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      \
         database_type = \"postgres\"\n      connection_string = \"{database_url}\"\n    }}\n  \
         }}\n  KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{keys}\"\n    \
         }}\n  }}\n}}\n",
        keys = keys.display(),
    );
    ServerProcess::start_with_blocks(dir, "", &blocks)
}

/// Waits until the agent's Watch stream is open and no sync round has completed for a second.
/// A hint that arrives during a round starts another round right after it, so a quiet second
/// means that no round started before this returns can read a later change.
pub(crate) fn wait_watching_and_idle(agent: &AgentProcess) {
    wait_until(
        Duration::from_secs(30),
        "the agent's Watch stream and the sync its first hint causes",
        || {
            let log = agent.log();
            log.rfind("Watch stream to the server open")
                .is_some_and(|at| log[at..].contains("sync round complete"))
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = sync_rounds(agent);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = sync_rounds(agent);
        if now == rounds {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent kept syncing for 30 s without a change; log:\n{}",
            agent.log()
        );
        rounds = now;
    }
}

fn sync_rounds(agent: &AgentProcess) -> usize {
    agent.log().matches("sync round complete").count()
}

/// Returns whether the workload (this process's uid) gets an X.509-SVID from the agent.
pub(crate) fn fetch_succeeds(agent: &AgentProcess) -> bool {
    run(&["api", "fetch", "x509", "--socket-path", agent.socket_arg()])
        .status
        .success()
}

/// Returns this process's uid selector, which the agent's unix attestor gives the workload.
pub(crate) fn uid_selector() -> String {
    format!("unix:uid:{}", nix::unistd::geteuid().as_raw())
}

/// Returns the claims of the signed revocation list that `server` serves now.
fn signed_list_claims(server: &ServerProcess) -> Value {
    let output = run_ok(&[
        "revoke",
        "list",
        "--output",
        "json",
        "--socket-path",
        server.socket_arg(),
    ]);
    let list: Value = serde_json::from_str(&output).unwrap();
    let jws = list["signed_list"].as_str().unwrap();
    let payload = jws.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn entry_on_a_reaches_agent_on_b() {
    let Some(replicas) = Replicas::start() else {
        return;
    };
    let (agent, agent_id) = replicas.start_agent_on_b();
    assert!(
        !fetch_succeeds(&agent),
        "the workload got an SVID before any entry existed"
    );

    let created = Instant::now();
    replicas.a.create_entry(
        "spiffe://example.org/workload/replicated",
        &agent_id,
        &[&uid_selector()],
    );
    wait_until(
        PROPAGATION_TIMEOUT,
        "an X.509-SVID through the agent on replica B",
        || fetch_succeeds(&agent),
    );
    println!(
        "entry on A to SVID through B's agent: {} ms",
        created.elapsed().as_millis()
    );
    // B never served an admin request, so only a notification can have caused this hint.
    let log = agent.log();
    assert!(
        log.contains("reason=entry"),
        "the agent received no entry hint; log:\n{log}"
    );
    let server_log = replicas.b.log();
    assert!(
        server_log.contains("datastore change notification"),
        "replica B logged no change notification; log:\n{server_log}"
    );
}

#[test]
fn revocation_on_a_refreshes_list_on_b() {
    let Some(replicas) = Replicas::start() else {
        return;
    };
    let (agent, agent_id) = replicas.start_agent_on_b();
    let selector = uid_selector();
    replicas.a.create_entry(
        "spiffe://example.org/workload/revoked",
        &agent_id,
        &[&selector],
    );
    wait_until(
        PROPAGATION_TIMEOUT,
        "an X.509-SVID through the agent on replica B",
        || fetch_succeeds(&agent),
    );
    // B signs and caches its list before the revocation, so only an invalidation makes it
    // list the revoked SVID.
    let before = signed_list_claims(&replicas.b);
    assert!(
        strings(&before["revoked_x509_serials"]).is_empty(),
        "{before}"
    );

    let output = run_ok(&[
        "revoke",
        "--selector",
        &selector,
        "--reason",
        "replica test",
        "--output",
        "json",
        "--socket-path",
        replicas.a.socket_arg(),
    ]);
    let revoked: Value = serde_json::from_str(&output).unwrap();
    let serials = strings(&revoked["revoked_x509_serials"]);
    assert!(
        !serials.is_empty(),
        "the revocation listed no SVID: {revoked}"
    );

    wait_until(
        PROPAGATION_TIMEOUT,
        "replica B's signed list to name the revoked SVIDs",
        || strings(&signed_list_claims(&replicas.b)["revoked_x509_serials"]) == serials,
    );
    wait_until(
        PROPAGATION_TIMEOUT,
        "the agent on replica B to drop the revoked SVID",
        || !fetch_succeeds(&agent),
    );
    let log = agent.log();
    assert!(
        log.contains("reason=revocation"),
        "the agent received no revocation hint; log:\n{log}"
    );
}

/// The authorities of a bundle in the SPIFFE format: X.509 certificates (base64 DER) and JWT
/// key IDs.
#[derive(Debug, PartialEq, Eq)]
struct BundleAuthorities {
    x509: BTreeSet<String>,
    jwt: BTreeSet<String>,
}

/// Returns the authorities of the bundle that `server` serves through its admin API.
fn bundle_authorities(server: &ServerProcess) -> BundleAuthorities {
    let output = run_ok(&[
        "bundle",
        "show",
        "--format",
        "spiffe",
        "--socket-path",
        server.socket_arg(),
    ]);
    let bundle: Value = serde_json::from_str(&output).unwrap();
    let mut authorities = BundleAuthorities {
        x509: BTreeSet::new(),
        jwt: BTreeSet::new(),
    };
    for key in bundle["keys"].as_array().expect("a JWK set") {
        match key["use"].as_str() {
            Some("x509-svid") => {
                authorities
                    .x509
                    .insert(key["x5c"][0].as_str().unwrap().to_owned());
            }
            Some("jwt-svid") => {
                authorities
                    .jwt
                    .insert(key["kid"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected key use {other:?} in {bundle}"),
        }
    }
    authorities
}

/// Waits until both replicas serve the same bundle with two X.509 authorities and two JWT
/// keys, one of each per replica, and returns it.
fn wait_for_union_bundle(replicas: &Replicas) -> BundleAuthorities {
    wait_until(
        PROPAGATION_TIMEOUT,
        "both replicas to serve the union of their authorities",
        || {
            let a = bundle_authorities(&replicas.a);
            let b = bundle_authorities(&replicas.b);
            a == b && a.x509.len() == 2 && a.jwt.len() == 2
        },
    );
    bundle_authorities(&replicas.a)
}

#[test]
fn bundle_is_union_of_replicas() {
    let Some(replicas) = Replicas::start() else {
        return;
    };
    let union = wait_for_union_bundle(&replicas);
    assert_eq!(union.x509.len(), 2, "{union:?}");
    assert_eq!(union.jwt.len(), 2, "{union:?}");

    // Each replica has its own key files, instance ID and active authority.
    let ids: Vec<String> = [&replicas.a, &replicas.b]
        .iter()
        .map(|server| {
            let path = server.dir.join("server-data/server_instance_id");
            std::fs::read_to_string(&path).unwrap().trim().to_owned()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    let shown: Vec<Value> = [&replicas.a, &replicas.b]
        .iter()
        .map(|server| {
            let output = run_ok(&[
                "localauthority",
                "x509",
                "show",
                "--output",
                "json",
                "--socket-path",
                server.socket_arg(),
            ]);
            serde_json::from_str(&output).unwrap()
        })
        .collect();
    assert_eq!(shown[0]["instance_id"], ids[0].as_str());
    assert_eq!(shown[1]["instance_id"], ids[1].as_str());
    assert_ne!(
        shown[0]["active"][0]["authority_id"],
        shown[1]["active"][0]["authority_id"]
    );
    for server in [&replicas.a, &replicas.b] {
        let keys = std::fs::read_dir(server.dir.join("keys")).unwrap().count();
        assert_eq!(keys, 2, "one X.509 and one JWT key file per replica");
    }

    // A prepared authority on A reaches B's bundle through a notification.
    run_ok(&[
        "localauthority",
        "x509",
        "prepare",
        "--socket-path",
        replicas.a.socket_arg(),
    ]);
    wait_until(
        PROPAGATION_TIMEOUT,
        "B's bundle to contain the authority prepared on A",
        || bundle_authorities(&replicas.b).x509.len() == 3,
    );
}

#[test]
fn agent_svid_from_a_accepted_by_b() {
    let Some(replicas) = Replicas::start() else {
        return;
    };
    wait_for_union_bundle(&replicas);
    let agent_dir = TempDir::new();
    let token = replicas.a.generate_token();
    let mut agent = start_agent(agent_dir.path(), &replicas.a, &token, "5s", "DEBUG");
    let agent_id = agent_id(&token);
    replicas.a.create_entry(
        "spiffe://example.org/workload/moving",
        &agent_id,
        &[&uid_selector()],
    );
    wait_until(
        PROPAGATION_TIMEOUT,
        "an X.509-SVID through the agent attested to A",
        || fetch_succeeds(&agent),
    );

    // The agent restarts pointed at B, without a join token, so it can only go on with the
    // agent SVID that A signed and B must accept.
    if let Some(mut child) = agent.child.take() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let config_path = agent_dir.path().join("agent.conf");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = config
        .replace(
            &format!("server_port = \"{}\"", replicas.a.port),
            &format!("server_port = \"{}\"", replicas.b.port),
        )
        .replace(&format!("  join_token = \"{token}\"\n"), "");
    assert!(config.contains(&format!("server_port = \"{}\"", replicas.b.port)));
    assert!(!config.contains("join_token"));
    std::fs::write(&config_path, config).unwrap();
    let _ = std::fs::remove_file(&agent.socket);
    let log_before = agent.log().len();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(agent_dir.path().join("agent.log"))
        .unwrap();
    let child = twid()
        .args(["agent", "run", "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent should start");
    agent.child = Some(child);

    let b_log_before = replicas.b.log().len();
    // B signs the SVID of an entry created after the move for the agent it never attested.
    replicas.b.create_entry(
        "spiffe://example.org/workload/after-move",
        &agent_id,
        &[&uid_selector()],
    );
    wait_until(
        PROPAGATION_TIMEOUT,
        "the agent restarted on B to serve the entry created on B",
        || {
            let output = run(&["api", "fetch", "x509", "--socket-path", agent.socket_arg()]);
            String::from_utf8_lossy(&output.stdout).contains("workload/after-move")
        },
    );
    let restarted_log = agent.log()[log_before..].to_owned();
    assert!(
        restarted_log.contains("re-using the stored agent SVID"),
        "the restarted agent did not use its stored SVID; log:\n{restarted_log}"
    );
    assert!(
        !restarted_log.contains("attesting again"),
        "the restarted agent attested again; log:\n{restarted_log}"
    );
    let b_log = replicas.b.log()[b_log_before..].to_owned();
    assert!(
        !b_log.contains("agent attested"),
        "the agent attested to B; log:\n{b_log}"
    );
    assert!(
        !b_log.contains("the SVID presented by agent"),
        "B rejected the agent SVID; log:\n{b_log}"
    );
}
