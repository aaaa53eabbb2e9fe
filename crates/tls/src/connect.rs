//! gRPC channels over TLS: a tonic connector that dials TCP and runs a fresh rustls handshake
//! for every new connection, so each connection presents the SVID current at that moment.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};
use twid_spiffe::SpiffeId;

use crate::TlsError;
use crate::verify::peer_spiffe_id;

/// The time limit for one TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a gRPC channel to `host:port` over TLS with `config`, and fails when the first
/// connection cannot be made.
///
/// `host` is a DNS name or an IP address (an IPv6 address with or without brackets). It is
/// sent as the TLS server name, which configurations of this crate do not check. The channel
/// reconnects on its own after the connection drops, and every new connection runs a new
/// handshake, which presents the client SVID current at that time.
///
/// # Errors
/// Returns [`TlsError::InvalidHost`] or [`TlsError::InvalidEndpoint`] for a host that does not
/// form a valid URI, and [`TlsError::Connect`] when the TCP connect or the TLS handshake fails
/// or takes longer than [`CONNECT_TIMEOUT`].
pub async fn connect_channel(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
) -> Result<Channel, TlsError> {
    let target = Target::new(host, port)?;
    let endpoint = target.endpoint()?;
    let uri = target.uri.clone();
    endpoint
        .connect_with_connector(TlsConnect::new(target, config))
        .await
        .map_err(|source| TlsError::Connect {
            endpoint: uri,
            source,
        })
}

/// Builds a gRPC channel to `host:port` over TLS with `config` without connecting yet.
///
/// The first request connects, and the channel reconnects after the connection drops. A
/// connection failure is returned to the request that needed the connection. Otherwise the
/// channel behaves as one from [`connect_channel`].
///
/// # Errors
/// Returns [`TlsError::InvalidHost`] or [`TlsError::InvalidEndpoint`] for a host that does not
/// form a valid URI.
pub fn connect_channel_lazy(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
) -> Result<Channel, TlsError> {
    let target = Target::new(host, port)?;
    let endpoint = target.endpoint()?;
    Ok(endpoint.connect_with_connector_lazy(TlsConnect::new(target, config)))
}

/// The dial target, parsed once.
#[derive(Debug)]
struct Target {
    /// The host without IPv6 brackets, as `TcpStream::connect` expects it.
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// `http://host:port`; tonic needs a URI even though the connector ignores it.
    uri: String,
}

impl Target {
    fn new(host: &str, port: u16) -> Result<Self, TlsError> {
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|source| TlsError::InvalidHost {
                host: host.to_owned(),
                source,
            })?;
        let uri = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("http://[{host}]:{port}"),
            _ => format!("http://{host}:{port}"),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            server_name,
            uri,
        })
    }

    fn endpoint(&self) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(self.uri.clone()).map_err(|source| {
            TlsError::InvalidEndpoint {
                endpoint: self.uri.clone(),
                source,
            }
        })?;
        Ok(endpoint.connect_timeout(CONNECT_TIMEOUT))
    }

    async fn dial(&self, connector: &TlsConnector) -> io::Result<TlsStream<TcpStream>> {
        let address = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .inspect_err(|error| tracing::debug!(%address, %error, "TCP connect failed"))?;
        tcp.set_nodelay(true)?;
        let stream = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .inspect_err(|error| tracing::debug!(%address, %error, "TLS handshake failed"))?;
        let peer_id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(peer_spiffe_id);
        tracing::debug!(
            %address,
            peer_spiffe_id = ?peer_id.as_ref().map(SpiffeId::as_str),
            "TLS connection established"
        );
        Ok(stream)
    }
}

/// The tower service tonic calls for every new connection.
#[derive(Clone)]
struct TlsConnect {
    target: Arc<Target>,
    connector: TlsConnector,
}

impl TlsConnect {
    fn new(target: Target, config: Arc<ClientConfig>) -> Self {
        Self {
            target: Arc::new(target),
            connector: TlsConnector::from(config),
        }
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = Arc::clone(&self.target);
        let connector = self.connector.clone();
        Box::pin(async move { target.dial(&connector).await.map(TokioIo::new) })
    }
}
