//! A server whose datastore has a read-only replica (`ro_connection_string`), on a PostgreSQL
//! primary and hot standby that the test starts on free loopback ports (see
//! `crates/datastore/tests/common/pg_pair.rs`). The agent syncs only on the server's hints, so
//! every entry below reaches the workload through the server's entry index, which reads from
//! the replica when it has caught up and from the primary otherwise.

#[path = "../../../datastore/tests/common/pg_pair.rs"]
mod pg_pair;

use std::time::Duration;

use crate::common::*;
use crate::replicas::{SYNC_INTERVAL, uid_selector, wait_watching_and_idle};
use crate::revoke_agent::start_agent;
use pg_pair::PgPair;

/// Functional bound for an entry to reach the workload, well above the replica's 250 ms lag
/// wait.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the SPIFFE IDs that the workload's one-shot X.509 fetch prints, or "" on failure.
fn fetched(agent: &AgentProcess) -> String {
    let output = run(&["api", "fetch", "x509", "--socket-path", agent.socket_arg()]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for_svid(agent: &AgentProcess, spiffe_id: &str, description: &str) {
    wait_until(PROPAGATION_TIMEOUT, description, || {
        fetched(agent).contains(spiffe_id)
    });
}

#[test]
fn entry_index_uses_replica() {
    if postgres_selected() {
        // The test brings its own PostgreSQL pair, so the PostgreSQL pass would repeat it.
        eprintln!("skipping in the PostgreSQL pass: this test already runs on PostgreSQL");
        return;
    }
    let pair = PgPair::start();
    pair.create_database("twid");
    let dir = TempDir::new();
    let blocks = format!(
        "plugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      \
         database_type = \"postgres\"\n      connection_string = \"{primary}\"\n      \
         ro_connection_string = \"{standby}\"\n    }}\n  }}\n}}\n",
        primary = pair.primary_url("twid"),
        standby = pair.standby_url("twid"),
    );
    let server = ServerProcess::start_with_blocks(dir.path(), "", &blocks);
    // The server migrated the primary just before, so the replica may verify on first use.
    let token = server.generate_token();
    let agent = start_agent(dir.path(), &server, &token, SYNC_INTERVAL, "DEBUG");
    wait_watching_and_idle(&agent);
    let agent_id = agent_id(&token);
    let selector = uid_selector();

    let first = "spiffe://example.org/workload/first";
    server.create_entry(first, &agent_id, &[&selector]);
    wait_for_svid(&agent, first, "the first entry's SVID");
    let log = server.log();
    assert!(
        log.contains("read-only replica verified"),
        "the server did not verify the replica; log:\n{log}"
    );
    assert!(
        log.contains("source=\"replica\""),
        "the replica served none of the index reads; log:\n{log}"
    );

    // A replica that stopped replaying must not hold changes back: the primary serves them.
    let before_pause = server.log().len();
    pair.pause_replay();
    let second = "spiffe://example.org/workload/second";
    server.create_entry(second, &agent_id, &[&selector]);
    wait_for_svid(
        &agent,
        second,
        "the second entry's SVID while replay is paused",
    );
    let log = server.log();
    assert!(
        log[before_pause..].contains("source=\"primary\""),
        "the primary served no index read while the replica lagged; log:\n{log}"
    );
    pair.resume_replay();

    // A replica that is gone leaves every read to the primary, without errors for the agent.
    pair.stop_standby();
    let third = "spiffe://example.org/workload/third";
    server.create_entry(third, &agent_id, &[&selector]);
    wait_for_svid(
        &agent,
        third,
        "the third entry's SVID with the replica down",
    );
    let log = server.log();
    assert!(
        log.contains("the read-only replica cannot be used"),
        "the server did not report the lost replica; log:\n{log}"
    );
    assert!(
        !log.contains(&pair.standby_url("twid")),
        "the server logged the replica's connection string"
    );
}
