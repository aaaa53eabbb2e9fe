//! Fetching a foreign trust domain's bundle from its SPIFFE bundle endpoint: one HTTP/1.1
//! GET over TLS, authenticated by the relationship's profile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use twid_datastore::{BundleEndpointProfile, FederationRelationship};
use twid_spiffe::bundle::SpiffeBundle;
use twid_tls::{Authorizer, TrustSource};

/// Time limit of one fetch: connect, handshake, request and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest bundle document accepted. A bundle with a few dozen authorities is tens of KiB.
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Fetches the bundle document of `relationship`. `stored` is the foreign trust domain's
/// current bundle, which an `https_spiffe` endpoint's SVID must chain to, and `ca_file`
/// replaces the web PKI roots for `https_web`.
///
/// # Errors
/// Returns the reason in words: no stored bundle for `https_spiffe`, a connection, TLS or
/// HTTP failure, a status other than 200, a body over 1 MiB, or the timeout.
pub(crate) async fn fetch(
    relationship: &FederationRelationship,
    stored: Option<&SpiffeBundle>,
    ca_file: Option<&PathBuf>,
) -> Result<Vec<u8>, String> {
    let config = client_config(relationship, stored, ca_file)?;
    let url = &relationship.bundle_endpoint_url;
    tracing::debug!(trust_domain = %relationship.trust_domain, %url, "fetching federated bundle");
    tokio::time::timeout(FETCH_TIMEOUT, get(url, config))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "fetching {url} timed out after {} seconds",
                FETCH_TIMEOUT.as_secs()
            ))
        })
}

fn client_config(
    relationship: &FederationRelationship,
    stored: Option<&SpiffeBundle>,
    ca_file: Option<&PathBuf>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut config = match &relationship.profile {
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            let Some(stored) = stored.filter(|bundle| !bundle.x509_authorities.is_empty()) else {
                return Err(format!(
                    "no X.509 bundle is stored for {} to authenticate its https_spiffe \
                     endpoint; set the first bundle with `twid bundle set --id spiffe://{}` \
                     or trust_domain_bundle_path",
                    relationship.trust_domain, relationship.trust_domain
                ));
            };
            let trust = TrustSource::empty();
            trust.set(
                relationship.trust_domain.clone(),
                stored.x509_authorities.clone(),
            );
            let config =
                twid_tls::client_config(None, trust, Authorizer::Exact(endpoint_spiffe_id.clone()))
                    .map_err(|error| format!("failed to build the TLS configuration: {error}"))?;
            (*config).clone()
        }
        BundleEndpointProfile::HttpsWeb => web_config(ca_file)?,
    };
    // The bundle endpoint speaks plain HTTP/1.1 GET, not gRPC.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a client configuration that trusts the web PKI roots, or only the certificates of
/// `ca_file` when one is configured.
fn web_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|error| {
                    format!("failed to read ca_file_path {}: {error}", path.display())
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "ca_file_path {} contains no usable CA certificate",
                    path.display()
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("invalid TLS configuration: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn get(url: &str, config: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("invalid URL {url:?}: {error}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("URL {url:?} is not https://"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("URL {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let authority = uri
        .authority()
        .map_or_else(|| host.clone(), |authority| authority.as_str().to_owned());
    let path = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();

    let request = Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "twid-server")
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("invalid request: {error}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| format!("failed to connect to {host}:{port}: {error}"))?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|error| format!("invalid TLS server name {host:?}: {error}"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|error| format!("TLS handshake with {host}:{port} failed: {error}"))?;

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "bundle endpoint connection closed with an error");
        }
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("HTTP request failed: {error}"))?;

    let status = response.status();
    if status != StatusCode::OK {
        driver.abort();
        return Err(format!("{url} returned status {status}; expected 200"));
    }
    let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|error| {
            format!("failed to read the response body (max {MAX_BUNDLE_BYTES} bytes): {error}")
        })?
        .to_bytes();
    driver.abort();
    Ok(body.to_vec())
}
