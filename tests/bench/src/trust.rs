//! Issue 15's figures: verification speed against a signed checkpoint (events/s over the whole
//! store), and single-event append throughput with the sealer and checkpointer running against
//! the same run without them.

use std::time::{Duration, Instant};

use event_store::checkpoint::generate_key;
use event_store::{
    AppendBatch, CheckpointOptions, EventStore, ExpectedVersion, NewEvent, SealerOptions, StreamId,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::load::{self, Plan};
use crate::stats::{Measurement, ratio};
use crate::stores::metadata;

/// Results of the trust suite.
#[derive(Debug, Clone, Serialize)]
pub struct TrustResult {
    /// Events covered by the checkpoint verified against.
    pub verified_events: u64,
    /// One verification of every event against the checkpoint (events/s).
    pub verify: Measurement,
    /// Single-event appends, no sealer.
    pub append_without: Measurement,
    /// The same appends with the sealer and a checkpointer (every second) running.
    pub append_with: Measurement,
    /// `append_with / append_without` in events/s.
    pub append_ratio: Option<f64>,
    /// Concurrency of both append runs.
    pub concurrency: usize,
}

/// Seeds `events` (task streams, as the rebuild suite does), seals and signs them, times one
/// verification, then times `ops` single-event appends at `concurrency` without and with the
/// sealer running.
pub async fn run(
    store: &EventStore,
    events: u64,
    ops: u64,
    concurrency: usize,
) -> anyhow::Result<TrustResult> {
    crate::rebuild::seed(store, events).await?;
    store.seal_all(5_000).await?;
    let key = generate_key();
    let cp = store.sign_checkpoint(&key).await?;
    let started = Instant::now();
    let report = store
        .verify_checkpoint(&cp, &key.verifying_key(), |_, _| {})
        .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        report.intact,
        "the seeded store does not verify: {report:?}"
    );
    let verify = Measurement::new(1, report.events_checked, elapsed, None);

    let plan = Plan {
        concurrency,
        warmup: (ops / 10).max(concurrency as u64),
        ops,
        events_per_op: 1,
    };
    let append_without = appends(store, plan, "plain").await?;
    let stop = CancellationToken::new();
    let sealer = tokio::spawn(event_store::run_sealer(
        store.clone(),
        SealerOptions {
            checkpoint: Some(CheckpointOptions {
                key,
                every: Duration::from_secs(1),
                file: None,
                publish: None,
            }),
            ..SealerOptions::default()
        },
        stop.clone().cancelled_owned(),
    ));
    let append_with = appends(store, plan, "sealed").await;
    stop.cancel();
    sealer.await??;
    let append_with = append_with?;
    Ok(TrustResult {
        verified_events: report.events_checked,
        append_ratio: ratio(append_with.events_per_sec, append_without.events_per_sec),
        verify,
        append_without,
        append_with,
        concurrency,
    })
}

async fn appends(store: &EventStore, plan: Plan, tag: &'static str) -> anyhow::Result<Measurement> {
    let store = store.clone();
    load::run(plan, move |i| {
        let store = store.clone();
        async move {
            let batch = AppendBatch::new(metadata()).stream(
                StreamId::new(format!("trust-{tag}-{i}"))?,
                "task",
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "bench.appended",
                    1,
                    serde_json::json!({ "i": i }),
                )],
            );
            store.append(batch).await?;
            Ok(())
        }
    })
    .await
}
