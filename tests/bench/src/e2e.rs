//! End to end over gRPC with the three server binaries as child processes on 127.0.0.1:
//! `annals-command-api`, `annals-projections` (embedded mode: the store's LISTEN wake-ups) and
//! `annals-query-api`, driven by tonic clients.
//!
//! Phases, in order, all in one fresh database:
//! 1. `CreateTask` at fixed concurrency levels (closed loop): command rate and latency.
//! 2. Projections catch up (bounded wait).
//! 3. Query latency: `GetTask` of stored tasks and `ListTasks` (first page of 50) at
//!    concurrency 8.
//! 4. Append-to-visible lag (open loop at a fixed rate), at [`FIXED_LAG_RATE`] (the issue's
//!    figure for half load, a rate this machine carries) and at half the best command rate: the
//!    time from a command's reply to the first `GetTask` with that reply's position as
//!    `min_position` that answers (the query API waits server-side, bounded; the client retries
//!    `UNAVAILABLE` until its own bound).
//! 5. Peak RSS (VmHWM) of each server process after phases 1–4.
//! 6. Audit export: 1,000,000 audit rows (quick profile) are inserted set-based into a tenant of
//!    their own, then read through `ExportAuditTrail`; the query API's resident memory is
//!    sampled while it streams, and the growth over its RSS before the export is reported.
//!
//! A phase that fails is named in [`E2eResult::not_done`]; the phases before it keep their
//! numbers. With [`Sizes::queries_only`] (suite `queries`) the run ends after phase 3 (and
//! the peak RSS of phase 5).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use schemas::v1 as pb;
use schemas::v1::audit_queries_client::AuditQueriesClient;
use schemas::v1::task_commands_client::TaskCommandsClient;
use schemas::v1::task_queries_client::TaskQueriesClient;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::db;
use crate::load::{self, Plan};
use crate::stats::{Latencies, Measurement};

/// The tenant of the load; the export rows live in [`EXPORT_TENANT`].
const TENANT: &str = "bench";
/// Tenant of the seeded audit rows, so that the export reads exactly those.
const EXPORT_TENANT: &str = "bench-export";
/// Longest a client waits for one write to become visible (or projections to catch up).
const VISIBLE_BOUND: Duration = Duration::from_secs(120);
/// Most commands in flight during the open-loop lag phase (a backlog beyond this is a result
/// in itself: the achieved rate falls below the target).
const LAG_MAX_IN_FLIGHT: usize = 512;

/// The fixed rate of the first lag row, commands/s: issue 13's figure for "half load". Half
/// the best closed-loop rate (the second row) overloads a 2-core machine that also runs the
/// three servers, Postgres and the client, so its lag is mostly queueing; at this rate the
/// lag shows the wake-up chain itself.
pub const FIXED_LAG_RATE: f64 = 312.0;

/// How long commands run at full speed while the projection lag is watched.
pub const SUSTAINED: Duration = Duration::from_secs(60);

/// Whether projections keep up with commands at full speed.
#[derive(Debug, Clone, Serialize)]
pub struct Sustained {
    /// Command rate achieved (closed loop, concurrency 64).
    pub commands_per_sec: f64,
    /// Task events not yet applied by the tasks projection 10 s into the run.
    pub lag_early: u64,
    /// The same at the end of the run.
    pub lag_late: u64,
}

/// One measured concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRun {
    /// Concurrent clients.
    pub concurrency: usize,
    /// `CreateTask` rate and latency.
    pub measurement: Measurement,
}

/// Append-to-visible lag at a fixed command rate.
#[derive(Debug, Clone, Serialize)]
pub struct LagRun {
    /// Commands per second asked for ([`FIXED_LAG_RATE`] or half the best closed-loop rate).
    pub target_rate: f64,
    /// The commands as sent: achieved rate and command latency.
    pub commands: Measurement,
    /// Reply of the command -> `GetTask` with its `min_position` answered.
    pub visible: Measurement,
}

/// One query RPC under load.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRun {
    /// The RPC's name exactly (`GetTask`, `ListTasks`): what the targets look rows up by.
    pub rpc: String,
    /// What the requests asked for, e.g. `one of 5000 tasks` (shown beside the name).
    pub shape: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Rate and latency.
    pub measurement: Measurement,
}

/// Peak resident memory of one server process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRss {
    /// Binary name.
    pub process: String,
    /// VmHWM after the load, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The streamed audit export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRun {
    /// Rows received (all rows of the tenant).
    pub rows: u64,
    /// Seconds from the request to the last row.
    pub seconds: f64,
    /// `rows / seconds`.
    pub rows_per_sec: f64,
    /// Query API resident memory just before the export, MiB.
    pub rss_before_mib: f64,
    /// Highest resident memory sampled (every 20 ms) while it streamed, MiB.
    pub rss_peak_mib: f64,
    /// `rss_peak_mib - rss_before_mib`.
    pub growth_mib: f64,
}

/// Results of the end-to-end suite.
#[derive(Debug, Clone, Serialize)]
pub struct E2eResult {
    /// Command runs per concurrency.
    pub commands: Vec<CommandRun>,
    /// Connections in the command API's pool.
    pub server_pool_size: u32,
    /// Query latencies.
    pub queries: Vec<QueryRun>,
    /// Append-to-visible lag at [`FIXED_LAG_RATE`].
    pub lag_fixed: Option<LagRun>,
    /// Append-to-visible lag at half the best command rate.
    pub lag: Option<LagRun>,
    /// The lag at [`FIXED_LAG_RATE`] with Kafka as the projections' source (a second stack,
    /// see [`kafka_lag`]).
    pub kafka_lag_fixed: Option<LagRun>,
    /// The same lag with Kafka as the projections' source, at half the best command rate.
    pub kafka_lag: Option<LagRun>,
    /// Commands at full speed for [`SUSTAINED`] while the tasks projection's lag is sampled.
    pub sustained: Option<Sustained>,
    /// Peak RSS of each server process after the command, query and lag phases.
    pub peak_rss: Vec<ProcessRss>,
    /// The audit export.
    pub export: Option<ExportRun>,
    /// Phases that failed, with the reason.
    pub not_done: Vec<String>,
}

/// Operation counts of the suite.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// `(concurrency, commands)` per closed-loop level.
    pub levels: Vec<(usize, u64)>,
    /// Operations per query RPC.
    pub query_ops: u64,
    /// Commands in each lag phase.
    pub lag_ops: u64,
    /// Only the lag phases (no closed-loop, query, sustained or export phases): for measuring
    /// the wake-up chain without the rest of the suite.
    pub lag_only: bool,
    /// Rate of the second lag row instead of half the best closed-loop rate (needed with
    /// `lag_only`, which measures no closed-loop rate; that row is skipped without it).
    pub half_rate: Option<f64>,
    /// Audit rows to export.
    pub export_rows: u64,
    /// Stop after the query phase (suite `queries`): the command levels only seed the tasks
    /// the queries read; no lag, sustained-load or export phase.
    pub queries_only: bool,
}

/// The server binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `annals-command-api`.
    pub command_api: PathBuf,
    /// `annals-projections`.
    pub projections: PathBuf,
    /// `annals-query-api`.
    pub query_api: PathBuf,
    /// `annals-relay`, for the Kafka lag phase (skipped without it).
    pub relay: Option<PathBuf>,
}

impl Binaries {
    /// The three binaries in `dir`; an error names the first one missing.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let find = |name: &str| {
            let path = dir.join(name);
            anyhow::ensure!(
                path.exists(),
                "no {} (build it in release, or pass --bin-dir)",
                path.display()
            );
            Ok(path)
        };
        Ok(Self {
            command_api: find("annals-command-api")?,
            projections: find("annals-projections")?,
            query_api: find("annals-query-api")?,
            relay: find("annals-relay").ok(),
        })
    }

    /// The directory of this executable (where cargo puts the other binaries).
    pub fn default_dir() -> Option<PathBuf> {
        Some(std::env::current_exe().ok()?.parent()?.to_path_buf())
    }
}

/// A running child process; killed (and reaped) on drop.
pub struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Creates a token with the command API binary's own `token create`.
fn create_token(bin: &Path, url: &str, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(["token", "create", "--tenant", tenant, "--actor", "bench"])
        .args(["--role", role, "--description", "benchmark"])
        .env("DATABASE_URL", url)
        // The bench connects as the tables' owner; the append functions run with the owner's
        // rights whoever calls them, so a service login would measure the same path.
        .env("ANNALS_ALLOW_OWNER", "true")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "token create printed nothing");
    Ok(token)
}

/// Starts `bin args…` and waits (at most 30 s) until `addr` accepts connections.
async fn spawn(
    name: &'static str,
    bin: &Path,
    args: &[String],
    url: &str,
    addr: SocketAddr,
) -> anyhow::Result<Server> {
    let child = Command::new(bin)
        .args(args)
        .env("DATABASE_URL", url)
        // The bench connects as the tables' owner; the append functions run with the owner's
        // rights whoever calls them, so a service login would measure the same path.
        .env("ANNALS_ALLOW_OWNER", "true")
        .env("RUST_LOG", "warn")
        .env_remove("KAFKA_BOOTSTRAP")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Server { name, child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!("{name} exited with {status}");
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} did not listen in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// `annals-command-api serve` on free loopback ports, with `extra` flags.
async fn command_api(bins: &Binaries, url: &str, extra: &[String]) -> anyhow::Result<Server> {
    let (addr, metrics) = (free_addr()?, free_addr()?);
    let mut args = vec![
        "serve".into(),
        "--listen".into(),
        addr.to_string(),
        "--metrics-listen".into(),
        metrics.to_string(),
    ];
    args.extend_from_slice(extra);
    spawn("annals-command-api", &bins.command_api, &args, url, addr).await
}

/// `annals-projections run` with `extra` flags; ready once its metrics port answers.
async fn projections_worker(
    bins: &Binaries,
    url: &str,
    extra: &[String],
) -> anyhow::Result<Server> {
    let metrics = free_addr()?;
    let mut args = vec!["run".into(), "--metrics-addr".into(), metrics.to_string()];
    args.extend_from_slice(extra);
    spawn("annals-projections", &bins.projections, &args, url, metrics).await
}

/// `annals-query-api serve` on free loopback ports.
async fn query_api(bins: &Binaries, url: &str) -> anyhow::Result<Server> {
    let (addr, metrics) = (free_addr()?, free_addr()?);
    let args = [
        "serve".into(),
        "--listen".into(),
        addr.to_string(),
        "--metrics-listen".into(),
        metrics.to_string(),
    ];
    spawn("annals-query-api", &bins.query_api, &args, url, addr).await
}

/// A `/proc/<pid>/status` field in MiB (Linux), e.g. `VmHWM` (peak) or `VmRSS` (current).
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident set size (VmHWM) of a process, in MiB (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
}

/// Current resident set size (VmRSS) of a process, in MiB (Linux).
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS")
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

fn create_task(op: u64) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        envelope: Some(pb::CommandEnvelope {
            command_id: Uuid::now_v7().to_string(),
            ..Default::default()
        }),
        task_id: Uuid::now_v7().to_string(),
        title: format!("Write the quarterly report #{op}"),
        description: Some("Collect the numbers, draft the prose, circulate".into()),
        priority: pb::TaskPriority::High as i32,
        tags: vec!["finance".into(), "q3".into()],
        ..Default::default()
    }
}

/// Several HTTP/2 connections, as several client processes would open.
async fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Arc<Vec<Channel>>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(Arc::new(channels))
}

/// The three processes and what the phases share.
struct Stack {
    command: Server,
    projections: Server,
    query: Server,
    service_token: Arc<String>,
    auditor_token: String,
    pool: PgPool,
}

/// Runs the phases; an error here means the stack could not be set up at all.
pub async fn run(
    bins: &Binaries,
    options: &PgConnectOptions,
    sizes: &Sizes,
) -> anyhow::Result<E2eResult> {
    let url = db::url(options);
    // `token create` applies the migrations first, so the servers start on a migrated database.
    let service_token = Arc::new(create_token(&bins.command_api, &url, TENANT, "service")?);
    let auditor_token = create_token(&bins.command_api, &url, EXPORT_TENANT, "auditor")?;
    let pool_size = 32;
    let command = command_api(bins, &url, &["--pool-size".into(), pool_size.to_string()]).await?;
    let projections = projections_worker(bins, &url, &[]).await?;
    let query = query_api(bins, &url).await?;
    let stack = Stack {
        command,
        projections,
        query,
        service_token,
        auditor_token,
        pool: db::pool(options, 4).await?,
    };

    let mut result = E2eResult {
        commands: Vec::new(),
        server_pool_size: pool_size,
        queries: Vec::new(),
        lag_fixed: None,
        lag: None,
        kafka_lag_fixed: None,
        kafka_lag: None,
        sustained: None,
        peak_rss: Vec::new(),
        export: None,
        not_done: Vec::new(),
    };
    let levels: &[(usize, u64)] = if sizes.lag_only { &[] } else { &sizes.levels };
    for &(concurrency, ops) in levels {
        eprintln!("   CreateTask at concurrency {concurrency}: {ops} commands");
        match commands(&stack, concurrency, ops).await {
            Ok(measurement) => result.commands.push(CommandRun {
                concurrency,
                measurement,
            }),
            Err(e) => result
                .not_done
                .push(format!("CreateTask at concurrency {concurrency}: {e:#}")),
        }
    }
    let caught_up = caught_up(&stack).await;
    if let Err(e) = &caught_up {
        result
            .not_done
            .push(format!("projections did not catch up: {e:#}"));
    }
    if caught_up.is_ok() && !sizes.lag_only {
        eprintln!(
            "   queries: GetTask and ListTasks, {} each",
            sizes.query_ops
        );
        match queries(&stack, sizes.query_ops).await {
            Ok(q) => result.queries = q,
            Err(e) => result.not_done.push(format!("query latency: {e:#}")),
        }
    }
    if sizes.queries_only {
        result.peak_rss = peak_rss(&stack);
        stack.pool.close().await;
        return Ok(result);
    }
    let best = result
        .commands
        .iter()
        .map(|c| c.measurement.ops_per_sec)
        .fold(0.0, f64::max);
    eprintln!(
        "   append-to-visible lag: {} commands at {FIXED_LAG_RATE:.0}/s",
        sizes.lag_ops
    );
    match lag(&stack, FIXED_LAG_RATE, sizes.lag_ops).await {
        Ok(l) => result.lag_fixed = Some(l),
        Err(e) => result.not_done.push(format!(
            "append-to-visible lag at {FIXED_LAG_RATE:.0}/s: {e:#}"
        )),
    }
    if let Some(rate) = sizes.half_rate.or((best > 0.0).then_some(best / 2.0)) {
        eprintln!(
            "   append-to-visible lag: {} commands at {rate:.0}/s",
            sizes.lag_ops
        );
        match lag(&stack, rate, sizes.lag_ops).await {
            Ok(l) => result.lag = Some(l),
            Err(e) => result
                .not_done
                .push(format!("append-to-visible lag at half load: {e:#}")),
        }
    }
    if sizes.lag_only {
        result.peak_rss = peak_rss(&stack);
        stack.pool.close().await;
        return Ok(result);
    }
    eprintln!(
        "   sustained: CreateTask at concurrency 64 for {} s, projection lag sampled",
        SUSTAINED.as_secs()
    );
    match sustained(&stack).await {
        Ok(s) => result.sustained = Some(s),
        Err(e) => result.not_done.push(format!("sustained load: {e:#}")),
    }
    result.peak_rss = peak_rss(&stack);
    eprintln!("   audit export of {} rows", sizes.export_rows);
    match export(&stack, sizes.export_rows).await {
        Ok(x) => result.export = Some(x),
        Err(e) => result.not_done.push(format!("audit export: {e:#}")),
    }
    stack.pool.close().await;
    Ok(result)
}

/// Peak RSS of each server process of `stack` so far.
fn peak_rss(stack: &Stack) -> Vec<ProcessRss> {
    [&stack.command, &stack.projections, &stack.query]
        .into_iter()
        .map(|s| ProcessRss {
            process: s.name.into(),
            peak_rss_mib: peak_rss_mib(s.pid()),
        })
        .collect()
}

/// Closed-loop `CreateTask` at one concurrency.
async fn commands(stack: &Stack, concurrency: usize, ops: u64) -> anyhow::Result<Measurement> {
    let channels = channels(stack.command.addr, concurrency.clamp(1, 8)).await?;
    let token = Arc::clone(&stack.service_token);
    let plan = Plan {
        concurrency,
        warmup: (ops / 10).max(50),
        ops,
        events_per_op: 1,
    };
    load::run(plan, move |i| {
        let channel = channels[(i as usize) % channels.len()].clone();
        let req = authorized(create_task(i), &token);
        async move {
            TaskCommandsClient::new(channel).create_task(req?).await?;
            Ok(())
        }
    })
    .await
}

/// Append-to-visible lag with Kafka as the source: a second stack in the fresh database
/// `options` (command API, `annals-relay`, `annals-projections --kafka-bootstrap`, query API;
/// topics and consumer groups under a prefix of their own), `warmup` untimed commands (topic
/// creation and the consumer groups' first assignment), then for each of `rates` `ops`
/// commands at that rate per second, each followed by `GetTask` at its reply's position as in
/// [`E2eResult::lag`]. One result per rate, in order; the outer error is a stack that could
/// not be set up.
pub async fn kafka_lag(
    bins: &Binaries,
    options: &PgConnectOptions,
    bootstrap: &str,
    rates: &[f64],
    warmup: u64,
    ops: u64,
) -> anyhow::Result<Vec<anyhow::Result<LagRun>>> {
    let relay_bin = bins
        .relay
        .as_ref()
        .context("no annals-relay binary (build it in release, or pass --bin-dir)")?;
    let url = db::url(options);
    let service_token = Arc::new(create_token(&bins.command_api, &url, TENANT, "service")?);
    let prefix = format!("annals-bench-{}.", Uuid::now_v7().simple());
    let command = command_api(bins, &url, &[]).await?;
    let relay_metrics = free_addr()?;
    let relay = spawn(
        "annals-relay",
        relay_bin,
        &[
            "--kafka-bootstrap".into(),
            bootstrap.into(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--metrics-addr".into(),
            relay_metrics.to_string(),
        ],
        &url,
        relay_metrics,
    )
    .await?;
    let projections = projections_worker(
        bins,
        &url,
        &[
            "--kafka-bootstrap".into(),
            bootstrap.into(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--group-prefix".into(),
            format!("{prefix}projections."),
        ],
    )
    .await?;
    let query = query_api(bins, &url).await?;
    let stack = Stack {
        command,
        projections,
        query,
        service_token,
        auditor_token: String::new(),
        pool: db::pool(options, 2).await?,
    };
    let command_client = TaskCommandsClient::new(channels(stack.command.addr, 1).await?[0].clone());
    let query_client = TaskQueriesClient::new(channels(stack.query.addr, 1).await?[0].clone());
    for i in 0..warmup {
        write_then_read(
            command_client.clone(),
            query_client.clone(),
            &stack.service_token,
            3_000_000_000 + i,
        )
        .await
        .context("warm-up command")?;
    }
    let mut runs = Vec::with_capacity(rates.len());
    for &rate in rates {
        runs.push(
            lag(&stack, rate, ops)
                .await
                .with_context(|| format!("at {rate:.0}/s")),
        );
    }
    stack.pool.close().await;
    drop(relay);
    Ok(runs)
}

/// `CreateTask` closed loop at concurrency 64 for [`SUSTAINED`]; the tasks projection's backlog
/// (task events above its checkpoint) is sampled after 10 s and at the end.
async fn sustained(stack: &Stack) -> anyhow::Result<Sustained> {
    const BACKLOG: &str = "SELECT count(*) FROM events WHERE stream_type = 'task' \
         AND global_position > coalesce((SELECT position FROM subscription_checkpoints \
                                          WHERE name = 'projection:tasks'), 0)";
    let concurrency = 64;
    let channels = channels(stack.command.addr, 8).await?;
    let started = Instant::now();
    let deadline = started + SUSTAINED;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let channel = channels[w % channels.len()].clone();
        let token = Arc::clone(&stack.service_token);
        let stop = Arc::clone(&stop);
        workers.spawn(async move {
            let mut done = 0u64;
            // Ops of this phase are numbered far above the earlier phases' (ids stay unique).
            let mut i = 1_000_000_000 + w as u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let req = authorized(create_task(i), &token)?;
                TaskCommandsClient::new(channel.clone())
                    .create_task(req)
                    .await?;
                done += 1;
                i += concurrency as u64;
            }
            anyhow::Ok(done)
        });
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let early: i64 = sqlx::query_scalar(BACKLOG).fetch_one(&stack.pool).await?;
    tokio::time::sleep_until(deadline.into()).await;
    let late: i64 = sqlx::query_scalar(BACKLOG).fetch_one(&stack.pool).await?;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    while let Some(r) = workers.join_next().await {
        total += r.context("sustained worker panicked")??;
    }
    Ok(Sustained {
        commands_per_sec: total as f64 / started.elapsed().as_secs_f64(),
        lag_early: u64::try_from(early).unwrap_or(0),
        lag_late: u64::try_from(late).unwrap_or(0),
    })
}

/// Waits (bounded) until the tasks projection reflects every stored event.
async fn caught_up(stack: &Stack) -> anyhow::Result<()> {
    let last: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&stack.pool)
        .await?;
    let mut client = TaskQueriesClient::new(channels(stack.query.addr, 1).await?[0].clone());
    let deadline = Instant::now() + VISIBLE_BOUND;
    loop {
        let req = authorized(
            pb::ListTasksRequest {
                min_position: last.unwrap_or(0),
                page_size: 1,
                ..Default::default()
            },
            &stack.service_token,
        )?;
        match client.list_tasks(req).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {}
            Err(s) => return Err(s.into()),
        }
    }
}

/// `GetTask` over stored tasks and `ListTasks` first pages, at concurrency 8.
async fn queries(stack: &Stack, ops: u64) -> anyhow::Result<Vec<QueryRun>> {
    let concurrency = 8;
    let ids: Arc<Vec<String>> = Arc::new(
        sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE stream_type = 'task' ORDER BY stream_id LIMIT 5000",
        )
        .fetch_all(&stack.pool)
        .await?,
    );
    anyhow::ensure!(!ids.is_empty(), "no tasks stored");
    let channels = channels(stack.query.addr, concurrency).await?;
    let plan = Plan {
        concurrency,
        warmup: (ops / 10).max(50),
        ops,
        events_per_op: 1,
    };
    let (c, t, ids2) = (
        Arc::clone(&channels),
        Arc::clone(&stack.service_token),
        Arc::clone(&ids),
    );
    let get = load::run(plan, move |i| {
        let channel = c[(i as usize) % c.len()].clone();
        let req = authorized(
            pb::GetTaskRequest {
                min_position: 0,
                task_id: ids2[(i as usize) % ids2.len()].clone(),
            },
            &t,
        );
        async move {
            TaskQueriesClient::new(channel).get_task(req?).await?;
            Ok(())
        }
    })
    .await
    .context("GetTask")?;
    let (c, t) = (Arc::clone(&channels), Arc::clone(&stack.service_token));
    let list = load::run(plan, move |i| {
        let channel = c[(i as usize) % c.len()].clone();
        let req = authorized(
            pb::ListTasksRequest {
                page_size: 50,
                ..Default::default()
            },
            &t,
        );
        async move {
            let page = TaskQueriesClient::new(channel).list_tasks(req?).await?;
            anyhow::ensure!(
                !page.get_ref().tasks.is_empty(),
                "ListTasks returned no rows"
            );
            Ok(())
        }
    })
    .await
    .context("ListTasks")?;
    Ok(vec![
        QueryRun {
            rpc: "GetTask".into(),
            shape: format!("one of {} tasks", ids.len()),
            concurrency,
            measurement: get,
        },
        QueryRun {
            rpc: "ListTasks".into(),
            shape: "first page of 50".into(),
            concurrency,
            measurement: list,
        },
    ])
}

/// Open loop at `rate` commands/s: each command is followed by a `GetTask` at its position.
async fn lag(stack: &Stack, rate: f64, ops: u64) -> anyhow::Result<LagRun> {
    let command_channels = channels(stack.command.addr, 8).await?;
    let query_channels = channels(stack.query.addr, 8).await?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Ticks missed while the runtime was busy are sent at once: the average rate holds.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(Semaphore::new(LAG_MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut command_lat = Latencies::new();
    let mut visible_lat = Latencies::new();
    let mut record = |r: Result<anyhow::Result<(Duration, Duration)>, tokio::task::JoinError>| {
        let (c, v) = r.context("lag worker panicked")??;
        command_lat.record(c);
        visible_lat.record(v);
        anyhow::Ok(())
    };
    let started = Instant::now();
    for i in 0..ops {
        ticker.tick().await;
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let n = i as usize;
        let command = TaskCommandsClient::new(command_channels[n % 8].clone());
        let query = TaskQueriesClient::new(query_channels[n % 8].clone());
        let token = Arc::clone(&stack.service_token);
        tasks.spawn(async move {
            let _permit = permit;
            write_then_read(command, query, &token, i).await
        });
        while let Some(r) = tasks.try_join_next() {
            record(r)?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        record(r)?;
    }
    let elapsed = started.elapsed();
    Ok(LagRun {
        target_rate: rate,
        commands: Measurement::new(ops, ops, elapsed, Some(&command_lat)),
        visible: Measurement::new(ops, ops, elapsed, Some(&visible_lat)),
    })
}

/// One command, then reads until the read model shows it: (command latency, lag).
async fn write_then_read(
    mut command: TaskCommandsClient<Channel>,
    mut query: TaskQueriesClient<Channel>,
    token: &str,
    op: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let sent = Instant::now();
    let reply = command
        .create_task(authorized(create_task(op), token)?)
        .await?
        .into_inner();
    let accepted = Instant::now();
    let deadline = accepted + VISIBLE_BOUND;
    loop {
        let req = authorized(
            pb::GetTaskRequest {
                min_position: reply.global_position,
                task_id: reply.stream_id.clone(),
            },
            token,
        )?;
        match query.get_task(req).await {
            Ok(_) => return Ok((accepted - sent, accepted.elapsed())),
            // The query API waited its own bound; ask again until ours.
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {}
            Err(s) => return Err(s.into()),
        }
    }
}

/// Seeds `rows` audit rows set-based, then streams them through `ExportAuditTrail` while
/// sampling the query API's resident memory.
async fn export(stack: &Stack, rows: u64) -> anyhow::Result<ExportRun> {
    // Positions 1..=rows lie below every real event (positions are xid * 65536 and xids of a
    // cluster start in the hundreds), and the export ends at the audit projection's position,
    // which the load has moved past them.
    let real_min: Option<i64> = sqlx::query_scalar("SELECT min(global_position) FROM events")
        .fetch_one(&stack.pool)
        .await?;
    let rows_i64 = i64::try_from(rows)?;
    anyhow::ensure!(
        real_min.is_some_and(|m| m > rows_i64),
        "no events stored above the seeded positions (lowest event position {real_min:?})"
    );
    sqlx::query(
        "INSERT INTO audit_log (global_position, event_id, tenant_id, action, actor, actor_type,
             resource_type, resource_id, resource_version, changes, command_id, correlation_id,
             client_ip, user_agent, occurred_at, event_hash, last_position)
         SELECT g, gen_random_uuid(), $1, 'task.updated', 'user-' || (g % 97), 'user', 'task',
             md5(g::text)::uuid::text, 1 + g % 7,
             jsonb_build_object('title', jsonb_build_object('before', 'Draft ' || g,
                                                            'after', 'Final ' || g)),
             gen_random_uuid(), gen_random_uuid(), '10.0.' || (g % 250) || '.7', 'bench/1.0',
             now() - make_interval(secs => g), md5(g::text) || md5((g + 1)::text), g
         FROM generate_series(1::bigint, $2) AS g",
    )
    .bind(EXPORT_TENANT)
    .bind(rows_i64)
    .execute(&stack.pool)
    .await
    .context("seeding audit rows")?;
    // Autovacuum analyzes a table that grew this much within a minute or so; the export starts
    // at once, and on the stale statistics of the empty table the planner sorts every remaining
    // row for each page. A real audit log grows gradually and is analyzed as it grows.
    sqlx::query("ANALYZE audit_log")
        .execute(&stack.pool)
        .await?;
    let pid = stack.query.pid();
    let rss_before_mib = rss_mib(pid).context("reading the query API's RSS")?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak.max(rss_mib(pid).unwrap_or(0.0))
        })
    };
    let mut client = AuditQueriesClient::new(channels(stack.query.addr, 1).await?[0].clone());
    let started = Instant::now();
    let streamed = async {
        let mut stream = client
            .export_audit_trail(authorized(
                pb::ExportAuditTrailRequest::default(),
                &stack.auditor_token,
            )?)
            .await?
            .into_inner();
        let (mut received, mut last) = (0_u64, 0_i64);
        while let Some(entry) = stream.message().await? {
            anyhow::ensure!(
                entry.global_position > last,
                "export out of order at {}",
                entry.global_position
            );
            last = entry.global_position;
            received += 1;
        }
        anyhow::Ok(received)
    }
    .await;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    done.store(true, Ordering::Relaxed);
    let rss_peak_mib = sampler.await.context("RSS sampler panicked")?;
    let received = streamed?;
    anyhow::ensure!(
        received == rows,
        "export returned {received} rows, {rows} stored"
    );
    Ok(ExportRun {
        rows: received,
        seconds,
        rows_per_sec: received as f64 / seconds,
        rss_before_mib,
        rss_peak_mib,
        growth_mib: (rss_peak_mib - rss_before_mib).max(0.0),
    })
}
