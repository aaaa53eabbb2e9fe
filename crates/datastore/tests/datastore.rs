//! Datastore behaviour on both backends: each test body runs once on a temporary SQLite file
//! (module `sqlite`) and once on a fresh PostgreSQL database (module `postgres`). The harness
//! and its PostgreSQL requirements are described in `common/mod.rs`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, Connection, Row};
use twid_datastore::{
    DatabaseType, Datastore, DatastoreConfig, DatastoreError, EntryFilter, JoinToken,
};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::{AttestedAgent, NewEntry, Selector};

use common::{TestDb, on_both_backends};

const NOW: i64 = 1_700_000_000;
/// Set in the crash tests' child process: `<sqlite|postgres>|<connection string>`.
const CRASH_CHILD_ENV: &str = "TWID_DATASTORE_CRASH_CHILD";
const ACK_PREFIX: &str = "acknowledged entry ";

on_both_backends!(
    // Characters that sqlx URLs treat specially must survive the path-to-URL conversion in
    // `TestDb::raw`.
    sqlite_file: "store ?%#.db",
    postgres_prefix: "twid_datastore_test",
    worker_threads: 4,
    tests: [
        entry_lifecycle,
        entry_uniqueness,
        entry_listing,
        entry_batch,
        entry_prune,
        entry_change_feed,
        agent_lifecycle,
        agent_replace,
        agent_previous_svid,
        join_token_lifecycle,
        join_token_single_use,
        bundle_sequence,
        ca_state_upsert,
        revision_tracking,
        reopen_persistence,
        migration_idempotent,
        concurrent_open_migrates_once,
        schema_too_new,
        crash_keeps_acknowledged_entries,
    ],
);

impl TestDb {
    /// Connects to the test database directly, bypassing the datastore.
    async fn raw(&self) -> AnyConnection {
        let url = match self.config.database_type {
            DatabaseType::Sqlite => {
                let escaped = self
                    .config
                    .connection_string
                    .replace('%', "%25")
                    .replace('?', "%3F")
                    .replace('#', "%23");
                format!("sqlite://{escaped}")
            }
            DatabaseType::Postgres => self.config.connection_string.clone(),
        };
        sqlx::any::install_default_drivers();
        AnyConnection::connect(&url)
            .await
            .expect("connect to the test database directly")
    }
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("test SPIFFE ID must parse")
}

fn sel(text: &str) -> Selector {
    Selector::parse(text).expect("test selector must parse")
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("test trust domain must parse")
}

const PARENT: &str = "spiffe://example.org/spire/agent/join_token/a";
const OTHER_PARENT: &str = "spiffe://example.org/spire/agent/join_token/b";

fn workload(path: &str, parent: &str, selectors: &[&str]) -> NewEntry {
    NewEntry::new(
        id(&format!("spiffe://example.org/{path}")),
        id(parent),
        selectors.iter().map(|s| sel(s)).collect(),
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
        selectors: vec![sel("join_token:group:blue")],
        banned: false,
        attested_at: NOW,
    }
}

async fn revision(store: &Datastore) -> u64 {
    store.current_revision().await.expect("read revision")
}

async fn entry_lifecycle(db: &TestDb) {
    let store = db.open().await;
    let mut new = workload("web", PARENT, &["unix:uid:1000", "unix:gid:50"]);
    new.x509_svid_ttl = 600;
    new.jwt_svid_ttl = 300;
    new.dns_names = vec!["web.example.org".to_owned(), "b.example.org".to_owned()];
    new.federates_with = vec![td("partner.test")];
    new.hint = "primary".to_owned();
    new.expires_at = Some(NOW + 86_400);

    let created = store.create_entry(&new, NOW).await.expect("create entry");
    assert_eq!(
        created.id.len(),
        36,
        "entry id {:?} is not a UUID",
        created.id
    );
    assert_eq!(
        created.id.as_bytes()[14],
        b'4',
        "entry id {} is not a v4 UUID",
        created.id
    );
    assert_eq!(created.created_at, NOW);
    assert_eq!(created.revision_number, 0);
    assert_eq!(created.selectors, new.selectors);
    assert_eq!(created.dns_names, new.dns_names);
    assert_eq!(created.federates_with, new.federates_with);
    assert_eq!(created.expires_at, new.expires_at);

    let fetched = store.get_entry(&created.id).await.expect("get entry");
    assert_eq!(fetched.as_ref(), Some(&created));
    let missing = store.get_entry("no-such-entry").await.expect("get missing");
    assert_eq!(missing, None);
    assert_eq!(store.count_entries().await.expect("count"), 1);

    let mut changed = new.clone();
    changed.parent_id = id(OTHER_PARENT);
    changed.selectors = vec![sel("k8s:ns:prod")];
    changed.admin = true;
    changed.downstream = true;
    changed.hint = String::new();
    changed.dns_names.clear();
    changed.federates_with.clear();
    changed.expires_at = None;
    let updated = store
        .update_entry(&created.id, &changed, NOW + 10)
        .await
        .expect("update entry");
    assert_eq!(updated.id, created.id);
    assert_eq!(
        updated.created_at, NOW,
        "update must keep the creation time"
    );
    assert_eq!(updated.revision_number, 1);
    assert!(updated.admin);
    assert!(updated.downstream);
    assert_eq!(updated.parent_id, changed.parent_id);
    let fetched = store.get_entry(&created.id).await.expect("get updated");
    assert_eq!(fetched.as_ref(), Some(&updated));

    let again = store
        .update_entry(&created.id, &changed, NOW + 20)
        .await
        .expect("update entry again");
    assert_eq!(again.revision_number, 2);

    let missing = store.update_entry("no-such-entry", &changed, NOW).await;
    assert!(
        matches!(missing, Err(DatastoreError::NotFound(ref what)) if what.contains("no-such-entry")),
        "update of a missing entry returned {missing:?}"
    );

    let deleted = store.delete_entry(&created.id).await.expect("delete entry");
    assert_eq!(deleted, again);
    assert_eq!(
        store.get_entry(&created.id).await.expect("get deleted"),
        None
    );
    assert_eq!(store.count_entries().await.expect("count"), 0);
    let twice = store.delete_entry(&created.id).await;
    assert!(
        matches!(twice, Err(DatastoreError::NotFound(ref what)) if what.contains(&created.id)),
        "second delete returned {twice:?}"
    );
}

async fn entry_uniqueness(db: &TestDb) {
    let store = db.open().await;
    let original = store
        .create_entry(&workload("db", PARENT, &["unix:uid:1", "unix:gid:2"]), NOW)
        .await
        .expect("create entry");

    // Same SPIFFE ID, parent and selector set, in another order and with a repeat.
    let reordered = workload("db", PARENT, &["unix:gid:2", "unix:uid:1", "unix:gid:2"]);
    let duplicate = store.create_entry(&reordered, NOW).await;
    assert!(
        matches!(duplicate, Err(DatastoreError::AlreadyExists(ref what)) if what.contains("spiffe://example.org/db")),
        "duplicate entry returned {duplicate:?}"
    );

    // Changing any one of the three makes a distinct entry.
    let other_parent = workload("db", OTHER_PARENT, &["unix:uid:1", "unix:gid:2"]);
    let other_id = workload("db2", PARENT, &["unix:uid:1", "unix:gid:2"]);
    let subset = workload("db", PARENT, &["unix:uid:1"]);
    for entry in [&other_parent, &other_id, &subset] {
        store
            .create_entry(entry, NOW)
            .await
            .expect("entry differing in one key field");
    }
    assert_eq!(store.count_entries().await.expect("count"), 4);

    // Updating an entry into another's identity is rejected and changes nothing.
    let subset_stored = store
        .list_entries(&EntryFilter {
            selectors: vec![sel("unix:uid:1")],
            ..EntryFilter::default()
        })
        .await
        .expect("list subset entry");
    assert_eq!(subset_stored.len(), 1);
    let collision = store
        .update_entry(&subset_stored[0].id, &reordered, NOW)
        .await;
    assert!(
        matches!(collision, Err(DatastoreError::AlreadyExists(_))),
        "colliding update returned {collision:?}"
    );
    let unchanged = store.get_entry(&subset_stored[0].id).await.expect("get");
    assert_eq!(unchanged.as_ref(), Some(&subset_stored[0]));
    let original_now = store.get_entry(&original.id).await.expect("get original");
    assert_eq!(original_now.as_ref(), Some(&original));

    // An update that keeps the entry's own identity is not a collision.
    let mut same_identity = reordered.clone();
    same_identity.hint = "renamed".to_owned();
    store
        .update_entry(&original.id, &same_identity, NOW)
        .await
        .expect("update keeping identity");

    // Concurrent creators of one identity: exactly one succeeds.
    let contested = workload("contested", PARENT, &["unix:uid:9"]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        let contested = contested.clone();
        tasks.spawn(async move { store.create_entry(&contested, NOW).await });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("creator task") {
            Ok(_) => created += 1,
            Err(DatastoreError::AlreadyExists(_)) => {}
            Err(other) => panic!("concurrent create failed: {other}"),
        }
    }
    assert_eq!(created, 1, "concurrent creators of one entry");
}

async fn entry_listing(db: &TestDb) {
    let store = db.open().await;
    let a = store
        .create_entry(&workload("a", PARENT, &["u:x", "u:y"]), NOW)
        .await
        .expect("create a");
    let b = store
        .create_entry(&workload("b", PARENT, &["u:x"]), NOW + 1)
        .await
        .expect("create b");
    let c = store
        .create_entry(&workload("c", OTHER_PARENT, &["u:y", "u:x"]), NOW + 2)
        .await
        .expect("create c");
    let d = store
        .create_entry(&workload("a", OTHER_PARENT, &["u:z"]), NOW + 3)
        .await
        .expect("create d");

    let ids = |entries: Vec<twid_types::RegistrationEntry>| -> Vec<String> {
        entries.into_iter().map(|e| e.id).collect()
    };
    let list = |filter: EntryFilter| {
        let store = store.clone();
        async move { store.list_entries(&filter).await.expect("list entries") }
    };

    let all = list(EntryFilter::default()).await;
    assert_eq!(
        ids(all.clone()),
        [a.id.as_str(), b.id.as_str(), c.id.as_str(), d.id.as_str()],
        "oldest first"
    );
    assert_eq!(store.list_all_entries().await.expect("list all"), all);

    let by_spiffe_id = list(EntryFilter {
        spiffe_id: Some(a.spiffe_id.clone()),
        ..EntryFilter::default()
    })
    .await;
    assert_eq!(ids(by_spiffe_id), [a.id.as_str(), d.id.as_str()]);

    let by_parent = list(EntryFilter {
        parent_id: Some(id(OTHER_PARENT)),
        ..EntryFilter::default()
    })
    .await;
    assert_eq!(ids(by_parent), [c.id.as_str(), d.id.as_str()]);

    let by_set = list(EntryFilter {
        selectors: vec![sel("u:y"), sel("u:x"), sel("u:y")],
        ..EntryFilter::default()
    })
    .await;
    assert_eq!(
        ids(by_set),
        [a.id.as_str(), c.id.as_str()],
        "exact set, any order"
    );

    let single = list(EntryFilter {
        selectors: vec![sel("u:x")],
        ..EntryFilter::default()
    })
    .await;
    assert_eq!(
        ids(single),
        [b.id.as_str()],
        "a subset of an entry's selectors does not match it"
    );

    let combined = list(EntryFilter {
        spiffe_id: Some(a.spiffe_id.clone()),
        parent_id: Some(id(PARENT)),
        selectors: vec![sel("u:x"), sel("u:y")],
    })
    .await;
    assert_eq!(ids(combined), [a.id.as_str()]);

    let nothing = list(EntryFilter {
        spiffe_id: Some(id("spiffe://example.org/none")),
        ..EntryFilter::default()
    })
    .await;
    assert!(nothing.is_empty());
}

async fn entry_batch(db: &TestDb) {
    let store = db.open().await;
    let existing = workload("existing", PARENT, &["u:1"]);
    store
        .create_entry(&existing, NOW)
        .await
        .expect("create existing");
    let before = revision(&store).await;

    let first = workload("first", PARENT, &["u:1"]);
    let second = workload("second", PARENT, &["u:2"]);
    let batch = [
        first.clone(),
        second.clone(),
        first.clone(),
        existing.clone(),
    ];
    let results = store
        .create_entries(&batch, NOW + 5)
        .await
        .expect("create batch");
    assert_eq!(results.len(), 4);
    let first_stored = results[0].as_ref().expect("first entry of batch");
    assert_eq!(first_stored.spiffe_id, first.spiffe_id);
    assert_eq!(first_stored.created_at, NOW + 5);
    let second_stored = results[1].as_ref().expect("second entry of batch");
    assert_eq!(second_stored.spiffe_id, second.spiffe_id);
    assert!(
        matches!(results[2], Err(DatastoreError::AlreadyExists(_))),
        "repeat within the batch returned {:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(DatastoreError::AlreadyExists(_))),
        "repeat of a stored entry returned {:?}",
        results[3]
    );
    assert_eq!(store.count_entries().await.expect("count"), 3);
    assert!(revision(&store).await > before);

    let stored = store
        .get_entry(&first_stored.id)
        .await
        .expect("get batch entry");
    assert_eq!(stored.as_ref(), Some(first_stored));

    let before_empty = revision(&store).await;
    let empty = store.create_entries(&[], NOW).await.expect("empty batch");
    assert!(empty.is_empty());
    let rejected = store
        .create_entries(&[existing], NOW)
        .await
        .expect("all-duplicate batch");
    assert!(matches!(rejected[0], Err(DatastoreError::AlreadyExists(_))));
    assert_eq!(
        revision(&store).await,
        before_empty,
        "a batch that stored nothing"
    );
}

async fn entry_prune(db: &TestDb) {
    let store = db.open().await;
    let mut expired = workload("expired", PARENT, &["u:1"]);
    expired.expires_at = Some(NOW - 1);
    let mut expiring_now = workload("expiring-now", PARENT, &["u:1"]);
    expiring_now.expires_at = Some(NOW);
    let mut later = workload("later", PARENT, &["u:1"]);
    later.expires_at = Some(NOW + 1);
    let forever = workload("forever", PARENT, &["u:1"]);
    for entry in [&expired, &expiring_now, &later, &forever] {
        store.create_entry(entry, NOW - 100).await.expect("create");
    }

    let before = revision(&store).await;
    assert_eq!(store.prune_expired_entries(NOW).await.expect("prune"), 2);
    assert!(revision(&store).await > before);
    let left: HashSet<SpiffeId> = store
        .list_all_entries()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.spiffe_id)
        .collect();
    assert_eq!(left, HashSet::from([later.spiffe_id, forever.spiffe_id]));

    let before = revision(&store).await;
    assert_eq!(
        store.prune_expired_entries(NOW).await.expect("prune again"),
        0
    );
    assert_eq!(
        revision(&store).await,
        before,
        "a prune that deleted nothing"
    );
}

async fn entry_change_feed(db: &TestDb) {
    let store = db.open().await;
    let snapshot = store.entries_at_revision(0).await.expect("snapshot");
    assert!(
        snapshot.token.is_some(),
        "the migration gives the current revision a change token"
    );
    let (start, none) = (snapshot.revision, snapshot.entries);
    assert!(none.is_empty());

    let kept = store
        .create_entry(&workload("kept", PARENT, &["u:1"]), NOW)
        .await
        .expect("create");
    let gone = store
        .create_entry(&workload("gone", PARENT, &["u:2"]), NOW)
        .await
        .expect("create");
    let mut expiring = workload("expiring", PARENT, &["u:3"]);
    expiring.expires_at = Some(NOW - 1);
    let expiring = store.create_entry(&expiring, NOW).await.expect("create");
    let updated = store
        .update_entry(&kept.id, &workload("kept", PARENT, &["u:9"]), NOW + 1)
        .await
        .expect("update");
    store.delete_entry(&gone.id).await.expect("delete");
    assert_eq!(store.prune_expired_entries(NOW).await.expect("prune"), 1);

    let changes = store
        .entry_changes_since(start, 0)
        .await
        .expect("changes")
        .expect("nothing was pruned yet");
    assert_eq!(changes.revision, revision(&store).await);
    let (current, token) = store
        .current_revision_and_token_of(changes.revision)
        .await
        .expect("token");
    assert_eq!(current, changes.revision);
    assert!(token.is_some(), "every counter write stores a token");
    assert_eq!(
        changes.token, token,
        "the changes carry the token of their revision"
    );
    let ids: Vec<&str> = changes.changed.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            kept.id.as_str(),
            gone.id.as_str(),
            expiring.id.as_str(),
            kept.id.as_str(),
            gone.id.as_str(),
            expiring.id.as_str()
        ],
        "one row per write, in commit order"
    );
    assert!(
        changes.changed.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "each write has its own revision: {:?}",
        changes.changed
    );
    assert_eq!(changes.entries.len(), 1, "only the kept entry still exists");
    assert_eq!(changes.entries[0].revision_number, updated.revision_number);

    let up_to_date = store
        .entry_changes_since(changes.revision, 0)
        .await
        .expect("changes")
        .expect("nothing was pruned yet");
    assert!(up_to_date.changed.is_empty());
    assert!(up_to_date.entries.is_empty());

    // Pruning every row moves the horizon: a reader behind it must read every entry again,
    // while one at the newest revision goes on.
    assert_eq!(
        store
            .prune_entry_changes(NOW + 10)
            .await
            .expect("prune changes"),
        6
    );
    assert!(
        store
            .entry_changes_since(start, 0)
            .await
            .expect("changes")
            .is_none()
    );
    assert!(
        store
            .entry_changes_since(changes.revision, 0)
            .await
            .expect("changes")
            .is_some()
    );
}

async fn agent_lifecycle(db: &TestDb) {
    let store = db.open().await;
    let blue = agent("blue");
    let mut green = agent("green");
    green.selectors = vec![sel("a:b"), sel("c:d")];
    green.banned = true;

    store
        .create_attested_agent(&blue)
        .await
        .expect("create blue");
    store
        .create_attested_agent(&green)
        .await
        .expect("create green");
    let duplicate = store.create_attested_agent(&blue).await;
    assert!(
        matches!(duplicate, Err(DatastoreError::AlreadyExists(ref what)) if what.contains(blue.spiffe_id.as_str())),
        "duplicate agent returned {duplicate:?}"
    );

    let fetched = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get blue");
    assert_eq!(fetched.as_ref(), Some(&blue));
    let unknown = id("spiffe://example.org/spire/agent/join_token/none");
    assert_eq!(
        store
            .get_attested_agent(&unknown)
            .await
            .expect("get unknown"),
        None
    );
    assert_eq!(
        store.list_attested_agents().await.expect("list"),
        [blue.clone(), green.clone()]
    );

    store
        .update_agent_svid(&blue.spiffe_id, "01ab", "ff00", NOW + 7200)
        .await
        .expect("update SVID");
    let renewed = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get renewed")
        .expect("renewed agent exists");
    assert_eq!(renewed.x509_svid_serial, "ff00");
    assert_eq!(renewed.x509_svid_expires_at, NOW + 7200);
    assert_eq!(renewed.attested_at, blue.attested_at);
    assert_eq!(
        renewed.previous_x509_svid_serial.as_deref(),
        Some(blue.x509_svid_serial.as_str())
    );
    assert_eq!(
        renewed.previous_x509_svid_expires_at,
        Some(blue.x509_svid_expires_at)
    );

    store
        .set_agent_banned(&blue.spiffe_id, true)
        .await
        .expect("ban");
    let banned = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get");
    assert!(banned.expect("banned agent exists").banned);
    store
        .set_agent_banned(&blue.spiffe_id, false)
        .await
        .expect("unban");
    let unbanned = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get");
    assert!(!unbanned.expect("unbanned agent exists").banned);

    let missing_update = store.update_agent_svid(&unknown, "00", "00", NOW).await;
    assert!(
        matches!(missing_update, Err(DatastoreError::NotFound(ref what)) if what.contains(unknown.as_str())),
        "SVID update of unknown agent returned {missing_update:?}"
    );
    let missing_ban = store.set_agent_banned(&unknown, true).await;
    assert!(
        matches!(missing_ban, Err(DatastoreError::NotFound(_))),
        "ban of unknown agent returned {missing_ban:?}"
    );

    store
        .delete_attested_agent(&green.spiffe_id)
        .await
        .expect("delete green");
    assert_eq!(
        store
            .get_attested_agent(&green.spiffe_id)
            .await
            .expect("get"),
        None
    );
    let missing_delete = store.delete_attested_agent(&green.spiffe_id).await;
    assert!(
        matches!(missing_delete, Err(DatastoreError::NotFound(_))),
        "second delete returned {missing_delete:?}"
    );
    // A deleted agent can attest again.
    store
        .create_attested_agent(&green)
        .await
        .expect("recreate green");
}

async fn agent_replace(db: &TestDb) {
    let store = db.open().await;
    let blue = agent("blue");
    let other = agent("other");
    store
        .create_attested_agent(&other)
        .await
        .expect("create other");

    let before_create = revision(&store).await;
    store
        .replace_attested_agent(&blue, None)
        .await
        .expect("replace creates a missing agent");
    assert!(revision(&store).await > before_create);
    assert_eq!(
        store
            .get_attested_agent(&blue.spiffe_id)
            .await
            .expect("get created"),
        Some(blue.clone())
    );

    let mut again = blue.clone();
    again.attestation_type = "nitro".to_owned();
    again.x509_svid_serial = "77cc".to_owned();
    again.x509_svid_expires_at = NOW + 60;
    again.selectors = vec![sel("nitro:pcr0:0e")];
    again.attested_at = NOW + 30;
    let before_replace = revision(&store).await;
    store
        .replace_attested_agent(&again, Some("01ab"))
        .await
        .expect("replace an existing agent");
    assert!(revision(&store).await > before_replace);
    let replaced = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get replaced")
        .expect("replaced agent exists");
    let mut expected = again.clone();
    expected.previous_x509_svid_serial = Some(blue.x509_svid_serial.clone());
    expected.previous_x509_svid_expires_at = Some(blue.x509_svid_expires_at);
    assert_eq!(
        replaced, expected,
        "the replaced SVID becomes the previous one"
    );

    // Replacing stores the given flag, so the caller decides about a banned agent.
    let mut banned = again.clone();
    banned.banned = true;
    store
        .replace_attested_agent(&banned, None)
        .await
        .expect("replace with banned flag");
    let stored = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get banned")
        .expect("banned agent exists");
    assert!(stored.banned);

    banned.previous_x509_svid_serial = Some(again.x509_svid_serial.clone());
    banned.previous_x509_svid_expires_at = Some(again.x509_svid_expires_at);
    assert_eq!(
        store.list_attested_agents().await.expect("list"),
        [banned, other],
        "replacing must neither duplicate nor touch other agents"
    );
}

async fn agent_previous_svid(db: &TestDb) {
    let store = db.open().await;
    let blue = agent("blue");
    store
        .create_attested_agent(&blue)
        .await
        .expect("create blue");
    let created = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get created")
        .expect("created agent exists");
    assert_eq!(created.previous_x509_svid_serial, None);
    assert_eq!(created.previous_x509_svid_expires_at, None);

    let before_noop = revision(&store).await;
    let cleared = store
        .clear_previous_agent_svid(&blue.spiffe_id, &blue.x509_svid_serial)
        .await
        .expect("clear without a previous SVID");
    assert!(!cleared, "nothing to clear");
    assert_eq!(
        revision(&store).await,
        before_noop,
        "a no-op clear keeps the revision"
    );

    // Two renewals: the second one replaces the previous SVID.
    store
        .update_agent_svid(&blue.spiffe_id, "01ab", "0b", NOW + 200)
        .await
        .expect("first renewal");
    store
        .update_agent_svid(&blue.spiffe_id, "0b", "0c", NOW + 300)
        .await
        .expect("second renewal");
    let renewed = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get renewed")
        .expect("renewed agent exists");
    assert_eq!(renewed.x509_svid_serial, "0c");
    assert_eq!(renewed.previous_x509_svid_serial.as_deref(), Some("0b"));
    assert_eq!(renewed.previous_x509_svid_expires_at, Some(NOW + 200));

    // A clear that names a stale current serial changes nothing.
    let stale = store
        .clear_previous_agent_svid(&blue.spiffe_id, "0b")
        .await
        .expect("clear with a stale serial");
    assert!(!stale, "stale serial clears nothing");
    let kept = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get kept")
        .expect("kept agent exists");
    assert_eq!(kept.previous_x509_svid_serial.as_deref(), Some("0b"));

    let before_clear = revision(&store).await;
    let cleared = store
        .clear_previous_agent_svid(&blue.spiffe_id, "0c")
        .await
        .expect("clear with the current serial");
    assert!(cleared, "current serial clears the previous SVID");
    assert!(
        revision(&store).await > before_clear,
        "a clear bumps the revision"
    );
    let used = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get used")
        .expect("used agent exists");
    assert_eq!(used.x509_svid_serial, "0c");
    assert_eq!(used.x509_svid_expires_at, NOW + 300);
    assert_eq!(used.previous_x509_svid_serial, None);
    assert_eq!(used.previous_x509_svid_expires_at, None);

    let unknown = id("spiffe://example.org/spire/agent/join_token/none");
    let missing = store
        .clear_previous_agent_svid(&unknown, "0c")
        .await
        .expect("clear for an unknown agent");
    assert!(!missing, "unknown agent clears nothing");

    // A renewal by the holder of the previous SVID keeps that SVID as the previous one,
    // because the caller never received the current one.
    store
        .update_agent_svid(&blue.spiffe_id, "0c", "0d", NOW + 400)
        .await
        .expect("renewal with the current SVID");
    store
        .update_agent_svid(&blue.spiffe_id, "0c", "0e", NOW + 500)
        .await
        .expect("renewal with the previous SVID");
    let retried = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get retried")
        .expect("retried agent exists");
    assert_eq!(retried.x509_svid_serial, "0e");
    assert_eq!(retried.x509_svid_expires_at, NOW + 500);
    assert_eq!(retried.previous_x509_svid_serial.as_deref(), Some("0c"));
    assert_eq!(retried.previous_x509_svid_expires_at, Some(NOW + 300));

    // Re-attestation follows the same rule.
    let mut attested = blue.clone();
    attested.x509_svid_serial = "0f".to_owned();
    attested.x509_svid_expires_at = NOW + 600;
    store
        .replace_attested_agent(&attested, Some("0c"))
        .await
        .expect("re-attestation with the previous SVID");
    let reattested = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get re-attested")
        .expect("re-attested agent exists");
    assert_eq!(reattested.x509_svid_serial, "0f");
    assert_eq!(reattested.previous_x509_svid_serial.as_deref(), Some("0c"));
    assert_eq!(reattested.previous_x509_svid_expires_at, Some(NOW + 300));
    attested.x509_svid_serial = "10".to_owned();
    store
        .replace_attested_agent(&attested, Some("0f"))
        .await
        .expect("re-attestation with the current SVID");
    let moved = store
        .get_attested_agent(&blue.spiffe_id)
        .await
        .expect("get moved")
        .expect("moved agent exists");
    assert_eq!(moved.x509_svid_serial, "10");
    assert_eq!(moved.previous_x509_svid_serial.as_deref(), Some("0f"));
    assert_eq!(moved.previous_x509_svid_expires_at, Some(NOW + 600));

    // Deleting the agent removes both SVIDs.
    store
        .delete_attested_agent(&blue.spiffe_id)
        .await
        .expect("delete blue");
    assert_eq!(
        store
            .get_attested_agent(&blue.spiffe_id)
            .await
            .expect("get deleted"),
        None
    );
}

async fn join_token_lifecycle(db: &TestDb) {
    let store = db.open().await;
    let token = "d3b07384-d9a0-4c9b-8f1e-secret-value";
    store
        .create_join_token(token, NOW + 600)
        .await
        .expect("create token");
    let duplicate = store.create_join_token(token, NOW + 900).await;
    match &duplicate {
        Err(DatastoreError::AlreadyExists(what)) => {
            assert!(
                !what.contains(token),
                "error message {what:?} reveals the token"
            );
        }
        other => panic!("duplicate token returned {other:?}"),
    }

    // The table contains a digest, not the token.
    let mut raw = db.raw().await;
    let stored: Vec<String> = sqlx::query("SELECT token_sha256 FROM join_tokens")
        .fetch_all(&mut raw)
        .await
        .expect("read join_tokens")
        .iter()
        .map(|row| row.try_get("token_sha256").expect("token_sha256 column"))
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].len(), 64);
    assert!(!stored[0].contains("secret"));
    raw.close().await.expect("close raw connection");

    let taken = store.take_join_token(token).await.expect("take token");
    assert_eq!(
        taken,
        Some(JoinToken {
            token: token.to_owned(),
            expires_at: NOW + 600
        })
    );
    let debug = format!("{:?}", taken.expect("taken token"));
    assert!(
        !debug.contains(token),
        "Debug output {debug:?} reveals the token"
    );
    assert!(debug.contains(&(NOW + 600).to_string()));
    assert_eq!(
        store.take_join_token(token).await.expect("take again"),
        None
    );
    assert_eq!(
        store
            .take_join_token("unknown")
            .await
            .expect("take unknown"),
        None
    );

    for (name, expires_at) in [("old", NOW - 1), ("edge", NOW), ("fresh", NOW + 1)] {
        store
            .create_join_token(name, expires_at)
            .await
            .expect("create token for pruning");
    }
    assert_eq!(store.prune_join_tokens(NOW).await.expect("prune"), 2);
    assert_eq!(store.prune_join_tokens(NOW).await.expect("prune again"), 0);
    assert_eq!(store.take_join_token("old").await.expect("take old"), None);
    assert_eq!(
        store.take_join_token("edge").await.expect("take edge"),
        None
    );
    let fresh = store.take_join_token("fresh").await.expect("take fresh");
    assert_eq!(fresh.map(|t| t.expires_at), Some(NOW + 1));

    // A taken token can be stored again, which the server does to restore a token after an
    // internal failure.
    store
        .create_join_token(token, NOW + 600)
        .await
        .expect("restore token");
    assert!(
        store
            .take_join_token(token)
            .await
            .expect("take restored")
            .is_some()
    );
}

async fn join_token_single_use(db: &TestDb) {
    const TAKERS: usize = 16;
    let store = db.open().await;
    for round in 0..5 {
        let token = format!("contested-{round}");
        store
            .create_join_token(&token, NOW + 60)
            .await
            .expect("create token");
        let barrier = Arc::new(tokio::sync::Barrier::new(TAKERS));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TAKERS {
            let store = store.clone();
            let token = token.clone();
            let barrier = Arc::clone(&barrier);
            tasks.spawn(async move {
                barrier.wait().await;
                store.take_join_token(&token).await
            });
        }
        let mut winners = 0;
        while let Some(result) = tasks.join_next().await {
            if result.expect("taker task").expect("take token").is_some() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "takers of token {token} that received it");
    }
}

async fn bundle_sequence(db: &TestDb) {
    let store = db.open().await;
    let home = td("example.org");
    let partner = td("partner.test");
    assert_eq!(store.get_bundle(&home).await.expect("get none"), None);
    assert!(store.list_bundles().await.expect("list none").is_empty());

    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    assert_eq!(store.set_bundle(&home, b"one").await.expect("set 1"), 1);
    assert_eq!(store.set_bundle(&home, b"two").await.expect("set 2"), 2);
    assert_eq!(
        store
            .set_bundle(&partner, &[0, 255, 1])
            .await
            .expect("set p"),
        1
    );
    assert_eq!(store.set_bundle(&home, b"three").await.expect("set 3"), 3);

    let stored = store
        .get_bundle(&home)
        .await
        .expect("get home")
        .expect("home bundle exists");
    assert_eq!(stored.trust_domain, home);
    assert_eq!(stored.data, b"three");
    assert_eq!(stored.sequence, 3);
    let updated_at = u64::try_from(stored.updated_at).expect("non-negative updated_at");
    assert!(
        updated_at >= started && updated_at <= started + 60,
        "updated_at {updated_at} is not the current time {started}"
    );

    let all = store.list_bundles().await.expect("list");
    let summary: Vec<(String, Vec<u8>, u64)> = all
        .into_iter()
        .map(|b| (b.trust_domain.to_string(), b.data, b.sequence))
        .collect();
    assert_eq!(
        summary,
        [
            ("example.org".to_owned(), b"three".to_vec(), 3),
            ("partner.test".to_owned(), vec![0, 255, 1], 1),
        ]
    );
}

async fn ca_state_upsert(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.get_ca_state("x509").await.expect("get none"), None);
    store.put_ca_state("x509", b"[1]").await.expect("put");
    store
        .put_ca_state("jwt", &[0, 1, 2])
        .await
        .expect("put jwt");
    store.put_ca_state("x509", b"[1,2]").await.expect("replace");
    assert_eq!(
        store.get_ca_state("x509").await.expect("get"),
        Some(b"[1,2]".to_vec())
    );
    assert_eq!(
        store.get_ca_state("jwt").await.expect("get jwt"),
        Some(vec![0, 1, 2])
    );
}

async fn revision_tracking(db: &TestDb) {
    let store = db.open().await;
    let mut last = revision(&store).await;

    // Asserts that the revision grew (`true`) or stayed (`false`) since the last check.
    async fn check(store: &Datastore, last: &mut u64, grows: bool, step: &str) {
        let now = revision(store).await;
        if grows {
            assert!(now > *last, "revision did not grow after {step}: {now}");
        } else {
            assert_eq!(now, *last, "revision changed after {step}");
        }
        *last = now;
    }

    let entry = workload("rev", PARENT, &["u:1"]);
    let created = store.create_entry(&entry, NOW).await.expect("create");
    check(&store, &mut last, true, "create_entry").await;
    let _ = store.create_entry(&entry, NOW).await;
    check(&store, &mut last, false, "a duplicate create_entry").await;
    store
        .create_entries(&[workload("rev2", PARENT, &["u:1"])], NOW)
        .await
        .expect("batch");
    check(&store, &mut last, true, "create_entries").await;
    store
        .update_entry(&created.id, &entry, NOW)
        .await
        .expect("update");
    check(&store, &mut last, true, "update_entry").await;
    let _ = store.update_entry("missing", &entry, NOW).await;
    check(&store, &mut last, false, "update_entry of a missing entry").await;
    store.delete_entry(&created.id).await.expect("delete");
    check(&store, &mut last, true, "delete_entry").await;
    let _ = store.delete_entry(&created.id).await;
    check(&store, &mut last, false, "delete_entry of a missing entry").await;
    let mut expiring = workload("rev3", PARENT, &["u:1"]);
    expiring.expires_at = Some(NOW);
    store.create_entry(&expiring, NOW).await.expect("create");
    check(&store, &mut last, true, "create_entry").await;
    store.prune_expired_entries(NOW).await.expect("prune");
    check(&store, &mut last, true, "prune_expired_entries").await;

    let blue = agent("blue");
    store.create_attested_agent(&blue).await.expect("agent");
    check(&store, &mut last, true, "create_attested_agent").await;
    let _ = store.create_attested_agent(&blue).await;
    check(
        &store,
        &mut last,
        false,
        "a duplicate create_attested_agent",
    )
    .await;
    store
        .update_agent_svid(&blue.spiffe_id, "01ab", "02", NOW)
        .await
        .expect("svid");
    check(&store, &mut last, true, "update_agent_svid").await;
    store
        .set_agent_banned(&blue.spiffe_id, true)
        .await
        .expect("ban");
    check(&store, &mut last, true, "set_agent_banned").await;
    store
        .delete_attested_agent(&blue.spiffe_id)
        .await
        .expect("evict");
    check(&store, &mut last, true, "delete_attested_agent").await;
    let _ = store.set_agent_banned(&blue.spiffe_id, true).await;
    check(
        &store,
        &mut last,
        false,
        "set_agent_banned of a missing agent",
    )
    .await;

    store
        .set_bundle(&td("example.org"), b"{}")
        .await
        .expect("bundle");
    check(&store, &mut last, true, "set_bundle").await;

    store.create_join_token("t", NOW).await.expect("token");
    store.take_join_token("t").await.expect("take");
    store.put_ca_state("k", b"v").await.expect("ca state");
    check(&store, &mut last, false, "join token and CA state writes").await;
}

async fn reopen_persistence(db: &TestDb) {
    let store = db.open().await;
    let entry = store
        .create_entry(&workload("kept", PARENT, &["u:1"]), NOW)
        .await
        .expect("create entry");
    let blue = agent("blue");
    store.create_attested_agent(&blue).await.expect("agent");
    store
        .create_join_token("kept-token", NOW + 60)
        .await
        .expect("token");
    store
        .set_bundle(&td("example.org"), b"bundle")
        .await
        .expect("bundle");
    store
        .put_ca_state("x509", b"state")
        .await
        .expect("ca state");
    let revision_before = revision(&store).await;
    store.close().await;
    assert!(
        store.get_entry(&entry.id).await.is_err(),
        "a closed store still answered"
    );

    let reopened = db.open().await;
    assert_eq!(
        reopened.get_entry(&entry.id).await.expect("get entry"),
        Some(entry)
    );
    assert_eq!(
        reopened
            .get_attested_agent(&blue.spiffe_id)
            .await
            .expect("get agent"),
        Some(blue)
    );
    let token = reopened.take_join_token("kept-token").await.expect("take");
    assert_eq!(token.map(|t| t.expires_at), Some(NOW + 60));
    let bundle = reopened
        .get_bundle(&td("example.org"))
        .await
        .expect("get bundle")
        .expect("bundle exists");
    assert_eq!(
        (bundle.data.as_slice(), bundle.sequence),
        (&b"bundle"[..], 1)
    );
    assert_eq!(
        reopened.get_ca_state("x509").await.expect("get state"),
        Some(b"state".to_vec())
    );
    assert_eq!(revision(&reopened).await, revision_before);
}

async fn migration_idempotent(db: &TestDb) {
    let first = db.open().await;
    first
        .create_entry(&workload("m", PARENT, &["u:1"]), NOW)
        .await
        .expect("create");
    let revision_before = revision(&first).await;
    let id_before = first.datastore_id().await.expect("datastore ID");
    assert_eq!(id_before.len(), 32, "a 128-bit hex ID: {id_before}");
    first.close().await;

    for _ in 0..2 {
        let again = db.open().await;
        assert_eq!(again.count_entries().await.expect("count"), 1);
        assert_eq!(revision(&again).await, revision_before);
        assert_eq!(
            again.datastore_id().await.expect("datastore ID"),
            id_before,
            "reopening keeps the datastore ID"
        );
        again.close().await;
    }

    let mut raw = db.raw().await;
    let versions: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(&mut raw)
        .await
        .expect("read schema_migrations")
        .iter()
        .map(|row| row.try_get("version").expect("version column"))
        .collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "each migration is recorded once"
    );
    let counters = sqlx::query("SELECT COUNT(*) AS count FROM changes")
        .fetch_one(&mut raw)
        .await
        .expect("count changes rows");
    let counters: i64 = counters.try_get("count").expect("count column");
    assert_eq!(counters, 1, "the changes table keeps one row");
    raw.close().await.expect("close raw connection");
}

async fn concurrent_open_migrates_once(db: &TestDb) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let config = db.config.clone();
        tasks.spawn(async move { Datastore::open(&config).await });
    }
    let mut stores = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let opened = result.expect("opener task");
        stores.push(opened.expect("concurrent open of a fresh database"));
    }
    stores[0]
        .create_entry(&workload("c", PARENT, &["u:1"]), NOW)
        .await
        .expect("create after concurrent open");
    for store in &stores {
        assert_eq!(store.count_entries().await.expect("count"), 1);
        store.close().await;
    }

    let mut raw = db.raw().await;
    let rows = sqlx::query("SELECT COUNT(*) AS count FROM schema_migrations")
        .fetch_one(&mut raw)
        .await
        .expect("count schema_migrations rows");
    let recorded: i64 = rows.try_get("count").expect("count column");
    assert_eq!(recorded, 10, "migration rows after concurrent opens");
    raw.close().await.expect("close raw connection");
}

async fn schema_too_new(db: &TestDb) {
    db.open().await.close().await;
    let mut raw = db.raw().await;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
        .bind(999_i64)
        .bind(NOW)
        .execute(&mut raw)
        .await
        .expect("record a future migration");
    raw.close().await.expect("close raw connection");

    match Datastore::open(&db.config).await {
        Err(DatastoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert_eq!(supported, 10);
        }
        Err(other) => panic!("opening a newer schema failed with the wrong error: {other}"),
        Ok(_) => panic!("opening a newer schema succeeded"),
    }
}

/// Runs a child process that creates entries and prints each acknowledged ID, kills it with
/// SIGKILL mid-loop, and checks that every acknowledged entry is stored.
///
/// Limit: SIGKILL leaves the operating system's page cache intact, so this checks that a
/// method returns only after its commit, not that the commit reached the disk.
async fn crash_keeps_acknowledged_entries(db: &TestDb) {
    const ACKS_BEFORE_KILL: usize = 40;
    let backend = match db.config.database_type {
        DatabaseType::Sqlite => "sqlite",
        DatabaseType::Postgres => "postgres",
    };
    let spec = format!("{backend}|{}", db.config.connection_string);
    let acknowledged =
        tokio::task::spawn_blocking(move || run_and_kill_child(&spec, ACKS_BEFORE_KILL))
            .await
            .expect("child supervisor thread");
    assert!(
        acknowledged.len() >= ACKS_BEFORE_KILL,
        "child acknowledged only {} entries",
        acknowledged.len()
    );

    let store = db.open().await;
    for id in &acknowledged {
        let entry = store.get_entry(id).await.expect("get entry");
        assert!(
            entry.is_some(),
            "acknowledged entry {id} is missing after SIGKILL"
        );
    }
    let count = store.count_entries().await.expect("count");
    assert!(count >= acknowledged.len() as u64);
}

/// Starts the child, reads its acknowledgements until `kill_after` arrived, kills it, and
/// returns every acknowledgement it printed before dying.
fn run_and_kill_child(spec: &str, kill_after: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crash child");
    let stdout = child.stdout.take().expect("child stdout");
    let child = Arc::new(Mutex::new(child));
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = spawn_watchdog(Arc::clone(&child), Arc::clone(&finished));

    let mut acknowledged = Vec::new();
    let mut killed = false;
    let mut other_output = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        match line.strip_prefix(ACK_PREFIX) {
            Some(id) => acknowledged.push(id.to_owned()),
            None => other_output.push(line),
        }
        if !killed && acknowledged.len() >= kill_after {
            // Child::kill sends SIGKILL on Unix.
            child
                .lock()
                .expect("child lock")
                .kill()
                .expect("kill child");
            killed = true;
        }
    }
    let status = child
        .lock()
        .expect("child lock")
        .wait()
        .expect("wait for child");
    finished.store(true, Ordering::SeqCst);
    watchdog.join().expect("watchdog thread");
    assert!(
        killed,
        "child exited with {status} after {} acknowledgements; output: {other_output:?}",
        acknowledged.len()
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "child ended with {status}, not SIGKILL"
    );
    acknowledged
}

/// Kills the child if it is still running after two minutes, so a hung child fails the test
/// instead of hanging it.
fn spawn_watchdog(
    child: Arc<Mutex<Child>>,
    finished: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !finished.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                eprintln!("crash child still running after 120 s; killing it");
                let _ = child.lock().expect("child lock").kill();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Creates entries until killed and prints each ID once `create_entry` has returned. The
/// crash tests run this test in a child process.
#[tokio::test]
#[ignore = "child process of the crash tests, run by them with TWID_DATASTORE_CRASH_CHILD set"]
async fn crash_child() {
    let Ok(spec) = std::env::var(CRASH_CHILD_ENV) else {
        eprintln!("{CRASH_CHILD_ENV} is not set; this test only runs as the crash tests' child");
        return;
    };
    let (backend, connection_string) = spec.split_once('|').expect("backend|connection");
    let database_type = match backend {
        "sqlite" => DatabaseType::Sqlite,
        "postgres" => DatabaseType::Postgres,
        other => panic!("unknown backend {other:?} in {CRASH_CHILD_ENV}"),
    };
    let store = Datastore::open(&DatastoreConfig {
        ro_connection_string: None,
        database_type,
        connection_string: connection_string.to_owned(),
    })
    .await
    .expect("child opens the datastore");
    for index in 0_u64.. {
        let entry = workload(&format!("crash/{index}"), PARENT, &["u:1"]);
        let created = store.create_entry(&entry, NOW).await.expect("child create");
        // println! writes through a line buffer, so each line reaches the pipe on its own.
        println!("{ACK_PREFIX}{}", created.id);
    }
}

#[tokio::test]
async fn new_sqlite_file_settings() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("twid.db");
    let store = Datastore::open_sqlite(&path).await.expect("open sqlite");
    store
        .create_entry(&workload("mode", PARENT, &["u:1"]), NOW)
        .await
        .expect("create entry");

    let mode = |path: &Path| std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&path).expect("database file exists"), 0o600);
    for suffix in ["-wal", "-shm"] {
        let side = dir.path().join(format!("twid.db{suffix}"));
        if let Ok(side_mode) = mode(&side) {
            assert_eq!(side_mode, 0o600, "{} mode", side.display());
        }
    }

    sqlx::any::install_default_drivers();
    let mut raw = AnyConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect directly");
    let row = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await
        .expect("read journal mode");
    let journal_mode: String = row.try_get(0).expect("journal_mode column");
    assert_eq!(journal_mode.to_lowercase(), "wal");
    let page_size = read_page_size(&mut raw).await;
    assert_eq!(page_size, 16384);
    raw.close().await.expect("close raw connection");
    store.close().await;
}

/// Reads the page size of the SQLite file that `conn` opened.
async fn read_page_size(conn: &mut AnyConnection) -> i64 {
    let row = sqlx::query("PRAGMA page_size")
        .fetch_one(conn)
        .await
        .expect("read page size");
    row.try_get(0).expect("page_size column")
}

#[tokio::test]
async fn sqlite_4_kib_pages_kept() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("twid.db");
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut raw = AnyConnection::connect(&url)
        .await
        .expect("create the file directly");
    sqlx::raw_sql(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE earlier (id INTEGER);",
    )
    .execute(&mut raw)
    .await
    .expect("create a file with 4 KiB pages");
    raw.close().await.expect("close raw connection");

    let store = Datastore::open_sqlite(&path).await.expect("open sqlite");
    store
        .create_entry(&workload("pages", PARENT, &["u:1"]), NOW)
        .await
        .expect("create entry");
    store.close().await;

    let mut raw = AnyConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect directly");
    let page_size = read_page_size(&mut raw).await;
    assert_eq!(page_size, 4096);
    raw.close().await.expect("close raw connection");
}

#[tokio::test]
async fn postgres_missing_database_error() {
    // Creating a database first shows that PostgreSQL is reachable, and its name plus a suffix
    // names a database that does not exist.
    let Some(db) = TestDb::postgres("twid_missing").await else {
        return;
    };
    let mut config = db.config.clone();
    config.connection_string.push_str("_absent");
    let message = match Datastore::open(&config).await {
        Err(error @ DatastoreError::InvalidConfig(_)) => error.to_string(),
        Err(other) => panic!("wrong error for a missing database: {other:?}"),
        Ok(_) => panic!("a missing database opened"),
    };
    assert!(
        message.contains("_absent\" does not exist") && message.contains("createdb"),
        "{message}"
    );
    assert!(!message.contains("at line"), "{message}");
}

#[tokio::test]
async fn postgres_unreachable_fails_at_once() {
    // Port 1 of the loopback address normally has no listener, so the connection is refused.
    let config = DatastoreConfig {
        ro_connection_string: None,
        database_type: DatabaseType::Postgres,
        connection_string: "postgres://postgres:hunter2@127.0.0.1:1/twid".to_owned(),
    };
    let started = Instant::now();
    let message = match Datastore::open(&config).await {
        Err(error @ DatastoreError::Unreachable(_)) => error.to_string(),
        Err(other) => panic!("wrong error for an unreachable server: {other:?}"),
        Ok(_) => panic!("an unreachable server opened"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("host and port"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn sqlite_missing_directory_fails() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("absent").join("twid.db");
    match Datastore::open_sqlite(&path).await {
        Err(DatastoreError::File { path: reported, .. }) => assert_eq!(reported, path),
        Err(other) => panic!("wrong error for a missing directory: {other}"),
        Ok(_) => panic!("opened a database in a missing directory"),
    }
}

#[tokio::test]
async fn sqlite_corrupt_file_names_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("twid.db");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write garbage");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Before the probe connection, the pool retried until its acquire timeout and reported
    // a Backend error that named neither the file nor the cause.
    match Datastore::open_sqlite(&path).await {
        Err(DatastoreError::Open { path: reported, .. }) => assert_eq!(reported, path),
        Err(other) => panic!("wrong error for a corrupt file: {other}"),
        Ok(_) => panic!("opened a corrupt file as a database"),
    }
}
