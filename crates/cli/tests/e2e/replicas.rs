//! Two `twid server run` replicas on one PostgreSQL database. Replica A and replica B have
//! their own data directories and listen ports, and share the database and the CA key
//! directory (`KeyManager "disk"`), because a replica loads the authorities that the database
//! names from its key directory. An agent attests to B with a 10-minute sync interval, so it
//! syncs within a test only when B's Watch stream sends it a hint. Changes made through A's
//! admin API reach B only as PostgreSQL notifications.
//!
//! The PostgreSQL requirements and the skip rule are those of `issuance_log_postgres.rs`.
//! `crates/cli/benches/replicas.rs` reuses [`Replicas`] to measure the propagation latency.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::common::*;
use crate::issuance_log_postgres::TestDatabase;
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
        let keys = dir_a.path().join("shared-keys");
        let a = start_replica(dir_a.path(), &database.url(), &keys);
        let b = start_replica(dir_b.path(), &database.url(), &keys);
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

fn start_replica(dir: &Path, database_url: &str, keys: &Path) -> ServerProcess {
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
fn wait_watching_and_idle(agent: &AgentProcess) {
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
