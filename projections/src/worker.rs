//! Running the read side in a process: every selected projection on its source (the store, or
//! Kafka topics when configured), the reactors, and the lag sampler. Used by the
//! `annals-projections` worker and by the all-in-one `annals` binary.

use std::sync::Arc;
use std::time::Duration;

use event_store::EventStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::reactors::{InAppInbox, RecurringTasks, ReminderScheduler};
use crate::source::{EventSource, KafkaSource, KafkaSourceConfig, StoreSource};
use crate::{Projection, ProjectionError, Runner, RunnerOptions, lag, models};

/// Stream types of the domain, for projections that consume all of them from Kafka topics.
pub const ALL_STREAM_TYPES: &[&str] = &["problem", "task", "agent_session", "governance_decision"];

/// Where projections read events from when Kafka is used.
#[derive(Debug, Clone)]
pub struct KafkaWorkerConfig {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// Topic prefix (topic = prefix + stream type with '_' as '-').
    pub topic_prefix: String,
    /// Consumer group prefix; each projection's group is prefix + its name.
    pub group_prefix: String,
}

/// What a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Consume Kafka instead of the store (the embedded default) when set.
    pub kafka: Option<KafkaWorkerConfig>,
    /// Events per batch (per transaction).
    pub batch_size: u32,
    /// Attempts per event before it is dead-lettered.
    pub max_attempts: u32,
    /// Run the reminder scheduler and the recurring-task manager.
    pub reactors: bool,
    /// Time between reminder scans.
    pub reminder_interval: Duration,
    /// Time between lag samples.
    pub lag_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            kafka: None,
            batch_size: 500,
            max_attempts: 3,
            reactors: true,
            reminder_interval: Duration::from_secs(5),
            lag_interval: Duration::from_secs(5),
        }
    }
}

/// The projections named in a comma-separated list, or all of them for `all`.
pub fn select(names: &str) -> Result<Vec<Arc<dyn Projection>>, String> {
    if names == "all" {
        return Ok(models::all());
    }
    names
        .split(',')
        .map(|n| {
            models::by_name(n.trim()).ok_or_else(|| {
                let known: Vec<&str> = models::all().iter().map(|p| p.name()).collect();
                format!("unknown projection {n:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Starts every projection, the reactors (if configured) and the lag sampler; they stop when
/// `shutdown` is cancelled. Await the set with [`join`].
pub fn spawn(
    store: &EventStore,
    projections: &[Arc<dyn Projection>],
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> JoinSet<Result<(), ProjectionError>> {
    let mut tasks = JoinSet::new();
    let options = RunnerOptions {
        max_attempts: config.max_attempts,
        ..RunnerOptions::default()
    };
    for p in projections {
        let runner = Runner::new(store.clone(), p.clone(), options.clone());
        let mut source: Box<dyn EventSource> = match &config.kafka {
            Some(kafka) => {
                let mut cfg = KafkaSourceConfig::new(kafka.bootstrap.clone(), p.name());
                cfg.topic_prefix = kafka.topic_prefix.clone();
                cfg.group_id = format!("{}{}", kafka.group_prefix, p.name());
                cfg.batch_size = config.batch_size as usize;
                let types: Vec<&str> = p
                    .stream_types()
                    .map_or_else(|| ALL_STREAM_TYPES.to_vec(), <[_]>::to_vec);
                Box::new(KafkaSource::new(cfg, &types))
            }
            None => Box::new(StoreSource::new(
                store.clone(),
                p.checkpoint_name(),
                p.stream_types(),
                config.batch_size,
            )),
        };
        let token = shutdown.clone();
        tracing::info!(
            projection = p.name(),
            kafka = config.kafka.is_some(),
            "starting projection"
        );
        tasks.spawn(async move { runner.run(source.as_mut(), &token).await });
    }
    if config.reactors {
        let recurring = RecurringTasks::new(store.clone());
        let token = shutdown.clone();
        tasks.spawn(async move { recurring.run(&token).await });
        let mut scheduler = ReminderScheduler::new(
            store.clone(),
            Arc::new(InAppInbox::new(store.pool().clone())),
        );
        scheduler.interval = config.reminder_interval.max(Duration::from_secs(1));
        let token = shutdown.clone();
        tasks.spawn(async move { scheduler.run(&token).await });
    }
    tokio::spawn(lag::sample(
        store.pool().clone(),
        projections.to_vec(),
        config.lag_interval.max(Duration::from_secs(1)),
        shutdown.clone(),
    ));
    tasks
}

/// Waits for every task of [`spawn`] to end, logging failures; returns how many failed.
pub async fn join(mut tasks: JoinSet<Result<(), ProjectionError>>) -> usize {
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                failed += 1;
                tracing::error!(error = %err, "worker task failed");
            }
            Err(err) => {
                failed += 1;
                tracing::error!(error = %err, "worker task panicked");
            }
        }
    }
    failed
}
