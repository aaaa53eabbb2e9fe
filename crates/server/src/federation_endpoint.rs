//! The SPIFFE bundle endpoint: the trust domain's bundle in the SPIFFE bundle format over
//! HTTPS, for foreign servers that federate with this trust domain.
//!
//! `https_spiffe` presents the server's own X.509-SVID (`spiffe://<td>/spire/server`), so
//! clients authenticate it with a bundle of this trust domain they already hold. `https_web`
//! presents the configured certificate, loaded once at start-up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use twid_config::{BundleEndpointConfig, ServingProfile};

use crate::federation::{DEFAULT_REFRESH_HINT, bundle_from_pb};
use crate::{ServerError, Shared};

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; later ones wait for a slot.
const MAX_CONNECTIONS: usize = 256;

/// Connections one IP address may hold at once; more are closed at once. The endpoint is open
/// to every federation partner, so without this one client that opens connections and never
/// completes a request could take every slot.
const MAX_CONNECTIONS_PER_IP: usize = 8;

/// Time a connection has, after its TLS handshake, to send its request and read the response.
/// A bundle is one small GET, and each connection serves one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Open connections per client IP address.
#[derive(Default)]
struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection counted in [`PerIp`] until dropped.
struct IpSlot {
    counts: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if *count >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Binds the bundle endpoint when `federation.bundle_endpoint` is configured and starts
/// serving it. Returns the bound address.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Option<SocketAddr>, ServerError> {
    let Some(endpoint) = shared.config.federation.bundle_endpoint.clone() else {
        return Ok(None);
    };
    let tls = tls_config(shared, &endpoint)?;
    let address = SocketAddr::new(endpoint.address, endpoint.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            address: address.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServerError::Bind {
        address: address.to_string(),
        source,
    })?;
    let refresh_hint = endpoint.refresh_hint.unwrap_or(DEFAULT_REFRESH_HINT);
    let profile = match endpoint.profile {
        ServingProfile::HttpsSpiffe => "https_spiffe",
        ServingProfile::HttpsWeb { .. } => "https_web",
    };
    tracing::info!(address = %bound, profile, "bundle endpoint listening");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let shared = Arc::clone(shared);
    let shutdown = shutdown.clone();
    tasks.spawn(
        accept_loop(listener, acceptor, shared, refresh_hint, shutdown)
            .instrument(tracing::info_span!("bundle_endpoint")),
    );
    Ok(Some(bound))
}

fn tls_config(
    shared: &Shared,
    endpoint: &BundleEndpointConfig,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let mut config = match &endpoint.profile {
        ServingProfile::HttpsSpiffe => {
            let config = twid_tls::server_config(
                shared.identity.svid.clone(),
                twid_tls::TrustSource::empty(),
                twid_tls::ClientAuth::None,
            )?;
            (*config).clone()
        }
        ServingProfile::HttpsWeb {
            cert_file_path,
            key_file_path,
        } => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file_path)
                .and_then(Iterator::collect)
                .map_err(|error| {
                    ServerError::Federation(format!(
                        "bundle_endpoint serving_cert_file cert_file_path {}: {error}",
                        cert_file_path.display()
                    ))
                })?;
            let key = PrivateKeyDer::from_pem_file(key_file_path).map_err(|error| {
                ServerError::Federation(format!(
                    "bundle_endpoint serving_cert_file key_file_path {}: {error}",
                    key_file_path.display()
                ))
            })?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
                .map_err(|error| {
                    ServerError::Federation(format!(
                        "bundle_endpoint serving certificate {} and key {}: {error}",
                        cert_file_path.display(),
                        key_file_path.display()
                    ))
                })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    refresh_hint: Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_ip = Arc::new(PerIp::default());
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "bundle endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(ip_slot) = per_ip.take(peer.ip()) else {
            tracing::debug!(%peer, "bundle endpoint refused a connection: too many from this address");
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let _permit = permit;
            let _ip_slot = ip_slot;
            serve_connection(tcp, peer, acceptor, shared, refresh_hint).await;
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
    tracing::info!("bundle endpoint stopped");
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    refresh_hint: Duration,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bundle endpoint TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "bundle endpoint TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let response = respond(&shared, request.method(), refresh_hint);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(REQUEST_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bundle endpoint connection ended with an error");
        }
        Err(_) => tracing::debug!(%peer, "bundle endpoint request timed out"),
    }
}

/// Returns the current bundle for GET on any path, as SPIRE serves it, and 405 otherwise.
fn respond(shared: &Shared, method: &Method, refresh_hint: Duration) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(http::header::ALLOW, "GET")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
    }
    let current = shared.bundle.load_full();
    let mut bundle = bundle_from_pb(&current, shared.config.trust_domain.clone());
    bundle.refresh_hint = Some(refresh_hint.as_secs());
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bundle.to_json())))
        .unwrap_or_default()
}

#[cfg(test)]
mod per_ip_tests {
    use super::*;

    #[test]
    fn one_address_gets_a_bounded_share() {
        let per_ip = Arc::new(PerIp::default());
        let attacker: std::net::IpAddr = [192, 0, 2, 1].into();
        let partner: std::net::IpAddr = [198, 51, 100, 7].into();
        let held: Vec<IpSlot> = (0..MAX_CONNECTIONS_PER_IP)
            .map(|_| per_ip.take(attacker).expect("below the limit"))
            .collect();
        assert!(per_ip.take(attacker).is_none(), "one more is refused");
        assert!(
            per_ip.take(partner).is_some(),
            "another address is still served"
        );
        drop(held);
        assert!(
            per_ip.take(attacker).is_some(),
            "closed connections free their slots"
        );
        assert_eq!(
            per_ip.0.lock().unwrap().get(&attacker),
            None,
            "an address with no connection leaves no entry behind"
        );
    }
}
