//! `twid api fetch x509|jwt|wit`, `twid api watch x509` and `twid api validate jwt`: the
//! Workload API from a shell.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rustls_pki_types::CertificateDer;
use twid_proto::workload::{
    JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest, WitsvidRequest, WitsvidResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use twid_spiffe::x509::split_der_certificates;

use super::write_dir::{self, PRIVATE, PUBLIC, Written, is_indexed_name};
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum ApiCommand {
    /// Fetch SVIDs from the Workload API.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate a credential with the Workload API.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Stream updates from the Workload API, one JSON line per update.
    #[command(subcommand)]
    Watch(WatchCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum WatchCommand {
    /// Stream FetchX509SVID: print the receive time, SPIFFE IDs and serial numbers of every
    /// update, and reconnect after the stream ends.
    X509(WatchX509Args),
}

#[derive(Debug, Args)]
pub(crate) struct WatchX509Args {
    /// Workload API socket: a path or a unix: address (default: SPIFFE_ENDPOINT_SOCKET, else
    /// the agent's default socket).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// Exit after printing this many lines, status lines included, and print a repeated
    /// status each time; 0 streams until interrupted. The exit status is 1 when the last line
    /// is a status line.
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FetchCommand {
    /// Fetch the caller's X.509-SVIDs and bundles.
    X509(FetchX509Args),
    /// Fetch JWT-SVIDs for an audience.
    Jwt(FetchJwtArgs),
    /// Fetch WIT-SVIDs (WIMSE Workload Identity Tokens) with their private keys.
    Wit(FetchWitArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ValidateCommand {
    /// Validate a JWT-SVID for an audience.
    Jwt(ValidateJwtArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SocketArgs {
    /// Workload API socket: a path or a unix: address (default: SPIFFE_ENDPOINT_SOCKET, else
    /// the agent's default socket).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// How long to wait for the first response, in seconds or as a duration.
    #[arg(long, default_value = "5s", value_parser = super::parse_ttl)]
    timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, Args)]
pub(crate) struct FetchX509Args {
    /// Write svid.N.pem, svid.N.key and bundle.N.pem for each SVID into this directory.
    #[arg(long)]
    write: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArgs,
}

#[derive(Debug, Args)]
pub(crate) struct FetchJwtArgs {
    /// Audience of the token; repeat or separate with commas for several.
    #[arg(long = "audience", required = true, value_delimiter = ',')]
    audience: Vec<String>,
    /// Fetch only this identity of the caller.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Write the token of the first JWT-SVID to this file (mode 0600, replaced atomically),
    /// as AWS_WEB_IDENTITY_TOKEN_FILE expects.
    #[arg(long)]
    write_token: Option<PathBuf>,
    /// Keep running and rewrite the token file at half of each token's lifetime.
    #[arg(long, requires = "write_token")]
    watch: bool,
    #[command(flatten)]
    socket: SocketArgs,
}

#[derive(Debug, Args)]
pub(crate) struct FetchWitArgs {
    /// Fetch only this identity of the caller.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Write wit.N.jwt, wit.N.key (PKCS#8 PEM) and wit.N.key.jwk for each WIT-SVID into this
    /// directory, all mode 0600.
    #[arg(long)]
    write: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateJwtArgs {
    /// The audience the token must name.
    #[arg(long)]
    audience: String,
    /// The JWT-SVID to validate.
    #[arg(long)]
    svid: String,
    #[command(flatten)]
    socket: SocketArgs,
}

pub(crate) async fn run(command: ApiCommand) -> anyhow::Result<()> {
    match command {
        ApiCommand::Fetch(FetchCommand::X509(args)) => fetch_x509(args).await,
        ApiCommand::Fetch(FetchCommand::Jwt(args)) => fetch_jwt(args).await,
        ApiCommand::Fetch(FetchCommand::Wit(args)) => fetch_wit(args).await,
        ApiCommand::Validate(ValidateCommand::Jwt(args)) => validate_jwt(args).await,
        ApiCommand::Watch(WatchCommand::X509(args)) => watch_x509(args).await,
    }
}

/// First delay before `twid api watch x509` opens the stream again after it ended.
const WATCH_RETRY_START: Duration = Duration::from_millis(500);
/// Maximum delay between attempts to open the stream again.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(10);

/// Streams FetchX509SVID and prints one JSON line per update. A stream that ends, such as with
/// PermissionDenied once the caller has no identity left, is printed as a line with the status
/// and no SVIDs. The stream is then opened again after a delay that doubles from 0.5 s to 10 s,
/// and without `--count` a repeated status is not printed again until an update arrives.
/// Status lines count toward `--count`, and when the last line is one, the command fails.
async fn watch_x509(args: WatchX509Args) -> anyhow::Result<()> {
    let path = client::workload_socket(args.socket_path.clone())?;
    let mut printed: u64 = 0;
    let mut last_error: Option<(tonic::Code, String)> = None;
    let mut delay = WATCH_RETRY_START;
    loop {
        let outcome = watch_x509_once(&path, &args, &mut printed, &mut last_error).await;
        if args.count > 0 && printed >= args.count {
            // `last_error` is set only while the last line printed is a status line, and then
            // the exit status reports the failure.
            return match last_error {
                Some((code, message)) => Err(anyhow::anyhow!(
                    "the FetchX509SVID stream failed with status {code:?}: {message}"
                )),
                None => Ok(()),
            };
        }
        match outcome {
            WatchOutcome::Received => delay = WATCH_RETRY_START,
            WatchOutcome::Nothing => delay = (delay * 2).min(WATCH_RETRY_MAX),
        }
        tokio::time::sleep(delay).await;
    }
}

/// Whether one stream delivered any message before it ended.
enum WatchOutcome {
    Received,
    Nothing,
}

/// Opens one FetchX509SVID stream and prints its updates until it ends or `args.count` lines
/// are printed.
async fn watch_x509_once(
    path: &Path,
    args: &WatchX509Args,
    printed: &mut u64,
    last_error: &mut Option<(tonic::Code, String)>,
) -> WatchOutcome {
    let mut print = |line: serde_json::Value| {
        println!("{line}");
        *printed += 1;
        args.count > 0 && *printed >= args.count
    };
    let mut outcome = WatchOutcome::Nothing;
    let status = match client::workload(path).await {
        Err(error) => tonic::Status::unavailable(format!("{error:#}")),
        Ok(mut workload) => match workload.fetch_x509svid(X509svidRequest {}).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            outcome = WatchOutcome::Received;
                            *last_error = None;
                            if print(x509_update_line(&update)) {
                                return outcome;
                            }
                        }
                        Ok(None) => break tonic::Status::unavailable("the agent ended the stream"),
                        Err(status) => break status,
                    }
                }
            }
        },
    };
    let error = (status.code(), status.message().to_owned());
    // Without --count a repeated status is left out, so that a long watch stays readable.
    // With --count every status is printed and counted, so that the command ends even when
    // the status never changes.
    if args.count > 0 || last_error.as_ref() != Some(&error) {
        print(serde_json::json!({
            "received_unix_ms": unix_millis(),
            "error": { "code": format!("{:?}", error.0), "message": error.1 },
            "svids": [],
        }));
        *last_error = Some(error);
    }
    outcome
}

/// Builds the JSON line of one FetchX509SVID update.
fn x509_update_line(update: &X509svidResponse) -> serde_json::Value {
    let received = unix_millis();
    let svids: Vec<serde_json::Value> = update
        .svids
        .iter()
        .map(|svid| {
            serde_json::json!({
                "spiffe_id": svid.spiffe_id,
                "serial": leaf_serial_hex(&svid.x509_svid),
            })
        })
        .collect();
    serde_json::json!({ "received_unix_ms": received, "svids": svids })
}

/// Returns the serial number of a chain's leaf as lowercase hex (the DER INTEGER content
/// octets, as the server's issuance log stores it), or an empty string for a malformed chain.
fn leaf_serial_hex(chain: &[u8]) -> String {
    let leaf = split_der_certificates(chain)
        .ok()
        .and_then(|certs| certs.into_iter().next());
    leaf.and_then(|leaf| {
        x509_parser::parse_x509_certificate(&leaf)
            .ok()
            .map(|(_, cert)| hex::encode(cert.raw_serial()))
    })
    .unwrap_or_default()
}

/// Returns the current time in Unix milliseconds.
fn unix_millis() -> u64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

async fn first_x509_response(socket: &SocketArgs) -> anyhow::Result<X509svidResponse> {
    let path = client::workload_socket(socket.socket_path.clone())?;
    let mut workload = client::workload(&path).await?;
    let call = async {
        let mut stream = workload
            .fetch_x509svid(X509svidRequest {})
            .await
            .map_err(output::status_error)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(output::status_error)?
            .context("the agent closed the stream without sending an SVID")
    };
    tokio::time::timeout(socket.timeout, call)
        .await
        .with_context(|| format!("no SVID received within {:?}", socket.timeout))?
}

async fn fetch_x509(args: FetchX509Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let response = first_x509_response(&args.socket).await?;
    let elapsed = started.elapsed();
    let written = match &args.write {
        Some(dir) => Some(write_x509(dir, &response)?),
        None => None,
    };
    match args.socket.output {
        OutputFormat::Json => print_x509_json(&response)?,
        OutputFormat::Pretty => print_x509_text(&response, elapsed)?,
    }
    if let (Some(dir), Some(written), OutputFormat::Pretty) =
        (&args.write, &written, args.socket.output)
    {
        written.print(dir);
    }
    Ok(())
}

pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn certs_pem(concatenated: &[u8]) -> anyhow::Result<String> {
    let certs = split_der_certificates(concatenated)?;
    Ok(certs
        .iter()
        .map(|cert| to_pem("CERTIFICATE", cert))
        .collect())
}

/// Writes a file readable only by its owner, replacing any previous file atomically.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_dir::write_file(path, contents, PRIVATE)
}

/// Returns whether `name` is one that [`write_x509`] writes.
fn is_x509_file(name: &str) -> bool {
    is_indexed_name(name, "svid.", 1, ".pem")
        || is_indexed_name(name, "svid.", 1, ".key")
        || is_indexed_name(name, "bundle.", 1, ".pem")
        || is_indexed_name(name, "federated_bundle.", 2, ".pem")
}

/// Returns whether `name` is one that [`write_wit`] writes.
fn is_wit_file(name: &str) -> bool {
    is_indexed_name(name, "wit.", 1, ".jwt")
        || is_indexed_name(name, "wit.", 1, ".key")
        || is_indexed_name(name, "wit.", 1, ".key.jwk")
}

/// Writes each SVID's chain, key and bundle, and the federated bundles in the order of their
/// trust domains, then removes the files of SVIDs that an earlier fetch wrote and this one
/// did not return.
fn write_x509(dir: &Path, response: &X509svidResponse) -> anyhow::Result<Written> {
    write_dir::create_dir(dir)?;
    let mut federated: Vec<_> = response.federated_bundles.iter().collect();
    federated.sort_by(|a, b| a.0.cmp(b.0));
    let mut written = Written::default();
    for (index, svid) in response.svids.iter().enumerate() {
        let chain = certs_pem(&svid.x509_svid)?;
        written.write(dir, format!("svid.{index}.pem"), chain.as_bytes(), PUBLIC)?;
        let key = to_pem("PRIVATE KEY", &svid.x509_svid_key);
        written.write(dir, format!("svid.{index}.key"), key.as_bytes(), PRIVATE)?;
        let bundle = certs_pem(&svid.bundle)?;
        written.write(
            dir,
            format!("bundle.{index}.pem"),
            bundle.as_bytes(),
            PUBLIC,
        )?;
        for (td_index, (_, bundle)) in federated.iter().enumerate() {
            let name = format!("federated_bundle.{index}.{td_index}.pem");
            written.write(dir, name, certs_pem(bundle)?.as_bytes(), PUBLIC)?;
        }
    }
    written.remove_stale(dir, is_x509_file)?;
    Ok(written)
}

/// The fields of an SVID's leaf certificate that the fetch output prints.
struct LeafSummary {
    /// Lowercase hex of the DER INTEGER content octets, the form `twid log show --serial`
    /// takes.
    serial: String,
    not_before: String,
    not_after: String,
}

fn leaf_summary(svid: &X509svid) -> anyhow::Result<LeafSummary> {
    let certs = split_der_certificates(&svid.x509_svid)?;
    let leaf: &CertificateDer<'_> = certs.first().context("the SVID has no certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|error| anyhow::anyhow!("the agent sent an unparsable certificate: {error}"))?;
    let validity = parsed.validity();
    Ok(LeafSummary {
        serial: hex::encode(parsed.raw_serial()),
        not_before: output::timestamp(validity.not_before.timestamp()),
        not_after: output::timestamp(validity.not_after.timestamp()),
    })
}

fn print_x509_text(response: &X509svidResponse, elapsed: Duration) -> anyhow::Result<()> {
    let count = response.svids.len();
    println!(
        "Received {count} svid{} after {elapsed:?}\n",
        if count == 1 { "" } else { "s" }
    );
    for svid in &response.svids {
        let leaf = leaf_summary(svid)?;
        println!("SPIFFE ID:        {}", svid.spiffe_id);
        println!("Serial Number:    {}", leaf.serial);
        println!("SVID Valid After: {}", leaf.not_before);
        println!("SVID Valid Until: {}", leaf.not_after);
        if !svid.hint.is_empty() {
            println!("Hint:             {}", svid.hint);
        }
        let cas = split_der_certificates(&svid.bundle)?.len();
        println!("Bundle CAs:       {cas}\n");
    }
    // A BTreeMap would sort too, but the proto map is a HashMap.
    let mut federated: Vec<_> = response.federated_bundles.iter().collect();
    federated.sort_by(|a, b| a.0.cmp(b.0));
    for (trust_domain, bundle) in federated {
        let cas = split_der_certificates(bundle)?.len();
        println!("Federated bundle: {trust_domain} ({cas} CAs)");
    }
    Ok(())
}

fn print_x509_json(response: &X509svidResponse) -> anyhow::Result<()> {
    let mut svids = Vec::new();
    for svid in &response.svids {
        let leaf = leaf_summary(svid)?;
        svids.push(serde_json::json!({
            "spiffe_id": svid.spiffe_id,
            "hint": svid.hint,
            "serial": leaf.serial,
            "not_before": leaf.not_before,
            "not_after": leaf.not_after,
            "x509_svid_pem": certs_pem(&svid.x509_svid)?,
            "bundle_pem": certs_pem(&svid.bundle)?,
        }));
    }
    let mut federated = serde_json::Map::new();
    for (trust_domain, bundle) in &response.federated_bundles {
        federated.insert(trust_domain.clone(), certs_pem(bundle)?.into());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({ "svids": svids, "federated_bundles_pem": federated })
        )?
    );
    Ok(())
}

async fn request_jwt(args: &FetchJwtArgs) -> anyhow::Result<JwtsvidResponse> {
    let path = client::workload_socket(args.socket.socket_path.clone())?;
    let mut workload = client::workload(&path).await?;
    let request = JwtsvidRequest {
        audience: args.audience.clone(),
        spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
    };
    Ok(
        tokio::time::timeout(args.socket.timeout, workload.fetch_jwtsvid(request))
            .await
            .context("no JWT-SVID received in time")?
            .map_err(output::status_error)?
            .into_inner(),
    )
}

async fn fetch_jwt(args: FetchJwtArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.write_token {
        return write_token(&args, file).await;
    }
    let response = request_jwt(&args).await?;
    match args.socket.output {
        OutputFormat::Json => {
            let svids: Vec<_> = response
                .svids
                .iter()
                .map(|svid| {
                    serde_json::json!({
                        "spiffe_id": svid.spiffe_id, "svid": svid.svid, "hint": svid.hint,
                        "jti": unverified_jti(&svid.svid),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "svids": svids }))?
            );
        }
        OutputFormat::Pretty => {
            for svid in &response.svids {
                println!("token({}):\n\t{}\n", svid.spiffe_id, svid.svid);
            }
        }
    }
    Ok(())
}

/// Returns the `jti` claim of a compact JWT without checking its signature, for display and
/// for `twid log show --jti`, or `None` when the token has no such claim.
fn unverified_jti(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

/// The shortest wait between two refreshes of the token file.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The wait before retrying a failed refresh.
const RETRY_REFRESH: Duration = Duration::from_secs(5);

/// Writes the token file once, or with `--watch` keeps rewriting it at half of each token's
/// lifetime until SIGTERM, SIGINT or SIGHUP.
async fn write_token(args: &FetchJwtArgs, file: &Path) -> anyhow::Result<()> {
    let mut wait = write_token_once(args, file).await?;
    if !args.watch {
        return Ok(());
    }
    let shutdown = super::run::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _signal = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        wait = match write_token_once(args, file).await {
            Ok(next) => next,
            Err(error) => {
                // The old token stays in place; it may still be valid for a while.
                eprintln!(
                    "error: failed to refresh {}: {}; retrying in {RETRY_REFRESH:?}",
                    file.display(),
                    output::error_chain(&error)
                );
                RETRY_REFRESH
            }
        };
    }
}

/// Fetches a JWT-SVID, writes its token to `file`, and returns the wait until the refresh:
/// half the remaining lifetime, at least [`MIN_REFRESH`].
async fn write_token_once(args: &FetchJwtArgs, file: &Path) -> anyhow::Result<Duration> {
    let response = request_jwt(args).await?;
    let svid = response
        .svids
        .first()
        .context("the Workload API returned no JWT-SVID")?;
    let parsed = twid_spiffe::jwt::JwtSvid::parse_insecure(&svid.svid)
        .context("the Workload API returned an invalid JWT-SVID")?;
    write_private(file, svid.svid.as_bytes())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let remaining = u64::try_from(parsed.expiry)
        .unwrap_or(0)
        .saturating_sub(now);
    println!(
        "Wrote the JWT-SVID of {} to {} (expires at {})",
        svid.spiffe_id,
        file.display(),
        output::timestamp(parsed.expiry)
    );
    Ok(Duration::from_secs(remaining / 2).max(MIN_REFRESH))
}

async fn validate_jwt(args: ValidateJwtArgs) -> anyhow::Result<()> {
    let path = client::workload_socket(args.socket.socket_path.clone())?;
    let mut workload = client::workload(&path).await?;
    let request = ValidateJwtsvidRequest {
        audience: args.audience,
        svid: args.svid,
    };
    let response = tokio::time::timeout(args.socket.timeout, workload.validate_jwtsvid(request))
        .await
        .context("timed out waiting for a response from the Workload API")?
        .map_err(|status| anyhow::anyhow!("JWT-SVID is not valid: {}", status.message()))?
        .into_inner();
    let claims = response.claims.map(struct_to_json).unwrap_or_default();
    match args.socket.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "spiffe_id": response.spiffe_id, "claims": claims,
            }))?
        ),
        OutputFormat::Pretty => {
            println!("SVID is valid.");
            println!("SPIFFE ID : {}", response.spiffe_id);
            println!("Claims    : {}", serde_json::to_string(&claims)?);
        }
    }
    Ok(())
}

fn struct_to_json(value: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .into_iter()
            .map(|(key, value)| (key, prost_value_to_json(value)))
            .collect(),
    )
}

fn prost_value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        // protobuf's Struct stores every number as a double; print whole numbers such as
        // `exp` and `iat` without a fraction, as they appear in the token.
        Some(Kind::NumberValue(number))
            if number.fract() == 0.0 && number.abs() < 9_007_199_254_740_992.0 =>
        {
            serde_json::json!(number as i64)
        }
        Some(Kind::NumberValue(number)) => serde_json::json!(number),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text),
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(flag),
        Some(Kind::StructValue(inner)) => struct_to_json(inner),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.into_iter().map(prost_value_to_json).collect())
        }
    }
}

async fn fetch_wit(args: FetchWitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let response = first_wit_response(&args).await?;
    let elapsed = started.elapsed();
    if response.svids.is_empty() {
        anyhow::bail!("the Workload API returned no WIT-SVID");
    }
    let written = match &args.write {
        Some(dir) => Some(write_wit(dir, &response)?),
        None => None,
    };
    match args.socket.output {
        OutputFormat::Json => {
            let mut svids = Vec::new();
            for svid in &response.svids {
                svids.push(serde_json::json!({
                    "spiffe_id": svid.spiffe_id,
                    "hint": svid.hint,
                    "expires_at": output::timestamp(wit_expiry(&svid.wit_svid)?),
                    "wit_svid": svid.wit_svid,
                }));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "svids": svids }))?
            );
        }
        OutputFormat::Pretty => {
            let count = response.svids.len();
            println!(
                "Received {count} WIT-SVID{} after {elapsed:?}\n",
                if count == 1 { "" } else { "s" }
            );
            for svid in &response.svids {
                println!("SPIFFE ID:  {}", svid.spiffe_id);
                let expiry = output::timestamp(wit_expiry(&svid.wit_svid)?);
                println!("Expires At: {expiry}");
                if !svid.hint.is_empty() {
                    println!("Hint:       {}", svid.hint);
                }
                println!();
            }
            if let (Some(dir), Some(written)) = (&args.write, &written) {
                written.print(dir);
            }
        }
    }
    Ok(())
}

/// Opens the FetchWITSVID stream and returns its first message.
async fn first_wit_response(args: &FetchWitArgs) -> anyhow::Result<WitsvidResponse> {
    let path = client::workload_socket(args.socket.socket_path.clone())?;
    let mut workload = client::workload(&path).await?;
    let request = WitsvidRequest {
        spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
    };
    let call = async {
        let mut stream = workload
            .fetch_witsvid(request)
            .await
            .map_err(output::status_error)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(output::status_error)?
            .context("the agent closed the stream without sending a WIT-SVID")
    };
    tokio::time::timeout(args.socket.timeout, call)
        .await
        .with_context(|| format!("no WIT-SVID received within {:?}", args.socket.timeout))?
}

/// Reads the `exp` claim of a WIT without verifying its signature, for display only.
fn wit_expiry(token: &str) -> anyhow::Result<i64> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .context("the Workload API returned a WIT that is not a compact JWS")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .context("the WIT payload is not base64url")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).context("the WIT payload is not JSON")?;
    claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .context("the WIT has no numeric exp claim")
}

/// Writes each WIT-SVID's token, its private key as PKCS#8 PEM and the private JWK the
/// Workload API sent, all readable only by the owner.
fn write_wit(dir: &Path, response: &WitsvidResponse) -> anyhow::Result<Written> {
    write_dir::create_dir(dir)?;
    let mut written = Written::default();
    for (index, svid) in response.svids.iter().enumerate() {
        let pkcs8 = jwk_to_pkcs8(&svid.wit_svid_key)
            .with_context(|| format!("the key of WIT-SVID {index} is unusable"))?;
        let token = svid.wit_svid.as_bytes();
        written.write(dir, format!("wit.{index}.jwt"), token, PRIVATE)?;
        let key = to_pem("PRIVATE KEY", &pkcs8);
        written.write(dir, format!("wit.{index}.key"), key.as_bytes(), PRIVATE)?;
        let jwk = svid.wit_svid_key.as_bytes();
        written.write(dir, format!("wit.{index}.key.jwk"), jwk, PRIVATE)?;
    }
    written.remove_stale(dir, is_wit_file)?;
    Ok(written)
}

/// Converts a private EC P-256 JWK (`d`, `x`, `y`) into an unencrypted PKCS#8 document.
fn jwk_to_pkcs8(jwk: &str) -> anyhow::Result<Vec<u8>> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use base64::Engine as _;
    let jwk: serde_json::Value = serde_json::from_str(jwk).context("the key is not JSON")?;
    let member = |name: &str| -> anyhow::Result<Vec<u8>> {
        let text = jwk
            .get(name)
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("the JWK has no {name} member"))?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .with_context(|| format!("the JWK member {name} is not base64url"))
    };

    let kty = jwk.get("kty").and_then(serde_json::Value::as_str);
    let crv = jwk.get("crv").and_then(serde_json::Value::as_str);
    if kty != Some("EC") || crv != Some("P-256") {
        anyhow::bail!("the JWK is not an EC P-256 key; only P-256 keys are supported");
    }

    let mut point = vec![4u8];
    point.extend(member("x")?);
    point.extend(member("y")?);
    let pair = EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &member("d")?,
        &point,
    )
    .map_err(|error| anyhow::anyhow!("the JWK is not a valid P-256 key pair: {error}"))?;
    let document = pair
        .to_pkcs8v1()
        .map_err(|_| anyhow::anyhow!("failed to encode the key as PKCS#8"))?;
    Ok(document.as_ref().to_vec())
}
