//! The results file (JSON) and the table (markdown, also printed).

use std::fmt::Write as _;

use serde::Serialize;

use crate::e2e::{E2eResult, LagRun};
use crate::kafka::KafkaResult;
use crate::pgbench::PgbenchRun;
use crate::rebuild::RebuildResult;
use crate::stats::{Measurement, fmt_ms, fmt_rate, fmt_ratio, ratio};
use crate::stores::StoreKind;
use crate::trust::TrustResult;

/// Where and how the numbers were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// Total memory in GiB (`/proc/meminfo`).
    pub memory_gib: f64,
    /// Postgres `server_version`.
    pub postgres: String,
    /// Kernel release.
    pub kernel: String,
    /// Whether the server runs autovacuum; when it does not, the harness runs `ANALYZE` every
    /// 10 s in its place (see `db::Server::analyze_until`).
    pub autovacuum: bool,
}

/// One append run.
#[derive(Debug, Clone, Serialize)]
pub struct AppendRow {
    /// `single` (1 event per command) or `batch` (100 events per command).
    pub workload: String,
    /// Concurrent writers.
    pub concurrency: usize,
    /// Store measured.
    pub store: StoreKind,
    /// Display name of the store.
    pub store_name: String,
    /// The numbers.
    pub measurement: Measurement,
    /// events/s relative to the raw floor of the same workload and concurrency.
    pub vs_raw: Option<f64>,
    /// annals only: appends per group transaction over the run (warm-up included).
    pub mean_group: Option<f64>,
}

/// The second sample of a raw floor (taken after the other stores of the same level).
#[derive(Debug, Clone, Serialize)]
pub struct RawRepeat {
    /// `single` or `batch`.
    pub workload: String,
    /// Concurrent writers.
    pub concurrency: usize,
    /// The numbers of the repeat.
    pub measurement: Measurement,
}

/// A target of issue 8 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The goal, as text.
    pub goal: String,
    /// The measured value, as text.
    pub measured: String,
    /// Met, missed, or not measured (`None`).
    pub met: Option<bool>,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `quick` or `full`.
    pub profile: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// `git rev-parse HEAD` when available.
    pub git_commit: Option<String>,
    /// The machine.
    pub machine: Machine,
    /// Append suites (single and batch); the raw row is the better of its two samples.
    pub append: Vec<AppendRow>,
    /// The other sample of each raw floor.
    pub raw_repeats: Vec<RawRepeat>,
    /// Rebuild suite.
    pub rebuild: Option<RebuildResult>,
    /// End-to-end suite.
    pub e2e: Option<E2eResult>,
    /// Kafka suite.
    pub kafka: Option<KafkaResult>,
    /// Trust suite (issue 15): verification speed, appends with the sealer running.
    pub trust: Option<TrustResult>,
    /// `pgbench` floors (insert per concurrency, primary-key select).
    pub pgbench: Vec<PgbenchRun>,
    /// Parts not measured, with the reason.
    pub not_done: Vec<String>,
    /// Targets and whether they were met.
    pub targets: Vec<Target>,
    /// Peak RSS of the benchmark process itself, MiB.
    pub harness_peak_rss_mib: Option<f64>,
}

impl Report {
    /// The best single-insert floor at concurrency `c`: the harness's own client or pgbench,
    /// whichever committed more (the slower one is bounded by its client), and which it was.
    pub fn insert_floor(&self, c: usize) -> Option<(f64, &'static str)> {
        let harness = self
            .append
            .iter()
            .find(|r| r.workload == "single" && r.concurrency == c && r.store == StoreKind::Raw)
            .map(|r| (r.measurement.events_per_sec, "harness"));
        let pgbench = self
            .pgbench
            .iter()
            .find(|r| r.workload == "insert" && r.concurrency == c)
            .map(|r| (r.tps, "pgbench"));
        match (harness, pgbench) {
            (Some(h), Some(p)) => Some(if p.0 > h.0 { p } else { h }),
            (h, p) => h.or(p),
        }
    }

    /// Fills [`Report::targets`] from the measurements (issues 12 and 13, and issue 8's export).
    pub fn evaluate(&mut self) {
        let mut t = Vec::new();
        let find = |w: &str, c: usize, s: StoreKind| {
            self.append
                .iter()
                .find(|r| r.workload == w && r.concurrency == c && r.store == s)
        };
        // Issue 12: the write path.
        for (c, goal) in [(1, 0.7), (8, 1.2), (64, 2.0)] {
            let annals = find("single", c, StoreKind::Annals).map(|r| r.measurement.events_per_sec);
            let floor = self.insert_floor(c);
            let r = annals.zip(floor).and_then(|(a, (f, _))| ratio(a, f));
            t.push(Target {
                name: format!("single-event append, concurrency {c}: annals / raw INSERT+COMMIT"),
                goal: format!("≥ {goal:.1}×"),
                measured: match (r, floor) {
                    (Some(r), Some((_, which))) => {
                        let harness = find("single", c, StoreKind::Annals).and_then(|r| r.vs_raw);
                        format!(
                            "{} of the {which} floor (harness floor: {})",
                            fmt_ratio(Some(r)),
                            fmt_ratio(harness)
                        )
                    }
                    _ => "not measured".into(),
                },
                met: r.map(|r| r >= goal),
            });
        }
        let mut worst: Option<(f64, String)> = None;
        for row in self.append.iter().filter(|r| r.store == StoreKind::Annals) {
            for peer in [StoreKind::PostgresEs, StoreKind::Esrs] {
                if let Some(p) = find(&row.workload, row.concurrency, peer)
                    && let Some(r) =
                        ratio(row.measurement.events_per_sec, p.measurement.events_per_sec)
                    && worst.as_ref().is_none_or(|(w, _)| r < *w)
                {
                    worst = Some((
                        r,
                        format!("{} c{} vs {}", row.workload, row.concurrency, peer.name()),
                    ));
                }
            }
        }
        t.push(Target {
            name: "ahead of both peers in every append row".into(),
            goal: "annals / peer > 1× everywhere".into(),
            measured: worst.as_ref().map_or("not measured".into(), |(r, at)| {
                format!("lowest {} ({at})", fmt_ratio(Some(*r)))
            }),
            met: worst.map(|(r, _)| r > 1.0),
        });
        for c in [1, 8] {
            let r = find("batch", c, StoreKind::Annals).and_then(|r| r.vs_raw);
            t.push(target(
                format!("100-event append, concurrency {c}: annals / raw UNNEST"),
                "≥ 0.60×",
                r,
                |r| r >= 0.6,
            ));
        }
        let create = |c: usize| {
            self.e2e
                .as_ref()
                .and_then(|e| e.commands.iter().find(|r| r.concurrency == c))
                .map(|r| &r.measurement)
        };
        let floor64 = self.insert_floor(64);
        let r = create(64)
            .zip(floor64)
            .and_then(|(m, (f, _))| ratio(m.ops_per_sec, f));
        t.push(Target {
            name: "`CreateTask` over gRPC, concurrency 64 / raw INSERT+COMMIT at 64".into(),
            goal: "≥ 1.0×".into(),
            measured: match (r, floor64) {
                (Some(r), Some((_, which))) => {
                    format!("{} of the {which} floor", fmt_ratio(Some(r)))
                }
                _ => "not measured".into(),
            },
            met: r.map(|r| r >= 1.0),
        });
        t.push(below(
            "`CreateTask` over gRPC, concurrency 8, p99",
            10.0,
            create(8).and_then(|m| m.p99_ms),
        ));

        // Issue 13: the read path.
        let rb = self
            .rebuild
            .as_ref()
            .and_then(|r| ratio(r.annals.events_per_sec, r.raw_floor.events_per_sec));
        t.push(target(
            "rebuild of 100,000 events, all projections / raw read+upsert floor".into(),
            "≥ 0.50×",
            rb,
            |r| r >= 0.5,
        ));
        // The lag targets at the fixed rate and at half the best rate, each row naming
        // the rate it was asked (and achieved) at.
        let e2e = self.e2e.as_ref();
        let lag_rows: [(&str, Option<&LagRun>); 2] = [
            (
                "the issue's half load",
                e2e.and_then(|e| e.lag_fixed.as_ref()),
            ),
            (
                "half the best `CreateTask` rate",
                e2e.and_then(|e| e.lag.as_ref()),
            ),
        ];
        for (what, lag) in lag_rows {
            let at = lag_rate(what, lag);
            t.push(below(
                &format!("append-to-visible lag {at}, p50"),
                5.0,
                lag.and_then(|l| l.visible.p50_ms),
            ));
            t.push(below(
                &format!("append-to-visible lag {at}, p99"),
                20.0,
                lag.and_then(|l| l.visible.p99_ms),
            ));
        }
        let kafka_rows: [(&str, Option<&LagRun>); 2] = [
            (
                "the issue's half load",
                e2e.and_then(|e| e.kafka_lag_fixed.as_ref()),
            ),
            (
                "half the best `CreateTask` rate",
                e2e.and_then(|e| e.kafka_lag.as_ref()),
            ),
        ];
        for (what, lag) in kafka_rows {
            t.push(below(
                &format!(
                    "append-to-visible lag with Kafka as the source {}, p99",
                    lag_rate(what, lag)
                ),
                100.0,
                lag.and_then(|l| l.visible.p99_ms),
            ));
        }
        // Rows are found by the RPC's exact name (`QueryRun::rpc`), never by its display label.
        let query = |rpc: &str, c: usize| {
            self.e2e
                .as_ref()
                .and_then(|e| {
                    e.queries
                        .iter()
                        .find(|q| q.rpc == rpc && q.concurrency == c)
                })
                .map(|q| &q.measurement)
        };
        let pk = self
            .pgbench
            .iter()
            .find(|r| r.workload == "pk-select" && r.concurrency == 8)
            .map(|r| r.tps);
        let get = query("GetTask", 8).map(|m| m.ops_per_sec);
        let r = get.zip(pk).and_then(|(g, f)| ratio(g, f));
        t.push(Target {
            name: "`GetTask` at concurrency 8 / pgbench primary-key SELECT at 8".into(),
            goal: "≥ 0.30×".into(),
            measured: match (r, get, pk) {
                (Some(r), Some(g), Some(f)) => format!(
                    "{} ({} / {} per s)",
                    fmt_ratio(Some(r)),
                    fmt_rate(g),
                    fmt_rate(f)
                ),
                _ => "not measured".into(),
            },
            met: r.map(|r| r >= 0.3),
        });
        t.push(below(
            "`ListTasks` (50 rows) at concurrency 8, p99",
            10.0,
            query("ListTasks", 8).and_then(|m| m.p99_ms),
        ));
        let keeps_up = self.e2e.as_ref().and_then(|e| e.sustained.as_ref());
        t.push(Target {
            name: "projections keep up while commands run at full speed (60 s)".into(),
            goal: "lag does not grow".into(),
            measured: keeps_up.map_or("not measured".into(), |k| {
                format!(
                    "{} commands/s; lag {} events after 10 s, {} after 60 s",
                    fmt_rate(k.commands_per_sec),
                    k.lag_early,
                    k.lag_late
                )
            }),
            met: keeps_up.map(|k| k.lag_late <= k.lag_early.max(k.commands_per_sec as u64 / 10)),
        });

        let growth = self
            .e2e
            .as_ref()
            .and_then(|e| e.export.as_ref())
            .map(|x| (x.rows, x.growth_mib));
        t.push(Target {
            name: growth.map_or("audit export: query API RSS growth".into(), |(rows, _)| {
                format!(
                    "audit export of {} rows: query API RSS growth",
                    fmt_rate(rows as f64)
                )
            }),
            goal: "< 50 MB".into(),
            measured: growth.map_or("not measured".into(), |(_, g)| format!("{g:.1} MiB")),
            // 50 MB = 47.7 MiB.
            met: growth.map(|(_, g)| g * 1024.0 * 1024.0 < 50e6),
        });
        // Issue 15: tamper evidence off the hot path.
        let trust = self.trust.as_ref();
        t.push(Target {
            name: format!(
                "verification of {} events against a signed checkpoint",
                trust.map_or("1,000,000".to_owned(), |x| fmt_rate(
                    x.verified_events as f64
                ))
            ),
            goal: "≥ 20,000 events/s (proposed)".into(),
            measured: trust.map_or("not measured".into(), |x| {
                format!("{} events/s", fmt_rate(x.verify.events_per_sec))
            }),
            met: trust.map(|x| x.verify.events_per_sec >= 20_000.0),
        });
        t.push(target(
            "single-event appends with sealer + checkpointer / without".into(),
            "≥ 0.95×",
            trust.and_then(|x| x.append_ratio),
            |r| r >= 0.95,
        ));
        self.targets = t;
    }

    /// The markdown summary.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Profile `{}`, {}; {} CPUs, {:.1} GiB RAM, PostgreSQL {}{}, Linux {}{}.\n",
            self.profile,
            self.started_at,
            m.cpus,
            m.memory_gib,
            m.postgres,
            if m.autovacuum {
                ""
            } else {
                " (autovacuum off: the harness ran ANALYZE every 10 s in its place)"
            },
            m.kernel,
            self.git_commit
                .as_ref()
                .map(|c| format!(", commit {}", &c[..c.len().min(10)]))
                .unwrap_or_default()
        );
        if !self.append.is_empty() {
            let _ = writeln!(
                s,
                "Raw floor = the better of two samples (first and last of each level).\n\n\
                 | workload | conc. | store | events/s | p50 ms | p99 ms | × raw | appends/commit |\n\
                 | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
            );
            for r in &self.append {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    if r.workload == "single" {
                        "1 event/cmd"
                    } else {
                        "100 events/cmd"
                    },
                    r.concurrency,
                    r.store_name,
                    fmt_rate(r.measurement.events_per_sec),
                    fmt_ms(r.measurement.p50_ms),
                    fmt_ms(r.measurement.p99_ms),
                    fmt_ratio(r.vs_raw),
                    r.mean_group.map_or("–".into(), |g| format!("{g:.1}")),
                );
            }
            s.push('\n');
        }
        if !self.pgbench.is_empty() {
            let _ = writeln!(
                s,
                "| pgbench floor ({} s each) | conc. | tx/s | mean latency ms |\n| --- | ---: | ---: | ---: |",
                crate::pgbench::SECONDS
            );
            for r in &self.pgbench {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    if r.workload == "insert" {
                        "single-row INSERT (same row as the raw floor)"
                    } else {
                        "primary-key SELECT (100k rows)"
                    },
                    r.concurrency,
                    fmt_rate(r.tps),
                    fmt_ms(r.mean_latency_ms)
                );
            }
            s.push('\n');
        }
        if let Some(r) = &self.rebuild {
            let _ = writeln!(
                s,
                "| rebuild of {} events | events/s | seconds | × floor |\n| --- | ---: | ---: | ---: |",
                fmt_rate(r.stored_events as f64)
            );
            let _ = writeln!(
                s,
                "| annals, all projections ({}) | {} | {:.1} | {} |",
                r.per_projection
                    .iter()
                    .map(|(n, e, secs)| format!("{n}: {e} ev, busy {secs:.1} s"))
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_rate(r.annals.events_per_sec),
                r.annals.seconds,
                fmt_ratio(ratio(r.annals.events_per_sec, r.raw_floor.events_per_sec)),
            );
            let _ = writeln!(
                s,
                "| raw floor (read 1,000 + UNNEST upsert + audit insert per tx) | {} | {:.1} | 1.00× |\n",
                fmt_rate(r.raw_floor.events_per_sec),
                r.raw_floor.seconds
            );
        }
        if let Some(e) = &self.e2e {
            let _ = writeln!(
                s,
                "| gRPC, three server processes on loopback | conc. | ops/s | p50 ms | p99 ms |\n\
                 | --- | ---: | ---: | ---: | ---: |"
            );
            for c in &e.commands {
                let _ = writeln!(
                    s,
                    "| `CreateTask` (command API pool {}) | {} | {} | {} | {} |",
                    e.server_pool_size,
                    c.concurrency,
                    fmt_rate(c.measurement.ops_per_sec),
                    fmt_ms(c.measurement.p50_ms),
                    fmt_ms(c.measurement.p99_ms)
                );
            }
            for q in &e.queries {
                let _ = writeln!(
                    s,
                    "| `{} ({})` | {} | {} | {} | {} |",
                    q.rpc,
                    q.shape,
                    q.concurrency,
                    fmt_rate(q.measurement.ops_per_sec),
                    fmt_ms(q.measurement.p50_ms),
                    fmt_ms(q.measurement.p99_ms)
                );
            }
            for (what, lag) in [
                ("the issue's half load", &e.lag_fixed),
                ("half the best rate", &e.lag),
            ] {
                let Some(l) = lag else { continue };
                let _ = writeln!(
                    s,
                    "| `CreateTask` at {what} (asked {}/s) | open loop | {} | {} | {} |",
                    fmt_rate(l.target_rate),
                    fmt_rate(l.commands.ops_per_sec),
                    fmt_ms(l.commands.p50_ms),
                    fmt_ms(l.commands.p99_ms)
                );
                let _ = writeln!(
                    s,
                    "| append-to-visible lag (reply -> `GetTask` at its position answers) | same | – | {} | {} |",
                    fmt_ms(l.visible.p50_ms),
                    fmt_ms(l.visible.p99_ms)
                );
            }
            for l in [&e.kafka_lag_fixed, &e.kafka_lag].into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "| the same lag with Kafka as the projections' source (asked {}/s) | open loop | {} | {} | {} |",
                    fmt_rate(l.target_rate),
                    fmt_rate(l.commands.ops_per_sec),
                    fmt_ms(l.visible.p50_ms),
                    fmt_ms(l.visible.p99_ms)
                );
            }
            if let Some(k) = &e.sustained {
                let _ = writeln!(
                    s,
                    "| `CreateTask` at full speed for {} s, tasks projection backlog after 10 s / at the end | 64 | {} | {} events | {} events |",
                    crate::e2e::SUSTAINED.as_secs(),
                    fmt_rate(k.commands_per_sec),
                    k.lag_early,
                    k.lag_late
                );
            }
            let rss = e
                .peak_rss
                .iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p.process,
                        p.peak_rss_mib
                            .map_or("unknown".into(), |v| format!("{v:.1} MiB"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(s, "\nPeak RSS (VmHWM) after the load: {rss}.");
            if let Some(x) = &e.export {
                let _ = writeln!(
                    s,
                    "Audit export (`ExportAuditTrail`, streamed): {} rows in {:.1} s ({} rows/s); \
                     query API RSS {:.1} MiB before, {:.1} MiB at most while streaming \
                     (+{:.1} MiB).",
                    fmt_rate(x.rows as f64),
                    x.seconds,
                    fmt_rate(x.rows_per_sec),
                    x.rss_before_mib,
                    x.rss_peak_mib,
                    x.growth_mib
                );
            }
            s.push('\n');
        }
        if let Some(k) = &self.kafka {
            let _ = writeln!(
                s,
                "| Kafka (tansu, {} events) | messages/s | seconds | × plain |\n| --- | ---: | ---: | ---: |",
                fmt_rate(k.relay.events as f64)
            );
            let _ = writeln!(
                s,
                "| annals relay (incl. start, topic creation, checkpoints) | {} | {:.1} | {} |",
                fmt_rate(k.relay.events_per_sec),
                k.relay.seconds,
                fmt_ratio(ratio(
                    k.relay.events_per_sec,
                    k.plain_producer.events_per_sec
                ))
            );
            let _ = writeln!(
                s,
                "| plain rdkafka idempotent producer, same envelopes | {} | {:.1} | 1.00× |\n",
                fmt_rate(k.plain_producer.events_per_sec),
                k.plain_producer.seconds
            );
        }
        if let Some(x) = &self.trust {
            let _ = writeln!(
                s,
                "| Trust (issue 15) | events/s | seconds |\n| --- | ---: | ---: |\n\
                 | verify {} events against a signed checkpoint | {} | {:.1} |\n\
                 | single-event appends, concurrency {}, no sealer | {} | {:.1} |\n\
                 | the same with sealer + checkpointer running | {} | {:.1} |\n",
                fmt_rate(x.verified_events as f64),
                fmt_rate(x.verify.events_per_sec),
                x.verify.seconds,
                x.concurrency,
                fmt_rate(x.append_without.events_per_sec),
                x.append_without.seconds,
                fmt_rate(x.append_with.events_per_sec),
                x.append_with.seconds
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(
                s,
                "| target | goal | measured | met |\n| --- | --- | --- | --- |"
            );
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    t.name,
                    t.goal,
                    t.measured,
                    match t.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "–",
                    }
                );
            }
            s.push('\n');
        }
        for n in &self.not_done {
            let _ = writeln!(s, "- not done: {n}");
        }
        s
    }
}

fn below(name: &str, limit_ms: f64, value: Option<f64>) -> Target {
    Target {
        name: name.into(),
        goal: format!("< {limit_ms} ms"),
        measured: value.map_or("not measured".into(), |v| format!("{} ms", fmt_ms(Some(v)))),
        met: value.map(|v| v < limit_ms),
    }
}

/// "at the half load (312/s asked, 310/s achieved)": the rate a lag row used.
fn lag_rate(what: &str, lag: Option<&LagRun>) -> String {
    match lag {
        Some(l) => format!(
            "at {what} ({}/s asked, {}/s achieved)",
            fmt_rate(l.target_rate),
            fmt_rate(l.commands.ops_per_sec)
        ),
        None => format!("at {what}"),
    }
}

fn target(name: String, goal: &str, value: Option<f64>, ok: impl Fn(f64) -> bool) -> Target {
    Target {
        name,
        goal: goal.into(),
        measured: value.map_or("not measured".into(), |v| fmt_ratio(Some(v))),
        met: value.map(ok),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::e2e::QueryRun;
    use crate::stats::Latencies;

    fn run(rpc: &str, shape: &str, ops_per_sec: u64, p99_ms: u64) -> QueryRun {
        let mut lat = Latencies::new();
        for _ in 0..100 {
            lat.record(Duration::from_millis(p99_ms));
        }
        QueryRun {
            rpc: rpc.into(),
            shape: shape.into(),
            concurrency: 8,
            measurement: Measurement::new(
                ops_per_sec,
                ops_per_sec,
                Duration::from_secs(1),
                Some(&lat),
            ),
        }
    }

    fn report(queries: Vec<QueryRun>, pk_select: f64) -> Report {
        Report {
            profile: "test".into(),
            started_at: String::new(),
            git_commit: None,
            machine: Machine {
                cpus: 2,
                memory_gib: 1.0,
                postgres: "15".into(),
                kernel: "test".into(),
                autovacuum: true,
            },
            append: Vec::new(),
            raw_repeats: Vec::new(),
            rebuild: None,
            e2e: Some(E2eResult {
                commands: Vec::new(),
                server_pool_size: 32,
                queries,
                lag: None,
                lag_fixed: None,
                kafka_lag: None,
                kafka_lag_fixed: None,
                sustained: None,
                peak_rss: Vec::new(),
                export: None,
                not_done: Vec::new(),
            }),
            kafka: None,
            trust: None,
            pgbench: vec![PgbenchRun {
                workload: "pk-select".into(),
                concurrency: 8,
                tps: pk_select,
                mean_latency_ms: None,
            }],
            not_done: Vec::new(),
            targets: Vec::new(),
            harness_peak_rss_mib: None,
        }
    }

    fn target<'r>(report: &'r Report, prefix: &str) -> &'r Target {
        report
            .targets
            .iter()
            .find(|t| t.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no target {prefix}"))
    }

    /// The query rows' targets come from the run's rows, found by RPC name whatever their
    /// shape label says; a row of another RPC with a similar name is not taken for them.
    #[test]
    fn query_targets_are_computed_from_the_query_rows() {
        let mut r = report(
            vec![
                run("GetTaskHistory", "decoy", 99_000, 1),
                run("GetTask", "one of 5000 tasks", 6_000, 2),
                run("ListTasks", "first page of 50", 900, 25),
            ],
            20_000.0,
        );
        r.evaluate();
        let get = target(&r, "`GetTask` at concurrency 8");
        assert_eq!(get.met, Some(true));
        assert_eq!(get.measured, "0.30× (6,000 / 20,000 per s)");
        let list = target(&r, "`ListTasks` (50 rows)");
        assert_eq!(list.met, Some(false));
        assert!(list.measured.starts_with("25."), "{}", list.measured);
        assert!(
            r.markdown()
                .contains("| `GetTask (one of 5000 tasks)` | 8 | 6,000 |")
        );

        let mut r = report(vec![run("GetTask", "one of 10 tasks", 1_000, 2)], 20_000.0);
        r.evaluate();
        assert_eq!(target(&r, "`GetTask` at concurrency 8").met, Some(false));
        assert_eq!(target(&r, "`ListTasks` (50 rows)").met, None);
    }
}
