//! The load generator: a fixed number of operations at a fixed concurrency, after a warm-up.
//!
//! Operation `i` (0-based, unique within a run, warm-up included) is handed to the closure, so
//! every operation can derive its own ids. Worker `w` runs `w, w + c, w + 2c, …`: the loops are
//! bounded, nothing is open-ended.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::stats::{Latencies, Measurement};

/// Shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Concurrent workers (each one operation in flight).
    pub concurrency: usize,
    /// Untimed operations first (same concurrency).
    pub warmup: u64,
    /// Timed operations.
    pub ops: u64,
    /// Events carried by each operation (for events/s).
    pub events_per_op: u64,
}

/// Runs `plan.warmup` untimed, then `plan.ops` timed operations of `op`; the first error aborts.
pub async fn run<F, Fut>(plan: Plan, op: F) -> anyhow::Result<Measurement>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    phase(&op, plan.concurrency, 0, plan.warmup)
        .await
        .context("warm-up")?;
    let started = Instant::now();
    let lat = phase(&op, plan.concurrency, plan.warmup, plan.ops).await?;
    let elapsed = started.elapsed();
    Ok(Measurement::new(
        plan.ops,
        plan.ops * plan.events_per_op,
        elapsed,
        Some(&lat),
    ))
}

/// Operations `first .. first + count` over `concurrency` workers; returns their latencies.
async fn phase<F, Fut>(
    op: &Arc<F>,
    concurrency: usize,
    first: u64,
    count: u64,
) -> anyhow::Result<Latencies>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let workers = concurrency.max(1) as u64;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..workers {
        let op = Arc::clone(op);
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            let mut i = w;
            while i < count {
                let t = Instant::now();
                op(first + i).await?;
                lat.record(t.elapsed());
                i += workers;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Latencies::new();
    for t in tasks {
        all.merge(&t.await.context("worker panicked")??);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn every_operation_runs_exactly_once() {
        let seen = Arc::new((0..30).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let s = Arc::clone(&seen);
        let plan = Plan {
            concurrency: 4,
            warmup: 10,
            ops: 20,
            events_per_op: 3,
        };
        let m = run(plan, move |i| {
            let s = Arc::clone(&s);
            async move {
                s[usize::try_from(i)?].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        assert_eq!((m.ops, m.events), (20, 60));
        assert!(m.p99_ms.is_some());
    }
}
