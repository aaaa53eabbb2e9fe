//! One HTTP/1.1 POST per connection, over TCP or TLS with the Mozilla root certificates.
//!
//! Limit: connections go straight to the endpoint because `HTTPS_PROXY` is not read. Only the
//! CAs bundled in webpki-roots are trusted, not the system store or a private CA.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// The max response body size read, far above the few kilobytes of an STS response.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A reason an HTTP exchange failed before a complete response arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("failed to connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    #[error("failed to read the response body: {0}")]
    Body(String),
}

/// The scheme, host and port of an endpoint URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header value: the host, with the port only when it is not the default.
    pub(crate) authority: String,
    pub(crate) path: String,
}

impl Target {
    pub(crate) fn parse(uri: &Uri) -> Option<Self> {
        let tls = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || uri.query().is_some() {
            return None;
        }
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = match uri.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", uri.host()?),
            _ => uri.host()?.to_owned(),
        };
        let path = match uri.path() {
            "" => "/".to_owned(),
            path => path.to_owned(),
        };
        Some(Self {
            tls,
            host: host.to_owned(),
            port,
            authority,
            path,
        })
    }
}

/// Sends `request` to `target` and returns the status, headers and body of the response.
pub(crate) async fn send(
    target: &Target,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes), TransportError> {
    let address = format!("{}:{}", target.host, target.port);
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| TransportError::Connect {
            address: address.clone(),
            source,
        })?;
    if !target.tls {
        return exchange(tcp, request).await;
    }
    let server_name =
        ServerName::try_from(target.host.clone()).map_err(|error| TransportError::Tls {
            host: target.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
        })?;
    let config = client_config().map_err(|error| TransportError::Tls {
        host: target.host.clone(),
        source: std::io::Error::other(error),
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|source| TransportError::Tls {
            host: target.host.clone(),
            source,
        })?;
    exchange(tls, request).await
}

fn client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP connection closed with an error");
        }
    });
    let response = sender.send_request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|error| TransportError::Body(error.to_string()))?
        .to_bytes();
    driver.abort();
    Ok((status, headers, body))
}
