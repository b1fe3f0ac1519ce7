//! `annals-bench`: the benchmark harness of annals (issue 8).
//!
//! Numbers on shared machines drift, so every comparison is taken in one run, side by side, on
//! the same Postgres server, and reported as a ratio to a floor measured minutes apart:
//!
//! 1. **Append**, one event per command at concurrency 1, 8 and 64, and **batch append**, 100
//!    events per command at concurrency 1 and 8: the annals event store (`EventStore::append`),
//!    a raw `INSERT` (`UNNEST` for
//!    batches) into a table shaped like `events` (the floor), `cqrs-es` + `postgres-es`, and
//!    `esrs`. A fresh database per run; stores are interleaved per concurrency level.
//!    The same single-row insert is also driven by `pgbench` at each concurrency (its own client
//!    is not bounded by the harness's), and every single-event ratio uses the better floor.
//! 2. **Rebuild** of every projection from stored events (`projections::rebuild`) against a
//!    raw batched read + set-based upsert floor.
//! 3. **End to end**: `annals-command-api`, `annals-projections` and `annals-query-api` as
//!    child processes on 127.0.0.1: gRPC `CreateTask` rate and latency at concurrency 8 and 64,
//!    `GetTask`/`ListTasks` latency, append-to-visible lag at half the best command rate, each
//!    process's peak RSS, and a streamed 1,000,000-row audit export with the query API's memory
//!    growth; 60 s of `CreateTask` at full speed with the tasks projection's backlog sampled;
//!    and, with Kafka, the same append-to-visible lag on a second stack whose projections
//!    consume the relay's topics (see [`e2e`]). Suite `queries` (not in the default list) runs
//!    only the query phase after `CreateTask` at 64 has seeded the tasks it reads
//!    (`--suites pgbench,queries` gives both sides of the `GetTask` target in about a minute).
//! 4. **Kafka**: the outbox relay against a plain idempotent rdkafka producer on tansu.
//!
//! On a server without autovacuum, `ANALYZE` runs every 10 s in its place for every contender
//! (see [`db::Server::analyze_until`]) and the report says so.
//!
//! Every run has a fixed number of operations after a warm-up (bounded loops, loopback only);
//! latencies go into HDR histograms. `--quick` (default) finishes in minutes on 2 cores;
//! `--full` runs 4× the operations. Results: `<out>/results.json` and `<out>/results.md`, and
//! the table on stdout. `deploy/bench.sh` starts the services, builds and runs it.
//!
//! # Layout
//!
//! - `src/main.rs`: the binary: command line, suite order, machine facts, writing the results.
//! - [`stats`]: HDR latency histograms, [`stats::Measurement`], ratios and formatting (tested).
//! - [`load`]: the fixed-operation, fixed-concurrency load generator (tested).
//! - [`db`]: fresh databases per run on one server.
//! - [`stores`]: the append contenders behind one `append(op, events)`.
//! - [`rebuild`]: seeding with the real task aggregate, rebuild and its floor.
//! - [`e2e`]: the three servers as child processes, gRPC load, lag, queries, RSS, export.
//! - [`kafka`]: relay against plain producer.
//! - [`pgbench`]: Postgres's own client as a second floor (single-row insert, primary-key read).
//! - [`report`]: the JSON report, the targets and the markdown table.

pub mod db;
pub mod e2e;
pub mod kafka;
pub mod load;
pub mod pgbench;
pub mod rebuild;
pub mod report;
pub mod stats;
pub mod stores;
pub mod trust;
