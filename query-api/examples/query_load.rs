//! A quick load generator for the query API's hot reads, for profiling between full benchmark
//! runs (the harness's `--suites queries` is the reference; this one builds with the query API
//! alone, without the harness's peers and Kafka client).
//!
//! Against a running `annals-command-api` and `annals-query-api` (and `annals-projections`),
//! with a `service` token of one tenant: seeds `--seed` tasks through `CreateTask`, waits
//! (bounded) until the query API reflects the last one, then runs `GetTask` over those tasks
//! and `ListTasks` (first page of 50) at `--concurrency`, each `--ops` requests after a tenth
//! as many untimed, like the harness's e2e query phase. Prints requests/s, p50 and p99.
//!
//! ```text
//! cargo run --release -p query-api --example query_load -- \
//!     --command http://127.0.0.1:50051 --query http://127.0.0.1:50052 --token "$TOKEN"
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use schemas::v1 as pb;
use schemas::v1::task_commands_client::TaskCommandsClient;
use schemas::v1::task_queries_client::TaskQueriesClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use uuid::Uuid;

/// Query API load generator.
#[derive(Debug, Parser)]
struct Args {
    /// Command API endpoint (for seeding).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    command: String,
    /// Query API endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    query: String,
    /// A `service` token of the tenant to read and write.
    #[arg(long, env = "ANNALS_TOKEN")]
    token: String,
    /// Tasks to create first (0: read what is there).
    #[arg(long, default_value_t = 5_000)]
    seed: u64,
    /// Timed requests per RPC.
    #[arg(long, default_value_t = 4_000)]
    ops: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// Longest wait for the seeded tasks to become visible.
const VISIBLE_BOUND: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token: Arc<str> = Arc::from(format!("Bearer {}", args.token));
    let query = channels(&args.query, args.concurrency).await?;
    let ids = if args.seed > 0 {
        seed(&args, &token, &query[0]).await?
    } else {
        existing(&token, &query[0]).await?
    };
    anyhow::ensure!(!ids.is_empty(), "no tasks to read");
    let ids = Arc::new(ids);
    let warmup = (args.ops / 10).max(50);

    let (q, t, i) = (query.clone(), token.clone(), ids.clone());
    let get = run(args.concurrency, warmup, args.ops, move |n| {
        let mut client = TaskQueriesClient::new(q[n as usize % q.len()].clone());
        let req = authorized(
            pb::GetTaskRequest {
                task_id: i[n as usize % i.len()].clone(),
                min_position: 0,
            },
            &t,
        );
        async move {
            client.get_task(req?).await?;
            Ok(())
        }
    })
    .await
    .context("GetTask")?;
    report(&format!("GetTask (one of {} tasks)", ids.len()), &args, get);

    let (q, t) = (query.clone(), token.clone());
    let list = run(args.concurrency, warmup, args.ops, move |n| {
        let mut client = TaskQueriesClient::new(q[n as usize % q.len()].clone());
        let req = authorized(
            pb::ListTasksRequest {
                page_size: 50,
                ..Default::default()
            },
            &t,
        );
        async move {
            let page = client.list_tasks(req?).await?.into_inner();
            anyhow::ensure!(page.tasks.len() == 50, "a page of {}", page.tasks.len());
            Ok(())
        }
    })
    .await
    .context("ListTasks")?;
    report("ListTasks (first page of 50)", &args, list);
    Ok(())
}

/// Creates `args.seed` tasks (32 in flight) and waits until the query API reflects them all.
async fn seed(args: &Args, token: &Arc<str>, query: &Channel) -> anyhow::Result<Vec<String>> {
    let commands = channels(&args.command, 8).await?;
    let started = Instant::now();
    let c = commands.clone();
    let t = token.clone();
    let created = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = created.clone();
    run(32, 0, args.seed, move |n| {
        let mut client = TaskCommandsClient::new(c[n as usize % c.len()].clone());
        let id = Uuid::now_v7().to_string();
        let req = authorized(
            pb::CreateTaskRequest {
                envelope: Some(pb::CommandEnvelope {
                    command_id: Uuid::now_v7().to_string(),
                    ..Default::default()
                }),
                task_id: id.clone(),
                title: format!("Write the quarterly report #{n}"),
                description: Some("Collect the numbers, draft the prose, circulate".into()),
                priority: pb::TaskPriority::High as i32,
                tags: vec!["finance".into(), "q3".into()],
                ..Default::default()
            },
            &t,
        );
        let sink = sink.clone();
        async move {
            let reply = client.create_task(req?).await?.into_inner();
            if let Ok(mut s) = sink.lock() {
                s.push((reply.global_position, id));
            }
            Ok(())
        }
    })
    .await
    .context("seeding")?;
    let mut created = std::mem::take(
        &mut *created
            .lock()
            .map_err(|_| anyhow::anyhow!("seed list poisoned"))?,
    );
    created.sort();
    let last = created.last().map_or(0, |(p, _)| *p);
    eprintln!(
        "seeded {} tasks in {:.1} s; waiting for position {last}",
        created.len(),
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + VISIBLE_BOUND;
    let mut client = TaskQueriesClient::new(query.clone());
    loop {
        let req = authorized(
            pb::ListTasksRequest {
                min_position: last,
                page_size: 1,
                ..Default::default()
            },
            token,
        )?;
        match client.list_tasks(req).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {}
            Err(s) => return Err(s.into()),
        }
    }
    Ok(created.into_iter().map(|(_, id)| id).collect())
}

/// Up to 5,000 task ids of the tenant, read page by page.
async fn existing(token: &Arc<str>, query: &Channel) -> anyhow::Result<Vec<String>> {
    let mut client = TaskQueriesClient::new(query.clone());
    let mut ids = Vec::new();
    let mut page_token = String::new();
    while ids.len() < 5_000 {
        let page = client
            .list_tasks(authorized(
                pb::ListTasksRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                token,
            )?)
            .await?
            .into_inner();
        ids.extend(page.tasks.into_iter().map(|t| t.task_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(ids)
}

/// `warmup` untimed then `ops` timed calls of `op` over `concurrency` workers; the timed
/// calls' wall time and latencies.
async fn run<F, Fut>(
    concurrency: usize,
    warmup: u64,
    ops: u64,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    phase(&op, concurrency, 0, warmup).await?;
    let started = Instant::now();
    let lat = phase(&op, concurrency, warmup, ops).await?;
    Ok((started.elapsed(), lat))
}

async fn phase<F, Fut>(
    op: &Arc<F>,
    concurrency: usize,
    first: u64,
    count: u64,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let workers = concurrency.max(1) as u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let op = Arc::clone(op);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while i < count {
                let t = Instant::now();
                op(first + i).await?;
                lat.push(t.elapsed());
                i += workers;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("worker panicked")??);
    }
    Ok(all)
}

fn report(name: &str, args: &Args, (elapsed, mut lat): (Duration, Vec<Duration>)) {
    lat.sort();
    let q = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{name} at {}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        args.concurrency,
        lat.len() as f64 / elapsed.as_secs_f64(),
        q(0.5),
        q(0.99)
    );
}

fn authorized<T>(message: T, bearer: &str) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("authorization", bearer.parse()?);
    Ok(r)
}

/// Several HTTP/2 connections, as several clients would open.
async fn channels(addr: &str, n: usize) -> anyhow::Result<Arc<Vec<Channel>>> {
    let mut channels = Vec::new();
    for _ in 0..n.max(1) {
        channels.push(Endpoint::from_shared(addr.to_owned())?.connect().await?);
    }
    Ok(Arc::new(channels))
}
