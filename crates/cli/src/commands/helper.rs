//! `twid helper`: keeps a workload's X.509-SVID, private key, trust bundle and JWT-SVIDs in
//! files, as spiffe-helper does for SPIRE, and starts or signals the program that reads them.
//!
//! In daemon mode the helper follows the FetchX509SVID stream and rewrites the files on every
//! update, so the files change when the agent rotates the SVID or the bundle changes. After each
//! rewrite it sends `renew_signal` to the process in `pid_file_name`, and to the `cmd` child if
//! that is still running. A `cmd` child that has exited is started again after the next rewrite.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use twid_config::{HelperConfig, HelperFileFormat};
use twid_proto::workload::{JwtsvidRequest, X509svid, X509svidRequest, X509svidResponse};
use twid_spiffe::x509::split_der_certificates;

use crate::client::{self, WorkloadClient};
use crate::commands::write_dir::write_file;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct HelperArgs {
    /// Path of the helper configuration file (HCL with spiffe-helper's keys).
    #[arg(long, default_value = "helper.conf")]
    config: PathBuf,
    /// Override daemon_mode: `false` writes the files once and exits.
    #[arg(long = "daemon-mode", alias = "daemon", value_name = "BOOL", action = ArgAction::Set)]
    daemon_mode: Option<bool>,
    /// Without daemon mode: how long to wait for the SVID, in seconds or as a duration.
    #[arg(long, default_value = "30s", value_parser = super::parse_ttl)]
    timeout: Duration,
    /// Log level: trace, debug, info, warn or error.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// The first wait before reconnecting to the Workload API; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The shortest wait between two JWT-SVID refreshes.
const MIN_JWT_REFRESH: Duration = Duration::from_secs(1);

/// How long a `cmd` child gets to exit after SIGTERM when the helper stops.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: HelperArgs) -> anyhow::Result<()> {
    let mut config = HelperConfig::load(&args.config)?;
    if let Some(daemon_mode) = args.daemon_mode {
        config.daemon_mode = daemon_mode;
    }
    let _log_guard =
        twid_telemetry::init_logging(&args.log_level, twid_telemetry::LogFormat::Text)?;
    if !config.cert_dir.is_dir() {
        anyhow::bail!(
            "cert_dir {} is not a directory; create it before starting the helper",
            config.cert_dir.display()
        );
    }
    let renew_signal = config
        .renew_signal
        .as_deref()
        .map(Signal::from_str)
        .transpose()
        .context("invalid renew_signal")?;
    let socket = client::workload_socket(config.agent_address.clone())?;

    if !config.daemon_mode {
        return write_once(&config, &socket, args.timeout).await;
    }
    let mut notifier = Notifier {
        command: config.cmd.clone().map(|cmd| (cmd, config.cmd_args.clone())),
        child: None,
        signal: renew_signal,
        pid_file: config.pid_file_name.clone(),
    };
    let result = follow_updates(&config, &socket, &mut notifier).await;
    notifier.stop_child().await;
    result
}

/// Writes every file once and returns; `cmd` and the signal are not used.
async fn write_once(config: &HelperConfig, socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let attempt = || async {
        let mut workload = client::workload(socket).await?;
        let response = open_x509_stream(&mut workload)
            .await?
            .message()
            .await
            .map_err(output::status_error)?
            .context("the agent closed the stream without sending an SVID")?;
        let spiffe_id = write_x509_files(config, &response)?;
        write_jwt_files(config, &mut workload, &spiffe_id).await?;
        anyhow::Ok(())
    };
    // An init container often starts before the agent's socket exists or before its entry
    // reaches the agent (the next sync), so failures are retried until the timeout.
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(250);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("no SVID received within {timeout:?}"),
        };
        if Instant::now() + delay >= deadline {
            return Err(error.context(format!("no SVID written within {timeout:?}")));
        }
        tracing::info!(error = %output::error_chain(&error), retry_in = ?delay, "no SVID yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn open_x509_stream(
    workload: &mut WorkloadClient,
) -> anyhow::Result<tonic::Streaming<X509svidResponse>> {
    Ok(workload
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner())
}

/// Follows the FetchX509SVID stream until SIGTERM, SIGINT or SIGHUP, reconnecting with
/// backoff when the agent is unreachable or ends the stream. The files keep their last
/// content meanwhile.
async fn follow_updates(
    config: &HelperConfig,
    socket: &Path,
    notifier: &mut Notifier,
) -> anyhow::Result<()> {
    let shutdown = super::run::shutdown_signal();
    tokio::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    let mut spiffe_id = String::new();
    tracing::info!(socket = %socket.display(), cert_dir = %config.cert_dir.display(), "helper started");
    loop {
        let connected = async {
            let mut workload = client::workload(socket).await?;
            let stream = open_x509_stream(&mut workload).await?;
            anyhow::Ok((workload, stream))
        };
        let (mut workload, mut stream) = tokio::select! {
            signal = &mut shutdown => {
                stopped(signal);
                return Ok(());
            }
            connected = connected => match connected {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(error = %output::error_chain(&error), retry_in = ?backoff, "failed to open the X.509-SVID stream");
                    if let Some(signal) = wait_or_shutdown(backoff, &mut shutdown).await {
                        stopped(signal);
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        // No JWT refresh is due until the first X.509 update has been written.
        let mut jwt_refresh_at: Option<Instant> = None;
        loop {
            let jwt_due = async {
                match jwt_refresh_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signal = &mut shutdown => {
                stopped(signal);
                return Ok(());
            }
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        backoff = MIN_BACKOFF;
                        match write_x509_files(config, &response) {
                            Ok(id) => spiffe_id = id,
                            Err(error) => {
                                tracing::error!(error = %output::error_chain(&error), "failed to write the X.509-SVID files");
                                continue;
                            }
                        }
                        jwt_refresh_at = refresh_jwt(config, &mut workload, &spiffe_id).await;
                        notifier.after_update();
                    }
                    Ok(None) => {
                        tracing::warn!(retry_in = ?backoff, "the agent closed the X.509-SVID stream");
                        break;
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?backoff, "the X.509-SVID stream failed");
                        break;
                    }
                },
                () = jwt_due => {
                    jwt_refresh_at = refresh_jwt(config, &mut workload, &spiffe_id).await;
                }
            }
        }
        if let Some(signal) = wait_or_shutdown(backoff, &mut shutdown).await {
            stopped(signal);
            return Ok(());
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps for `wait`, and returns the signal's name when the shutdown signal came first.
async fn wait_or_shutdown(
    wait: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = &'static str>>,
) -> Option<&'static str> {
    tokio::select! {
        signal = shutdown.as_mut() => Some(signal),
        () = tokio::time::sleep(wait) => None,
    }
}

/// Logs the stop of the helper on `signal`.
fn stopped(signal: &str) {
    tracing::info!(signal, "helper stopping");
}

/// Rewrites the JWT-SVID files and returns when to do so next, or `None` without JWT-SVIDs.
/// A failed refresh is retried after [`MIN_BACKOFF`]; the old tokens stay in place until then.
async fn refresh_jwt(
    config: &HelperConfig,
    workload: &mut WorkloadClient,
    spiffe_id: &str,
) -> Option<Instant> {
    if config.jwt_svids.is_empty() {
        return None;
    }
    match write_jwt_files(config, workload, spiffe_id).await {
        Ok(wait) => Some(Instant::now() + wait),
        Err(error) => {
            tracing::error!(error = %output::error_chain(&error), retry_in = ?MIN_BACKOFF, "failed to write the JWT-SVID files");
            Some(Instant::now() + MIN_BACKOFF)
        }
    }
}

/// Picks the SVID named by `hint`, else the first one.
fn select_svid<'a>(
    config: &HelperConfig,
    response: &'a X509svidResponse,
) -> anyhow::Result<&'a X509svid> {
    match &config.hint {
        Some(hint) => response
            .svids
            .iter()
            .find(|svid| svid.hint == *hint)
            .with_context(|| format!("the Workload API returned no SVID with hint {hint:?}")),
        None => response
            .svids
            .first()
            .context("the Workload API returned no SVID"),
    }
}

/// Writes the SVID, key and bundle files and returns the SVID's SPIFFE ID.
fn write_x509_files(config: &HelperConfig, response: &X509svidResponse) -> anyhow::Result<String> {
    let svid = select_svid(config, response)?;
    let chain = split_der_certificates(&svid.x509_svid)?;
    let (leaf, intermediates) = chain.split_first().context("the SVID has no certificate")?;

    let mut svid_certs: Vec<&CertificateDer<'_>> = vec![leaf];
    let mut bundle_certs = split_der_certificates(&svid.bundle)?;
    if config.add_intermediates_to_bundle {
        bundle_certs.extend(intermediates.iter().cloned());
    } else {
        svid_certs.extend(intermediates);
    }
    if config.include_federated_domains {
        // Sorted by trust domain so that the file does not change when only the map order does.
        let mut federated: Vec<_> = response.federated_bundles.iter().collect();
        federated.sort_by_key(|(trust_domain, _)| trust_domain.as_str());
        for (_, bundle) in federated {
            bundle_certs.extend(split_der_certificates(bundle)?);
        }
    }

    let format = config.file_format;
    let dir = &config.cert_dir;
    write_file(
        &dir.join(&config.svid_key_file_name),
        &encode_key(format, &svid.x509_svid_key),
        config.key_file_mode,
    )?;
    write_file(
        &dir.join(&config.svid_file_name),
        &encode_certificates(format, &svid_certs),
        config.cert_file_mode,
    )?;
    let bundle_refs: Vec<&CertificateDer<'_>> = bundle_certs.iter().collect();
    write_file(
        &dir.join(&config.svid_bundle_file_name),
        &encode_certificates(format, &bundle_refs),
        config.cert_file_mode,
    )?;
    tracing::info!(
        spiffe_id = %svid.spiffe_id,
        bundle_certificates = bundle_certs.len(),
        cert_dir = %dir.display(),
        "wrote the X.509-SVID files"
    );
    Ok(svid.spiffe_id.clone())
}

/// Encodes certificates as PEM blocks or as concatenated DER.
fn encode_certificates(format: HelperFileFormat, certs: &[&CertificateDer<'_>]) -> Vec<u8> {
    match format {
        HelperFileFormat::Pem => certs
            .iter()
            .map(|cert| super::api::to_pem("CERTIFICATE", cert))
            .collect::<String>()
            .into_bytes(),
        HelperFileFormat::Der => certs.iter().flat_map(|cert| cert.iter().copied()).collect(),
    }
}

/// Encodes a PKCS#8 private key as a `PRIVATE KEY` PEM block or as DER.
fn encode_key(format: HelperFileFormat, pkcs8: &[u8]) -> Vec<u8> {
    match format {
        HelperFileFormat::Pem => super::api::to_pem("PRIVATE KEY", pkcs8).into_bytes(),
        HelperFileFormat::Der => pkcs8.to_vec(),
    }
}

/// Writes each configured JWT-SVID file and returns the wait until the next refresh: half of
/// the shortest remaining token lifetime, at least [`MIN_JWT_REFRESH`].
async fn write_jwt_files(
    config: &HelperConfig,
    workload: &mut WorkloadClient,
    spiffe_id: &str,
) -> anyhow::Result<Duration> {
    let mut wait: Option<Duration> = None;
    for file in &config.jwt_svids {
        let mut audience = vec![file.audience.clone()];
        audience.extend(file.extra_audiences.iter().cloned());
        let request = JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.to_owned(),
        };
        let response = workload
            .fetch_jwtsvid(request)
            .await
            .map_err(output::status_error)?
            .into_inner();
        let svid = response
            .svids
            .first()
            .context("the Workload API returned no JWT-SVID")?;
        let parsed = twid_spiffe::jwt::JwtSvid::parse_insecure(&svid.svid)
            .context("the Workload API returned an invalid JWT-SVID")?;
        let path = config.cert_dir.join(&file.file_name);
        write_file(&path, svid.svid.as_bytes(), config.jwt_svid_file_mode)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let remaining = u64::try_from(parsed.expiry)
            .unwrap_or(0)
            .saturating_sub(now);
        let half = Duration::from_secs(remaining / 2).max(MIN_JWT_REFRESH);
        wait = Some(wait.map_or(half, |shortest| shortest.min(half)));
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            audience = %file.audience,
            file = %path.display(),
            expires_at = parsed.expiry,
            "wrote a JWT-SVID file"
        );
    }
    Ok(wait.unwrap_or(MIN_JWT_REFRESH))
}

/// Starts or signals the programs that read the files.
struct Notifier {
    /// `cmd` and its arguments.
    command: Option<(String, Vec<String>)>,
    child: Option<tokio::process::Child>,
    signal: Option<Signal>,
    pid_file: Option<PathBuf>,
}

impl Notifier {
    /// Runs after each rewrite of the X.509 files. Failures are logged, because the files are
    /// already in place and the next update tries again.
    ///
    /// NOTE: a signal that reaches `cmd` before it has installed its handler gets the default
    /// action, which for SIGHUP ends the process. It is then started again on the next update.
    fn after_update(&mut self) {
        if self.command.is_some() {
            let running_pid = self.running_child_pid();
            match (running_pid, self.signal) {
                (Some(pid), Some(signal)) => send_signal(pid, signal, "cmd"),
                (Some(_), None) => {}
                (None, _) => {
                    let Some((program, args)) = &self.command else {
                        return;
                    };
                    let spawned = tokio::process::Command::new(program)
                        .args(args)
                        .stdin(std::process::Stdio::null())
                        .spawn();
                    match spawned {
                        Ok(child) => {
                            tracing::info!(cmd = %program, pid = child.id(), "started cmd");
                            self.child = Some(child);
                        }
                        Err(error) => {
                            tracing::error!(cmd = %program, %error, "failed to start cmd");
                        }
                    }
                }
            }
        }
        if let (Some(pid_file), Some(signal)) = (&self.pid_file, self.signal) {
            match read_pid(pid_file) {
                Ok(pid) => send_signal(pid, signal, "pid_file_name"),
                Err(error) => tracing::warn!(
                    pid_file = %pid_file.display(),
                    error = %output::error_chain(&error),
                    "cannot signal the process in pid_file_name"
                ),
            }
        }
    }

    /// Returns the pid of the `cmd` child while it runs, and logs its exit once.
    fn running_child_pid(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => child.id().and_then(|pid| i32::try_from(pid).ok()),
            Ok(Some(status)) => {
                tracing::warn!(%status, "cmd exited; starting it again");
                self.child = None;
                None
            }
            Err(error) => {
                tracing::warn!(%error, "failed to check whether cmd is running");
                None
            }
        }
    }

    /// Sends SIGTERM to a running `cmd` child and waits for it to exit.
    async fn stop_child(&mut self) {
        let Some(pid) = self.running_child_pid() else {
            return;
        };
        send_signal(pid, Signal::SIGTERM, "cmd");
        if let Some(child) = self.child.as_mut()
            && tokio::time::timeout(CHILD_STOP_TIMEOUT, child.wait())
                .await
                .is_err()
        {
            tracing::warn!(pid, timeout = ?CHILD_STOP_TIMEOUT, "cmd did not exit after SIGTERM");
        }
    }
}

fn read_pid(path: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
        .with_context(|| format!("{} does not contain a process id", path.display()))
}

fn send_signal(pid: i32, signal: Signal, target: &str) {
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) => tracing::info!(pid, signal = signal.as_str(), target, "sent signal"),
        Err(error) => {
            tracing::warn!(pid, signal = signal.as_str(), target, %error, "failed to send signal");
        }
    }
}
