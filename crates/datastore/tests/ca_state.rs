//! The CA state rows that server replicas share: prefix listing, moving rows from before
//! instance IDs existed, and the notification of a replica's authority write. The harness and
//! its PostgreSQL requirements are described in `common/mod.rs`.

mod common;

use std::time::Duration;

use twid_datastore::{ChangeEvent, ChangeKind};

use common::{TestDb, on_both_backends};

on_both_backends!(
    sqlite_file: "ca_state.db",
    postgres_prefix: "twid_ca_state",
    worker_threads: 2,
    tests: [list_matches_prefix_literally, move_claims_old_key_once],
);

/// Functional bound for a notification to arrive; it takes milliseconds.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

async fn list_matches_prefix_literally(db: &TestDb) {
    let store = db.open().await;
    for key in [
        "x509_authorities",
        "x509_authorities/a",
        "x509_authorities/b",
        "x509Xauthorities/c",
        "jwt_keys/a",
    ] {
        store
            .put_ca_state(key, key.as_bytes())
            .await
            .expect("put_ca_state failed");
    }
    let listed = store
        .list_ca_state("x509_authorities/")
        .await
        .expect("list_ca_state failed");
    let keys: Vec<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
    // `_` is a LIKE wildcard, so an unescaped prefix would also list `x509Xauthorities/c`.
    assert_eq!(keys, ["x509_authorities/a", "x509_authorities/b"]);
    assert_eq!(listed[0].1, b"x509_authorities/a");
    assert!(
        store
            .list_ca_state("none/")
            .await
            .expect("list_ca_state failed")
            .is_empty()
    );
}

async fn move_claims_old_key_once(db: &TestDb) {
    let first = db.open().await;
    let second = db.open().await;
    first
        .put_ca_state("x509_authorities", b"x509")
        .await
        .expect("put_ca_state failed");
    first
        .put_ca_state("jwt_keys", b"jwt")
        .await
        .expect("put_ca_state failed");

    let (moved_first, moved_second) = tokio::join!(
        first.move_ca_state(&[
            ("x509_authorities", "x509_authorities/first"),
            ("jwt_keys", "jwt_keys/first"),
        ]),
        second.move_ca_state(&[
            ("x509_authorities", "x509_authorities/second"),
            ("jwt_keys", "jwt_keys/second"),
        ]),
    );
    let moved_first = moved_first.expect("move_ca_state failed");
    let moved_second = moved_second.expect("move_ca_state failed");
    assert!(moved_first != moved_second, "exactly one server moves");
    let winner = if moved_first { "first" } else { "second" };
    let loser = if moved_first { "second" } else { "first" };
    assert_eq!(
        first
            .get_ca_state(&format!("x509_authorities/{winner}"))
            .await
            .expect("get_ca_state failed")
            .as_deref(),
        Some(&b"x509"[..])
    );
    assert_eq!(
        first
            .get_ca_state(&format!("jwt_keys/{winner}"))
            .await
            .expect("get_ca_state failed")
            .as_deref(),
        Some(&b"jwt"[..])
    );
    assert_eq!(
        first
            .get_ca_state(&format!("x509_authorities/{loser}"))
            .await
            .expect("get_ca_state failed"),
        None
    );
    assert_eq!(
        first
            .get_ca_state("x509_authorities")
            .await
            .expect("get_ca_state failed"),
        None
    );
    assert_eq!(
        first
            .get_ca_state("jwt_keys")
            .await
            .expect("get_ca_state failed"),
        None
    );
    assert!(
        !first
            .move_ca_state(&[("x509_authorities", "x509_authorities/first")])
            .await
            .expect("move_ca_state failed"),
        "a second move finds nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_write_notifies_postgres() {
    let Some(db) = TestDb::postgres("twid_ca_state_notify").await else {
        return;
    };
    let writer = db.open().await;
    let reader = db.open().await;
    let mut listener = reader
        .listen_for_changes()
        .await
        .expect("listen_for_changes failed")
        .expect("a listener on PostgreSQL");
    writer
        .put_authority_states(&[("x509_authorities/a", b"x509"), ("jwt_keys/a", b"jwt")])
        .await
        .expect("put_authority_states failed");
    let event = tokio::time::timeout(RECEIVE_TIMEOUT, listener.recv())
        .await
        .expect("no notification for the authority write");
    assert_eq!(event, ChangeEvent::Changed(ChangeKind::Authorities));
    assert_eq!(
        reader
            .list_ca_state("x509_authorities/")
            .await
            .expect("list_ca_state failed"),
        [("x509_authorities/a".to_owned(), b"x509".to_vec())]
    );
}
