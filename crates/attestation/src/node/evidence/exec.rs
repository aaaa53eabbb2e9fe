//! A collector that runs a program: for platforms whose evidence needs a vendor tool, such as
//! an SGX enclave's quoting library or the Nitro Secure Module inside an enclave.
//!
//! The program gets the report data as 128 lowercase hex digits in the environment variable
//! `TWID_REPORT_DATA` and must print one evidence envelope as JSON on standard output and exit
//! with status 0.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twid_evidence::envelope::MAX_ENVELOPE_BYTES;
use twid_evidence::{Envelope, Kind};

use super::{CollectError, Collector};

/// Name of the environment variable that carries the report data.
pub const REPORT_DATA_ENV: &str = "TWID_REPORT_DATA";

/// Default time a program may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum bytes of standard error kept for the error message.
const MAX_STDERR_BYTES: usize = 4096;

/// Runs `command` for each collection.
#[derive(Debug, Clone)]
pub struct ExecCollector {
    kind: Kind,
    command: Vec<String>,
    timeout: Duration,
}

impl ExecCollector {
    /// Creates a collector for evidence of `kind` that runs `command` (program and arguments,
    /// no shell) with the default 30 s timeout.
    pub fn new(kind: Kind, command: Vec<String>) -> Self {
        Self {
            kind,
            command,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how long the program may run.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn failed(&self, reason: String) -> CollectError {
        CollectError::Failed {
            interface: format!("evidence command {:?}", self.command.join(" ")),
            reason,
        }
    }
}

impl Collector for ExecCollector {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Envelope, CollectError> {
        let Some((program, arguments)) = self.command.split_first() else {
            return Err(self.failed("the command is empty".to_owned()));
        };
        let mut child = Command::new(program)
            .args(arguments)
            .env(REPORT_DATA_ENV, hex::encode(report_data))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| CollectError::Unavailable {
                interface: format!("evidence command {program:?}"),
                reason: error.to_string(),
            })?;
        // Each pipe is read on its own thread, so a program that fills one pipe while this
        // thread waits on the other cannot deadlock.
        let stdout = child
            .stdout
            .take()
            .map(|pipe| std::thread::spawn(move || read_limited(pipe, MAX_ENVELOPE_BYTES + 1)));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| std::thread::spawn(move || read_limited(pipe, MAX_STDERR_BYTES)));

        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.failed(format!(
                        "timed out after {}s and was killed",
                        self.timeout.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(error) => return Err(self.failed(format!("waiting failed: {error}"))),
            }
        };
        let stdout = stdout
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        let stderr = stderr
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
        if !status.success() {
            tracing::warn!(
                command = %self.command.join(" "),
                %status,
                stderr = %stderr,
                "evidence command failed"
            );
            return Err(self.failed(format!("exited with {status}; stderr: {stderr}")));
        }
        let envelope = Envelope::from_json(&stdout).map_err(|error| {
            tracing::warn!(command = %self.command.join(" "), stderr = %stderr, "evidence command printed no valid envelope");
            self.failed(format!("its output is not an evidence envelope: {error}"))
        })?;
        if envelope.kind != self.kind {
            return Err(self.failed(format!(
                "it printed {} evidence, but the node attestor expects {}",
                envelope.kind, self.kind
            )));
        }
        Ok(envelope)
    }
}

/// Reads up to `limit` bytes and discards the rest, so the pipe never fills.
fn read_limited(mut pipe: impl std::io::Read, limit: usize) -> Vec<u8> {
    let mut output = Vec::new();
    let _ = (&mut pipe)
        .take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut output);
    let _ = std::io::copy(&mut pipe, &mut std::io::sink());
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Vec<String> {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
    }

    #[test]
    fn exec_passes_report_data() {
        // The script echoes the report data back as the evidence bytes (base64 of the hex).
        let script = r#"printf '{"kind":"nitro","evidence":"%s"}' "$(printf %s "$TWID_REPORT_DATA" | base64 -w0)""#;
        let collector = ExecCollector::new(Kind::Nitro, shell(script));
        let envelope = collector.collect(&[0xab; 64]).expect("collect");
        assert_eq!(envelope.kind, Kind::Nitro);
        assert_eq!(envelope.evidence, "ab".repeat(64).into_bytes());
    }

    #[test]
    fn exec_failure_includes_stderr() {
        let collector = ExecCollector::new(Kind::Nitro, shell("echo 'no NSM device' >&2; exit 3"));
        let error = collector.collect(&[0; 64]).expect_err("exit 3");
        let message = error.to_string();
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("no NSM device"), "{message}");
    }

    #[test]
    fn exec_rejects_other_kind() {
        let collector =
            ExecCollector::new(Kind::Tdx, shell(r#"printf '{"kind":"snp","evidence":""}'"#));
        let error = collector.collect(&[0; 64]).expect_err("kind");
        assert!(error.to_string().contains("expects tdx"), "{error}");
    }

    #[test]
    fn exec_times_out() {
        let collector = ExecCollector::new(Kind::Tdx, shell("sleep 10"))
            .with_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let error = collector.collect(&[0; 64]).expect_err("timeout");
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn exec_missing_program() {
        let collector = ExecCollector::new(Kind::Tdx, vec!["/nonexistent/collect".to_owned()]);
        let error = collector.collect(&[0; 64]).expect_err("missing");
        assert!(matches!(error, CollectError::Unavailable { .. }), "{error}");
    }
}
