//! The phases of one run, in order: servers, attestation, entries, first syncs, signing, the
//! steady-state window, propagation trials, the real agent, clean-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use twid_spiffe::TrustDomain;
use twid_tls::TrustSource;

use crate::Args;
use crate::admin::{Admin, workload_entry};
use crate::fleet::{self, AgentHandle, Command, Event, FleetStats, Phase, Target};
use crate::real_agent;
use crate::report::{Machine, Percentiles, Propagation, Report, Steady};
use crate::servers::{Backend, PgDatabase, ServerProcess, TRUST_DOMAIN};

/// Time limit for the replicas to publish each other's CA in their bundles.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait before the steady-state window on PostgreSQL, longer than the delay with which
/// PostgreSQL 15 publishes the transaction counts of idle connections (about 10 s).
const PG_STATS_SETTLE: Duration = Duration::from_secs(15);

/// How long no Sync may run before the fleet counts as quiet.
const QUIET: Duration = Duration::from_millis(500);

/// Time limit for the fleet to become quiet between phases and trials.
const QUIET_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs every phase and returns the report. Servers and the database are cleaned up also when
/// a phase fails.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let twid = twid_binary(args)?;
    if args.backend == Backend::Sqlite && args.replicas != 1 {
        bail!("--backend sqlite runs exactly one server; use --backend postgres for replicas");
    }
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let temporary = tempfile::Builder::new().prefix("twid-load-").tempdir()?;
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_path_buf());
    let database = match args.backend {
        Backend::Postgres => Some(PgDatabase::create(&args.postgres_url).await?),
        Backend::Sqlite => None,
    };

    let mut report = Report {
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::read(),
        backend: format!("{:?}", args.backend).to_lowercase(),
        replicas: args.replicas,
        twid_binary: twid.display().to_string(),
        ..Report::default()
    };

    let mut servers = Vec::new();
    let result = run_phases(
        args,
        &twid,
        &work_dir,
        database.as_ref(),
        &mut servers,
        &mut report,
    )
    .await;
    for server in &mut servers {
        server.stop();
    }
    drop(servers);
    if let Some(database) = &database
        && let Err(error) = database.drop_database().await
    {
        tracing::warn!(error = %format!("{error:#}"), "failed to drop the database");
    }
    result.map(|()| report)
}

fn twid_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.twid {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable has no parent directory")?
            .join("twid"),
    };
    if !path.is_file() {
        bail!(
            "the twid binary was not found at {}; build it with `cargo build -p twid` in the \
             same profile or pass --twid PATH",
            path.display()
        );
    }
    Ok(path)
}

async fn run_phases(
    args: &Args,
    twid: &Path,
    work_dir: &Path,
    database: Option<&PgDatabase>,
    servers: &mut Vec<ServerProcess>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let url = database.map(PgDatabase::url);
    for index in 0..args.replicas {
        let dir = work_dir.join(format!("server-{index}"));
        servers.push(ServerProcess::start(twid, &dir, index, url.as_deref()).await?);
    }
    let mut admins = Vec::new();
    for server in servers.iter() {
        admins.push(Admin::connect(&server.socket).await?);
    }
    let trust = wait_for_bundles(&mut admins, args.replicas).await?;
    if args.agents > 0 {
        let stats = Arc::new(FleetStats::default());
        let cancel = CancellationToken::new();
        let outcome = run_fleet(
            args,
            servers,
            &mut admins,
            &trust,
            database,
            &stats,
            &cancel,
            report,
        )
        .await;
        cancel.cancel();
        report.digest_mismatches = stats.digest_mismatches.load(Ordering::SeqCst);
        report.full_resends = stats.full_resends.load(Ordering::SeqCst);
        report.sync_errors = stats.sync_errors.load(Ordering::SeqCst);
        report.watch_errors = stats.watch_errors.load(Ordering::SeqCst);
        report.first_errors = stats
            .first_errors
            .lock()
            .map(|errors| errors.clone())
            .unwrap_or_default();
        outcome?;
        // Let the agents' connections close before the real agent connects.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if args.real_agent {
        let options = real_agent::Options {
            twid,
            dir: &work_dir.join("real-agent"),
            entries: args.real_agent_entries,
            svid_cache_max_size: args.real_agent_svid_cache,
        };
        report.real_agent = Some(real_agent::measure(&servers[0], &options).await?);
    }
    Ok(())
}

/// Waits until every replica's bundle contains the CA of every replica, and returns the union
/// of the bundles as the agents' trust.
async fn wait_for_bundles(admins: &mut [Admin], replicas: usize) -> anyhow::Result<TrustSource> {
    let deadline = Instant::now() + BUNDLE_TIMEOUT;
    loop {
        let mut union: Vec<Vec<u8>> = Vec::new();
        let mut smallest = usize::MAX;
        for admin in admins.iter_mut() {
            let bundle = admin.bundle().await?;
            smallest = smallest.min(bundle.len());
            for cert in bundle {
                if !union.contains(&cert) {
                    union.push(cert);
                }
            }
        }
        if smallest >= replicas || Instant::now() > deadline {
            if smallest < replicas {
                tracing::warn!(
                    smallest,
                    replicas,
                    "a replica's bundle still lacks another replica's CA"
                );
            }
            let trust_domain = TrustDomain::new(TRUST_DOMAIN)?;
            let certs = union.into_iter().map(CertificateDer::from).collect();
            return Ok(TrustSource::new(HashMap::from([(trust_domain, certs)]))?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_fleet(
    args: &Args,
    servers: &[ServerProcess],
    admins: &mut [Admin],
    trust: &TrustSource,
    database: Option<&PgDatabase>,
    stats: &Arc<FleetStats>,
    cancel: &CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    let targets: Vec<Target> = servers
        .iter()
        .map(|server| Target {
            replica: server.index,
            port: server.port,
            trust: trust.clone(),
        })
        .collect();
    report.agents = args.agents;
    let identities = attest_fleet(args, admins, &targets, report).await?;
    let per_agent = args.entries / args.agents;
    report.entries_per_agent = per_agent;
    create_fleet_entries(&mut admins[0], &identities, per_agent, report).await?;

    let (events_sender, mut events) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    stats.set_phase(Phase::FirstSync);
    let started = Instant::now();
    let mut handles = Vec::with_capacity(identities.len());
    for identity in identities {
        let target = &targets[identity.replica];
        handles.push(fleet::spawn(
            identity,
            target,
            Arc::clone(stats),
            events_sender.clone(),
            Arc::clone(&permits),
            cancel.clone(),
        ));
    }
    drop(events_sender);
    let mut first_syncs = Vec::new();
    let mut synced = vec![false; handles.len()];
    for _ in 0..handles.len() {
        let event = events
            .recv()
            .await
            .context("the simulated agents stopped")?;
        match event {
            Event::FirstSync {
                index,
                elapsed,
                entries,
            } => {
                synced[index] = true;
                first_syncs.push(elapsed.as_secs_f64() * 1000.0);
                if entries == per_agent {
                    report.agents_complete += 1;
                }
            }
            Event::Failed { index, error } => {
                report.agent_failures += 1;
                tracing::warn!(agent = index, %error, "simulated agent failed");
                if report.first_errors.len() < 20 {
                    report.first_errors.push(error);
                }
            }
            other => bail!("unexpected event before the first syncs finished: {other:?}"),
        }
    }
    report.first_sync_total_secs = started.elapsed().as_secs_f64();
    report.agents_synced = first_syncs.len();
    report.first_sync = Percentiles::of(first_syncs);
    tracing::info!(
        synced = report.agents_synced,
        failed = report.agent_failures,
        secs = report.first_sync_total_secs,
        "first syncs done"
    );
    let live: Vec<AgentHandle> = handles
        .into_iter()
        .filter(|handle| synced[handle.index])
        .collect();
    wait_quiet(stats).await;

    sign_fleet(&live, &mut events, stats, report).await?;
    report.steady = steady_state(args, servers, database, stats).await?;
    report.propagation = propagation(args, servers, admins, &live, stats).await?;
    Ok(())
}

/// Creates a join token per agent and attests every agent, each to replica `index % replicas`.
async fn attest_fleet(
    args: &Args,
    admins: &mut [Admin],
    targets: &[Target],
    report: &mut Report,
) -> anyhow::Result<Vec<fleet::Identity>> {
    let tokens = create_tokens(args.agents, admins).await?;

    let configs = targets
        .iter()
        .map(Target::attestation_config)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let permits = Arc::new(Semaphore::new(args.attest_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for (index, token) in tokens.into_iter().enumerate() {
        let replica = index % targets.len();
        let target = targets[replica].clone();
        let config = Arc::clone(&configs[replica]);
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            fleet::attest(index, &target, config, &token).await
        });
    }

    let mut identities = Vec::with_capacity(args.agents);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(identity) => identities.push(identity),
            Err(error) => {
                report.attest_failed += 1;
                tracing::warn!(error = %format!("{error:#}"), "attestation failed");
            }
        }
    }
    report.attest_secs = started.elapsed().as_secs_f64();
    report.attest_per_sec = identities.len() as f64 / report.attest_secs;

    // Agent indices are dense again, so handles can be looked up by index.
    identities.sort_by_key(|identity| identity.index);
    for (position, identity) in identities.iter_mut().enumerate() {
        identity.index = position;
    }
    tracing::info!(
        attested = identities.len(),
        failed = report.attest_failed,
        per_sec = report.attest_per_sec,
        "agents attested"
    );
    Ok(identities)
}

/// Creates `count` join tokens, token `index` on replica `index % replicas`, with up to 16
/// requests at once.
async fn create_tokens(count: usize, admins: &[Admin]) -> anyhow::Result<Vec<String>> {
    let permits = Arc::new(Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let mut admin = admins[index % admins.len()].clone();
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            Ok::<_, anyhow::Error>((index, admin.join_token().await?))
        });
    }
    let mut tokens = vec![String::new(); count];
    while let Some(joined) = tasks.join_next().await {
        let (index, token) = joined??;
        tokens[index] = token;
    }
    Ok(tokens)
}

async fn create_fleet_entries(
    admin: &mut Admin,
    identities: &[fleet::Identity],
    per_agent: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut entries = Vec::with_capacity(identities.len() * per_agent);
    for identity in identities {
        for number in 0..per_agent {
            let uid = 1000 + u64::try_from(number)?;
            let path = format!("load/a{}/w{number}", identity.index);
            entries.push(workload_entry(&path, &identity.spiffe_id, uid));
        }
    }
    let count = entries.len();
    let started = Instant::now();
    admin.create_entries(entries).await?;
    report.entries = count;
    report.entry_create_secs = started.elapsed().as_secs_f64();
    report.entries_per_sec = count as f64 / report.entry_create_secs.max(1e-9);
    tracing::info!(
        entries = count,
        per_sec = report.entries_per_sec,
        "entries created"
    );
    Ok(())
}

/// Has every agent prepare one CSR per entry, then times the signing of all of them.
async fn sign_fleet(
    live: &[AgentHandle],
    events: &mut mpsc::UnboundedReceiver<Event>,
    stats: &FleetStats,
    report: &mut Report,
) -> anyhow::Result<()> {
    stats.set_phase(Phase::Signing);
    for handle in live {
        handle.commands.send(Command::PrepareCsrs).await?;
    }
    for _ in 0..live.len() {
        match events
            .recv()
            .await
            .context("the simulated agents stopped")?
        {
            Event::CsrsReady => {}
            other => tracing::warn!(event = ?other, "unexpected event while preparing CSRs"),
        }
    }
    let started = Instant::now();
    for handle in live {
        handle.commands.send(Command::Sign).await?;
    }
    for _ in 0..live.len() {
        match events
            .recv()
            .await
            .context("the simulated agents stopped")?
        {
            Event::Signed { signed, failed } => {
                report.svids_signed += signed;
                report.svids_failed += failed;
            }
            other => tracing::warn!(event = ?other, "unexpected event while signing"),
        }
    }
    report.signing_secs = started.elapsed().as_secs_f64();
    report.svids_per_sec = report.svids_signed as f64 / report.signing_secs.max(1e-9);
    tracing::info!(
        signed = report.svids_signed,
        per_sec = report.svids_per_sec,
        "SVIDs signed"
    );
    Ok(())
}

/// Counters of the servers and the database at one moment.
struct Counters {
    at: Instant,
    cpu: Vec<Duration>,
    log_positions: Vec<u64>,
    pg_xacts: Option<i64>,
}

impl Counters {
    async fn read(
        servers: &[ServerProcess],
        database: Option<&PgDatabase>,
    ) -> anyhow::Result<Self> {
        let pg_xacts = match database {
            Some(database) => Some(database.transactions().await?),
            None => None,
        };
        Ok(Self {
            at: Instant::now(),
            cpu: servers
                .iter()
                .map(ServerProcess::cpu_time)
                .collect::<anyhow::Result<_>>()?,
            log_positions: servers
                .iter()
                .map(ServerProcess::log_position)
                .collect::<anyhow::Result<_>>()?,
            pg_xacts,
        })
    }

    fn cpu_secs_since(&self, earlier: &Self) -> Vec<f64> {
        self.cpu
            .iter()
            .zip(&earlier.cpu)
            .map(|(now, then)| now.saturating_sub(*then).as_secs_f64())
            .collect()
    }

    fn statements_since(
        &self,
        earlier: &Self,
        servers: &[ServerProcess],
    ) -> anyhow::Result<Vec<u64>> {
        servers
            .iter()
            .zip(self.log_positions.iter().zip(&earlier.log_positions))
            .map(|(server, (to, from))| server.statements_between(*from, *to))
            .collect()
    }
}

async fn steady_state(
    args: &Args,
    servers: &[ServerProcess],
    database: Option<&PgDatabase>,
    stats: &FleetStats,
) -> anyhow::Result<Steady> {
    stats.set_phase(Phase::Steady);
    wait_quiet(stats).await;
    // Idle PostgreSQL backends report their transaction counts with a delay, and in test runs
    // the signing phase's transactions still arrived several seconds after it ended, so the
    // window opens only after they settled.
    let settle = if database.is_some() {
        PG_STATS_SETTLE
    } else {
        Duration::from_secs(2)
    };
    tokio::time::sleep(settle).await;

    let before = Counters::read(servers, database).await?;
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let after = Counters::read(servers, database).await?;

    let window = after.at.duration_since(before.at).as_secs_f64();
    let steady = Steady {
        window_secs: window,
        server_cpu_percent: after
            .cpu_secs_since(&before)
            .into_iter()
            .map(|secs| 100.0 * secs / window)
            .collect(),
        statements_per_sec: after
            .statements_since(&before, servers)?
            .into_iter()
            .map(|count| count as f64 / window)
            .collect(),
        pg_xacts_per_sec: after
            .pg_xacts
            .zip(before.pg_xacts)
            .map(|(now, then)| (now - then) as f64 / window),
        agent_syncs: stats.syncs_in(Phase::Steady),
        statements_by_summary: servers
            .iter()
            .zip(after.log_positions.iter().zip(&before.log_positions))
            .map(|(server, (to, from))| server.statement_summaries_between(*from, *to))
            .collect::<anyhow::Result<_>>()?,
    };
    tracing::info!(
        window_secs = steady.window_secs,
        agent_syncs = steady.agent_syncs,
        "steady state measured"
    );
    Ok(steady)
}

async fn propagation(
    args: &Args,
    servers: &[ServerProcess],
    admins: &mut [Admin],
    live: &[AgentHandle],
    stats: &FleetStats,
) -> anyhow::Result<Propagation> {
    let mut result = Propagation {
        trials: args.trials,
        ..Propagation::default()
    };
    if live.is_empty() || args.trials == 0 {
        return Ok(result);
    }
    stats.set_phase(Phase::Trials);
    wait_quiet(stats).await;
    let timeout = Duration::from_secs(args.trial_timeout_secs);
    let before = Counters::read(servers, None).await?;

    let mut rng = rand::rng();
    let (mut create, mut delete, mut same, mut other) = (vec![], vec![], vec![], vec![]);
    for trial in 0..args.trials {
        let agent = &live[rng.random_range(0..live.len())];
        // Odd trials go through another replica than the agent's, when there is one.
        let via_other = servers.len() > 1 && trial % 2 == 1;
        let replica = if via_other {
            (agent.replica + 1) % servers.len()
        } else {
            agent.replica
        };
        let outcome = run_trial(trial, agent, &mut admins[replica], stats, timeout).await?;
        if via_other {
            result.via_other_replica += 1;
        }
        if let Some(ms) = outcome.create_ms {
            create.push(ms);
            if via_other {
                other.push(ms);
            } else {
                same.push(ms);
            }
        }
        delete.extend(outcome.delete_ms);
    }

    let after = Counters::read(servers, None).await?;
    let changes = (2 * args.trials) as f64;
    result.created_propagated = create.len();
    result.deleted_propagated = delete.len();
    result.create = Percentiles::of(create);
    result.delete = Percentiles::of(delete);
    result.create_same_replica = Percentiles::of(same);
    result.create_other_replica = Percentiles::of(other);
    result.sync_rpc = Percentiles::of(stats.sync_latencies_ms(Phase::Trials));
    result.syncs_per_change = stats.syncs_in(Phase::Trials) as f64 / changes;
    result.server_cpu_secs = after.cpu_secs_since(&before);
    result.statements_per_change = after
        .statements_since(&before, servers)?
        .into_iter()
        .map(|count| count as f64 / changes)
        .collect();
    tracing::info!(
        created = result.created_propagated,
        deleted = result.deleted_propagated,
        "propagation trials done"
    );
    Ok(result)
}

/// The propagation times of one trial in milliseconds; `None` when the change did not reach
/// the agent within the time limit.
struct TrialOutcome {
    create_ms: Option<f64>,
    delete_ms: Option<f64>,
}

/// Creates an entry for `agent` through `admin`, waits until the agent's copy contains it,
/// then deletes it and waits until the copy no longer does.
async fn run_trial(
    trial: usize,
    agent: &AgentHandle,
    admin: &mut Admin,
    stats: &FleetStats,
    timeout: Duration,
) -> anyhow::Result<TrialOutcome> {
    let uid = 60_000 + u64::try_from(trial)?;
    let entry = workload_entry(&format!("trial/t{trial}"), &agent.spiffe_id, uid);
    let started = Instant::now();
    let id = admin.create_entry(entry).await?;
    let create_ms = if wait_for(agent, timeout, |handle| handle.holds(&id)).await {
        Some(started.elapsed().as_secs_f64() * 1000.0)
    } else {
        tracing::warn!(trial, agent = agent.index, entry_id = %id, "the created entry did not reach the agent");
        None
    };
    wait_quiet(stats).await;

    let started = Instant::now();
    admin.delete_entry(&id).await?;
    let delete_ms = if wait_for(agent, timeout, |handle| !handle.holds(&id)).await {
        Some(started.elapsed().as_secs_f64() * 1000.0)
    } else {
        tracing::warn!(trial, agent = agent.index, entry_id = %id, "the deleted entry stayed with the agent");
        None
    };
    wait_quiet(stats).await;
    Ok(TrialOutcome {
        create_ms,
        delete_ms,
    })
}

/// Waits until `check` holds for the agent's copy, re-checking after every applied Sync.
async fn wait_for(
    agent: &AgentHandle,
    timeout: Duration,
    check: impl Fn(&AgentHandle) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut applied = agent.applied.clone();
    loop {
        applied.borrow_and_update();
        if check(agent) {
            return true;
        }
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            // Timed out, or the agent task ended.
            Err(_) | Ok(Err(_)) => return check(agent),
        }
    }
}

/// Waits until no Sync has run for [`QUIET`], or [`QUIET_TIMEOUT`].
async fn wait_quiet(stats: &FleetStats) {
    let deadline = Instant::now() + QUIET_TIMEOUT;
    let mut quiet_since = None;
    let mut last_count = total_syncs(stats);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = total_syncs(stats);
        let idle = stats.syncs_in_flight.load(Ordering::SeqCst) == 0 && count == last_count;
        last_count = count;
        match (idle, quiet_since) {
            (false, _) => quiet_since = None,
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() >= QUIET => return,
            (true, Some(_)) => {}
        }
    }
    tracing::warn!("the simulated agents kept syncing past the quiet timeout");
}

fn total_syncs(stats: &FleetStats) -> u64 {
    stats
        .syncs
        .iter()
        .map(|count| count.load(Ordering::SeqCst))
        .sum()
}
