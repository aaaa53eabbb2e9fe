//! The gRPC connection to the server's node API, and the node API call the Workload API needs
//! (JWT-SVID signing).
//!
//! The server identifies the agent by the serial number of the TLS client certificate of each
//! connection, and a connection keeps the certificate it was opened with. So after renewing
//! its SVID the agent must open a new connection: [`ServerConnection::reconnect`] replaces the
//! channel, and every caller takes the current one with [`ServerConnection::client`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use rustls::ClientConfig;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::Channel;
use twid_proto::node::NewJwtSvidRequest;
use twid_proto::node::node_client::NodeClient;

use crate::AgentError;
use crate::workload_api::{IssuedJwt, JwtIssuer};

/// Time limit for one node API call, connecting included.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum size of a node API message; a Sync response lists every authorized entry.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The node API client, replaceable as a whole.
pub(crate) struct ServerConnection {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
    client: ArcSwap<NodeClient<Channel>>,
    /// The channel under `client`, for the other services on the node API port.
    channel: ArcSwap<Channel>,
    /// Counts [`ServerConnection::reconnect`] calls, so that long-lived streams move to the
    /// new connection.
    reconnects: watch::Sender<u64>,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// Prepares a connection to `host:port` with `tls`; nothing is dialed until the first call.
    pub(crate) fn new(host: &str, port: u16, tls: Arc<ClientConfig>) -> Result<Self, AgentError> {
        let (client, channel) = new_client(host, port, &tls)?;
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            client: ArcSwap::from_pointee(client),
            channel: ArcSwap::from_pointee(channel),
            reconnects: watch::channel(0).0,
        })
    }

    /// Returns the current client; clones share its connection.
    pub(crate) fn client(&self) -> NodeClient<Channel> {
        NodeClient::clone(&self.client.load())
    }

    /// Returns the current channel, which the node client also uses. Clones share its
    /// connection.
    pub(crate) fn channel(&self) -> Channel {
        Channel::clone(&self.channel.load())
    }

    /// Replaces the channel, so the next call opens a new connection with a new handshake.
    /// Calls in flight finish on the old connection.
    pub(crate) fn reconnect(&self) -> Result<(), AgentError> {
        let (client, channel) = new_client(&self.host, self.port, &self.tls)?;
        self.client.store(Arc::new(client));
        self.channel.store(Arc::new(channel));
        self.reconnects.send_modify(|count| *count += 1);
        Ok(())
    }

    /// Returns a receiver that is notified after every [`ServerConnection::reconnect`].
    pub(crate) fn subscribe_reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}

fn new_client(
    host: &str,
    port: u16,
    tls: &Arc<ClientConfig>,
) -> Result<(NodeClient<Channel>, Channel), AgentError> {
    let channel = twid_tls::connect_channel_lazy(host, port, Arc::clone(tls))?;
    let client = NodeClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    Ok((client, channel))
}

/// Awaits a node API call for at most [`RPC_TIMEOUT`] and converts its failure.
pub(crate) async fn call<T>(
    name: &'static str,
    request: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(RPC_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(AgentError::rpc(name, &status)),
        Err(_) => Err(AgentError::Rpc {
            call: name,
            code: tonic::Code::DeadlineExceeded,
            message: format!("no response within {}s", RPC_TIMEOUT.as_secs()),
        }),
    }
}

/// Signs workload JWT-SVIDs with the node API's NewJwtSvid.
pub(crate) struct NodeJwtIssuer {
    pub(crate) connection: Arc<ServerConnection>,
}

impl JwtIssuer for NodeJwtIssuer {
    fn issue(
        &self,
        entry_id: String,
        audience: Vec<String>,
    ) -> BoxFuture<'static, Result<IssuedJwt, Status>> {
        let mut client = self.connection.client();
        Box::pin(async move {
            let request = NewJwtSvidRequest {
                entry_id: entry_id.clone(),
                audience,
            };
            let response = call("NewJwtSvid", client.new_jwt_svid(request))
                .await
                .map_err(|error| {
                    tracing::warn!(entry_id = %entry_id, %error, "JWT-SVID signing failed");
                    Status::unavailable(format!(
                        "failed to obtain a JWT-SVID from the server: {error}"
                    ))
                })?;
            Ok(IssuedJwt {
                token: response.token,
                issued_at: response.issued_at,
                expires_at: response.expires_at,
            })
        })
    }
}
