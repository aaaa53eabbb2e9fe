//! Change notifications between two `Datastore`s on one PostgreSQL database, as two servers
//! would open them. The harness and its PostgreSQL requirements are described in
//! `common/mod.rs`.

mod common;

use std::time::Duration;

use sqlx::{AnyConnection, Connection, Row};
use twid_datastore::{
    ChangeEvent, ChangeKind, ChangeListener, DatabaseType, Datastore, DatastoreError,
    NewRevocation, PolicyVersion,
};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::{AttestedAgent, NewEntry, Selector};

use common::{TestDb, on_both_backends};

on_both_backends!(
    sqlite_file: "notify.db",
    postgres_prefix: "twid_notify",
    worker_threads: 2,
    tests: [listener_only_on_postgres],
);

const NOW: i64 = 1_700_000_000;

/// Functional bound for a notification to arrive, far above the milliseconds it takes, so
/// that a loaded machine does not fail the test.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test waits to conclude that no notification is coming.
const QUIET_PERIOD: Duration = Duration::from_millis(500);

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("test SPIFFE ID must parse")
}

fn workload(path: &str) -> NewEntry {
    NewEntry::new(
        id(&format!("spiffe://example.org/{path}")),
        id("spiffe://example.org/spire/agent/join_token/a"),
        vec![Selector::parse("unix:uid:1000").expect("test selector must parse")],
    )
}

fn agent(name: &str) -> AttestedAgent {
    AttestedAgent {
        spiffe_id: id(&format!(
            "spiffe://example.org/spire/agent/join_token/{name}"
        )),
        attestation_type: "join_token".to_owned(),
        x509_svid_serial: "01ab".to_owned(),
        x509_svid_expires_at: NOW + 3600,
        previous_x509_svid_serial: None,
        previous_x509_svid_expires_at: None,
        selectors: Vec::new(),
        banned: false,
        attested_at: NOW,
    }
}

/// Opens two stores on one fresh PostgreSQL database, as two servers would, or returns `None`
/// when PostgreSQL is skipped.
async fn two_stores() -> Option<(TestDb, Datastore, Datastore)> {
    let db = TestDb::postgres("twid_notify").await?;
    let writer = db.open().await;
    let reader = db.open().await;
    Some((db, writer, reader))
}

async fn listener_of(store: &Datastore) -> ChangeListener {
    store
        .listen_for_changes()
        .await
        .expect("LISTEN on PostgreSQL")
        .expect("a listener on PostgreSQL")
}

async fn next_event(listener: &mut ChangeListener, after: &str) -> ChangeEvent {
    tokio::time::timeout(RECEIVE_TIMEOUT, listener.recv())
        .await
        .unwrap_or_else(|_| panic!("no change notification within {RECEIVE_TIMEOUT:?} {after}"))
}

async fn assert_quiet(listener: &mut ChangeListener, after: &str) {
    if let Ok(event) = tokio::time::timeout(QUIET_PERIOD, listener.recv()).await {
        panic!("unexpected {event:?} {after}");
    }
}

async fn listener_only_on_postgres(db: &TestDb) {
    let store = db.open().await;
    let listener = store
        .listen_for_changes()
        .await
        .expect("listen_for_changes");
    match db.config.database_type {
        DatabaseType::Sqlite => assert!(listener.is_none(), "SQLite returned a listener"),
        DatabaseType::Postgres => assert!(listener.is_some(), "PostgreSQL returned no listener"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_kind_reaches_other_store() {
    let Some((_db, writer, reader)) = two_stores().await else {
        return;
    };
    let mut listener = listener_of(&reader).await;

    let entry = writer.create_entry(&workload("a"), NOW).await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after create_entry").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );
    writer
        .update_entry(&entry.id, &workload("b"), NOW)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut listener, "after update_entry").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );
    writer.delete_entry(&entry.id).await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after delete_entry").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );

    let mut expiring = workload("expiring");
    expiring.expires_at = Some(NOW + 10);
    writer.create_entry(&expiring, NOW).await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after creating an expiring entry").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );
    assert_eq!(writer.prune_expired_entries(NOW + 10).await.unwrap(), 1);
    assert_eq!(
        next_event(&mut listener, "after prune_expired_entries").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );

    // Attestation sends no notification, because the attesting agent syncs anyway.
    let attested = agent("a");
    writer.create_attested_agent(&attested).await.unwrap();
    assert_quiet(&mut listener, "after create_attested_agent").await;
    writer
        .set_agent_banned(&attested.spiffe_id, true)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut listener, "after set_agent_banned").await,
        ChangeEvent::Changed(ChangeKind::Agent)
    );
    writer
        .delete_attested_agent(&attested.spiffe_id)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut listener, "after delete_attested_agent").await,
        ChangeEvent::Changed(ChangeKind::Agent)
    );

    let trust_domain = TrustDomain::new("example.org").unwrap();
    writer.set_bundle(&trust_domain, b"{}").await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after set_bundle").await,
        ChangeEvent::Changed(ChangeKind::Bundle)
    );

    let rule = writer
        .create_revocation(&NewRevocation {
            kind: "selector".to_owned(),
            value: "unix:uid:1000".to_owned(),
            reason: "test".to_owned(),
            created_at: NOW,
        })
        .await
        .unwrap();
    // The rule alone sends nothing, so that no server wakes its agents before the rule's
    // credentials are stored.
    assert_quiet(&mut listener, "after create_revocation").await;
    writer.add_revoked_credentials(rule.id, &[]).await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after add_revoked_credentials").await,
        ChangeEvent::Changed(ChangeKind::Revocation)
    );

    let version = PolicyVersion {
        version: 1,
        jws: "header.payload.signature".to_owned(),
        document: "{\"version\":1}".to_owned(),
        signer_kid: "owner".to_owned(),
        applied_at: NOW,
    };
    writer
        .append_policy_version(&version, |_| Ok::<(), DatastoreError>(()))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut listener, "after append_policy_version").await,
        ChangeEvent::Changed(ChangeKind::Policy)
    );
    assert_quiet(&mut listener, "after the last write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_writes_send_nothing() {
    let Some((_db, writer, reader)) = two_stores().await else {
        return;
    };
    writer.create_entry(&workload("a"), NOW).await.unwrap();
    let mut listener = listener_of(&reader).await;

    let duplicate = writer.create_entry(&workload("a"), NOW).await;
    assert!(
        matches!(duplicate, Err(DatastoreError::AlreadyExists(_))),
        "{duplicate:?}"
    );
    let missing = writer.delete_entry("no-such-entry").await;
    assert!(
        matches!(missing, Err(DatastoreError::NotFound(_))),
        "{missing:?}"
    );
    let rejected = PolicyVersion {
        version: 1,
        jws: "header.payload.signature".to_owned(),
        document: "{\"version\":1}".to_owned(),
        signer_kid: "owner".to_owned(),
        applied_at: NOW,
    };
    let result = writer
        .append_policy_version(&rejected, |_| {
            Err(DatastoreError::Conflict("rejected by the test".to_owned()))
        })
        .await;
    assert!(result.is_err(), "the rejected policy version was stored");
    assert_quiet(&mut listener, "after rejected writes").await;

    // A notification that follows shows that the listener was listening all along.
    writer
        .delete_entry(&writer.list_all_entries().await.unwrap()[0].id)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut listener, "after delete_entry").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_reach_own_listener() {
    let Some(db) = TestDb::postgres("twid_notify").await else {
        return;
    };
    let store = db.open().await;
    let mut listener = listener_of(&store).await;
    store.create_entry(&workload("a"), NOW).await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after create_entry on the same store").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );
}

/// Terminates the backend of every session on `database` whose last statement was a `LISTEN`,
/// and returns how many it terminated.
async fn terminate_listeners(url: &str) -> i64 {
    let mut admin = AnyConnection::connect(url).await.expect("admin connection");
    let row = sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) AS terminated FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate the listener's backend");
    admin.close().await.expect("close admin connection");
    row.try_get("terminated").expect("terminated count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_resyncs_and_listens_again() {
    let Some((db, writer, reader)) = two_stores().await else {
        return;
    };
    let mut listener = listener_of(&reader).await;

    assert_eq!(terminate_listeners(&db.config.connection_string).await, 1);
    assert_eq!(
        next_event(&mut listener, "after the listener's backend was terminated").await,
        ChangeEvent::Resync
    );

    writer.create_entry(&workload("a"), NOW).await.unwrap();
    assert_eq!(
        next_event(&mut listener, "after create_entry on the new connection").await,
        ChangeEvent::Changed(ChangeKind::Entry)
    );
}
