//! The measurement report: what the run measured, printed as text and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// p50, p99 and maximum of a set of samples, in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Percentiles {
    /// Computes nearest-rank percentiles of `samples` (milliseconds).
    pub(crate) fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let position = (q * samples.len() as f64).ceil() as usize;
            samples[position.clamp(1, samples.len()) - 1]
        };
        Self {
            count: samples.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: samples[samples.len() - 1],
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) memory_total_kib: u64,
    pub(crate) kernel: String,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_total_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            memory_total_kib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// The steady-state window: nothing changes, the agents hold their Watch streams.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Steady {
    pub(crate) window_secs: f64,
    /// CPU percent of one core, per server process.
    pub(crate) server_cpu_percent: Vec<f64>,
    /// SQL statements per second, per server process, counted from its log.
    pub(crate) statements_per_sec: Vec<f64>,
    /// PostgreSQL transactions per second of the database (PostgreSQL only).
    pub(crate) pg_xacts_per_sec: Option<f64>,
    /// Sync calls the simulated agents made in the window.
    pub(crate) agent_syncs: u64,
    /// Statements in the window by sqlx's summary of the statement, per server process.
    pub(crate) statements_by_summary: Vec<BTreeMap<String, u64>>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Propagation {
    pub(crate) trials: usize,
    /// Trials whose change reached the agent within the time limit.
    pub(crate) created_propagated: usize,
    pub(crate) deleted_propagated: usize,
    /// Trials whose change was made on another replica than the agent's.
    pub(crate) via_other_replica: usize,
    pub(crate) create: Percentiles,
    pub(crate) delete: Percentiles,
    /// The same trials, split by whether the change went through the agent's own replica.
    pub(crate) create_same_replica: Percentiles,
    pub(crate) create_other_replica: Percentiles,
    /// Every Sync call during the trials, by every agent (a hint may wake agents that the
    /// change does not affect).
    pub(crate) sync_rpc: Percentiles,
    /// Sync calls per trial, averaged: how many agents one change woke.
    pub(crate) syncs_per_change: f64,
    /// Server CPU seconds per server process over the trials.
    pub(crate) server_cpu_secs: Vec<f64>,
    /// SQL statements per change, per server process.
    pub(crate) statements_per_change: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct RealAgent {
    pub(crate) entries: usize,
    /// Entries the agent's first-sync log line reported.
    pub(crate) synced_entries: Option<u64>,
    /// The log message waited for.
    pub(crate) log_line: String,
    pub(crate) first_sync_secs: Option<f64>,
    pub(crate) vm_rss_kib: Option<u64>,
    pub(crate) vm_hwm_kib: Option<u64>,
    /// `x509_svid_cache_max_size` as written to the agent configuration, or `None` when the
    /// agent rejected the key and ran without it.
    pub(crate) x509_svid_cache_max_size: Option<u64>,
    /// The fields of the agent's last sync-round log line when RSS was read, with the
    /// signed and failed SVID counts.
    pub(crate) last_round_log: Option<String>,
    pub(crate) settle_secs: f64,
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) command_line: String,
    pub(crate) machine: Machine,
    pub(crate) backend: String,
    pub(crate) replicas: usize,
    pub(crate) twid_binary: String,
    pub(crate) agents: usize,
    pub(crate) entries: usize,
    pub(crate) entries_per_agent: usize,
    pub(crate) attest_secs: f64,
    pub(crate) attest_per_sec: f64,
    pub(crate) attest_failed: usize,
    pub(crate) entry_create_secs: f64,
    pub(crate) entries_per_sec: f64,
    /// Agents connected with a first Sync applied.
    pub(crate) agents_synced: usize,
    /// Agents whose first Sync delivered every entry parented to them.
    pub(crate) agents_complete: usize,
    pub(crate) agent_failures: usize,
    pub(crate) first_sync: Percentiles,
    pub(crate) first_sync_total_secs: f64,
    pub(crate) svids_signed: usize,
    pub(crate) svids_failed: usize,
    pub(crate) signing_secs: f64,
    pub(crate) svids_per_sec: f64,
    pub(crate) steady: Steady,
    pub(crate) propagation: Propagation,
    pub(crate) digest_mismatches: u64,
    pub(crate) full_resends: u64,
    pub(crate) sync_errors: u64,
    pub(crate) watch_errors: u64,
    pub(crate) first_errors: Vec<String>,
    pub(crate) real_agent: Option<RealAgent>,
}

impl Report {
    /// Renders the report as text for the terminal.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "command: {}", self.command_line);
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}, {:.1} GiB, Linux {}",
            m.nproc,
            m.cpu_model,
            m.memory_total_kib as f64 / 1024.0 / 1024.0,
            m.kernel
        );
        let _ = writeln!(
            out,
            "servers: {} x {} ({})",
            self.replicas, self.backend, self.twid_binary
        );
        if self.agents > 0 {
            self.fleet_text(&mut out);
        }
        if let Some(real) = &self.real_agent {
            real_agent_text(real, &mut out);
        }
        out
    }

    fn fleet_text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "agents: {} attested in {:.1} s ({:.0}/s), {} failed",
            self.agents, self.attest_secs, self.attest_per_sec, self.attest_failed
        );
        let _ = writeln!(
            out,
            "entries: {} ({} per agent) created in {:.1} s ({:.0}/s)",
            self.entries, self.entries_per_agent, self.entry_create_secs, self.entries_per_sec
        );
        let _ = writeln!(
            out,
            "first sync: {} agents synced, {} with all their entries, {} failed; per agent {}; \
             all in {:.1} s",
            self.agents_synced,
            self.agents_complete,
            self.agent_failures,
            self.first_sync.line(),
            self.first_sync_total_secs
        );
        let _ = writeln!(
            out,
            "signing: {} X.509-SVIDs in {:.1} s ({:.0}/s), {} failed",
            self.svids_signed, self.signing_secs, self.svids_per_sec, self.svids_failed
        );

        let s = &self.steady;
        let _ = writeln!(
            out,
            "steady state over {:.0} s: server CPU {} %, SQL statements {} per second, \
             PostgreSQL transactions {} per second, agent syncs {}",
            s.window_secs,
            list(&s.server_cpu_percent, 2),
            list(&s.statements_per_sec, 2),
            s.pg_xacts_per_sec
                .map_or_else(|| "n/a".to_owned(), |value| format!("{value:.2}")),
            s.agent_syncs
        );
        for (index, summaries) in s.statements_by_summary.iter().enumerate() {
            for (summary, count) in summaries {
                let _ = writeln!(out, "  server {index}: {count} x {summary}");
            }
        }

        let p = &self.propagation;
        let _ = writeln!(
            out,
            "propagation: {} trials ({} via the other replica), created {} and deleted {} \
             within the limit",
            p.trials, p.via_other_replica, p.created_propagated, p.deleted_propagated
        );
        let _ = writeln!(out, "  create: {}", p.create.line());
        if p.via_other_replica > 0 {
            let _ = writeln!(out, "    same replica: {}", p.create_same_replica.line());
            let _ = writeln!(out, "    other replica: {}", p.create_other_replica.line());
        }
        let _ = writeln!(out, "  delete: {}", p.delete.line());
        let _ = writeln!(out, "  Sync RPC: {}", p.sync_rpc.line());
        let _ = writeln!(
            out,
            "  syncs per change {:.1}; server CPU {} s; SQL statements per change {}",
            p.syncs_per_change,
            list(&p.server_cpu_secs, 2),
            list(&p.statements_per_change, 1)
        );

        let _ = writeln!(
            out,
            "digest mismatches {}, full resends {}, sync errors {}, Watch errors {}",
            self.digest_mismatches, self.full_resends, self.sync_errors, self.watch_errors
        );
        for error in &self.first_errors {
            let _ = writeln!(out, "  error: {error}");
        }
    }
}

/// Formats one value per server process, such as `[1.25, 0.50]`.
fn list(values: &[f64], decimals: usize) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|value| format!("{value:.decimals$}"))
        .collect();
    format!("[{}]", items.join(", "))
}

fn real_agent_text(real: &RealAgent, out: &mut String) {
    let _ = writeln!(
        out,
        "real agent: {} entries; first sync logged {:?} entries after {} (log line {:?})",
        real.entries,
        real.synced_entries,
        real.first_sync_secs
            .map_or_else(|| "never".to_owned(), |secs| format!("{secs:.2} s")),
        real.log_line
    );
    let _ = writeln!(
        out,
        "  after {:.0} s: VmRSS {} KiB, VmHWM {} KiB; x509_svid_cache_max_size {}",
        real.settle_secs,
        real.vm_rss_kib
            .map_or_else(|| "?".to_owned(), |v| v.to_string()),
        real.vm_hwm_kib
            .map_or_else(|| "?".to_owned(), |v| v.to_string()),
        real.x509_svid_cache_max_size.map_or_else(
            || "not set (rejected by the agent)".to_owned(),
            |v| v.to_string()
        )
    );
    if let Some(svids) = &real.last_round_log {
        let _ = writeln!(out, "  SVIDs: {svids}");
    }
    for note in &real.notes {
        let _ = writeln!(out, "  note: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let percentiles = Percentiles::of(samples);
        assert_eq!(percentiles.count, 200);
        assert_eq!(percentiles.p50_ms, 100.0);
        assert_eq!(percentiles.p99_ms, 198.0);
        assert_eq!(percentiles.max_ms, 200.0);
    }

    #[test]
    fn percentiles_of_nothing_are_zero() {
        let percentiles = Percentiles::of(Vec::new());
        assert_eq!(percentiles.count, 0);
        assert_eq!(percentiles.max_ms, 0.0);
    }
}
