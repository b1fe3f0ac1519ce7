//! The `annals-bench` binary; see the library docs (`src/lib.rs`) for what it measures.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use event_store::EventStore;

use annals_bench::load::{self, Plan};
use annals_bench::report::{AppendRow, Machine, RawRepeat, Report};
use annals_bench::stats::{self, ratio};
use annals_bench::stores::{StoreKind, Target};
use annals_bench::{db, e2e, kafka, pgbench, rebuild, trust};

/// Benchmarks annals against raw Postgres floors and peer event stores, side by side.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Postgres server to run on (the role needs CREATEDB; databases `annals_bench_*` are
    /// dropped and recreated).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers for the relay suite (skipped when unset).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Directory of the server binaries `annals-command-api`, `annals-projections` and
    /// `annals-query-api` (default: the directory of this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run the full profile (4× the operations of the quick one).
    #[arg(long, conflicts_with = "quick")]
    full: bool,
    /// Run the quick profile (the default).
    #[arg(long)]
    quick: bool,
    /// Run a tiny profile (1/20 of quick) that only checks that every suite works.
    #[arg(long, conflicts_with_all = ["quick", "full"])]
    smoke: bool,
    /// Suites to run, comma-separated: append, pgbench, batch, rebuild, e2e, kafka, trust; and
    /// `queries`, the query phases of e2e alone (after `CreateTask` at 64 to seed the tasks
    /// read; not in the default list: e2e measures them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "append,pgbench,batch,rebuild,e2e,kafka,trust"
    )]
    suites: Vec<String>,
    /// Group transactions annals may have in flight at once (the store's
    /// `GroupCommitOptions::max_in_flight`; default: the store's default).
    #[arg(long)]
    group_in_flight: Option<usize>,
    /// In the e2e suite run only the append-to-visible lag phases (store and Kafka source).
    #[arg(long)]
    lag_only: bool,
    /// Rate of the e2e "half load" lag row, commands/s, instead of half the best measured
    /// `CreateTask` rate (with `--lag-only` that row is skipped without it).
    #[arg(long)]
    lag_half_rate: Option<f64>,
    /// Directory of results.json and results.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// Operation counts of a profile.
#[derive(Debug, Clone, Copy)]
struct Profile {
    name: &'static str,
    scale: f64,
}

impl Profile {
    fn scaled(self, base: u64) -> u64 {
        ((base as f64 * self.scale).round() as u64).max(10)
    }
    fn single_ops(self, concurrency: usize) -> u64 {
        self.scaled(match concurrency {
            1 => 1_500,
            8 => 6_000,
            _ => 12_000,
        })
    }
    fn batch_ops(self, concurrency: usize) -> u64 {
        self.scaled(if concurrency == 1 { 150 } else { 400 })
    }
    fn rebuild_events(self) -> u64 {
        self.scaled(100_000)
    }
    fn e2e_ops(self, concurrency: usize) -> u64 {
        self.scaled(if concurrency <= 8 { 4_000 } else { 8_000 })
    }
    fn query_ops(self) -> u64 {
        self.scaled(4_000)
    }
    fn lag_ops(self) -> u64 {
        self.scaled(4_000)
    }
    fn export_rows(self) -> u64 {
        self.scaled(1_000_000)
    }
    fn kafka_events(self) -> u64 {
        self.scaled(50_000)
    }
    /// 1,000,000 in the full profile.
    fn trust_events(self) -> u64 {
        self.scaled(250_000)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sqlx=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let profile = match (cli.full, cli.smoke) {
        (true, _) => Profile {
            name: "full",
            scale: 4.0,
        },
        (_, true) => Profile {
            name: "smoke",
            scale: 0.05,
        },
        _ => Profile {
            name: "quick",
            scale: 1.0,
        },
    };
    let wants = |s: &str| cli.suites.iter().any(|x| x == s);
    let server = db::Server::new(&cli.database_url, "annals_bench")?;
    let mut report = Report {
        profile: profile.name.into(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        git_commit: git_commit(),
        machine: machine(&server).await?,
        append: Vec::new(),
        raw_repeats: Vec::new(),
        rebuild: None,
        e2e: None,
        kafka: None,
        trust: None,
        pgbench: Vec::new(),
        not_done: Vec::new(),
        targets: Vec::new(),
        harness_peak_rss_mib: None,
    };
    let analyzer_stop = tokio_util::sync::CancellationToken::new();
    let analyzer = (!report.machine.autovacuum).then(|| {
        eprintln!("== autovacuum is off on this server: ANALYZE every 10 s stands in for it");
        let (server, stop) = (server.clone(), analyzer_stop.clone());
        tokio::spawn(async move {
            server
                .analyze_until(std::time::Duration::from_secs(10), stop)
                .await;
        })
    });

    for (workload, events, levels) in [
        ("single", 1usize, vec![1usize, 8, 64]),
        ("batch", 100, vec![1, 8]),
    ] {
        if !wants(if workload == "single" {
            "append"
        } else {
            "batch"
        }) {
            continue;
        }
        for &c in &levels {
            let ops = if events == 1 {
                profile.single_ops(c)
            } else {
                profile.batch_ops(c)
            };
            // The floor runs first and again last: the better of the two is the reference, so
            // a disturbed floor sample cannot flatter the others.
            let mut floor = None;
            let mut rows = Vec::new();
            let order = StoreKind::ALL.into_iter().chain([StoreKind::Raw]);
            for (n, kind) in order.enumerate() {
                eprintln!(
                    "== {workload} append, concurrency {c}, {}: {ops} commands",
                    kind.name()
                );
                let name = format!("{}_{}_c{c}", kind.id(), workload);
                let options = server.fresh(&name).await?;
                let mut group = event_store::GroupCommitOptions::default();
                if let Some(n) = cli.group_in_flight {
                    group.max_in_flight = n;
                }
                let target = Arc::new(Target::setup(kind, &options, c as u32 + 2, group).await?);
                let plan = Plan {
                    concurrency: c,
                    warmup: (ops / 10).max(20),
                    ops,
                    events_per_op: events as u64,
                };
                let groups_before = target.group_commit_stats();
                let t = Arc::clone(&target);
                let m = load::run(plan, move |i| {
                    let t = Arc::clone(&t);
                    async move { t.append(i, events).await }
                })
                .await
                .with_context(|| format!("{workload} append on {} at c{c}", kind.name()))?;
                let mean_group =
                    groups_before
                        .zip(target.group_commit_stats())
                        .and_then(|(b, a)| {
                            let groups = a.groups - b.groups;
                            (groups > 0).then(|| (a.appends - b.appends) as f64 / groups as f64)
                        });
                eprintln!(
                    "   {:.0} events/s, p50 {:?} ms, p99 {:?} ms{}",
                    m.events_per_sec,
                    m.p50_ms,
                    m.p99_ms,
                    mean_group.map_or(String::new(), |g| format!(", {g:.1} appends per commit")),
                );
                drop(target);
                server.drop_db(&name).await;
                if kind == StoreKind::Raw {
                    let best = floor.map_or(m.clone(), |f: stats::Measurement| {
                        if f.events_per_sec >= m.events_per_sec {
                            f
                        } else {
                            m.clone()
                        }
                    });
                    floor = Some(best);
                    if n > 0 {
                        report.raw_repeats.push(RawRepeat {
                            workload: workload.into(),
                            concurrency: c,
                            measurement: m,
                        });
                        continue;
                    }
                }
                rows.push((kind, m, mean_group));
            }
            for (kind, m, mean_group) in rows {
                let m = if kind == StoreKind::Raw {
                    floor.clone().unwrap_or(m)
                } else {
                    m
                };
                let vs_raw = floor
                    .as_ref()
                    .and_then(|f| ratio(m.events_per_sec, f.events_per_sec));
                report.append.push(AppendRow {
                    workload: workload.into(),
                    concurrency: c,
                    store: kind,
                    store_name: kind.name().into(),
                    measurement: m,
                    vs_raw,
                    mean_group,
                });
            }
        }
    }

    if wants("pgbench") {
        match pgbench::run(&server, &[1, 8, 64], 8).await {
            Ok(runs) => report.pgbench = runs,
            Err(e) => report.not_done.push(format!("pgbench floor: {e:#}")),
        }
    }

    if wants("rebuild") {
        let n = profile.rebuild_events();
        eprintln!("== rebuild: seeding {n} events");
        let options = server.fresh("rebuild").await?;
        let pool = db::pool(&options, 4).await?;
        event_store::migrate(&pool).await?;
        let store = EventStore::new(pool);
        let stored = rebuild::seed(&store, n).await?;
        eprintln!("== rebuild: all projections, then the raw floor");
        let r = rebuild::run(&store, stored).await?;
        eprintln!(
            "   annals {:.0} events/s, floor {:.0} events/s",
            r.annals.events_per_sec, r.raw_floor.events_per_sec
        );
        report.rebuild = Some(r);
        store.pool().close().await;
        server.drop_db("rebuild").await;
    }

    let queries_only = wants("queries") && !wants("e2e");
    if wants("e2e") || queries_only {
        let bins = cli
            .bin_dir
            .clone()
            .or_else(e2e::Binaries::default_dir)
            .context("no directory for the server binaries (pass --bin-dir)")
            .and_then(|dir| e2e::Binaries::in_dir(&dir));
        match bins {
            Ok(bins) => {
                eprintln!(
                    "== end to end: command API, projections and query API as child processes"
                );
                let options = server.fresh("e2e").await?;
                let sizes = e2e::Sizes {
                    levels: if queries_only {
                        vec![(64, profile.e2e_ops(64))]
                    } else {
                        vec![(8, profile.e2e_ops(8)), (64, profile.e2e_ops(64))]
                    },
                    query_ops: profile.query_ops(),
                    lag_ops: profile.lag_ops(),
                    lag_only: cli.lag_only,
                    half_rate: cli.lag_half_rate,
                    export_rows: profile.export_rows(),
                    queries_only,
                };
                match e2e::run(&bins, &options, &sizes).await {
                    Ok(mut r) => {
                        server.drop_db("e2e").await;
                        let half = r.lag.as_ref().map(|l| l.target_rate);
                        match &cli.kafka_bootstrap {
                            _ if queries_only => {}
                            Some(bootstrap) => {
                                let rates: Vec<f64> =
                                    std::iter::once(e2e::FIXED_LAG_RATE).chain(half).collect();
                                eprintln!(
                                    "   append-to-visible lag with Kafka as the source: {} commands at each of {rates:.0?}/s",
                                    sizes.lag_ops / 2
                                );
                                let options = server.fresh("e2e_kafka").await?;
                                match e2e::kafka_lag(
                                    &bins,
                                    &options,
                                    bootstrap,
                                    &rates,
                                    50,
                                    sizes.lag_ops / 2,
                                )
                                .await
                                {
                                    Ok(runs) => {
                                        for (i, run) in runs.into_iter().enumerate() {
                                            match run {
                                                Ok(l) if i == 0 => r.kafka_lag_fixed = Some(l),
                                                Ok(l) => r.kafka_lag = Some(l),
                                                Err(e) => r.not_done.push(format!(
                                                    "lag with Kafka as the source: {e:#}"
                                                )),
                                            }
                                        }
                                    }
                                    Err(e) => r
                                        .not_done
                                        .push(format!("lag with Kafka as the source: {e:#}")),
                                }
                                server.drop_db("e2e_kafka").await;
                            }
                            None => r.not_done.push(
                                "lag with Kafka as the source: KAFKA_BOOTSTRAP not set".into(),
                            ),
                        }
                        report
                            .not_done
                            .extend(r.not_done.iter().map(|n| format!("end to end: {n}")));
                        report.e2e = Some(r);
                    }
                    Err(e) => report.not_done.push(format!("end to end failed: {e:#}")),
                }
                server.drop_db("e2e").await;
            }
            Err(e) => report.not_done.push(format!("end to end: {e:#}")),
        }
    }

    if wants("kafka") {
        match &cli.kafka_bootstrap {
            Some(bootstrap) => {
                let n = profile.kafka_events();
                eprintln!("== kafka: {n} events via the relay, then a plain producer");
                let options = server.fresh("kafka").await?;
                let pool = db::pool(&options, 4).await?;
                event_store::migrate(&pool).await?;
                let store = EventStore::new(pool);
                let stored = rebuild::seed(&store, n).await?;
                match kafka::run(&store, bootstrap, stored).await {
                    Ok(k) => report.kafka = Some(k),
                    Err(e) => report.not_done.push(format!("Kafka relay failed: {e:#}")),
                }
                store.pool().close().await;
                server.drop_db("kafka").await;
            }
            None => report
                .not_done
                .push("Kafka relay: KAFKA_BOOTSTRAP not set".into()),
        }
    }

    if wants("trust") {
        let n = profile.trust_events();
        let ops = profile.single_ops(8);
        eprintln!(
            "== trust: verify {n} events against a checkpoint; appends with and without the sealer"
        );
        let options = server.fresh("trust").await?;
        let pool = db::pool(&options, 16).await?;
        event_store::migrate(&pool).await?;
        let store = EventStore::new(pool);
        match trust::run(&store, n, ops, 8).await {
            Ok(x) => {
                eprintln!(
                    "   verify {:.0} events/s; appends {:.0} -> {:.0} events/s with the sealer",
                    x.verify.events_per_sec,
                    x.append_without.events_per_sec,
                    x.append_with.events_per_sec
                );
                report.trust = Some(x);
            }
            Err(e) => report.not_done.push(format!("trust suite: {e:#}")),
        }
        store.pool().close().await;
        server.drop_db("trust").await;
    }

    analyzer_stop.cancel();
    if let Some(analyzer) = analyzer {
        let _ = analyzer.await;
    }
    report.harness_peak_rss_mib = e2e::peak_rss_mib(std::process::id());
    report.evaluate();
    let md = report.markdown();
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let json = cli.out.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(cli.out.join("results.md"), &md)?;
    println!("{md}");
    eprintln!("wrote {} and results.md", json.display());
    Ok(())
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn machine(server: &db::Server) -> anyhow::Result<Machine> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: kib / 1024.0 / 1024.0,
        postgres: server.version().await?,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        autovacuum: server.autovacuum().await?,
    })
}
