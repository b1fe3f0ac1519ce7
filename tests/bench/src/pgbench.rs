//! Postgres's own client, `pgbench`, as a second floor beside the harness's sqlx client.
//!
//! At high concurrency the harness's floor can be bounded by its own client (one tokio process
//! on the same 2 cores as the server), which would flatter every ratio taken against it. So the
//! same single-row insert (the raw table and row of [`crate::stores`]) is also driven by
//! `pgbench` at the same concurrency, and a primary-key `SELECT` gives the floor of a point read
//! (what `GetTask` is compared with). Each run lasts [`SECONDS`] seconds; the report says which
//! floor each ratio uses.

use std::process::Stdio;

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;

use crate::db;

/// Duration of each pgbench run.
pub const SECONDS: u32 = 10;

/// Rows seeded for the primary-key read.
const READ_ROWS: u64 = 100_000;

/// One pgbench run.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchRun {
    /// `insert` (one row per transaction) or `pk-select`.
    pub workload: String,
    /// Client connections.
    pub concurrency: usize,
    /// Transactions per second (pgbench's figure without connection time).
    pub tps: f64,
    /// Mean latency, ms.
    pub mean_latency_ms: Option<f64>,
}

const INSERT_SCRIPT: &str = r#"INSERT INTO raw_events (event_id, stream_id, stream_type, stream_version, tenant_id, event_type, schema_version, payload, metadata, hash) VALUES (gen_random_uuid(), gen_random_uuid()::text, 'task', 1, 'bench', 'task.created', 1, '{"task_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","owner":"user-42","title":"Write the quarterly report #4242/0","description":"Collect the numbers from finance, draft the prose, circulate for review","priority":"medium","tags":["finance","q3"],"due_date":"2030-03-08T09:00:00Z"}', '{"tenant":"bench","actor":"bench-svc","actor_type":"service","command_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c","correlation_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d"}', '\x0707070707070707070707070707070707070707070707070707070707070707');
"#;

/// Runs the insert floor at each of `levels` and the primary-key read at `read_concurrency` in
/// fresh databases of `server`. `Err` when pgbench is not installed.
pub async fn run(
    server: &db::Server,
    levels: &[usize],
    read_concurrency: usize,
) -> anyhow::Result<Vec<PgbenchRun>> {
    let version = std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .context("pgbench is not installed (Debian: postgresql-client)")?;
    anyhow::ensure!(version.status.success(), "pgbench --version failed");
    let dir = std::env::temp_dir().join(format!("annals-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let insert = dir.join("insert.sql");
    std::fs::write(&insert, INSERT_SCRIPT)?;
    let select = dir.join("select.sql");
    std::fs::write(
        &select,
        format!(
            "\\set id random(1, {READ_ROWS})\nSELECT * FROM raw_events WHERE global_position = :id;\n"
        ),
    )?;

    let mut runs = Vec::new();
    for &c in levels {
        let name = format!("pgbench_insert_c{c}");
        let options = server.fresh(&name).await?;
        crate::stores::Target::setup(
            crate::stores::StoreKind::Raw,
            &options,
            1,
            event_store::GroupCommitOptions::default(),
        )
        .await?;
        eprintln!("== pgbench insert, concurrency {c}: {SECONDS} s");
        let r = pgbench(&options, &insert, c, "insert").await;
        server.drop_db(&name).await;
        runs.push(r?);
    }
    let name = "pgbench_select";
    let options = server.fresh(name).await?;
    let pool = db::pool(&options, 1).await?;
    crate::stores::Target::setup(
        crate::stores::StoreKind::Raw,
        &options,
        1,
        event_store::GroupCommitOptions::default(),
    )
    .await?;
    sqlx::query(&format!(
        "INSERT INTO raw_events (event_id, stream_id, stream_type, stream_version, tenant_id, \
         event_type, schema_version, payload, metadata, hash) \
         SELECT gen_random_uuid(), g::text, 'task', 1, 'bench', 'task.created', 1, \
                '{{\"title\":\"row\"}}', '{{}}', sha256(g::text::bytea) \
           FROM generate_series(1, {READ_ROWS}) AS g"
    ))
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE raw_events").execute(&pool).await?;
    pool.close().await;
    eprintln!("== pgbench primary-key select, concurrency {read_concurrency}: {SECONDS} s");
    let r = pgbench(&options, &select, read_concurrency, "pk-select").await;
    server.drop_db(name).await;
    runs.push(r?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(runs)
}

/// The URL of `options` without sqlx's own query parameters, which libpq refuses.
fn libpq_url(options: &PgConnectOptions) -> String {
    let url = db::url(options);
    match url.split_once('?') {
        Some((base, _)) => base.to_owned(),
        None => url,
    }
}

async fn pgbench(
    options: &PgConnectOptions,
    script: &std::path::Path,
    concurrency: usize,
    workload: &str,
) -> anyhow::Result<PgbenchRun> {
    let c = concurrency.max(1);
    let mut command = std::process::Command::new("pgbench");
    command
        .args([
            "--no-vacuum",
            "--client",
            &c.to_string(),
            "--jobs",
            &c.min(4).to_string(),
            "--time",
            &SECONDS.to_string(),
            "--file",
        ])
        .arg(script)
        .arg(libpq_url(options))
        .stdin(Stdio::null());
    // pgbench runs for seconds: off the async workers.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number_after = |label: &str| {
        stdout.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(label)?;
            rest.trim_start_matches([' ', '='])
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
    };
    let tps = number_after("tps").with_context(|| format!("no tps in pgbench output: {stdout}"))?;
    Ok(PgbenchRun {
        workload: workload.into(),
        concurrency: c,
        tps,
        mean_latency_ms: number_after("latency average"),
    })
}
