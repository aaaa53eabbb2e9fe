//! The gRPC connection to the server's node API, and the node API call the Workload API needs
//! (JWT-SVID signing).
//!
//! The server identifies the agent by the serial number of the TLS client certificate of each
//! connection, and a connection keeps the certificate it was opened with. So after renewing
//! its SVID the agent must open a new connection: [`ServerConnection::reconnect`] replaces the
//! channel, and every caller takes the current one with [`ServerConnection::client`].
//!
//! Server replicas: the agent keeps one connection at a time, to one address of its rotation.
//! The rotation lists every configured address, with each host name replaced by the
//! addresses it resolves to. When a call or the Watch stream fails at the connection level,
//! [`ServerConnection::fail_over`] moves to the next address. Passing the end of the list
//! resolves the names again and starts over.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use rustls::ClientConfig;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::Channel;
use twid_config::ServerAddress;
use twid_proto::node::NewJwtSvidRequest;
use twid_proto::node::node_client::NodeClient;

use crate::AgentError;
use crate::sync::Backoff;
use crate::workload_api::{IssuedJwt, JwtIssuer};

/// Time limit for one node API call, connecting included.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum size of a node API message; a Sync response lists every authorized entry.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// First delay before retrying on the next address after a connection failure.
const FAILOVER_BACKOFF_START: Duration = Duration::from_millis(200);
/// Maximum delay between connection attempts while every address fails.
const FAILOVER_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The node API client, replaceable as a whole.
pub(crate) struct ServerConnection {
    tls: Arc<ClientConfig>,
    current: ArcSwap<Current>,
    rotation: Mutex<Rotation>,
    /// Delays between connection attempts after connection failures, shared by the sync loop
    /// and the watcher. A successful Sync or Watch open resets it.
    failover_backoff: Mutex<Backoff>,
    /// Counts the connections that replaced the first one, by
    /// [`ServerConnection::reconnect`] or [`ServerConnection::fail_over`], so that long-lived
    /// streams move to the new connection.
    reconnects: watch::Sender<u64>,
    /// Whether a Watch stream to the server is open and has delivered its first hint, so the
    /// server pushes every change and the sync loop need not poll.
    watching: std::sync::atomic::AtomicBool,
}

/// The connection in use and the address it dials.
struct Current {
    client: NodeClient<Channel>,
    /// The channel under `client`, for the other services on the node API port.
    channel: Channel,
    address: ServerAddress,
    /// The value of `reconnects` when this connection replaced the previous one.
    generation: u64,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("address", &self.address().to_string())
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// Resolves `configured` and prepares a connection to the first address with `tls`.
    /// Nothing is dialed until the first call.
    pub(crate) async fn new(
        configured: &[ServerAddress],
        tls: Arc<ClientConfig>,
    ) -> Result<Self, AgentError> {
        let rotation = Rotation::new(configured.to_vec(), resolve_all(configured).await);
        let address = rotation.current().clone();
        let (client, channel) = new_client(&address, &tls)?;
        Ok(Self {
            tls,
            current: ArcSwap::from_pointee(Current {
                client,
                channel,
                address,
                generation: 0,
            }),
            rotation: Mutex::new(rotation),
            failover_backoff: Mutex::new(failover_backoff()),
            reconnects: watch::channel(0).0,
            watching: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Returns the current client; clones share its connection.
    pub(crate) fn client(&self) -> NodeClient<Channel> {
        self.current.load().client.clone()
    }

    /// Returns the current client and the generation to pass to
    /// [`ServerConnection::fail_over`] if a call on it fails at the connection level.
    pub(crate) fn client_with_generation(&self) -> (NodeClient<Channel>, u64) {
        let current = self.current.load();
        (current.client.clone(), current.generation)
    }

    /// Returns the current channel, which the node client also uses. Clones share its
    /// connection.
    pub(crate) fn channel(&self) -> Channel {
        self.current.load().channel.clone()
    }

    /// Returns the address of the current connection.
    pub(crate) fn address(&self) -> ServerAddress {
        self.current.load().address.clone()
    }

    /// Replaces the channel, so the next call opens a new connection to the same address with
    /// a new handshake. Calls in flight finish on the old connection.
    pub(crate) fn reconnect(&self) -> Result<(), AgentError> {
        let address = self.address();
        self.replace(address)
    }

    /// Moves to the next address of the rotation after a connection-level failure on the
    /// connection of `generation`, and returns the delay before the caller tries again. When
    /// another caller has moved on since `generation`, the connection is kept, so that two
    /// callers that see one failure skip one address, not two.
    pub(crate) async fn fail_over(&self, generation: u64) -> Duration {
        let delay = self.lock_backoff().step();
        let wrapped = {
            let mut rotation = self.lock_rotation();
            if self.current.load().generation != generation
                || rotation.failed_generation == Some(generation)
            {
                return delay;
            }
            rotation.failed_generation = Some(generation);
            rotation.advance()
        };
        if wrapped {
            let configured = self.lock_rotation().configured.clone();
            let resolved = resolve_all(&configured).await;
            self.lock_rotation().replace_resolved(resolved);
        }
        let failed = self.address();
        let next = self.lock_rotation().current().clone();
        if let Err(error) = self.replace(next.clone()) {
            tracing::warn!(
                server = %next,
                %error,
                "failed to prepare a connection to the next server address"
            );
            return delay;
        }
        let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if next == failed {
            // A single address: the sync loop and the watcher already log the failure.
            tracing::debug!(server = %next, retry_in_ms, "reconnecting to the server");
        } else {
            tracing::info!(
                failed = %failed,
                server = %next,
                retry_in_ms,
                "the connection to the server failed; switching to the next server address"
            );
        }
        delay
    }

    /// Resets the delay between connection attempts after a successful call.
    pub(crate) fn record_success(&self) {
        *self.lock_backoff() = failover_backoff();
    }

    /// Records whether a Watch stream is open; see [`ServerConnection::is_watching`].
    pub(crate) fn set_watching(&self, watching: bool) {
        self.watching
            .store(watching, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns whether a Watch stream is open and has delivered a hint, so that every change
    /// reaches the agent as a hint.
    pub(crate) fn is_watching(&self) -> bool {
        self.watching.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns a receiver that is notified after every new connection.
    pub(crate) fn subscribe_reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }

    fn replace(&self, address: ServerAddress) -> Result<(), AgentError> {
        let (client, channel) = new_client(&address, &self.tls)?;
        let mut generation = 0;
        self.reconnects.send_modify(|count| {
            *count += 1;
            generation = *count;
        });
        self.current.store(Arc::new(Current {
            client,
            channel,
            address,
            generation,
        }));
        Ok(())
    }

    fn lock_rotation(&self) -> std::sync::MutexGuard<'_, Rotation> {
        self.rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.failover_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn failover_backoff() -> Backoff {
    Backoff::with_bounds(FAILOVER_BACKOFF_START, FAILOVER_BACKOFF_MAX)
}

/// The addresses the agent dials in turn.
#[derive(Debug)]
struct Rotation {
    /// The addresses from the configuration, host names included.
    configured: Vec<ServerAddress>,
    /// `configured` after name resolution; never empty.
    resolved: Vec<ServerAddress>,
    /// Index into `resolved` of the address in use.
    index: usize,
    /// The generation of the last connection that failed over, so that each failure moves
    /// on once.
    failed_generation: Option<u64>,
}

impl Rotation {
    fn new(configured: Vec<ServerAddress>, resolved: Vec<ServerAddress>) -> Self {
        let resolved = if resolved.is_empty() {
            configured.clone()
        } else {
            resolved
        };
        Self {
            configured,
            resolved,
            index: 0,
            failed_generation: None,
        }
    }

    fn current(&self) -> &ServerAddress {
        &self.resolved[self.index % self.resolved.len()]
    }

    /// Moves to the next address and returns whether it passed the end and started over.
    fn advance(&mut self) -> bool {
        self.index += 1;
        if self.index >= self.resolved.len() {
            self.index = 0;
            return true;
        }
        false
    }

    /// Replaces the resolved list and starts at its first address. An empty list (no name
    /// resolved) keeps the previous one.
    fn replace_resolved(&mut self, resolved: Vec<ServerAddress>) {
        if !resolved.is_empty() {
            self.resolved = resolved;
        }
        self.index = 0;
    }
}

/// Replaces each host name of `configured` by the addresses it resolves to, in the resolver's
/// order, and drops repeats. A name that fails to resolve stays in the list as it is, so that
/// the dial resolves it again.
pub(crate) async fn resolve_all(configured: &[ServerAddress]) -> Vec<ServerAddress> {
    let mut resolved: Vec<ServerAddress> = Vec::with_capacity(configured.len());
    for address in configured {
        for candidate in resolve(address).await {
            if !resolved.contains(&candidate) {
                resolved.push(candidate);
            }
        }
    }
    resolved
}

async fn resolve(address: &ServerAddress) -> Vec<ServerAddress> {
    let unbracketed = address
        .host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(&address.host);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return vec![address.clone()];
    }
    match tokio::net::lookup_host((unbracketed, address.port)).await {
        Ok(found) => {
            let found: Vec<ServerAddress> = found
                .map(|socket| ServerAddress {
                    host: match socket.ip() {
                        IpAddr::V4(ip) => ip.to_string(),
                        IpAddr::V6(ip) => format!("[{ip}]"),
                    },
                    port: socket.port(),
                })
                .collect();
            tracing::debug!(
                server = %address,
                addresses = found.len(),
                "resolved the server's host name"
            );
            if found.is_empty() {
                vec![address.clone()]
            } else {
                found
            }
        }
        Err(error) => {
            tracing::warn!(
                server = %address,
                %error,
                "failed to resolve the server's host name; dialing it by name"
            );
            vec![address.clone()]
        }
    }
}

fn new_client(
    address: &ServerAddress,
    tls: &Arc<ClientConfig>,
) -> Result<(NodeClient<Channel>, Channel), AgentError> {
    let channel = twid_tls::connect_channel_lazy(&address.host, address.port, Arc::clone(tls))?;
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
    receive(name, async {
        request.await.map(tonic::Response::into_inner)
    })
    .await
}

/// Awaits `receive`, such as the rest of a response stream, as [`call`] awaits a call.
pub(crate) async fn receive<T>(
    name: &'static str,
    receive: impl Future<Output = Result<T, Status>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(RPC_TIMEOUT, receive).await {
        Ok(Ok(response)) => Ok(response),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> ServerAddress {
        text.parse().expect("address")
    }

    fn addresses(texts: &[&str]) -> Vec<ServerAddress> {
        texts.iter().map(|text| address(text)).collect()
    }

    #[test]
    fn rotation_visits_each_address_in_order() {
        let listed = addresses(&["10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.3:8081"]);
        let mut rotation = Rotation::new(listed.clone(), listed.clone());
        let mut visited = vec![rotation.current().to_string()];
        let mut wrapped = Vec::new();
        for _ in 0..4 {
            wrapped.push(rotation.advance());
            visited.push(rotation.current().to_string());
        }
        assert_eq!(
            visited,
            [
                "10.0.0.1:8081",
                "10.0.0.2:8081",
                "10.0.0.3:8081",
                "10.0.0.1:8081",
                "10.0.0.2:8081"
            ]
        );
        assert_eq!(wrapped, [false, false, true, false]);
    }

    #[test]
    fn rotation_with_one_address_stays() {
        let listed = addresses(&["10.0.0.1:8081"]);
        let mut rotation = Rotation::new(listed.clone(), listed);
        assert!(rotation.advance());
        assert_eq!(rotation.current().to_string(), "10.0.0.1:8081");
    }

    #[test]
    fn rotation_keeps_list_when_nothing_resolves() {
        let listed = addresses(&["a.invalid:8081", "10.0.0.2:8081"]);
        let mut rotation = Rotation::new(listed.clone(), Vec::new());
        assert_eq!(rotation.current().to_string(), "a.invalid:8081");
        rotation.advance();
        rotation.replace_resolved(Vec::new());
        assert_eq!(rotation.current().to_string(), "a.invalid:8081");
        rotation.replace_resolved(addresses(&["10.0.0.9:8081"]));
        assert_eq!(rotation.current().to_string(), "10.0.0.9:8081");
    }

    #[tokio::test]
    async fn resolve_expands_names_and_drops_repeats() {
        let configured = addresses(&[
            "10.0.0.1:8081",
            "localhost:8082",
            "10.0.0.1:8081",
            "[::1]:8083",
        ]);
        let resolved: Vec<String> = resolve_all(&configured)
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(resolved[0], "10.0.0.1:8081");
        assert!(
            resolved.contains(&"127.0.0.1:8082".to_owned()),
            "{resolved:?}"
        );
        assert!(
            !resolved.iter().any(|text| text.starts_with("localhost")),
            "{resolved:?}"
        );
        assert_eq!(resolved.last().map(String::as_str), Some("[::1]:8083"));
        let repeats = resolved
            .iter()
            .filter(|text| *text == "10.0.0.1:8081")
            .count();
        assert_eq!(repeats, 1, "{resolved:?}");
    }

    #[test]
    fn failover_backoff_stays_within_bounds() {
        let mut backoff = failover_backoff();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.step()).collect();
        assert!(delays[0] >= FAILOVER_BACKOFF_START * 4 / 5, "{delays:?}");
        assert!(delays[0] <= FAILOVER_BACKOFF_START, "{delays:?}");
        for delay in &delays {
            assert!(*delay <= FAILOVER_BACKOFF_MAX, "{delays:?}");
        }
        assert!(
            delays[11] >= FAILOVER_BACKOFF_MAX * 4 / 5,
            "the backoff never reached its maximum: {delays:?}"
        );
    }
}
