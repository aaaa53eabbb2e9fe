//! Revocation rules, revoked credentials and the issuance log scan on both backends: each test
//! body runs once on a temporary SQLite file (module `sqlite`) and once on a fresh PostgreSQL
//! database (module `postgres`). The harness and its PostgreSQL requirements are described in
//! `common/mod.rs`.

// A failed step panics where it broke, which names the failing call.
#![allow(clippy::unwrap_used)]

mod common;

use sqlx::{AnyConnection, Connection};
use twid_datastore::{DatabaseType, IssuanceLogRecord, NewRevocation, RevokedCredential};

use common::{TestDb, on_both_backends};

on_both_backends!(
    sqlite_file: "revocation.db",
    postgres_prefix: "twid_revocation_test",
    worker_threads: 2,
    tests: [
        rules_listed_by_time,
        credentials_by_agent_and_expiry,
        serial_lookup,
        new_credentials_stored_once,
        scan_pages_and_filters,
        many_credentials_stored,
        scan_start_summarizes_time_index,
    ],
);

const AGENT_A: &str = "spiffe://example.org/spire/agent/join_token/a";
const AGENT_B: &str = "spiffe://example.org/spire/agent/join_token/b";

fn rule(kind: &str, value: &str, created_at: i64) -> NewRevocation {
    NewRevocation {
        kind: kind.to_owned(),
        value: value.to_owned(),
        reason: format!("test {kind}"),
        created_at,
    }
}

fn x509(serial: &str, agent_id: &str, expires_at: i64) -> RevokedCredential {
    RevokedCredential {
        revocation_id: 0,
        kind: "x509".to_owned(),
        serial: Some(serial.to_owned()),
        jti: None,
        spiffe_id: "spiffe://example.org/w".to_owned(),
        agent_id: Some(agent_id.to_owned()),
        expires_at,
    }
}

fn jwt(jti: &str, agent_id: &str, expires_at: i64) -> RevokedCredential {
    RevokedCredential {
        kind: "jwt".to_owned(),
        serial: None,
        jti: Some(jti.to_owned()),
        ..x509("", agent_id, expires_at)
    }
}

async fn rules_listed_by_time(db: &TestDb) {
    let store = db.open().await;
    let before = store.current_revision().await.unwrap();
    let first = store
        .create_revocation(&rule("selector", "unix:gid:2000", 100))
        .await
        .unwrap();
    let second = store
        .create_revocation(&rule("tcb_status", "OutOfDate", 200))
        .await
        .unwrap();
    assert!(second.id > first.id, "{} then {}", first.id, second.id);
    assert_eq!(first.value, "unix:gid:2000");
    assert_eq!(first.reason, "test selector");
    assert!(store.current_revision().await.unwrap() > before);

    let all = store.list_revocations().await.unwrap();
    assert_eq!(all, [first.clone(), second.clone()]);
    // A rule created at the agent's attestation second still applies to it.
    let since: Vec<i64> = store
        .revocations_since(100)
        .await
        .unwrap()
        .iter()
        .map(|rule| rule.id)
        .collect();
    assert_eq!(since, [first.id, second.id]);
    let since: Vec<i64> = store
        .revocations_since(101)
        .await
        .unwrap()
        .iter()
        .map(|rule| rule.id)
        .collect();
    assert_eq!(since, [second.id]);
    assert!(store.revocations_since(201).await.unwrap().is_empty());
}

async fn credentials_by_agent_and_expiry(db: &TestDb) {
    let store = db.open().await;
    let rule = store
        .create_revocation(&rule("agent", AGENT_A, 100))
        .await
        .unwrap();
    let credentials = [
        x509("0a", AGENT_A, 1000),
        jwt("jti-a", AGENT_A, 1000),
        x509("0b", AGENT_B, 1000),
        x509("0c", AGENT_A, 500),
    ];
    store
        .add_revoked_credentials(rule.id, &credentials)
        .await
        .unwrap();

    let of_a = store
        .unexpired_revoked_credentials_of_agent(AGENT_A, 600)
        .await
        .unwrap();
    let mut names: Vec<String> = of_a
        .iter()
        .map(|c| c.serial.clone().or(c.jti.clone()).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["0a", "jti-a"]);
    assert!(of_a.iter().all(|c| c.revocation_id == rule.id));
    let jwt = of_a.iter().find(|c| c.kind == "jwt").unwrap();
    assert_eq!(jwt.serial, None);
    assert_eq!(jwt.agent_id.as_deref(), Some(AGENT_A));
    assert_eq!(jwt.expires_at, 1000);

    // Expiry is exclusive: a credential that expires at `now` is gone.
    let at_expiry = store
        .unexpired_revoked_credentials_of_agent(AGENT_A, 1000)
        .await
        .unwrap();
    assert!(at_expiry.is_empty(), "{at_expiry:?}");
    assert_eq!(
        store
            .unexpired_revoked_credentials_of_agent(AGENT_A, 400)
            .await
            .unwrap()
            .len(),
        3
    );

    let all = store.unexpired_revoked_credentials(600).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(
        store
            .unexpired_revoked_credentials(1000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Checks that a rule stores only the credentials that no earlier rule revoked, also when
/// two rules store them at the same time.
async fn new_credentials_stored_once(db: &TestDb) {
    let store = db.open().await;
    let first = store
        .create_revocation(&rule("agent", AGENT_A, 100))
        .await
        .unwrap();
    let (stored, already) = store
        .add_new_revoked_credentials(
            first.id,
            vec![x509("0a", AGENT_A, 1000), jwt("0b", AGENT_A, 1000)],
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(already, 0);

    let second = store
        .create_revocation(&rule("selector", "unix:uid:1", 200))
        .await
        .unwrap();
    let (stored, already) = store
        .add_new_revoked_credentials(
            second.id,
            vec![x509("0a", AGENT_A, 1000), x509("0c", AGENT_A, 1000)],
        )
        .await
        .unwrap();
    assert_eq!(stored, [x509("0c", AGENT_A, 1000)]);
    assert_eq!(already, 1);
    assert_eq!(store.serial_revocation("0a").await.unwrap(), Some(first.id));

    // Two rules that match the same new credentials at once store each of them once. A
    // round may run one call after the other, so there are several.
    for round in 0..10_u32 {
        let mut calls = tokio::task::JoinSet::new();
        for value in ["unix:uid:2", "unix:gid:2"] {
            let store = store.clone();
            let rule = store
                .create_revocation(&rule("selector", value, 300))
                .await
                .unwrap();
            let matched: Vec<_> = (0..20)
                .map(|n| x509(&format!("{round:02x}{n:02x}"), AGENT_A, 1000))
                .collect();
            calls.spawn(async move { store.add_new_revoked_credentials(rule.id, matched).await });
        }
        let (mut stored, mut already) = (0, 0);
        while let Some(result) = calls.join_next().await {
            let (fresh, old) = result.unwrap().unwrap();
            stored += fresh.len();
            already += old;
        }
        assert_eq!(stored, 20, "round {round}");
        assert_eq!(already, 20, "round {round}");
    }
    let all = store.unexpired_revoked_credentials(0).await.unwrap();
    assert_eq!(all.len(), 203, "each credential is stored once");
}

async fn serial_lookup(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.serial_revocation("0a").await.unwrap(), None);
    let first = store
        .create_revocation(&rule("agent", AGENT_A, 100))
        .await
        .unwrap();
    let second = store
        .create_revocation(&rule("selector", "unix:uid:1", 200))
        .await
        .unwrap();
    store
        .add_revoked_credentials(second.id, &[x509("0a", AGENT_A, 1000)])
        .await
        .unwrap();
    store
        .add_revoked_credentials(
            first.id,
            &[x509("0a", AGENT_A, 1000), jwt("0b", AGENT_A, 1000)],
        )
        .await
        .unwrap();
    assert_eq!(store.serial_revocation("0a").await.unwrap(), Some(first.id));
    // A JWT ID that looks like a serial is not a revoked serial.
    assert_eq!(store.serial_revocation("0b").await.unwrap(), None);
}

fn log_row(seq: i64, kind: &str, time_unix_ms: i64) -> IssuanceLogRecord {
    IssuanceLogRecord {
        seq,
        prev_hash: vec![0; 32],
        hash: vec![seq as u8; 32],
        kind: kind.to_owned(),
        serial: (kind == "x509").then(|| format!("{seq:02x}")),
        jti: (kind == "jwt").then(|| format!("jti-{seq}")),
        spiffe_id: Some("spiffe://example.org/w".to_owned()),
        entry_id: Some(format!("entry-{seq}")),
        agent_id: Some(AGENT_A.to_owned()),
        selectors: r#"[{"type":"unix","value":"uid:1000"}]"#.to_owned(),
        key_fingerprint: None,
        evidence_digest: None,
        attestation_result: (seq == 3).then(|| r#"{"tcb_status":"OutOfDate"}"#.to_owned()),
        policy_version: None,
        refusal_reason: (kind == "refusal").then(|| "no".to_owned()),
        time_unix_ms,
    }
}

async fn scan_pages_and_filters(db: &TestDb) {
    let store = db.open().await;
    let rows = [
        log_row(0, "x509", 1_000),
        log_row(1, "x509", 5_000),
        log_row(2, "refusal", 6_000),
        log_row(3, "jwt", 7_000),
        log_row(4, "wit", 8_000),
        log_row(5, "x509", 9_000),
    ];
    let mut append = store.begin_issuance_log_append().await.unwrap();
    append.insert_records(&rows).await.unwrap();
    append.commit().await.unwrap();

    let page = store.issued_credentials_since(5_000, -1, 2).await.unwrap();
    let seqs: Vec<i64> = page.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [1, 3],
        "the refusal and the record before 5000 ms are skipped"
    );
    let next = store.issued_credentials_since(5_000, 3, 2).await.unwrap();
    let seqs: Vec<i64> = next.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [4, 5]);
    assert!(
        store
            .issued_credentials_since(5_000, 5, 2)
            .await
            .unwrap()
            .is_empty()
    );

    let jwt = &page[1];
    assert_eq!(jwt.kind, "jwt");
    assert_eq!(jwt.jti.as_deref(), Some("jti-3"));
    assert_eq!(jwt.serial, None);
    assert_eq!(jwt.entry_id.as_deref(), Some("entry-3"));
    assert_eq!(jwt.agent_id.as_deref(), Some(AGENT_A));
    assert_eq!(jwt.selectors, r#"[{"type":"unix","value":"uid:1000"}]"#);
    assert_eq!(
        jwt.attestation_result.as_deref(),
        Some(r#"{"tcb_status":"OutOfDate"}"#)
    );
    assert_eq!(jwt.time_unix_ms, 7_000);
}

async fn scan_start_summarizes_time_index(db: &TestDb) {
    // PostgreSQL summarizes only full block ranges of 128 pages, which hold about 4,000 of
    // these rows, so 10,000 rows leave two full ranges to summarize.
    let store = db.open().await;
    let rows: Vec<IssuanceLogRecord> = (0..10_000)
        .map(|seq| log_row(seq, "x509", 1_000 + seq))
        .collect();
    let mut append = store.begin_issuance_log_append().await.unwrap();
    append.insert_records(&rows).await.unwrap();
    append.commit().await.unwrap();

    assert_eq!(
        store.issuance_log_first_seq_since(10_000).await.unwrap(),
        Some(9_000)
    );
    assert_eq!(
        store.issuance_log_first_seq_since(20_000).await.unwrap(),
        None
    );
    if db.config.database_type != DatabaseType::Postgres {
        return;
    }
    // PostgreSQL's BRIN time index covers a block range only once it is summarized.
    let mut raw = AnyConnection::connect(&db.config.connection_string)
        .await
        .unwrap();
    let unsummarized: i32 =
        sqlx::query_scalar("SELECT brin_summarize_new_values('issuance_log_time'::regclass)")
            .fetch_one(&mut raw)
            .await
            .unwrap();
    assert_eq!(
        unsummarized, 0,
        "the scan start left block ranges of the time index unsummarized"
    );
}

async fn many_credentials_stored(db: &TestDb) {
    // 85 rows take every statement size: 64, 16, 4 and 1.
    const COUNT: usize = 85;
    let store = db.open().await;
    let rule = store
        .create_revocation(&rule("agent", AGENT_A, 100))
        .await
        .unwrap();
    let credentials: Vec<RevokedCredential> = (0..COUNT)
        .map(|index| x509(&format!("{index:04x}"), AGENT_A, 1000 + index as i64))
        .collect();
    store
        .add_revoked_credentials(rule.id, &credentials)
        .await
        .unwrap();

    let mut stored = store.unexpired_revoked_credentials(0).await.unwrap();
    stored.sort_by(|a, b| a.serial.cmp(&b.serial));
    let expected: Vec<RevokedCredential> = credentials
        .into_iter()
        .map(|credential| RevokedCredential {
            revocation_id: rule.id,
            ..credential
        })
        .collect();
    assert_eq!(stored, expected);
}
