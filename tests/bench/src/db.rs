//! Fresh databases on the one Postgres server, so that workloads never see each other's rows.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The server all workloads run on, and a prefix for the databases the harness creates.
#[derive(Debug, Clone)]
pub struct Server {
    admin: PgConnectOptions,
    prefix: String,
}

impl Server {
    /// The server of `url`; databases are created as `<prefix>_<name>`.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let admin = PgConnectOptions::from_str(url)
            .context("parsing the database URL")?
            .log_statements(tracing::log::LevelFilter::Off);
        Ok(Self {
            admin,
            prefix: prefix.to_owned(),
        })
    }

    async fn admin_conn(&self) -> anyhow::Result<PgConnection> {
        self.admin
            .connect()
            .await
            .context("connecting to the benchmark server")
    }

    /// A server setting (`current_setting(name)`).
    async fn setting(&self, name: &str) -> anyhow::Result<String> {
        let mut c = self.admin_conn().await?;
        let v: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&mut c)
            .await?;
        c.close().await?;
        Ok(v)
    }

    /// The server's version (`server_version`).
    pub async fn version(&self) -> anyhow::Result<String> {
        self.setting("server_version").await
    }

    /// Whether autovacuum is on.
    pub async fn autovacuum(&self) -> anyhow::Result<bool> {
        Ok(self.setting("autovacuum").await? == "on")
    }

    /// Stands in for autovacuum's analyze on a server that runs without it: every `every`,
    /// `ANALYZE` in each database of this harness, until `stop`.
    ///
    /// Every workload starts from empty tables and grows them by thousands of rows a second.
    /// Without fresh statistics, prepared statements keep the generic plans they got while the
    /// tables were empty (sequential scans, sorts of whole tables), and the benchmark would
    /// measure a misconfigured server rather than the code. Every contender runs under the same
    /// analyzer.
    pub async fn analyze_until(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(err) = self.analyze_all().await {
                tracing::warn!(error = %err, "stand-in analyze failed");
            }
        }
    }

    async fn analyze_all(&self) -> anyhow::Result<()> {
        // One-connection pools: a borrowed `PgConnection` across awaits trips the compiler's
        // `Send` inference for the spawned task.
        let admin = pool(&self.admin, 1).await?;
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
                .bind(format!("{}_", self.prefix))
                .fetch_all(&admin)
                .await?;
        admin.close().await;
        for name in names {
            // A database dropped in between is not an error worth reporting.
            if let Ok(db) = pool(&self.admin.clone().database(&name), 1).await {
                let _ = sqlx::raw_sql("ANALYZE").execute(&db).await;
                db.close().await;
            }
        }
        Ok(())
    }

    /// Drops and recreates the database `<prefix>_<name>`; returns its connect options.
    pub async fn fresh(&self, name: &str) -> anyhow::Result<PgConnectOptions> {
        let db = format!("{}_{}", self.prefix, name);
        // Only [a-z0-9_] reach the identifier (names are the harness's own constants).
        anyhow::ensure!(
            db.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "bad database name {db}"
        );
        let mut c = self.admin_conn().await?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut c)
            .await
            .with_context(|| format!("dropping {db}"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .with_context(|| format!("creating {db} (the role needs CREATEDB)"))?;
        // Flush dirty pages of the previous workload now rather than during the next one.
        let _ = sqlx::raw_sql("CHECKPOINT").execute(&mut c).await;
        c.close().await?;
        Ok(self.admin.clone().database(&db))
    }

    /// Drops `<prefix>_<name>` (best effort: leftovers are dropped by the next run anyway).
    pub async fn drop_db(&self, name: &str) {
        let db = format!("{}_{}", self.prefix, name);
        if let Ok(mut c) = self.admin_conn().await {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
        }
    }
}

/// A pool of `size` connections to `options`, all opened up front.
pub async fn pool(options: &PgConnectOptions, size: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .context("opening the benchmark pool")?;
    Ok(pool)
}

/// The URL of `options` (for child processes).
pub fn url(options: &PgConnectOptions) -> String {
    options.to_url_lossy().to_string()
}
