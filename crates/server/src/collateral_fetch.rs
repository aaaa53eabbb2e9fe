//! Optional online collateral: DCAP collateral from an Intel PCS v4 compatible service or a
//! PCCS, and SEV-SNP VCEKs from an AMD KDS compatible service, cached on disk.
//!
//! Fetched documents are written to the cache only after the evidence that requested them
//! verified against them, so a service that serves tampered or unrelated documents cannot
//! poison the cache. Requests go to the configured base URL only: redirects are not followed.
//!
//! Limit: only the CAs bundled in webpki-roots are trusted for https, not the system store or a
//! private CA, and `HTTPS_PROXY` is not read.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use twid_evidence::snp::SnpProduct;
use twid_evidence::{Kind, Reason, TrustAnchors, VerifyError, dcap, snp};
use x509_parser::prelude::FromDer as _;

/// Time allowed for one request, from connecting to the end of the body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Max response body size. PCS documents and VCEKs are a few kilobytes.
const MAX_BODY_BYTES: usize = 1 << 20;

/// One response that arrived with status 200.
struct Response {
    headers: HeaderMap,
    body: Bytes,
}

/// Returns whether a cached TCB info, QE identity or CRL has passed its nextUpdate at `now`, so
/// the cache entry must be fetched again. Documents that cannot be read count as expired.
pub(crate) fn is_expired(collateral: &dcap::Collateral, now: i64) -> bool {
    let tcb_info = dcap::parse_tcb_info(&collateral.tcb_info).map(|info| info.next_update);
    let qe_identity =
        dcap::parse_qe_identity(&collateral.qe_identity).map(|identity| identity.next_update);
    let crls = [&collateral.pck_crl, &collateral.root_ca_crl]
        .into_iter()
        .map(|der| crl_next_update(der));
    [tcb_info.ok(), qe_identity.ok()]
        .into_iter()
        .chain(crls)
        .any(|next_update| next_update.is_none_or(|next_update| next_update < now))
}

fn crl_next_update(der: &[u8]) -> Option<i64> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).ok()?;
    crl.next_update().map(|time| time.timestamp())
}

/// Fetches the DCAP collateral for `quote` from `pcs_url`, verifies the quote against it at
/// `now`, and only then writes it to `dir/<FMSPC>/`, replacing an older entry. Blocking: runs
/// the requests on a thread of its own.
pub(crate) fn fetch_dcap_collateral(
    pcs_url: &str,
    dir: &Path,
    quote: &[u8],
    kind: Kind,
    anchors: &TrustAnchors,
    now: i64,
) -> Result<dcap::Collateral, VerifyError> {
    // A quote whose own signatures and PCK chain fail can never verify, so it must not cost
    // requests to the PCS.
    dcap::verify_quote_signatures(quote, anchors, now)?;
    let fmspc = hex::encode_upper(dcap::quote_fmspc(quote)?);
    let ca = pck_ca(quote)?;
    let tee = if kind == Kind::Tdx { "tdx" } else { "sgx" };
    let urls = [
        format!("{pcs_url}/{tee}/certification/v4/tcb?fmspc={fmspc}"),
        format!("{pcs_url}/{tee}/certification/v4/qe/identity"),
        format!("{pcs_url}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
        format!("{pcs_url}/sgx/certification/v4/rootcacrl"),
    ];
    let responses = run_blocking(async {
        let mut responses = Vec::with_capacity(urls.len());
        for url in &urls {
            responses.push(get(url).await?);
        }
        Ok::<_, VerifyError>(responses)
    })?;
    let [tcb_info, qe_identity, pck_crl, root_ca_crl] = <[Response; 4]>::try_from(responses)
        .map_err(|_| collateral_error("the PCS returned fewer responses than requested"))?;

    let tcb_info_issuer_chain = issuer_chain(&tcb_info.headers, "TCB-Info-Issuer-Chain")?;
    let qe_identity_issuer_chain =
        issuer_chain(&qe_identity.headers, "SGX-Enclave-Identity-Issuer-Chain")?;
    let pck_crl_issuer_chain = issuer_chain(&pck_crl.headers, "SGX-PCK-CRL-Issuer-Chain")?;
    let collateral = dcap::Collateral::from_pcs_files(&dcap::PcsFiles {
        tcb_info: &tcb_info.body,
        qe_identity: &qe_identity.body,
        tcb_info_issuer_chain: &tcb_info_issuer_chain,
        qe_identity_issuer_chain: Some(&qe_identity_issuer_chain),
        pck_crl: &pck_crl.body,
        pck_crl_issuer_chain: &pck_crl_issuer_chain,
        root_ca_crl: &root_ca_crl.body,
    })
    .map_err(|error| {
        VerifyError::new(
            error.reason,
            format!("collateral fetched from {pcs_url}: {}", error.message),
        )
    })?;
    check_fetched_dcap(quote, &collateral, anchors, now, pcs_url)?;

    let names = dcap::PCS_FILE_NAMES;
    let files: [(&str, &[u8]); 7] = [
        (names.tcb_info, &tcb_info.body),
        (names.qe_identity, &qe_identity.body),
        (names.tcb_info_issuer_chain, &tcb_info_issuer_chain),
        (names.qe_identity_issuer_chain, &qe_identity_issuer_chain),
        // The CRLs are stored as DER whatever encoding the service used.
        (names.pck_crl, &collateral.pck_crl),
        (names.pck_crl_issuer_chain, &pck_crl_issuer_chain),
        (names.root_ca_crl, &collateral.root_ca_crl),
    ];
    match replace_folder(dir, &fmspc, &files) {
        Ok(()) => tracing::info!(%fmspc, dir = %dir.display(), "cached fetched DCAP collateral"),
        // The verified collateral still serves this quote; the next quote fetches again.
        Err(error) => tracing::warn!(
            %fmspc,
            dir = %dir.display(),
            %error,
            "failed to write fetched DCAP collateral to the cache"
        ),
    }
    Ok(collateral)
}

/// Verifies the quote against fetched collateral. A Revoked result still proves the documents
/// authentic, because revocation is decided only after every signature over them was checked.
fn check_fetched_dcap(
    quote: &[u8],
    collateral: &dcap::Collateral,
    anchors: &TrustAnchors,
    now: i64,
    pcs_url: &str,
) -> Result<(), VerifyError> {
    match dcap::verify(quote, collateral, anchors, now) {
        Ok(_) => Ok(()),
        Err(error) if error.reason == Reason::Revoked => Ok(()),
        Err(error) => {
            tracing::warn!(
                %pcs_url,
                reason = %error.message,
                "rejected DCAP collateral fetched from the PCS; nothing was cached"
            );
            Err(VerifyError::new(
                error.reason,
                format!(
                    "the quote does not verify against the collateral fetched from {pcs_url}: {}",
                    error.message
                ),
            ))
        }
    }
}

/// Returns `platform` or `processor`: the PCK CA that issued the quote's PCK certificate, which
/// selects the PCK CRL.
fn pck_ca(quote: &[u8]) -> Result<&'static str, VerifyError> {
    let parsed = dcap::parse_quote(quote)?;
    for der in &parsed.pck_chain {
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
            continue;
        };
        let issuer = cert
            .issuer()
            .iter_common_name()
            .filter_map(|name| name.as_str().ok())
            .next()
            .unwrap_or_default();
        if issuer == "Intel SGX PCK Platform CA" {
            return Ok("platform");
        }
        if issuer == "Intel SGX PCK Processor CA" {
            return Ok("processor");
        }
    }
    Err(VerifyError::malformed(
        "the quote's PCK chain has no certificate issued by \"Intel SGX PCK Platform CA\" or \
         \"Intel SGX PCK Processor CA\", so the PCK CRL to fetch is unknown",
    ))
}

/// Decodes a URL-encoded PEM issuer chain header.
fn issuer_chain(headers: &HeaderMap, name: &str) -> Result<Vec<u8>, VerifyError> {
    let value = headers
        .get(name)
        .ok_or_else(|| collateral_error(format!("the PCS response has no {name} header")))?;
    percent_decode(value.as_bytes())
        .ok_or_else(|| collateral_error(format!("the {name} header is not valid URL encoding")))
}

fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut output = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let high = (*bytes.next()? as char).to_digit(16)?;
            let low = (*bytes.next()? as char).to_digit(16)?;
            output.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            output.push(byte);
        }
    }
    Some(output)
}

/// Writes `files` into a new temporary folder in `dir`, then renames it to `dir/name`. An
/// existing `dir/name` is moved aside first and removed after, because a folder cannot be
/// renamed over a non-empty one.
fn replace_folder(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let staging = dir.join(format!(".{name}.new-{suffix}"));
    std::fs::create_dir(&staging)?;
    let written = files
        .iter()
        .try_for_each(|(file, bytes)| std::fs::write(staging.join(file), bytes));
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    let target = dir.join(name);
    let old = dir.join(format!(".{name}.old-{suffix}"));
    let moved_aside = match std::fs::rename(&target, &old) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    if let Err(error) = std::fs::rename(&staging, &target) {
        if moved_aside {
            let _ = std::fs::rename(&old, &target);
        }
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    if moved_aside {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Returns the VCEK for an SEV-SNP report: from `dir/snp/<hwid>-<tcb>.der` when cached, else
/// from `kds_url`, checked to sign `report` at `now` before it is cached. `chain` contains the
/// ASK and ARK from configuration. Blocking: reads files and runs the request on a thread of
/// its own.
pub(crate) fn vcek(
    kds_url: &str,
    dir: &Path,
    report: &[u8],
    chain: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<Vec<u8>, VerifyError> {
    let parsed = snp::parse_report(report)?;
    if parsed.signing_key_field() != 0 {
        return Err(VerifyError::malformed(
            "the SEV-SNP envelope carries no certificate and the report is not signed by a \
             VCEK, so no key can be fetched; the attester must send its VLEK",
        ));
    }
    if parsed.chip_id.iter().all(|byte| *byte == 0) {
        return Err(VerifyError::malformed(
            "the SEV-SNP envelope carries no VCEK and the report's chip ID is masked, so the \
             VCEK cannot be fetched; the attester must send its VCEK",
        ));
    }
    let product = parsed.cpuid_product().ok_or_else(|| {
        VerifyError::malformed(
            "the SEV-SNP envelope carries no VCEK and the report names no known product \
             (version 2 reports have no CPUID), so the VCEK cannot be fetched; the attester \
             must send its VCEK",
        )
    })?;
    // KDS names a Turin chip by the first 8 bytes of its chip ID and older products by all 64.
    let hwid = match product {
        SnpProduct::Turin => hex::encode(&parsed.chip_id[..8]),
        SnpProduct::Milan | SnpProduct::Genoa => hex::encode(parsed.chip_id),
    };
    let cache_path = dir
        .join("snp")
        .join(format!("{hwid}-{:016x}", parsed.reported_tcb))
        .with_extension("der");
    if let Ok(der) = std::fs::read(&cache_path) {
        return Ok(der);
    }

    let tcb = snp::decode_tcb(parsed.reported_tcb, product);
    let mut url = format!(
        "{kds_url}/vcek/v1/{}/{hwid}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
        product.as_str(),
        tcb.bootloader,
        tcb.tee,
        tcb.snp,
        tcb.microcode
    );
    if let Some(fmc) = tcb.fmc {
        url.push_str(&format!("&fmcSPL={fmc}"));
    }
    let response = run_blocking(get(&url))?;
    let der = response.body.to_vec();
    if let Err(error) = snp::verify(report, &der, chain, anchors, now) {
        tracing::warn!(
            %kds_url,
            reason = %error.message,
            "rejected the VCEK fetched from the KDS; nothing was cached"
        );
        return Err(VerifyError::new(
            error.reason,
            format!(
                "the report does not verify with the VCEK fetched from {kds_url}: {}",
                error.message
            ),
        ));
    }
    if let Err(error) = write_file_atomically(&cache_path, &der) {
        tracing::warn!(
            path = %cache_path.display(),
            %error,
            "failed to write the fetched VCEK to the cache"
        );
    }
    Ok(der)
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let staging: PathBuf = folder.join(format!(".vcek-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&staging, bytes)?;
    std::fs::rename(&staging, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staging);
    })
}

fn collateral_error(message: impl Into<String>) -> VerifyError {
    VerifyError::new(Reason::Collateral, message)
}

/// Runs `future` to completion on a new current-thread runtime on a thread of its own, so it
/// works whether or not the caller is inside a Tokio runtime. Fetches are rare (cache misses),
/// so a thread per fetch costs little.
fn run_blocking<T, F>(future: F) -> Result<T, VerifyError>
where
    F: Future<Output = Result<T, VerifyError>> + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| {
                        collateral_error(format!("failed to start the fetch runtime: {error}"))
                    })?;
                runtime.block_on(future)
            })
            .join()
            .unwrap_or_else(|_| Err(collateral_error("the collateral fetch thread panicked")))
    })
}

/// Sends one GET request and returns the response when its status is 200. Other statuses,
/// redirects included, are errors.
async fn get(url: &str) -> Result<Response, VerifyError> {
    tracing::info!(%url, "fetching attestation collateral");
    let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange(url))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timed out after {} seconds",
                REQUEST_TIMEOUT.as_secs()
            ))
        });
    let (status, headers, body) = result.map_err(|reason| {
        tracing::warn!(%url, %reason, "failed to fetch attestation collateral");
        collateral_error(format!("failed to fetch {url}: {reason}"))
    })?;
    if status != StatusCode::OK {
        let reason = if status.is_redirection() {
            format!("status {status}; redirects are not followed")
        } else {
            format!("status {status}")
        };
        tracing::warn!(%url, %reason, "failed to fetch attestation collateral");
        return Err(collateral_error(format!("failed to fetch {url}: {reason}")));
    }
    Ok(Response { headers, body })
}

async fn exchange(url: &str) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("invalid URL: {error}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL scheme is neither https nor http".to_owned()),
    };
    let host = uri
        .host()
        .ok_or_else(|| "the URL has no host".to_owned())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
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
    if !tls {
        return send(tcp, request).await;
    }
    let server_name = ServerName::try_from(host.clone())
        .map_err(|error| format!("invalid TLS server name {host:?}: {error}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(server_name, tcp)
        .await
        .map_err(|error| format!("TLS handshake with {host} failed: {error}"))?;
    send(stream, request).await
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("invalid TLS configuration: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn send<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "collateral connection closed with an error");
        }
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("HTTP request failed: {error}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|error| {
            format!("failed to read the response body (max {MAX_BODY_BYTES} bytes): {error}")
        })?
        .to_bytes();
    driver.abort();
    Ok((status, headers, body))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::response::IntoResponse;
    use base64::Engine as _;
    use twid_config::EvidenceAttestorConfig;
    use twid_evidence::Envelope;
    use twid_evidence::policy::Policy;
    use twid_evidence::result::AttestationResult;
    use twid_evidence_testkit::dcap::{PlatformSpec, SgxReportSpec, TdReportSpec, TestPlatform};
    use twid_evidence_testkit::snp::{ReportSpec, SnpTcb, TestAmd};

    use super::*;
    use crate::evidence::EvidenceAttestors;

    /// One canned response of the mock service: status, headers and body.
    #[derive(Clone)]
    struct Canned {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    }

    impl Canned {
        fn ok(body: Vec<u8>) -> Self {
            Canned {
                status: 200,
                headers: Vec::new(),
                body,
            }
        }

        fn with_header(mut self, name: &'static str, value: String) -> Self {
            self.headers.push((name, value));
            self
        }
    }

    /// A loopback PCS or KDS: canned responses by path, and the request targets it received.
    #[derive(Default)]
    struct Mock {
        routes: HashMap<String, Canned>,
        requests: Mutex<Vec<String>>,
    }

    impl Mock {
        fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("lock").clone()
        }
    }

    async fn serve_canned(State(mock): State<Arc<Mock>>, uri: Uri) -> axum::response::Response {
        let target = uri
            .path_and_query()
            .map_or(uri.path(), |path| path.as_str());
        mock.requests.lock().expect("lock").push(target.to_owned());
        let Some(canned) = mock.routes.get(uri.path()) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mut response = canned.body.clone().into_response();
        *response.status_mut() = StatusCode::from_u16(canned.status).expect("status");
        for (name, value) in &canned.headers {
            response
                .headers_mut()
                .insert(*name, value.parse().expect("header value"));
        }
        response
    }

    /// Starts the mock on 127.0.0.1 and returns its base URL.
    async fn start(mock: Arc<Mock>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = axum::Router::new().fallback(serve_canned).with_state(mock);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{address}")
    }

    fn pem(der: &[u8]) -> String {
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    fn percent_encode(text: &str) -> String {
        text.bytes()
            .map(|byte| {
                if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                    (byte as char).to_string()
                } else {
                    format!("%{byte:02X}")
                }
            })
            .collect()
    }

    /// Builds the PCS routes for an SGX or TDX platform from the files `write_pcs_folder`
    /// writes.
    fn pcs_routes(platform: &TestPlatform, tdx: bool) -> HashMap<String, Canned> {
        let files = tempfile::tempdir().expect("dir");
        platform
            .write_pcs_folder(files.path(), tdx)
            .expect("write PCS files");
        let tee = if tdx { "tdx" } else { "sgx" };
        let read = |name: &str| std::fs::read(files.path().join(name)).expect("read PCS file");
        let tcb_chain = percent_encode(
            &String::from_utf8(read("tcb_info_issuer_chain.pem")).expect("PEM is UTF-8"),
        );
        let crl_chain = percent_encode(
            &String::from_utf8(read("pck_crl_issuer_chain.pem")).expect("PEM is UTF-8"),
        );
        HashMap::from([
            (
                format!("/{tee}/certification/v4/tcb"),
                Canned::ok(read("tcb_info.json"))
                    .with_header("TCB-Info-Issuer-Chain", tcb_chain.clone()),
            ),
            (
                format!("/{tee}/certification/v4/qe/identity"),
                Canned::ok(read("qe_identity.json"))
                    .with_header("SGX-Enclave-Identity-Issuer-Chain", tcb_chain),
            ),
            (
                "/sgx/certification/v4/pckcrl".to_owned(),
                Canned::ok(read("pck_crl.der")).with_header("SGX-PCK-CRL-Issuer-Chain", crl_chain),
            ),
            (
                "/sgx/certification/v4/rootcacrl".to_owned(),
                Canned::ok(read("root_ca_crl.der")),
            ),
        ])
    }

    /// A configured attestor with the given fetch URLs and a fresh cache folder.
    struct Setup {
        attestors: EvidenceAttestors,
        name: String,
        cache: tempfile::TempDir,
        _roots: tempfile::TempDir,
    }

    fn setup(
        kind: Kind,
        root_der: &[u8],
        chain_der: Option<&[u8]>,
        pcs_url: Option<String>,
        kds_url: Option<String>,
    ) -> Setup {
        let roots = tempfile::tempdir().expect("dir");
        let root_path = roots.path().join("root.pem");
        std::fs::write(&root_path, pem(root_der)).expect("write root");
        let vek_chain_path = chain_der.map(|der| {
            let path = roots.path().join("chain.pem");
            std::fs::write(&path, pem(der)).expect("write chain");
            path
        });
        let cache = tempfile::tempdir().expect("dir");
        let name = twid_config::attestor_name(kind).to_owned();
        let config = EvidenceAttestorConfig {
            name: name.clone(),
            kind,
            trusted_roots: vec![root_path],
            collateral_dir: Some(cache.path().to_owned()),
            vek_chain_path,
            pcs_url,
            kds_url,
            policy: Policy::default(),
        };
        let attestors = EvidenceAttestors::load(&[config]).expect("load attestor");
        Setup {
            attestors,
            name,
            cache,
            _roots: roots,
        }
    }

    /// Appraises on a blocking thread, as the server does, so the mock keeps running.
    async fn appraise(setup: &Setup, envelope: &Envelope, now: i64) -> AttestationResult {
        let attestor = Arc::clone(setup.attestors.get(&setup.name).expect("attestor"));
        let json = envelope.to_json();
        let applied = crate::policy::AppliedPolicy {
            policy: Arc::new(attestor.config.policy.clone()),
            version: None,
        };
        tokio::task::spawn_blocking(move || attestor.appraise(&json, None, &applied, now))
            .await
            .expect("join")
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read cache")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    fn sgx_platform() -> (TestPlatform, Envelope) {
        let platform = TestPlatform::new(&PlatformSpec::sgx());
        let quote = platform.sgx_quote(&SgxReportSpec::default());
        (platform, Envelope::new(Kind::SgxDcap, quote))
    }

    #[tokio::test]
    async fn dcap_fetch_caches_then_reuses() {
        let (platform, envelope) = sgx_platform();
        let mock = Arc::new(Mock {
            routes: pcs_routes(&platform, false),
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(Kind::SgxDcap, &platform.root_der(), None, Some(url), None);
        let now = PlatformSpec::DEFAULT_NOW;

        let first = appraise(&setup, &envelope, now).await;
        assert!(first.error.is_none(), "{:?}", first.error);
        assert!(first.verified.is_some());
        let requests = mock.requests();
        assert_eq!(requests.len(), 4, "{requests:?}");
        assert!(requests.contains(&"/sgx/certification/v4/tcb?fmspc=00A067110000".to_owned()));
        assert!(requests.contains(&"/sgx/certification/v4/qe/identity".to_owned()));
        assert!(
            requests.contains(&"/sgx/certification/v4/pckcrl?ca=processor&encoding=der".to_owned())
        );
        assert!(requests.contains(&"/sgx/certification/v4/rootcacrl".to_owned()));
        assert_eq!(entries(setup.cache.path()), vec!["00A067110000".to_owned()]);
        let folder = setup.cache.path().join("00A067110000");
        let cached = entries(&folder);
        let names = dcap::PCS_FILE_NAMES;
        let mut expected = vec![
            names.tcb_info,
            names.qe_identity,
            names.tcb_info_issuer_chain,
            names.qe_identity_issuer_chain,
            names.pck_crl,
            names.pck_crl_issuer_chain,
            names.root_ca_crl,
        ];
        expected.sort_unstable();
        assert_eq!(cached, expected);

        let second = appraise(&setup, &envelope, now).await;
        assert!(second.error.is_none(), "{:?}", second.error);
        assert_eq!(
            mock.requests().len(),
            4,
            "the second quote must use the cache"
        );
    }

    #[tokio::test]
    async fn tampered_dcap_collateral_not_cached() {
        let (platform, envelope) = sgx_platform();
        let mut routes = pcs_routes(&platform, false);
        let tcb = routes
            .get_mut("/sgx/certification/v4/tcb")
            .expect("tcb route");
        let text = String::from_utf8(tcb.body.clone()).expect("UTF-8");
        let tampered = text.replacen(
            "\"tcbEvaluationDataNumber\":17",
            "\"tcbEvaluationDataNumber\":18",
            1,
        );
        assert_ne!(
            text, tampered,
            "the TCB info must contain the number to change"
        );
        tcb.body = tampered.into_bytes();
        let mock = Arc::new(Mock {
            routes,
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(Kind::SgxDcap, &platform.root_der(), None, Some(url), None);

        let result = appraise(&setup, &envelope, PlatformSpec::DEFAULT_NOW).await;
        let error = result.error.expect("tampered collateral must be rejected");
        assert!(result.verified.is_none());
        assert_eq!(error.reason, Reason::Signature, "{}", error.message);
        assert!(error.message.contains("fetched from"), "{}", error.message);
        assert!(
            entries(setup.cache.path()).is_empty(),
            "nothing may be cached"
        );
    }

    #[tokio::test]
    async fn dcap_fetch_rejects_redirect() {
        let (platform, envelope) = sgx_platform();
        let mut routes = pcs_routes(&platform, false);
        routes.insert(
            "/sgx/certification/v4/tcb".to_owned(),
            Canned {
                status: 302,
                headers: vec![("Location", "http://127.0.0.1:9/tcb".to_owned())],
                body: Vec::new(),
            },
        );
        let mock = Arc::new(Mock {
            routes,
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(Kind::SgxDcap, &platform.root_der(), None, Some(url), None);

        let result = appraise(&setup, &envelope, PlatformSpec::DEFAULT_NOW).await;
        let error = result.error.expect("a redirect must fail the fetch");
        assert_eq!(error.reason, Reason::Collateral);
        assert!(
            error.message.contains("redirects are not followed"),
            "{}",
            error.message
        );
        assert_eq!(mock.requests().len(), 1);
        assert!(entries(setup.cache.path()).is_empty());
    }

    #[tokio::test]
    async fn tdx_fetch_uses_tdx_paths() {
        let platform = TestPlatform::new(&PlatformSpec::default());
        let quote = platform.tdx_quote(&TdReportSpec::default(), 4);
        let envelope = Envelope::new(Kind::Tdx, quote);
        let mock = Arc::new(Mock {
            routes: pcs_routes(&platform, true),
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(Kind::Tdx, &platform.root_der(), None, Some(url), None);

        let result = appraise(&setup, &envelope, PlatformSpec::DEFAULT_NOW).await;
        assert!(result.error.is_none(), "{:?}", result.error);
        let requests = mock.requests();
        assert_eq!(requests.len(), 4, "{requests:?}");
        assert!(requests.contains(&"/tdx/certification/v4/tcb?fmspc=B0C06F000000".to_owned()));
        assert!(requests.contains(&"/tdx/certification/v4/qe/identity".to_owned()));
        assert!(
            requests.contains(&"/sgx/certification/v4/pckcrl?ca=platform&encoding=der".to_owned())
        );
        assert!(
            setup
                .cache
                .path()
                .join("B0C06F000000")
                .join(dcap::PCS_FILE_NAMES.tcb_info)
                .is_file()
        );
    }

    #[tokio::test]
    async fn expired_cache_fetched_again() {
        let (platform, envelope) = sgx_platform();
        let routes = pcs_routes(&platform, false);
        let served_tcb_info = routes["/sgx/certification/v4/tcb"].body.clone();
        let mock = Arc::new(Mock {
            routes,
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(Kind::SgxDcap, &platform.root_der(), None, Some(url), None);

        // The cached TCB info states a nextUpdate before DEFAULT_NOW. Only its dates are read
        // before the fetch, so the broken signature does not matter.
        let folder = setup.cache.path().join("00A067110000");
        std::fs::create_dir(&folder).expect("create cache folder");
        platform
            .write_pcs_folder(&folder, false)
            .expect("write PCS files");
        let tcb_path = folder.join(dcap::PCS_FILE_NAMES.tcb_info);
        let cached = std::fs::read_to_string(&tcb_path).expect("read TCB info");
        let next_update = "\"nextUpdate\":\"2026-07-01T10:16:03Z\"";
        assert!(cached.contains(next_update), "{cached}");
        let expired = cached.replace(next_update, "\"nextUpdate\":\"2026-06-02T00:00:00Z\"");
        std::fs::write(&tcb_path, expired).expect("write TCB info");

        let result = appraise(&setup, &envelope, PlatformSpec::DEFAULT_NOW).await;
        assert!(result.error.is_none(), "{:?}", result.error);
        assert_eq!(mock.requests().len(), 4);
        let refreshed = std::fs::read(&tcb_path).expect("read refreshed TCB info");
        assert_eq!(refreshed, served_tcb_info);
        assert_eq!(entries(setup.cache.path()), vec!["00A067110000".to_owned()]);
    }

    #[tokio::test]
    async fn forged_quote_sends_no_request() {
        let (platform, _) = sgx_platform();
        let other = TestPlatform::new(&PlatformSpec::sgx());
        let envelope = Envelope::new(Kind::SgxDcap, other.sgx_quote(&SgxReportSpec::default()));
        let mock = Arc::new(Mock {
            routes: pcs_routes(&platform, false),
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(Kind::SgxDcap, &platform.root_der(), None, Some(url), None);

        let result = appraise(&setup, &envelope, PlatformSpec::DEFAULT_NOW).await;
        assert!(result.error.is_some(), "a quote of another root must fail");
        assert!(mock.requests().is_empty(), "{:?}", mock.requests());
        assert!(entries(setup.cache.path()).is_empty());
    }

    fn snp_tcb() -> SnpTcb {
        SnpTcb {
            bootloader: 4,
            tee: 0,
            snp: 22,
            microcode: 213,
            fmc: None,
        }
    }

    /// Returns the KDS route of `amd`'s Genoa VCEK, serving `served_vcek`.
    fn kds_routes(amd: &TestAmd, served_vcek: &[u8]) -> HashMap<String, Canned> {
        let path = format!("/vcek/v1/Genoa/{}", hex::encode(amd.chip_id()));
        HashMap::from([(path, Canned::ok(served_vcek.to_vec()))])
    }

    #[tokio::test]
    async fn snp_vcek_fetched_then_cached() {
        let amd = TestAmd::new("Genoa", [0x5a; 64], snp_tcb());
        let routes = kds_routes(&amd, amd.vcek_der());
        let mock = Arc::new(Mock {
            routes,
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(
            Kind::Snp,
            amd.ark_der(),
            Some(amd.ask_der()),
            None,
            Some(url),
        );
        let envelope = Envelope::new(Kind::Snp, amd.report(&ReportSpec::default()));
        let now = twid_evidence_testkit::snp::NOW;

        let first = appraise(&setup, &envelope, now).await;
        assert!(first.error.is_none(), "{:?}", first.error);
        let requests = mock.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(
            requests[0].ends_with("?blSPL=4&teeSPL=0&snpSPL=22&ucodeSPL=213"),
            "{requests:?}"
        );
        let cached = entries(&setup.cache.path().join("snp"));
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert!(
            cached[0].starts_with(&hex::encode(amd.chip_id())),
            "{cached:?}"
        );
        assert!(cached[0].ends_with(".der"), "{cached:?}");

        let second = appraise(&setup, &envelope, now).await;
        assert!(second.error.is_none(), "{:?}", second.error);
        assert_eq!(
            mock.requests().len(),
            1,
            "the second report must use the cache"
        );
    }

    #[tokio::test]
    async fn snp_wrong_vcek_not_cached() {
        let amd = TestAmd::new("Genoa", [0x5a; 64], snp_tcb());
        let other = TestAmd::new("Genoa", [0x5a; 64], snp_tcb());
        let routes = kds_routes(&amd, other.vcek_der());
        let mock = Arc::new(Mock {
            routes,
            ..Mock::default()
        });
        let url = start(Arc::clone(&mock)).await;
        let setup = setup(
            Kind::Snp,
            amd.ark_der(),
            Some(amd.ask_der()),
            None,
            Some(url),
        );
        let envelope = Envelope::new(Kind::Snp, amd.report(&ReportSpec::default()));

        let result = appraise(&setup, &envelope, twid_evidence_testkit::snp::NOW).await;
        let error = result
            .error
            .expect("a VCEK of another chain must be rejected");
        assert_eq!(error.reason, Reason::Chain, "{}", error.message);
        assert!(error.message.contains("fetched from"), "{}", error.message);
        assert_eq!(mock.requests().len(), 1);
        assert!(
            entries(setup.cache.path()).is_empty(),
            "nothing may be cached"
        );
    }

    #[test]
    fn collateral_expiry_follows_next_update() {
        let platform = TestPlatform::new(&PlatformSpec::sgx());
        let collateral = platform.collateral_sgx();
        let window = platform.spec().valid_window();
        assert!(!is_expired(&collateral, PlatformSpec::DEFAULT_NOW));
        assert!(!is_expired(&collateral, window.not_after));
        assert!(is_expired(&collateral, window.not_after + 1));
    }

    #[test]
    fn percent_decode_rejects_bad_escapes() {
        assert_eq!(
            percent_decode(b"-----BEGIN%20CERT%0A").as_deref(),
            Some(&b"-----BEGIN CERT\n"[..])
        );
        assert_eq!(percent_decode(b"%2"), None);
        assert_eq!(percent_decode(b"%zz"), None);
    }
}
