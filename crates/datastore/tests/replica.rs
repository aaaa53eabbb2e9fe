//! Reads from a read-only replica (`ro_connection_string`) against a real PostgreSQL primary
//! and hot standby that each test starts (see `common/pg_pair.rs`). The tests check which reads
//! the replica serves, what happens while it lags or is down, and that a replica of another
//! database is rejected.

#[path = "common/pg_pair.rs"]
mod pg_pair;

use std::time::{Duration, Instant};

use twid_datastore::{DatabaseType, Datastore, DatastoreConfig, DatastoreError, ReplicaStats};
use twid_spiffe::SpiffeId;
use twid_types::{NewEntry, Selector};

use pg_pair::PgPair;

const NOW: i64 = 1_700_000_000;
const PARENT: &str = "spiffe://example.org/spire/agent/join_token/a";

fn entry(path: &str) -> NewEntry {
    NewEntry::new(
        SpiffeId::new(&format!("spiffe://example.org/{path}")).expect("valid test SPIFFE ID"),
        SpiffeId::new(PARENT).expect("valid parent ID"),
        vec![Selector::new("unix", "uid:1000")],
    )
}

fn config(pair: &PgPair, primary_db: &str, replica_db: &str) -> DatastoreConfig {
    DatastoreConfig {
        database_type: DatabaseType::Postgres,
        connection_string: pair.primary_url(primary_db),
        ro_connection_string: Some(pair.standby_url(replica_db)),
    }
}

fn stats(store: &Datastore) -> ReplicaStats {
    store.replica_stats().expect("a replica is configured")
}

/// Returns the SPIFFE IDs of the entries that changed after `after`, as of `at_least`.
async fn changed_ids(store: &Datastore, after: u64, at_least: u64) -> (u64, Vec<String>) {
    let changes = store
        .entry_changes_since(after, at_least)
        .await
        .expect("read changes")
        .expect("no change rows were pruned");
    assert!(changes.revision >= at_least, "a read older than requested");
    let ids = changes
        .entries
        .iter()
        .map(|entry| entry.spiffe_id.to_string())
        .collect();
    (changes.revision, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_serves_reads_until_it_lags() {
    let pair = PgPair::start();
    pair.create_database("twid");
    let store = Datastore::open(&config(&pair, "twid", "twid"))
        .await
        .expect("open with a verified replica");

    let first = store.create_entry(&entry("first"), NOW).await.unwrap();
    let target = store.current_revision().await.unwrap();
    let snapshot = store.entries_at_revision(target).await.unwrap();
    let (revision, entries) = (snapshot.revision, snapshot.entries);
    assert!(revision >= target);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, first.id);
    assert_eq!(
        stats(&store),
        ReplicaStats {
            replica_reads: 1,
            primary_fallbacks: 0
        },
        "a replica that keeps up serves the full read"
    );

    // A replica that stopped replaying still serves reads, but from before the write: the
    // read must not return its stale state, and the primary serves it once the wait is over.
    pair.pause_replay();
    store.create_entry(&entry("second"), NOW).await.unwrap();
    let paused_target = store.current_revision().await.unwrap();
    let started = Instant::now();
    let (paused_revision, ids) = changed_ids(&store, revision, paused_target).await;
    let waited = started.elapsed();
    assert_eq!(ids, vec!["spiffe://example.org/second".to_owned()]);
    assert_eq!(stats(&store).primary_fallbacks, 1);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "the read waited {waited:?} for the lagging replica"
    );

    // Replayed again, the replica serves the next read of the same kind.
    pair.resume_replay();
    store.create_entry(&entry("third"), NOW).await.unwrap();
    let resumed_target = store.current_revision().await.unwrap();
    let (_, ids) = changed_ids(&store, paused_revision, resumed_target).await;
    assert_eq!(ids, vec!["spiffe://example.org/third".to_owned()]);
    assert_eq!(
        stats(&store),
        ReplicaStats {
            replica_reads: 2,
            primary_fallbacks: 1
        }
    );

    // Writes and the reads that need the newest state stay on the primary: this entry is
    // visible at once to get_entry even if the replica has not replayed it.
    pair.pause_replay();
    let fourth = store.create_entry(&entry("fourth"), NOW).await.unwrap();
    let fetched = store.get_entry(&fourth.id).await.unwrap();
    assert_eq!(fetched.map(|entry| entry.id), Some(fourth.id));
    pair.resume_replay();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replica_falls_back_to_primary() {
    let pair = PgPair::start();
    pair.create_database("twid");
    // Migrate first, so that the standby has the datastore ID when it comes back.
    Datastore::open(&DatastoreConfig {
        ro_connection_string: None,
        ..config(&pair, "twid", "twid")
    })
    .await
    .unwrap()
    .close()
    .await;
    pair.stop_standby();

    let store = Datastore::open(&config(&pair, "twid", "twid"))
        .await
        .expect("a replica that does not respond does not stop the server");
    store.create_entry(&entry("first"), NOW).await.unwrap();
    let target = store.current_revision().await.unwrap();
    let entries = store.entries_at_revision(target).await.unwrap().entries;
    assert_eq!(entries.len(), 1);
    let (_, ids) = changed_ids(&store, 0, target).await;
    assert_eq!(ids, vec!["spiffe://example.org/first".to_owned()]);
    assert_eq!(
        stats(&store),
        ReplicaStats {
            replica_reads: 0,
            primary_fallbacks: 2
        }
    );

    // The replica is tried again after its retry interval.
    pair.start_standby();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&store).replica_reads == 0 {
        assert!(
            Instant::now() < deadline,
            "the replica was not used again within 30 s of its restart: {:?}",
            stats(&store)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let target = store.current_revision().await.unwrap();
        let entries = store.entries_at_revision(target).await.unwrap().entries;
        assert_eq!(entries.len(), 1);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_outside_recovery_is_not_used() {
    let pair = PgPair::start();
    pair.create_database("twid");

    // The primary itself as the replica: a copy-paste mistake, which must not count as one.
    let store = Datastore::open(&DatastoreConfig {
        ro_connection_string: Some(pair.primary_url("twid")),
        ..config(&pair, "twid", "twid")
    })
    .await
    .expect("a server that is not a standby does not stop the start");
    store.create_entry(&entry("first"), NOW).await.unwrap();
    let target = store.current_revision().await.unwrap();
    let entries = store.entries_at_revision(target).await.unwrap().entries;
    assert_eq!(entries.len(), 1);
    assert_eq!(stats(&store).replica_reads, 0);
    store.close().await;

    // A standby that is promoted while in use takes writes of its own and stops serving.
    let store = Datastore::open(&config(&pair, "twid", "twid"))
        .await
        .unwrap();
    let target = store.current_revision().await.unwrap();
    store.entries_at_revision(target).await.unwrap();
    assert_eq!(
        stats(&store).replica_reads,
        1,
        "the standby serves before promotion"
    );
    // The promoted server has every write up to `target`, so only the recovery check keeps
    // it from serving this read.
    pair.promote_standby();
    let entries = store.entries_at_revision(target).await.unwrap().entries;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        stats(&store),
        ReplicaStats {
            replica_reads: 1,
            primary_fallbacks: 1
        },
        "the promoted server must not serve reads"
    );
    store.close().await;
}

/// A standby of a promoted copy is in recovery and has the right datastore ID, but the copy
/// wrote its own history after the promotion. Its reads must not reach the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_of_promoted_copy_is_not_used() {
    let pair = PgPair::start();
    pair.create_database("twid");
    let primary = Datastore::open(&DatastoreConfig {
        ro_connection_string: None,
        ..config(&pair, "twid", "twid")
    })
    .await
    .unwrap();
    primary.create_entry(&entry("shared"), NOW).await.unwrap();
    let shared_revision = primary.current_revision().await.unwrap();
    let standby_url = pair.standby_url("twid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pair
        .psql(pair.standby_port, "twid", "SELECT revision FROM changes")
        .trim()
        != shared_revision.to_string()
    {
        assert!(
            Instant::now() < deadline,
            "the standby did not replay the entry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The copy and the primary each write one entry, so both reach the same revision.
    pair.promote_standby();
    let copy = Datastore::open(&DatastoreConfig {
        database_type: DatabaseType::Postgres,
        connection_string: standby_url,
        ro_connection_string: None,
    })
    .await
    .unwrap();
    copy.create_entry(&entry("copy-only"), NOW).await.unwrap();
    primary
        .create_entry(&entry("primary-only"), NOW)
        .await
        .unwrap();
    let target = primary.current_revision().await.unwrap();
    assert_eq!(copy.current_revision().await.unwrap(), target);
    primary.close().await;

    let cascade_port = pg_pair::free_port();
    pair.start_standby_of_standby(cascade_port);
    let store = Datastore::open(&DatastoreConfig {
        ro_connection_string: Some(format!("postgres://postgres@127.0.0.1:{cascade_port}/twid")),
        ..config(&pair, "twid", "twid")
    })
    .await
    .expect("the standby of the copy passes the checks at start");
    let (_, ids) = changed_ids(&store, shared_revision, target).await;
    assert_eq!(ids, vec!["spiffe://example.org/primary-only".to_owned()]);
    let entries = store.entries_at_revision(target).await.unwrap().entries;
    let mut ids: Vec<String> = entries.iter().map(|e| e.spiffe_id.to_string()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "spiffe://example.org/primary-only".to_owned(),
            "spiffe://example.org/shared".to_owned()
        ]
    );
    assert_eq!(
        stats(&store).replica_reads,
        0,
        "the copy's standby served a read"
    );
    copy.close().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_replica_is_rejected() {
    let pair = PgPair::start();
    pair.create_database("twid");
    pair.create_database("other");
    // Both databases get their own datastore ID when first migrated.
    for database in ["twid", "other"] {
        Datastore::open(&DatastoreConfig {
            ro_connection_string: None,
            ..config(&pair, database, database)
        })
        .await
        .unwrap()
        .close()
        .await;
    }
    let error = Datastore::open(&config(&pair, "twid", "other"))
        .await
        .expect_err("the replica of another database must be rejected");
    assert!(
        matches!(error, DatastoreError::ReplicaMismatch { .. }),
        "unexpected error: {error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("ro_connection_string") && message.contains("read-only replica"),
        "the error must name the key and the fix: {message}"
    );
    assert!(
        !message.contains("postgres://"),
        "the error must not print connection strings: {message}"
    );
}

#[tokio::test]
async fn sqlite_rejects_replica() {
    let dir = tempfile::tempdir().unwrap();
    let error = Datastore::open(&DatastoreConfig {
        database_type: DatabaseType::Sqlite,
        connection_string: dir.path().join("db.sqlite").display().to_string(),
        ro_connection_string: Some("postgres://postgres@127.0.0.1:1/twid".to_owned()),
    })
    .await
    .expect_err("SQLite with a replica must be rejected");
    assert!(
        error.to_string().contains("ro_connection_string"),
        "unexpected error: {error}"
    );
}
