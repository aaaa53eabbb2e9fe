//! A collector that runs a program: for platforms whose evidence needs a vendor tool, such as
//! an SGX enclave's quoting library or the Nitro Secure Module inside an enclave.
//!
//! The program gets the report data as 128 lowercase hex digits in the environment variable
//! `TWID_REPORT_DATA` and must print one evidence envelope as JSON on standard output and exit
//! with status 0.
//!
//! The program runs in its own process group. When it exits or times out, the whole group is
//! killed, so a background process it left behind cannot keep the output pipes open.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use twid_evidence::envelope::MAX_ENVELOPE_BYTES;
use twid_evidence::{Envelope, Kind};

use super::{CollectError, Collector};

/// Name of the environment variable that carries the report data.
pub const REPORT_DATA_ENV: &str = "TWID_REPORT_DATA";

/// Default time a program may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum bytes of standard error kept for the error message.
const MAX_STDERR_BYTES: usize = 4096;

/// How long the output pipes may stay open after the process group was killed. Only a process
/// that left the group (with `setsid`, for example) can hold them open that long.
const PIPE_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
            .process_group(0)
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
            .map(|pipe| spawn_reader(pipe, MAX_ENVELOPE_BYTES + 1));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| spawn_reader(pipe, MAX_STDERR_BYTES));

        let status = match self.wait_and_kill_group(&mut child) {
            Ok(Some(status)) => status,
            Ok(None) => {
                return Err(self.failed(format!(
                    "timed out after {}s and was killed",
                    self.timeout.as_secs()
                )));
            }
            Err(reason) => return Err(self.failed(reason)),
        };
        let pipes_deadline = Instant::now() + PIPE_CLOSE_TIMEOUT;
        let (Some(stdout), Some(stderr)) = (
            stdout.and_then(|reader| reader.finish(pipes_deadline)),
            stderr.and_then(|reader| reader.finish(pipes_deadline)),
        ) else {
            return Err(self.failed(format!(
                "exited with {status}, but a process outside its process group kept its \
                 output open for more than {}s",
                PIPE_CLOSE_TIMEOUT.as_secs()
            )));
        };
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

impl ExecCollector {
    /// Waits until the program exits or the timeout passes, then kills its process group.
    /// Returns the exit status, or `None` after a timeout.
    fn wait_and_kill_group(&self, child: &mut Child) -> Result<Option<ExitStatus>, String> {
        let pid = i32::try_from(child.id())
            .map(Pid::from_raw)
            .map_err(|_| format!("process ID {} is out of range", child.id()))?;
        let deadline = Instant::now() + self.timeout;
        let exited = loop {
            // WNOWAIT leaves the exited program unreaped, so its process ID, which is also
            // the group ID, cannot be reused before the group is killed below.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(pid), flags) {
                Ok(WaitStatus::StillAlive) if Instant::now() >= deadline => break false,
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                Ok(_) => break true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(error) => {
                    kill_group(pid);
                    let _ = child.wait();
                    return Err(format!("waiting failed: {error}"));
                }
            }
        };
        kill_group(pid);
        let status = child
            .wait()
            .map_err(|error| format!("waiting failed: {error}"))?;
        Ok(exited.then_some(status))
    }
}

/// Sends SIGKILL to process group `group`. The group is empty once every member has exited,
/// which is the usual case after a clean exit.
fn kill_group(group: Pid) {
    match killpg(group, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(%error, group = group.as_raw(), "failed to kill the evidence command's process group");
        }
    }
}

/// A thread that reads one output pipe.
struct PipeReader {
    output: mpsc::Receiver<Vec<u8>>,
    _thread: JoinHandle<()>,
}

impl PipeReader {
    /// Returns what was read once the pipe closes, or `None` when it is still open at
    /// `deadline`. The thread is then left to end whenever the pipe closes.
    fn finish(self, deadline: Instant) -> Option<Vec<u8>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.output.recv_timeout(timeout).ok()
    }
}

fn spawn_reader(pipe: impl std::io::Read + Send + 'static, limit: usize) -> PipeReader {
    let (sender, output) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        // The receiver is gone only when the collection gave up waiting.
        let _ = sender.send(read_limited(pipe, limit));
    });
    PipeReader {
        output,
        _thread: thread,
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

    /// Returns whether process `pid` has ended: it is gone, or a zombie that no one reaped.
    fn process_ended(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, fields)| fields.starts_with('Z')),
        }
    }

    /// Waits up to 5 s for process `pid` to end, because the kill takes effect asynchronously.
    fn wait_ended(pid: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if process_ended(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn exec_background_child_killed() {
        // The background sleep keeps standard output open; its process ID becomes the
        // evidence bytes.
        let script = r#"sleep 300 & printf '{"kind":"nitro","evidence":"%s"}' "$(printf %s $! | base64 -w0)""#;
        let collector =
            ExecCollector::new(Kind::Nitro, shell(script)).with_timeout(Duration::from_secs(20));
        let started = Instant::now();
        let envelope = collector.collect(&[0; 64]).expect("collect");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let pid = String::from_utf8(envelope.evidence).expect("pid");
        assert!(wait_ended(&pid), "background process {pid} still runs");
    }

    #[test]
    fn exec_timeout_kills_group() {
        let dir = tempfile::tempdir().expect("dir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 300 & echo $! > '{}'; sleep 300", pid_file.display());
        let collector = ExecCollector::new(Kind::Nitro, shell(&script))
            .with_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let error = collector.collect(&[0; 64]).expect_err("timeout");
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid = std::fs::read_to_string(&pid_file).expect("pid file");
        let pid = pid.trim();
        assert!(wait_ended(pid), "background process {pid} still runs");
    }

    #[test]
    fn exec_missing_program() {
        let collector = ExecCollector::new(Kind::Tdx, vec!["/nonexistent/collect".to_owned()]);
        let error = collector.collect(&[0; 64]).expect_err("missing");
        assert!(matches!(error, CollectError::Unavailable { .. }), "{error}");
    }
}
