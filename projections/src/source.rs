//! Where events come from: the Postgres store (embedded default) or Kafka topics, behind one
//! interface.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use event_store::{EventStore, Position, RecordedEvent, Subscription, SubscriptionOptions};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::projection::ProjectionError;
use crate::runner::CheckpointMove;

/// A batch from a source.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    /// Events, in source order (global order from the store; per-partition order from Kafka).
    pub events: Vec<RecordedEvent>,
    /// The store checkpoint this batch moves (store mode only).
    pub checkpoint: Option<CheckpointMove>,
}

/// A source of event batches.
#[async_trait]
pub trait EventSource: Send {
    /// The next non-empty batch, waiting when there is none.
    async fn next_batch(&mut self) -> Result<SourceBatch, ProjectionError>;

    /// The last batch's effects committed: acknowledge it to the source (Kafka offsets).
    async fn ack(&mut self) -> Result<(), ProjectionError>;

    /// The last batch failed: continue from the last durable point.
    async fn rewind(&mut self) -> Result<(), ProjectionError>;

    /// Whether the runner should compare its per-stream versions with the store when the
    /// source is idle (empty batch) and apply what the source failed to deliver.
    fn reconciles(&self) -> bool {
        false
    }
}

/// The store as a source: a live, gap-safe [`Subscription`] from the projection's checkpoint.
/// The checkpoint itself is written by the runner in the batch's transaction.
#[derive(Debug)]
pub struct StoreSource {
    store: EventStore,
    checkpoint_name: String,
    options: SubscriptionOptions,
    subscription: Option<Subscription>,
}

impl StoreSource {
    /// A source for the projection whose checkpoint is `checkpoint_name`, reading only
    /// `stream_types` when given.
    pub fn new(
        store: EventStore,
        checkpoint_name: impl Into<String>,
        stream_types: Option<&[&str]>,
        batch_size: u32,
    ) -> Self {
        Self {
            store,
            checkpoint_name: checkpoint_name.into(),
            options: SubscriptionOptions {
                batch_size,
                stream_types: stream_types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
                // Other runners' batch transactions are the usual holders besides appends
                // (they write, so they have xids): their commits end a held-back wait at once.
                holder_channels: vec![crate::runner::PROGRESS_CHANNEL.to_owned()],
                ..SubscriptionOptions::default()
            },
            subscription: None,
        }
    }
}

#[async_trait]
impl EventSource for StoreSource {
    async fn next_batch(&mut self) -> Result<SourceBatch, ProjectionError> {
        if self.subscription.is_none() {
            let from = self.store.load_checkpoint(&self.checkpoint_name).await?;
            self.subscription = Some(self.store.subscribe(from, self.options.clone()));
        }
        let Some(sub) = self.subscription.as_mut() else {
            return Ok(SourceBatch::default());
        };
        let expected = sub.position();
        let events = sub.next_batch().await?;
        let to = events.last().map_or(expected, |e| e.global_position);
        Ok(SourceBatch {
            events,
            checkpoint: Some(CheckpointMove { expected, to }),
        })
    }

    async fn ack(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn rewind(&mut self) -> Result<(), ProjectionError> {
        self.subscription = None;
        Ok(())
    }
}

/// Kafka settings of a [`KafkaSource`].
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers.
    pub bootstrap_servers: String,
    /// Topic prefix (`annals.` by default): topic = prefix + stream type with `_` as `-`.
    pub topic_prefix: String,
    /// Consumer group; every projection has its own (`<prefix>projections.<name>` by default).
    pub group_id: String,
    /// Most messages per batch.
    pub batch_size: usize,
    /// How long to gather a batch once a first message arrived. Zero (the default) takes only
    /// what the consumer already holds: a lone event is applied at once, and under load the
    /// messages that arrive while a batch is applied form the next, larger batch.
    pub batch_linger: Duration,
    /// After this long without a message, `next_batch` returns an empty batch so that the
    /// runner reconciles with the store.
    pub idle_timeout: Duration,
    /// Extra librdkafka settings.
    pub extra: Vec<(String, String)>,
}

impl KafkaSourceConfig {
    /// Defaults for `projection` on `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>, projection: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: "annals.".into(),
            group_id: format!("annals.projections.{projection}"),
            batch_size: 500,
            batch_linger: Duration::ZERO,
            idle_timeout: Duration::from_secs(5),
            extra: Vec::new(),
        }
    }
}

/// Kafka topics as a source: one consumer in the projection's group (many workers share the
/// partitions), auto-commit off, offsets committed by [`EventSource::ack`] after the batch's
/// transaction committed. Order holds per partition, i.e. per stream (key = stream id);
/// redeliveries after a rebalance or crash are turned into no-ops by the per-stream versions.
///
/// The store stays the source of truth: when no message arrived for
/// [`KafkaSourceConfig::idle_timeout`], the runner reconciles its per-stream versions with the
/// store's stream heads and applies whatever Kafka did not deliver (see
/// [`crate::Runner::reconcile`]). With tansu we saw a partition taken over after a worker died
/// resume at the wrong offset (from 0, harmless; or past uncommitted messages, which would
/// otherwise be lost for the model until the stream's next event).
pub struct KafkaSource {
    config: KafkaSourceConfig,
    topics: Vec<String>,
    consumer: Option<StreamConsumer<GroupContext>>,
    /// Next offsets to commit for the last batch.
    pending: HashMap<(String, i32), i64>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("group_id", &self.config.group_id)
            .field("topics", &self.topics)
            .finish()
    }
}

impl KafkaSource {
    /// A source reading the topics of `stream_types`.
    pub fn new(config: KafkaSourceConfig, stream_types: &[&str]) -> Self {
        let topics = stream_types
            .iter()
            .map(|t| event_store::wire::topic_for(&config.topic_prefix, t))
            .collect();
        Self {
            config,
            topics,
            consumer: None,
            pending: HashMap::new(),
        }
    }

    fn connect(&self) -> Result<StreamConsumer<GroupContext>, ProjectionError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set("allow.auto.create.topics", "false")
            // How long the broker may hold a fetch. A broker answers as soon as it has data
            // (`fetch.min.bytes` 1), but tansu 0.6 pauses each fetch for half this time even
            // with data in hand (librdkafka's default 500 ms meant ~250 ms per hop); 10 ms
            // bounds that pause at the cost of ~100 empty fetches/s per idle consumer.
            .set("fetch.wait.max.ms", "10")
            // Cooperative rebalancing: a member keeps the partitions it still owns instead of
            // having all of them revoked and reassigned on every membership change.
            .set("partition.assignment.strategy", "cooperative-sticky");
        for (k, v) in &self.config.extra {
            cfg.set(k, v);
        }
        let consumer: StreamConsumer<GroupContext> = cfg
            .create_with_context(GroupContext {
                group: self.config.group_id.clone(),
            })
            .map_err(|e| ProjectionError::Source(e.to_string()))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ProjectionError::Source(e.to_string()))?;
        Ok(consumer)
    }
}

#[async_trait]
impl EventSource for KafkaSource {
    async fn next_batch(&mut self) -> Result<SourceBatch, ProjectionError> {
        if self.consumer.is_none() {
            self.consumer = Some(self.connect()?);
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(SourceBatch::default());
        };
        self.pending.clear();
        let mut events = Vec::new();
        let first = match tokio::time::timeout(self.config.idle_timeout, consumer.recv()).await {
            Ok(m) => m.map_err(|e| ProjectionError::Source(e.to_string()))?,
            Err(_idle) => return Ok(SourceBatch::default()),
        };
        push(&mut self.pending, &mut events, &first)?;
        let deadline = tokio::time::Instant::now() + self.config.batch_linger;
        while events.len() < self.config.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => push(&mut self.pending, &mut events, &m)?,
                Ok(Err(e)) => return Err(ProjectionError::Source(e.to_string())),
                Err(_) => break,
            }
        }
        Ok(SourceBatch {
            events,
            checkpoint: None,
        })
    }

    async fn ack(&mut self) -> Result<(), ProjectionError> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.pending {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| ProjectionError::Source(e.to_string()))?;
        }
        tracing::debug!(group = %self.config.group_id, offsets = ?self.pending, "committing offsets");
        consumer
            .commit(&list, CommitMode::Sync)
            .map_err(|e| ProjectionError::Source(e.to_string()))?;
        self.pending.clear();
        Ok(())
    }

    fn reconciles(&self) -> bool {
        true
    }

    async fn rewind(&mut self) -> Result<(), ProjectionError> {
        // Dropping the consumer leaves the group; the new one resumes from committed offsets.
        self.consumer = None;
        self.pending.clear();
        Ok(())
    }
}

/// Logs partition assignments: who owns what is the first question when a group stalls.
#[derive(Debug)]
pub struct GroupContext {
    group: String,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(list) => {
                let parts: Vec<String> = list
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(group = %self.group, partitions = ?parts, "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                tracing::info!(group = %self.group, count = list.count(), "partitions revoked");
            }
            Rebalance::Error(err) => {
                tracing::warn!(group = %self.group, error = %err, "rebalance failed");
            }
        }
    }
}

/// Decodes a message into `events` and remembers the offset to commit after it.
fn push(
    pending: &mut HashMap<(String, i32), i64>,
    events: &mut Vec<RecordedEvent>,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(), ProjectionError> {
    tracing::trace!(
        topic = m.topic(),
        partition = m.partition(),
        offset = m.offset(),
        "message"
    );
    pending.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
    let bytes = m.payload().unwrap_or_default();
    match event_store::wire::decode_envelope(bytes) {
        Ok(event) => events.push(event),
        // Not an event at all, so there is nothing to dead-letter or park: log it and move on
        // (its offset is committed with the batch). Every real event is also in the store.
        Err(err) => {
            tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(),
                error = %err, "undecodable Kafka message skipped");
            metrics::counter!("annals_projection_undecodable_messages_total").increment(1);
        }
    }
    Ok(())
}

/// Position of the store's newest event: a convenience for tools that catch up to "now".
pub async fn head(store: &EventStore) -> Result<Position, ProjectionError> {
    Ok(store.head_position().await?)
}
