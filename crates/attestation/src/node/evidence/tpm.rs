//! TPM 2.0 quotes collected through tpm2-tools (`tpm2_quote`, `tpm2_readpublic`).
//!
//! The collector runs the tools as child processes with arguments and no shell. The SHA-256 of
//! the report data becomes the quote's qualifying data, so it appears as `extraData` in the
//! signed TPMS_ATTEST.
//! The envelope's evidence is [`QuoteInput::to_json`]: the TPMS_ATTEST, the TPMT_SIGNATURE, the
//! AK as TPM2B_PUBLIC (so the verifier can check that it is a restricted signing key), the
//! quoted PCR values and, when configured, the event log.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twid_evidence::tpm::{self, QuoteInput};
use twid_evidence::{Envelope, Kind};

use super::{CollectError, Collector};

/// Time each tpm2-tools command may run before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest event log the collector sends. Its base64 form must fit in an evidence envelope
/// (1 MiB) next to the quote.
pub const MAX_EVENT_LOG_BYTES: u64 = 512 * 1024;

/// Maximum bytes of a tool's standard error kept for the error message.
const MAX_STDERR_BYTES: u64 = 2048;

/// The TPM interface, attestation key and PCR selection a [`TpmCollector`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmSettings {
    /// The TCTI: a device path such as `/dev/tpmrm0` (the default), or a tpm2-tss TCTI string
    /// such as `device:/dev/tpm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// The attestation key: a persistent handle such as `0x81010002`, or a context file path
    /// as `tpm2_createak -c` writes it.
    pub ak_handle_or_context: String,
    /// The PCR bank and signature hash: `sha1`, `sha256`, `sha384` or `sha512`.
    pub bank: String,
    /// PCR indexes to quote.
    pub pcrs: Vec<u8>,
    /// The TCG event log to send with the quote, for example
    /// `/sys/kernel/security/tpm0/binary_bios_measurements`.
    pub event_log_path: Option<PathBuf>,
}

impl Default for TpmSettings {
    /// `/dev/tpmrm0`, AK at persistent handle 0x81010002, PCRs sha256:0-7, no event log.
    fn default() -> Self {
        Self {
            tcti: "/dev/tpmrm0".to_owned(),
            ak_handle_or_context: "0x81010002".to_owned(),
            bank: "sha256".to_owned(),
            pcrs: (0..=7).collect(),
            event_log_path: None,
        }
    }
}

impl TpmSettings {
    /// Returns the TCTI in tpm2-tss form: a bare device path gets the `device:` prefix.
    fn tcti_string(&self) -> String {
        if self.tcti.starts_with('/') {
            format!("device:{}", self.tcti)
        } else {
            self.tcti.clone()
        }
    }

    /// Returns the device path when the TCTI names a device, to report a missing TPM clearly.
    fn device_path(&self) -> Option<PathBuf> {
        self.tcti_string()
            .strip_prefix("device:")
            .map(|path| PathBuf::from(path.split(',').next().unwrap_or(path)))
    }

    fn digest_len(&self) -> Result<usize, CollectError> {
        match self.bank.as_str() {
            "sha1" => Ok(20),
            "sha256" => Ok(32),
            "sha384" => Ok(48),
            "sha512" => Ok(64),
            other => Err(failed(
                "TPM",
                format!("PCR bank {other:?} is not supported; use sha1, sha256, sha384 or sha512"),
            )),
        }
    }

    /// Sorted, deduplicated PCR indexes, in the order tpm2_quote writes their values.
    fn pcr_list(&self) -> Result<Vec<u8>, CollectError> {
        let mut pcrs = self.pcrs.clone();
        pcrs.sort_unstable();
        pcrs.dedup();
        if pcrs.is_empty() {
            return Err(failed("TPM", "the PCR list is empty".to_owned()));
        }
        if let Some(index) = pcrs.iter().find(|index| **index > 23) {
            return Err(failed(
                "TPM",
                format!("PCR {index} does not exist; PC Client TPMs have PCRs 0 to 23"),
            ));
        }
        Ok(pcrs)
    }
}

/// Collects TPM quotes with tpm2-tools.
#[derive(Clone, Debug)]
pub struct TpmCollector {
    settings: TpmSettings,
}

impl TpmCollector {
    pub fn new(settings: TpmSettings) -> Self {
        Self { settings }
    }

    pub fn settings(&self) -> &TpmSettings {
        &self.settings
    }
}

impl Collector for TpmCollector {
    fn kind(&self) -> Kind {
        Kind::Tpm
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Envelope, CollectError> {
        let settings = &self.settings;
        let pcrs = settings.pcr_list()?;
        let digest_len = settings.digest_len()?;
        check_device(settings)?;
        let dir = work_dir()?;
        // The AK is read first because tpm2_quote needs the key's fixed signing scheme.
        let (ak_public, ak) = read_ak(settings, dir.path())?;
        let scheme = scheme_name(ak.scheme)?;
        let message = dir.path().join("quote.msg");
        let signature = dir.path().join("quote.sig");
        let values = dir.path().join("quote.pcrs");

        let selection = format!(
            "{}:{}",
            settings.bank,
            pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
        );
        let qualification = hex::encode(twid_evidence::binding::tpm_qualifying_data(report_data));
        let tcti = settings.tcti_string();
        let mut arguments: Vec<&std::ffi::OsStr> = vec![
            "--tcti".as_ref(),
            tcti.as_ref(),
            "--key-context".as_ref(),
            settings.ak_handle_or_context.as_ref(),
            "--pcr-list".as_ref(),
            selection.as_ref(),
            "--qualification".as_ref(),
            qualification.as_ref(),
            "--message".as_ref(),
            message.as_os_str(),
            "--signature".as_ref(),
            signature.as_os_str(),
            "--pcr".as_ref(),
            values.as_os_str(),
            "--pcrs_format".as_ref(),
            "values".as_ref(),
            "--hash-algorithm".as_ref(),
            settings.bank.as_ref(),
        ];
        if let Some(scheme) = scheme {
            arguments.push("--scheme".as_ref());
            arguments.push(scheme.as_ref());
        }
        run_tool("tpm2_quote", &arguments, dir.path())?;

        let attest = read_output("tpm2_quote", &message)?;
        let signature = read_output("tpm2_quote", &signature)?;
        let values = read_output("tpm2_quote", &values)?;
        if values.len() != pcrs.len() * digest_len {
            return Err(failed(
                "tpm2_quote",
                format!(
                    "wrote {} bytes of PCR values; expected {} PCRs of {digest_len} bytes",
                    values.len(),
                    pcrs.len()
                ),
            ));
        }
        let pcr_values: BTreeMap<u8, Vec<u8>> = pcrs
            .iter()
            .copied()
            .zip(values.chunks_exact(digest_len).map(<[u8]>::to_vec))
            .collect();

        let event_log = match &settings.event_log_path {
            Some(path) => Some(read_event_log(path)?),
            None => None,
        };
        let input = QuoteInput {
            attest,
            signature,
            ak_public,
            pcrs: pcr_values,
            event_log,
        };
        tracing::debug!(
            tcti = %settings.tcti_string(),
            pcrs = %selection,
            "collected TPM quote"
        );
        Ok(Envelope::new(Kind::Tpm, input.to_json()))
    }
}

/// Reads the AK's public key as DER SubjectPublicKeyInfo, for enrolment. Its SHA-256 is the
/// `ak_sha256` claim of quotes the AK signs.
pub fn read_ak_public(settings: &TpmSettings) -> Result<Vec<u8>, CollectError> {
    check_device(settings)?;
    let dir = work_dir()?;
    let (_, ak) = read_ak(settings, dir.path())?;
    Ok(ak.spki_der)
}

/// Reads the AK as TPM2B_PUBLIC and parses it.
fn read_ak(settings: &TpmSettings, dir: &Path) -> Result<(Vec<u8>, tpm::PublicKey), CollectError> {
    let output = dir.join("ak.pub");
    run_tool(
        "tpm2_readpublic",
        &[
            "--tcti".as_ref(),
            settings.tcti_string().as_ref(),
            "--object-context".as_ref(),
            settings.ak_handle_or_context.as_ref(),
            "--format".as_ref(),
            "tss".as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
        ],
        dir,
    )?;
    let public = read_output("tpm2_readpublic", &output)?;
    let key = tpm::parse_public(&public).map_err(|error| {
        failed(
            "tpm2_readpublic",
            format!(
                "the AK {} is unusable: {error}",
                settings.ak_handle_or_context
            ),
        )
    })?;
    Ok((public, key))
}

/// Maps the AK's fixed signing scheme onto a tpm2_quote `--scheme` name. `None` lets
/// tpm2_quote pick its default for the key type.
fn scheme_name(scheme: Option<u16>) -> Result<Option<&'static str>, CollectError> {
    match scheme {
        None => Ok(None),
        Some(0x0014) => Ok(Some("rsassa")),
        Some(0x0016) => Ok(Some("rsapss")),
        Some(0x0018) => Ok(Some("ecdsa")),
        Some(other) => Err(failed(
            "TPM",
            format!(
                "the AK's signing scheme 0x{other:04x} is not supported; create the AK with \
                 rsassa, rsapss or ecdsa"
            ),
        )),
    }
}

fn check_device(settings: &TpmSettings) -> Result<(), CollectError> {
    if let Some(path) = settings.device_path()
        && !path.exists()
    {
        return Err(CollectError::Unavailable {
            interface: "TPM".to_owned(),
            reason: format!("device {} not found", path.display()),
        });
    }
    Ok(())
}

/// Creates a private temporary folder for the tools' output files, removed on drop.
fn work_dir() -> Result<tempfile::TempDir, CollectError> {
    tempfile::Builder::new()
        .prefix("twid-tpm-")
        .tempdir()
        .map_err(|error| {
            failed(
                "TPM",
                format!("creating a temporary folder failed: {error}"),
            )
        })
}

fn failed(interface: &str, reason: String) -> CollectError {
    CollectError::Failed {
        interface: interface.to_owned(),
        reason,
    }
}

/// Runs one tool with [`TOOL_TIMEOUT`], with standard error captured to a file in `dir` so a
/// chatty tool cannot block on a full pipe.
fn run_tool(program: &str, arguments: &[&std::ffi::OsStr], dir: &Path) -> Result<(), CollectError> {
    let stderr_path = dir.join(format!("{program}.stderr"));
    let stderr_file = std::fs::File::create(&stderr_path).map_err(|error| {
        failed(
            program,
            format!("creating {} failed: {error}", stderr_path.display()),
        )
    })?;
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                CollectError::Unavailable {
                    interface: program.to_owned(),
                    reason: "not found in PATH; install tpm2-tools".to_owned(),
                }
            } else {
                failed(program, format!("starting it failed: {error}"))
            }
        })?;

    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(
                    program,
                    format!(
                        "timed out after {} s and was killed",
                        TOOL_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Err(failed(program, format!("waiting for it failed: {error}"))),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Ok(file) = std::fs::File::open(&stderr_path) {
        let _ = file.take(MAX_STDERR_BYTES).read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    tracing::warn!(program, %status, stderr, "tpm2-tools command failed");
    Err(failed(
        program,
        format!("exited with {status}; stderr: {stderr}"),
    ))
}

fn read_output(program: &str, path: &Path) -> Result<Vec<u8>, CollectError> {
    std::fs::read(path).map_err(|error| {
        failed(
            program,
            format!("reading its output {} failed: {error}", path.display()),
        )
    })
}

fn read_event_log(path: &Path) -> Result<Vec<u8>, CollectError> {
    let interface = format!("TPM event log {}", path.display());
    let file = std::fs::File::open(path).map_err(|error| CollectError::Unavailable {
        interface: interface.clone(),
        reason: error.to_string(),
    })?;
    let mut log = Vec::new();
    file.take(MAX_EVENT_LOG_BYTES + 1)
        .read_to_end(&mut log)
        .map_err(|error| failed(&interface, format!("reading it failed: {error}")))?;
    if log.len() as u64 > MAX_EVENT_LOG_BYTES {
        return Err(failed(
            &interface,
            format!("it is larger than {MAX_EVENT_LOG_BYTES} bytes"),
        ));
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_device_path_gets_prefix() {
        let settings = TpmSettings::default();
        assert_eq!(settings.tcti_string(), "device:/dev/tpmrm0");
        assert_eq!(settings.device_path(), Some(PathBuf::from("/dev/tpmrm0")));
    }

    #[test]
    fn swtpm_tcti_kept_as_given() {
        let settings = TpmSettings {
            tcti: "swtpm:host=127.0.0.1,port=2321".to_owned(),
            ..TpmSettings::default()
        };
        assert_eq!(settings.tcti_string(), "swtpm:host=127.0.0.1,port=2321");
        assert_eq!(settings.device_path(), None);
    }

    #[test]
    fn pcr_list_sorted_and_checked() {
        let mut settings = TpmSettings {
            pcrs: vec![7, 0, 7, 3],
            ..TpmSettings::default()
        };
        assert_eq!(settings.pcr_list().expect("list"), vec![0, 3, 7]);
        settings.pcrs = vec![24];
        assert!(settings.pcr_list().is_err());
        settings.pcrs.clear();
        assert!(settings.pcr_list().is_err());
    }

    #[test]
    fn missing_device_is_unavailable() {
        let settings = TpmSettings {
            tcti: "/nonexistent/tpmrm0".to_owned(),
            ..TpmSettings::default()
        };
        let error = TpmCollector::new(settings)
            .collect(&[0; 64])
            .expect_err("no device");
        assert!(matches!(error, CollectError::Unavailable { .. }), "{error}");
    }
}
