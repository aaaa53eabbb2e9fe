//! The admin API client over a server's Unix socket.

use std::path::Path;

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use twid_proto::admin::admin_client::AdminClient;
use twid_proto::admin::{
    BatchCreateEntryRequest, CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest,
    GetBundleRequest,
};
use twid_proto::types as pb;

use crate::servers::TRUST_DOMAIN;

/// Entries per `BatchCreateEntry` request; the server accepts at most 10,000.
pub(crate) const BATCH_SIZE: usize = 5_000;

/// Admin responses carry up to a batch of entries, above tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connected admin API client.
#[derive(Clone)]
pub(crate) struct Admin {
    client: AdminClient<Channel>,
}

impl Admin {
    pub(crate) async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = Endpoint::try_from("http://localhost")?
            .connect_with_connector(connector)
            .await
            .with_context(|| format!("connecting to the admin socket {}", socket.display()))?;
        let client = AdminClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { client })
    }

    /// Returns the DER X.509 authorities of the server's trust bundle.
    pub(crate) async fn bundle(&mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        let bundle = self
            .client
            .get_bundle(GetBundleRequest {})
            .await
            .context("GetBundle failed")?
            .into_inner();
        Ok(bundle.x509_authorities)
    }

    /// Creates a join token valid for a day and returns it.
    pub(crate) async fn join_token(&mut self) -> anyhow::Result<String> {
        let response = self
            .client
            .create_join_token(CreateJoinTokenRequest {
                ttl: 86_400,
                spiffe_id: String::new(),
            })
            .await
            .context("CreateJoinToken failed")?
            .into_inner();
        Ok(response.token)
    }

    /// Creates `entries` with `BatchCreateEntry` requests of [`BATCH_SIZE`] and returns the
    /// stored entries in input order.
    ///
    /// # Errors
    /// Fails on a failed request and on the first entry the server did not store.
    pub(crate) async fn create_entries(
        &mut self,
        entries: Vec<pb::Entry>,
    ) -> anyhow::Result<Vec<pb::Entry>> {
        let mut created = Vec::with_capacity(entries.len());
        let mut remaining = entries.into_iter().peekable();
        while remaining.peek().is_some() {
            let batch: Vec<pb::Entry> = remaining.by_ref().take(BATCH_SIZE).collect();
            let results = self
                .client
                .batch_create_entry(BatchCreateEntryRequest { entries: batch })
                .await
                .context("BatchCreateEntry failed")?
                .into_inner()
                .results;
            for result in results {
                match result.entry {
                    Some(entry) if result.error.is_empty() => created.push(entry),
                    _ => bail!("the server did not store an entry: {}", result.error),
                }
            }
        }
        Ok(created)
    }

    /// Creates one entry with `CreateEntry` and returns its ID.
    pub(crate) async fn create_entry(&mut self, entry: pb::Entry) -> anyhow::Result<String> {
        let created = self
            .client
            .create_entry(CreateEntryRequest { entry: Some(entry) })
            .await
            .context("CreateEntry failed")?
            .into_inner();
        Ok(created.id)
    }

    pub(crate) async fn delete_entry(&mut self, id: &str) -> anyhow::Result<()> {
        self.client
            .delete_entry(DeleteEntryRequest { id: id.to_owned() })
            .await
            .with_context(|| format!("DeleteEntry {id} failed"))?;
        Ok(())
    }
}

/// Builds a workload entry parented to `parent_id` with the selector `unix:uid:<uid>`.
pub(crate) fn workload_entry(spiffe_path: &str, parent_id: &str, uid: u64) -> pb::Entry {
    pb::Entry {
        spiffe_id: format!("spiffe://{TRUST_DOMAIN}/{spiffe_path}"),
        parent_id: parent_id.to_owned(),
        selectors: vec![pb::Selector {
            r#type: "unix".to_owned(),
            value: format!("uid:{uid}"),
        }],
        ..pb::Entry::default()
    }
}
