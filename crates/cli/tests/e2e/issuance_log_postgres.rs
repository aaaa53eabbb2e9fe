//! The issuance log through the server on PostgreSQL. A `twid server run` process on a fresh
//! database issues SVIDs through an agent, and `twid log verify` passes. Then one row at a time
//! is edited, deleted or swapped with psql, as a database administrator could, and
//! `twid log verify` must report each change at its position. Each change is undone before the
//! next.
//!
//! The test connects to `postgres://postgres@127.0.0.1:5432/postgres`, creates a uniquely named
//! database and drops it afterwards. When psql is missing or the connection fails, it prints
//! "postgres not available, skipping" and passes.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const WORKLOAD_ID: &str = "spiffe://example.org/workload/pg-logged";

/// The number of JWT-SVIDs fetched, so that the log has rows before and after each change.
const JWT_FETCHES: usize = 4;

/// Runs `twid log verify --output json` and returns the report.
fn verify_json(socket: &str) -> Value {
    let output = run(&["log", "verify", "--output", "json", "--socket-path", socket]);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "log verify printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Expects `twid log verify` to fail with an alteration of `kind` at `seq`, in both output
/// formats. A reordering also names the seq the moved record had.
fn assert_altered(socket: &str, seq: u64, kind: &str, original_seq: Option<u64>) {
    let output = run(&["log", "verify", "--socket-path", socket]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{kind} at {seq}: {stderr}");
    assert!(
        stderr.contains(&format!("altered at position {seq}: {kind}")),
        "{kind} at {seq}: {stderr}"
    );
    let report = verify_json(socket);
    assert_eq!(report["intact"], false, "{kind} at {seq}: {report}");
    assert_eq!(report["alteration"]["seq"], seq, "{report}");
    assert_eq!(report["alteration"]["kind"], kind, "{report}");
    assert_eq!(report["intact_records"], seq, "{report}");
    if let Some(original) = original_seq {
        assert_eq!(report["alteration"]["original_seq"], original, "{report}");
    }
}

/// Expects `twid log verify` to pass over `records` records.
fn assert_intact(socket: &str, records: u64) {
    let report = verify_json(socket);
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["intact_records"], records, "{report}");
    let pretty = run_ok(&["log", "verify", "--socket-path", socket]);
    assert!(pretty.contains("intact"), "{pretty}");
}

/// Returns the number of issuance log rows.
fn row_count(database: &str) -> u64 {
    psql_ok(database, "SELECT count(*) FROM issuance_log")
        .parse()
        .unwrap()
}

#[test]
fn postgres_log_tampering_detected() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let db = database.name().to_owned();
    let dir = TempDir::new();
    let plugins = format!("plugins {{\n{}}}\n", database.plugin_block());
    let server = ServerProcess::start_with_blocks(dir.path(), "", &plugins);
    let socket = server.socket_arg().to_owned();
    let token = server.generate_token();
    let uid = nix::unistd::geteuid().as_raw();
    server.create_entry(
        WORKLOAD_ID,
        &agent_id(&token),
        &[&format!("unix:uid:{uid}")],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);

    wait_until(
        Duration::from_secs(30),
        "an X.509-SVID from the agent",
        || {
            run(&["api", "fetch", "x509", "--socket-path", agent.socket_arg()])
                .status
                .success()
        },
    );
    for index in 0..JWT_FETCHES {
        run_ok(&[
            "api",
            "fetch",
            "jwt",
            "--audience",
            &format!("pg-audience-{index}"),
            "--socket-path",
            agent.socket_arg(),
        ]);
    }
    // No further issuance may land while rows are changed.
    drop(agent);

    // The agent's SVID, the workload's X.509-SVID and the JWT-SVIDs, all in PostgreSQL.
    let records = row_count(&db);
    assert!(
        records >= 2 + JWT_FETCHES as u64,
        "only {records} issuance log rows in {db}"
    );
    assert_intact(&socket, records);
    let workload_rows = psql_ok(
        &db,
        &format!("SELECT count(*) FROM issuance_log WHERE spiffe_id = '{WORKLOAD_ID}'"),
    );
    assert!(
        workload_rows.parse::<u64>().unwrap() > JWT_FETCHES as u64,
        "{workload_rows} rows for {WORKLOAD_ID}"
    );

    // Positions strictly inside the log, so that a record precedes and follows each change.
    let edited = records / 2;
    let deleted = 2;
    let (first, second) = (1, records - 2);

    // An edited field.
    let original = psql_ok(
        &db,
        &format!("SELECT spiffe_id FROM issuance_log WHERE seq = {edited}"),
    );
    psql_ok(
        &db,
        &format!(
            "UPDATE issuance_log SET spiffe_id = 'spiffe://example.org/forged' \
             WHERE seq = {edited}"
        ),
    );
    assert_altered(&socket, edited, "edited", None);
    psql_ok(
        &db,
        &format!("UPDATE issuance_log SET spiffe_id = '{original}' WHERE seq = {edited}"),
    );
    assert_intact(&socket, records);

    // A deleted row, kept aside and put back.
    psql_ok(
        &db,
        &format!(
            "BEGIN; \
             CREATE TABLE deleted_row AS SELECT * FROM issuance_log WHERE seq = {deleted}; \
             DELETE FROM issuance_log WHERE seq = {deleted}; \
             COMMIT;"
        ),
    );
    assert_eq!(row_count(&db), records - 1);
    assert_altered(&socket, deleted, "deleted", None);
    psql_ok(
        &db,
        "BEGIN; \
         INSERT INTO issuance_log SELECT * FROM deleted_row; \
         DROP TABLE deleted_row; \
         COMMIT;",
    );
    assert_intact(&socket, records);

    // Two rows that trade places. PostgreSQL checks the primary key after each row, so the
    // swap goes through a free seq.
    let swap = format!(
        "BEGIN; \
         UPDATE issuance_log SET seq = -1 WHERE seq = {first}; \
         UPDATE issuance_log SET seq = {first} WHERE seq = {second}; \
         UPDATE issuance_log SET seq = {second} WHERE seq = -1; \
         COMMIT;"
    );
    psql_ok(&db, &swap);
    assert_altered(&socket, first, "reordered", Some(second));
    psql_ok(&db, &swap);
    assert_intact(&socket, records);
}
