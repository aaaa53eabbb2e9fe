//! Federation relationships on both backends: each test body runs once on a temporary SQLite
//! file (module `sqlite`) and once on a fresh PostgreSQL database (module `postgres`). The
//! harness and its PostgreSQL requirements are described in `common/mod.rs`.

mod common;

use twid_datastore::{BundleEndpointProfile, DatastoreError, FederationRelationship};
use twid_spiffe::{SpiffeId, TrustDomain};

use common::{TestDb, on_both_backends};

on_both_backends!(
    sqlite_file: "federation.db",
    postgres_prefix: "twid_federation",
    worker_threads: 2,
    tests: [
        relationships_round_trip,
        put_writes_only_changes,
        missing_relationship_not_found,
    ],
);

fn spiffe_relationship(name: &str) -> FederationRelationship {
    FederationRelationship {
        trust_domain: TrustDomain::new(name).expect("trust domain"),
        bundle_endpoint_url: format!("https://{name}:8443"),
        profile: BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::new(&format!("spiffe://{name}/spire/server"))
                .expect("SPIFFE ID"),
        },
        created_at: 0,
        updated_at: 0,
    }
}

async fn relationships_round_trip(db: &TestDb) {
    let store = db.open().await;
    let b = store
        .create_federation_relationship(&spiffe_relationship("b.org"), 100)
        .await
        .expect("create b.org");
    assert_eq!(b.created_at, 100);
    assert_eq!(b.updated_at, 100);
    let mut web = spiffe_relationship("a.org");
    web.profile = BundleEndpointProfile::HttpsWeb;
    store
        .create_federation_relationship(&web, 101)
        .await
        .expect("create a.org");

    let duplicate = store
        .create_federation_relationship(&spiffe_relationship("b.org"), 102)
        .await;
    assert!(
        matches!(duplicate, Err(DatastoreError::AlreadyExists(_))),
        "{duplicate:?}"
    );

    let listed = store.list_federation_relationships().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|r| r.trust_domain.name()).collect();
    assert_eq!(names, ["a.org", "b.org"]);
    assert_eq!(listed[0].profile, BundleEndpointProfile::HttpsWeb);
    assert_eq!(listed[1], b);

    let mut changed = spiffe_relationship("b.org");
    changed.bundle_endpoint_url = "https://b.org/bundle".to_owned();
    changed.profile = BundleEndpointProfile::HttpsWeb;
    let updated = store
        .update_federation_relationship(&changed, 200)
        .await
        .expect("update");
    assert_eq!(updated.created_at, 100);
    assert_eq!(updated.updated_at, 200);
    assert_eq!(updated.bundle_endpoint_url, "https://b.org/bundle");
    let fetched = store
        .get_federation_relationship(&changed.trust_domain)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(fetched, updated);

    store
        .delete_federation_relationship(&changed.trust_domain)
        .await
        .expect("delete");
    let gone = store
        .get_federation_relationship(&changed.trust_domain)
        .await
        .expect("get");
    assert_eq!(gone, None);
}

async fn put_writes_only_changes(db: &TestDb) {
    let store = db.open().await;
    let relationship = spiffe_relationship("c.org");
    assert!(
        store
            .put_federation_relationship(&relationship, 10)
            .await
            .expect("first put")
    );
    assert!(
        !store
            .put_federation_relationship(&relationship, 11)
            .await
            .expect("same put")
    );
    let mut moved = relationship.clone();
    moved.bundle_endpoint_url = "https://c.org:9443".to_owned();
    assert!(
        store
            .put_federation_relationship(&moved, 12)
            .await
            .expect("changed put")
    );
    let stored = store
        .get_federation_relationship(&moved.trust_domain)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(stored.bundle_endpoint_url, "https://c.org:9443");
    assert_eq!(stored.created_at, 10);
    assert_eq!(stored.updated_at, 12);
}

async fn missing_relationship_not_found(db: &TestDb) {
    let store = db.open().await;
    let relationship = spiffe_relationship("d.org");
    let update = store.update_federation_relationship(&relationship, 1).await;
    assert!(
        matches!(update, Err(DatastoreError::NotFound(_))),
        "{update:?}"
    );
    let delete = store
        .delete_federation_relationship(&relationship.trust_domain)
        .await;
    assert!(
        matches!(delete, Err(DatastoreError::NotFound(_))),
        "{delete:?}"
    );
}
