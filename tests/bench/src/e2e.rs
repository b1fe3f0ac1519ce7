//! End to end over gRPC: the `annals-command-api` binary as a child process on 127.0.0.1, driven
//! by tonic clients; command rate and latency at fixed concurrency, and the server's peak RSS.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use schemas::v1 as pb;
use schemas::v1::task_commands_client::TaskCommandsClient;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::db;
use crate::load::{self, Plan};
use crate::stats::Measurement;

/// One measured concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRun {
    /// Concurrent clients.
    pub concurrency: usize,
    /// `CreateTask` rate and latency.
    pub measurement: Measurement,
}

/// Results of the end-to-end suite.
#[derive(Debug, Clone, Serialize)]
pub struct E2eResult {
    /// Command runs per concurrency.
    pub commands: Vec<CommandRun>,
    /// Peak RSS (VmHWM) of the command API process after the load, in MiB.
    pub command_api_peak_rss_mib: Option<f64>,
    /// Connections in the server's pool.
    pub server_pool_size: u32,
}

/// A running `annals-command-api serve`; killed (and reaped) on drop.
pub struct Server {
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
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Creates a service token with the binary's own `token create`.
fn create_token(bin: &Path, url: &str) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args([
            "token",
            "create",
            "--tenant",
            "bench",
            "--actor",
            "bench-svc",
        ])
        .args(["--role", "service", "--description", "benchmark"])
        .env("DATABASE_URL", url)
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

/// Starts the command API on a free loopback port and waits until it accepts connections.
pub async fn start(bin: &Path, url: &str, pool_size: u32) -> anyhow::Result<Server> {
    let port = free_port()?;
    let metrics = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(bin)
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--pool-size", &pool_size.to_string()])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!("command API exited with {status}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "command API did not listen in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// Peak resident set size (VmHWM) of a process, in MiB (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn create_task_request(token: &str, op: u64) -> anyhow::Result<Request<pb::CreateTaskRequest>> {
    let mut r = Request::new(pb::CreateTaskRequest {
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
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

/// Runs `CreateTask` at each concurrency with `ops(concurrency)` operations.
pub async fn run(
    bin: &Path,
    options: &PgConnectOptions,
    levels: &[(usize, u64)],
) -> anyhow::Result<E2eResult> {
    let url = db::url(options);
    // Migrate with the binary itself (token create applies the migrations first).
    let token = Arc::new(create_token(bin, &url)?);
    let pool_size = 32;
    let server = start(bin, &url, pool_size).await?;
    let mut commands = Vec::new();
    for &(concurrency, ops) in levels {
        // Several HTTP/2 connections, as several client processes would open.
        let mut channels = Vec::new();
        for _ in 0..concurrency.clamp(1, 8) {
            channels.push(
                Endpoint::from_shared(format!("http://{}", server.addr))?
                    .connect()
                    .await?,
            );
        }
        let channels: Arc<Vec<Channel>> = Arc::new(channels);
        let token = Arc::clone(&token);
        let plan = Plan {
            concurrency,
            warmup: (ops / 10).max(50),
            ops,
            events_per_op: 1,
        };
        let measurement = load::run(plan, move |i| {
            let channel = channels[(i as usize) % channels.len()].clone();
            let req = create_task_request(&token, i);
            async move {
                let mut client = TaskCommandsClient::new(channel);
                client.create_task(req?).await?;
                Ok(())
            }
        })
        .await
        .with_context(|| format!("gRPC CreateTask at concurrency {concurrency}"))?;
        commands.push(CommandRun {
            concurrency,
            measurement,
        });
    }
    let command_api_peak_rss_mib = peak_rss_mib(server.pid());
    drop(server);
    Ok(E2eResult {
        commands,
        command_api_peak_rss_mib,
        server_pool_size: pool_size,
    })
}

/// Where the command API binary is: `--command-api-bin`, else next to this executable.
pub fn default_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let candidate = me.parent()?.join("annals-command-api");
    candidate.exists().then_some(candidate)
}
