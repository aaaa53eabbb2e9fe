//! A second server started on a running server's data directory fails before it changes
//! anything, and the directory is free again once the first server stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;

use twid_config::ServerConfig;
use twid_server::Server;
use twid_spiffe::TrustDomain;

#[path = "../src/test_support.rs"]
mod test_support;

use test_support::TestDatastore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_data_dir_fails() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatastore::new(dir.path());
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let trust_domain = TrustDomain::new("example.org").unwrap();
    let mut config = ServerConfig::new_dev(trust_domain.clone(), &data_dir);
    config.datastore = database.config.clone();

    let first = Server::start(config.clone()).await.unwrap();
    let datastore = twid_datastore::Datastore::open(&config.datastore)
        .await
        .unwrap();
    let bundle = datastore.get_bundle(&trust_domain).await.unwrap().unwrap();

    let error = Server::start(config.clone())
        .await
        .err()
        .expect("a second server on the same data_dir must fail");
    let message = error.to_string();
    assert!(message.contains(data_dir.to_str().unwrap()), "{message}");
    assert!(
        message.contains("another twid server is running"),
        "{message}"
    );
    let after = datastore.get_bundle(&trust_domain).await.unwrap().unwrap();
    assert_eq!(
        after.sequence, bundle.sequence,
        "the bundle was published again"
    );
    assert!(first.admin_socket().exists());

    first.shutdown().await;
    let again = Server::start(config).await.unwrap();
    again.shutdown().await;
    datastore.close().await;
}
