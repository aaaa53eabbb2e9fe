//! One real `twid agent run` process with many entries: the time of its first full sync and
//! its memory once it has settled.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::admin::{Admin, workload_entry};
use crate::report::RealAgent;
use crate::servers::{ServerProcess, TRUST_DOMAIN, process_cpu_time, terminate};

/// The agent's log message after its first sync round, which carries `entries=<count>`. The
/// agent logs it after the round has also requested the SVIDs that were due.
const FIRST_SYNC_LINE: &str = "first sync with the server complete";

/// The agent's debug message after every sync round, with `signed=` and `failed=` counts.
const ROUND_LINE: &str = "sync round complete";

/// Time limit for the first sync to show in the log.
const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// Maximum wait after the first sync for the agent to become idle before RSS is read.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of the real-agent measurement.
pub(crate) struct Options<'a> {
    pub(crate) twid: &'a Path,
    pub(crate) dir: &'a Path,
    pub(crate) entries: usize,
    pub(crate) svid_cache_max_size: u64,
}

/// Registers the entries, runs the agent and measures it.
pub(crate) async fn measure(
    server: &ServerProcess,
    options: &Options<'_>,
) -> anyhow::Result<RealAgent> {
    std::fs::create_dir_all(options.dir)?;
    let mut admin = Admin::connect(&server.socket).await?;
    let token = admin.join_token().await?;
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}");
    let entries = (0..options.entries)
        .map(|n| {
            let uid = u64::try_from(n).unwrap_or(u64::MAX);
            workload_entry(&format!("real/w{n}"), &agent_id, uid)
        })
        .collect();
    let created = Instant::now();
    admin.create_entries(entries).await?;
    tracing::info!(
        entries = options.entries,
        secs = created.elapsed().as_secs_f64(),
        "entries for the real agent created"
    );
    write_bundle(options.twid, server, &options.dir.join("bootstrap.pem"))?;

    let mut report = RealAgent {
        entries: options.entries,
        log_line: FIRST_SYNC_LINE.to_owned(),
        ..RealAgent::default()
    };
    let mut cache_limit = Some(options.svid_cache_max_size);
    let log_path = options.dir.join("agent.log");
    let (mut child, started) = loop {
        write_config(options.dir, server.port, &token, cache_limit)?;
        let started = Instant::now();
        let mut child = spawn(options.twid, options.dir, &log_path)?;
        // A configuration error stops the agent at once. An error that names the cache key
        // means this build does not support the key yet, so the run continues without it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if cache_limit.is_some() && log.contains("x509_svid_cache_max_size") {
                let reason = log
                    .lines()
                    .find(|line| line.contains("x509_svid_cache_max_size"))
                    .unwrap_or_default()
                    .trim();
                report.notes.push(format!(
                    "the agent rejected x509_svid_cache_max_size ({status}: {reason}); \
                     measured without it"
                ));
                cache_limit = None;
                continue;
            }
            anyhow::bail!("the agent exited with {status}; log:\n{log}");
        }
        break (child, started);
    };
    report.x509_svid_cache_max_size = cache_limit;
    let pid = child.id();

    let outcome = wait_first_sync(&log_path, &mut child, started).await;
    match outcome {
        Ok((elapsed, count)) => {
            report.first_sync_secs = Some(elapsed.as_secs_f64());
            report.synced_entries = count;
        }
        Err(error) => report.notes.push(format!("{error:#}")),
    }
    let settled = Instant::now();
    settle(pid).await;
    report.settle_secs = settled.elapsed().as_secs_f64();
    let (rss, hwm) = memory(pid)?;
    report.vm_rss_kib = rss;
    report.vm_hwm_kib = hwm;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    report.last_round_log = log
        .lines()
        .rfind(|line| line.contains(ROUND_LINE))
        .map(|line| fields_after(line, ROUND_LINE));
    terminate(&mut child);
    Ok(report)
}

fn write_bundle(twid: &Path, server: &ServerProcess, path: &Path) -> anyhow::Result<()> {
    let output = Command::new(twid)
        .args(["bundle", "show", "--socket-path"])
        .arg(&server.socket)
        .output()
        .context("running twid bundle show")?;
    anyhow::ensure!(
        output.status.success(),
        "twid bundle show failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(path, output.stdout)?;
    Ok(())
}

fn write_config(
    dir: &Path,
    port: u16,
    token: &str,
    cache_limit: Option<u64>,
) -> anyhow::Result<()> {
    let cache = cache_limit
        .map(|limit| format!("  x509_svid_cache_max_size = {limit}\n"))
        .unwrap_or_default();
    // A fresh data directory each time, so the agent attests with the unused token.
    let data = dir.join("agent-data");
    let _ = std::fs::remove_dir_all(&data);
    let text = format!(
        "agent {{\n  trust_domain = \"{TRUST_DOMAIN}\"\n  server_address = \"127.0.0.1\"\n  \
         server_port = \"{port}\"\n  socket_path = \"{socket}\"\n  data_dir = \"{data}\"\n  \
         trust_bundle_path = \"{bundle}\"\n  join_token = \"{token}\"\n  \
         log_level = \"INFO\"\n{cache}}}\n\
         plugins {{\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{}}\n  }}\n}}\n",
        socket = dir.join("agent.sock").display(),
        data = data.display(),
        bundle = dir.join("bootstrap.pem").display(),
    );
    std::fs::write(dir.join("agent.conf"), text)?;
    Ok(())
}

fn spawn(twid: &Path, dir: &Path, log_path: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log_path)?;
    Command::new(twid)
        .args(["agent", "run", "--config"])
        .arg(dir.join("agent.conf"))
        // The sync module's debug lines carry the signed and failed SVID counts of each round.
        .env("RUST_LOG", "info,twid_agent::sync=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting twid agent run")
}

/// Waits for [`FIRST_SYNC_LINE`] and returns the time since `started` and its entry count.
async fn wait_first_sync(
    log_path: &Path,
    child: &mut Child,
    started: Instant,
) -> anyhow::Result<(Duration, Option<u64>)> {
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains(FIRST_SYNC_LINE)) {
            let elapsed = started.elapsed();
            let count = field_value(line, "entries").and_then(|value| value.parse().ok());
            return Ok((elapsed, count));
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the agent exited with {status} before its first sync");
        }
        anyhow::ensure!(
            started.elapsed() < FIRST_SYNC_TIMEOUT,
            "the agent logged no first sync within {FIRST_SYNC_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the agent used less than 2 % of a core over 3 seconds, or [`SETTLE_TIMEOUT`].
async fn settle(pid: u32) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let window = Duration::from_secs(3);
    while Instant::now() < deadline {
        let Ok(before) = process_cpu_time(pid) else {
            return;
        };
        tokio::time::sleep(window).await;
        let Ok(after) = process_cpu_time(pid) else {
            return;
        };
        if (after - before).as_secs_f64() < 0.02 * window.as_secs_f64() {
            return;
        }
    }
}

/// Reads VmRSS and VmHWM (KiB) from `/proc/<pid>/status`.
fn memory(pid: u32) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let read = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Ok((read("VmRSS:"), read("VmHWM:")))
}

/// Returns the value of `name=value` in a text-format log line.
fn field_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

/// Returns the `key=value` fields that follow `message` in a text-format log line.
fn fields_after(line: &str, message: &str) -> String {
    line.split_once(message)
        .map_or(line, |(_, rest)| rest)
        .trim()
        .to_owned()
}
