//! Policy versions on both backends: each test body runs once on a temporary SQLite file
//! (module `sqlite`) and once on a fresh PostgreSQL database (module `postgres`). The harness
//! and its PostgreSQL requirements are described in `common/mod.rs`.

mod common;

use twid_datastore::{DatastoreError, PolicyVersion};

use common::{TestDb, on_both_backends};

on_both_backends!(
    sqlite_file: "policy.db",
    postgres_prefix: "twid_policy",
    worker_threads: 4,
    tests: [
        versions_are_kept_and_listed_in_order,
        check_gets_current_and_can_reject,
        same_version_twice_rejected,
        concurrent_appends_store_one,
    ],
);

fn version(number: u64, signer: &str) -> PolicyVersion {
    PolicyVersion {
        version: number,
        jws: format!("header.payload{number}.signature"),
        document: format!("{{\"version\":{number}}}"),
        signer_kid: signer.to_owned(),
        applied_at: 1_700_000_000 + i64::try_from(number).expect("small"),
    }
}

/// A check that accepts exactly the next version number.
fn next_of(new: u64) -> impl FnOnce(Option<&PolicyVersion>) -> Result<(), DatastoreError> {
    move |current| {
        let expected = current.map_or(1, |current| current.version + 1);
        if new == expected {
            Ok(())
        } else {
            Err(DatastoreError::Conflict(format!("expected {expected}")))
        }
    }
}

async fn versions_are_kept_and_listed_in_order(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.current_policy_version().await.expect("query"), None);
    assert_eq!(store.current_policy().await.expect("query"), None);
    for number in 1..=3 {
        let new = version(number, &format!("owner{number}"));
        store
            .append_policy_version(&new, next_of(number))
            .await
            .expect("append");
    }
    assert_eq!(
        store.current_policy_version().await.expect("query"),
        Some(3)
    );
    assert_eq!(
        store.current_policy().await.expect("query"),
        Some(version(3, "owner3"))
    );
    assert_eq!(
        store.get_policy_version(2).await.expect("query"),
        Some(version(2, "owner2"))
    );
    assert_eq!(store.get_policy_version(4).await.expect("query"), None);
    // Versions that no column can store are absent, not an error.
    for unstorable in [1 << 63, u64::MAX] {
        assert_eq!(
            store.get_policy_version(unstorable).await.expect("query"),
            None
        );
    }
    let listed: Vec<u64> = store
        .list_policy_versions()
        .await
        .expect("list")
        .iter()
        .map(|stored| stored.version)
        .collect();
    assert_eq!(listed, [1, 2, 3]);

    // A reopened store reads the same versions.
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store.get_policy_version(1).await.expect("query"),
        Some(version(1, "owner1"))
    );
}

async fn check_gets_current_and_can_reject(db: &TestDb) {
    let store = db.open().await;
    store
        .append_policy_version(&version(1, "a"), next_of(1))
        .await
        .expect("append 1");
    let mut seen = None;
    let rejected = store
        .append_policy_version(&version(3, "a"), |current: Option<&PolicyVersion>| {
            seen = current.map(|current| (current.version, current.signer_kid.clone()));
            next_of(3)(current)
        })
        .await;
    assert!(
        matches!(&rejected, Err(DatastoreError::Conflict(message)) if message == "expected 2"),
        "{rejected:?}"
    );
    assert_eq!(seen, Some((1, "a".to_owned())));
    assert_eq!(
        store.current_policy_version().await.expect("query"),
        Some(1)
    );
    assert_eq!(store.list_policy_versions().await.expect("list").len(), 1);
}

async fn same_version_twice_rejected(db: &TestDb) {
    let store = db.open().await;
    store
        .append_policy_version(&version(1, "a"), next_of(1))
        .await
        .expect("append 1");
    // A check that accepts anything still cannot overwrite a stored version.
    let again = store
        .append_policy_version(&version(1, "b"), |_: Option<&PolicyVersion>| {
            Ok::<(), DatastoreError>(())
        })
        .await;
    assert!(
        matches!(&again, Err(DatastoreError::AlreadyExists(what)) if what == "policy version 1"),
        "{again:?}"
    );
    assert_eq!(
        store.get_policy_version(1).await.expect("query"),
        Some(version(1, "a"))
    );
}

async fn concurrent_appends_store_one(db: &TestDb) {
    let store = db.open().await;
    store
        .append_policy_version(&version(1, "a"), next_of(1))
        .await
        .expect("append 1");
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_policy_version(&version(2, &format!("w{writer}")), next_of(2))
                .await
        }));
    }
    let mut stored = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => stored += 1,
            Err(DatastoreError::AlreadyExists(_) | DatastoreError::Conflict(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(store.list_policy_versions().await.expect("list").len(), 2);
}
