//! Crashes and outages: no acknowledged write is lost, and agents ride out a server outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use twid_proto::admin::admin_client::AdminClient;
use twid_proto::admin::{CreateEntryRequest, ListEntriesRequest};
use twid_proto::types::{Entry, Selector};

use crate::common::*;

async fn admin(path: &std::path::Path) -> AdminClient<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    AdminClient::new(channel)
}

fn entry(index: usize) -> Entry {
    Entry {
        spiffe_id: format!("spiffe://example.org/crash/{index}"),
        parent_id: "spiffe://example.org/spire/agent/join_token/not-yet-attested".to_owned(),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: format!("uid:{index}"),
        }],
        ..Entry::default()
    }
}

#[test]
fn acknowledged_entries_survive_kill9() {
    let dir = TempDir::new();
    let mut server = ServerProcess::start(dir.path(), "");
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let runtime = tokio::runtime::Runtime::new().unwrap();

    runtime.block_on(async {
        let mut workers = Vec::new();
        for worker in 0..4 {
            let mut client = admin(&server.socket).await;
            let acknowledged = Arc::clone(&acknowledged);
            workers.push(tokio::spawn(async move {
                for index in (worker..500).step_by(4) {
                    let request = CreateEntryRequest {
                        entry: Some(entry(index)),
                    };
                    match client.create_entry(request).await {
                        Ok(reply) => {
                            let created = reply.into_inner();
                            acknowledged
                                .lock()
                                .unwrap()
                                .push((created.id, created.spiffe_id));
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Kill the server while the writers are busy.
        while acknowledged.lock().unwrap().len() < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        for worker in workers {
            worker.await.unwrap();
        }
    });

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 100 && acknowledged.len() < 500,
        "kill came too late"
    );
    server.spawn();
    let stored = runtime.block_on(async {
        let mut client = admin(&server.socket).await;
        client
            .list_entries(ListEntriesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
    });
    for (id, spiffe_id) in &acknowledged {
        let found = stored.iter().find(|entry| &entry.id == id);
        let found = found.unwrap_or_else(|| panic!("acknowledged entry {id} was lost"));
        assert_eq!(&found.spiffe_id, spiffe_id);
        assert_eq!(found.selectors.len(), 1, "entry {id} was stored partially");
    }
}

#[test]
fn agent_serves_cached_svids_while_server_is_down() {
    let dir = TempDir::new();
    let mut server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(
        "spiffe://example.org/first",
        &agent_id(&token),
        &[&selector],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);
    let fetch = || {
        run(&[
            "api",
            "fetch",
            "x509",
            "--output",
            "json",
            "--socket-path",
            agent.socket_arg(),
            "--timeout",
            "15s",
        ])
    };
    let count_svids = |output: &std::process::Output| -> usize {
        if !output.status.success() {
            return 0;
        }
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["svids"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(count_svids(&fetch()), 1, "agent log:\n{}", agent.log());

    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count_svids(&fetch()),
        1,
        "the agent stopped serving while the server is down"
    );

    server.spawn();
    server.create_entry(
        "spiffe://example.org/second",
        &agent_id(&token),
        &[&selector],
    );
    wait_until(
        Duration::from_secs(120),
        "the agent to sync the new entry",
        || count_svids(&fetch()) == 2,
    );
}
