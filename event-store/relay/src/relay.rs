//! [`Relay`]: leadership, produce, checkpoints, topic creation and metrics (see the crate docs).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use event_store::wire::{encode_envelope, topic_for};
use event_store::{
    EventStore, Position, RecordedEvent, SubscriptionOptions, load_checkpoint, save_checkpoint,
    wire,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use tokio_util::sync::CancellationToken;

use crate::error::RelayError;

/// Configuration of a [`Relay`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Name of the relay: its checkpoint and its leadership lock. Relays with the same name
    /// share one checkpoint and only one of them is active.
    pub name: String,
    /// Topic prefix; topics are `<prefix><stream type>`.
    pub topic_prefix: String,
    /// Partitions of topics the relay creates.
    pub partitions: i32,
    /// Replication factor of topics the relay creates.
    pub replication: i32,
    /// Stream types whose topics are created at start-up (others on first sight).
    pub stream_types: Vec<String>,
    /// Create missing topics (needs the admin API). Off where topics are provisioned by
    /// other means or the relay's credentials may not create them.
    pub create_topics: bool,
    /// Events per produce batch (all in flight at once).
    pub batch_size: u32,
    /// librdkafka settings, passed through; must include `bootstrap.servers`. Security
    /// (`security.protocol`, `sasl.*`, `ssl.*`) goes here too.
    pub kafka: BTreeMap<String, String>,
    /// First pause after a failure; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest pause after repeated failures.
    pub max_backoff: Duration,
    /// Fault injection for crash drills and tests: after this many messages are handed to the
    /// producer, the run stops as if the process died (no flush, no checkpoint).
    pub crash_after_messages: Option<u64>,
    /// How often the leader samples its lag (`annals_relay_lag_events`,
    /// `annals_relay_held_back_events`, `annals_relay_lag_seconds`). Sampled on a timer, not
    /// per batch: a relay held back by an open transaction publishes no batch at all.
    pub lag_interval: Duration,
}

impl RelayConfig {
    /// Defaults for a broker at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut kafka = BTreeMap::new();
        kafka.insert("bootstrap.servers".to_owned(), bootstrap_servers.into());
        Self {
            name: "kafka-relay".to_owned(),
            topic_prefix: "annals.".to_owned(),
            partitions: 3,
            replication: 1,
            stream_types: ["problem", "task", "agent_session", "governance_decision"]
                .map(str::to_owned)
                .to_vec(),
            create_topics: true,
            batch_size: 1_000,
            kafka,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            crash_after_messages: None,
            lag_interval: Duration::from_secs(1),
        }
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Bounded delivery: a message the broker never acknowledges fails the batch, which is
        // then republished from the checkpoint.
        config.set("message.timeout.ms", "30000");
        // A lone event is sent after at most 1 ms; under load librdkafka still gathers the
        // messages queued while a request is in flight into one request.
        config.set("linger.ms", "1");
        for (k, v) in &self.kafka {
            config.set(k, v);
        }
        // Not overridable: they are what makes the relay correct.
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        config
    }

    fn checkpoint_name(&self) -> String {
        format!("relay:{}", self.name)
    }
}

/// Counters of a relay, shared with whoever started it (tests, health endpoints).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Messages acknowledged by the broker.
    pub published: AtomicU64,
    /// Failed deliveries (each one makes the relay resume from its checkpoint).
    pub produce_errors: AtomicU64,
    /// Whether this relay currently holds the leadership lock.
    pub leader: AtomicBool,
    /// Last checkpointed position.
    pub checkpoint: AtomicU64,
}

/// Publishes the event store to Kafka. See the crate docs.
#[derive(Debug)]
pub struct Relay {
    store: EventStore,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

/// Why one leadership term ended.
enum TermEnd {
    Shutdown,
    Crashed,
}

impl Relay {
    /// A relay over `store` configured by `config`.
    pub fn new(store: EventStore, config: RelayConfig) -> Self {
        Self {
            store,
            config,
            stats: Arc::default(),
        }
    }

    /// Live counters of this relay.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` is cancelled: waits for leadership, then publishes. Failures are
    /// retried with backoff; only an injected crash ([`RelayConfig::crash_after_messages`])
    /// ends the run early, with [`RelayError::InjectedCrash`].
    #[tracing::instrument(name = "relay.run", skip_all, fields(relay = %self.config.name))]
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let mut backoff = self.config.backoff;
        loop {
            match self.term(&shutdown).await {
                Ok(TermEnd::Shutdown) => return Ok(()),
                Ok(TermEnd::Crashed) => return Err(RelayError::InjectedCrash),
                Err(err) => {
                    self.stats.leader.store(false, Ordering::Relaxed);
                    metrics::gauge!("annals_relay_leader", "relay" => self.config.name.clone())
                        .set(0.0);
                    tracing::warn!(error = %err, ?backoff, "relay failed; resuming from checkpoint");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    /// One leadership term: lock, publish from the checkpoint until shutdown or failure.
    async fn term(&self, shutdown: &CancellationToken) -> Result<TermEnd, RelayError> {
        let name = self.config.name.clone();
        // A dedicated connection: the lock lives exactly as long as it does.
        let mut lock = self.store.pool().acquire().await?.detach();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(TermEnd::Shutdown),
            locked = sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("annals.relay:{name}"))
                .execute(&mut lock) => { locked?; }
        }
        self.stats.leader.store(true, Ordering::Relaxed);
        metrics::gauge!("annals_relay_leader", "relay" => name.clone()).set(1.0);
        tracing::info!("relay is the leader");

        let result = self.publish_as_leader(&mut lock, shutdown).await;
        self.stats.leader.store(false, Ordering::Relaxed);
        metrics::gauge!("annals_relay_leader", "relay" => name).set(0.0);
        // Closing the connection releases the lock even if unlocking is not possible.
        let _ = lock.close().await;
        result
    }

    async fn publish_as_leader(
        &self,
        lock: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<TermEnd, RelayError> {
        let checkpoint_name = self.config.checkpoint_name();
        let producer: FutureProducer = self.config.client_config().create()?;
        let mut topics = HashSet::new();
        self.ensure_topics(&mut topics, &self.config.stream_types)
            .await?;

        let start = load_checkpoint(&mut *lock, &checkpoint_name).await?;
        self.stats
            .checkpoint
            .store(u64::try_from(start.0).unwrap_or(0), Ordering::Relaxed);
        let options = SubscriptionOptions {
            batch_size: self.config.batch_size,
            ..SubscriptionOptions::default()
        };
        let mut subscription = self.store.subscribe(start, options);
        let mut handed_over: u64 = 0;
        let mut published_up_to = start;
        let mut lag_check = tokio::time::interval(self.config.lag_interval);
        lag_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lock_check = tokio::time::interval(Duration::from_secs(5));
        lock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return Ok(TermEnd::Shutdown),
                _ = lock_check.tick() => {
                    // A leader whose lock connection died must stop: someone else may lead.
                    sqlx::query("SELECT 1").execute(&mut *lock).await?;
                    continue;
                }
                _ = lag_check.tick() => {
                    sample_lag(&mut *lock, published_up_to).await?;
                    continue;
                }
                batch = subscription.next_batch() => batch?,
            };
            let missing: Vec<String> = batch
                .iter()
                .filter(|e| !topics.contains(&e.stream_type))
                .map(|e| e.stream_type.clone())
                .collect();
            if !missing.is_empty() {
                self.ensure_topics(&mut topics, &missing).await?;
            }

            let started = Instant::now();
            let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(batch.len());
            for event in &batch {
                if self
                    .config
                    .crash_after_messages
                    .is_some_and(|n| handed_over >= n)
                {
                    tracing::warn!(handed_over, "injected relay crash");
                    return Ok(TermEnd::Crashed);
                }
                let delivery = self.enqueue(&producer, event, &mut pending).await?;
                pending.push(delivery);
                handed_over += 1;
            }
            for delivery in pending {
                let outcome = delivery
                    .await
                    .map_err(|_| RelayError::Kafka(KafkaError::Canceled))?;
                if let Err((err, _)) = outcome {
                    return Err(self.produce_failed(&producer, err));
                }
            }

            let Some(last) = batch.last() else { continue };
            save_checkpoint(&mut *lock, &checkpoint_name, last.global_position).await?;
            published_up_to = last.global_position;
            self.stats
                .published
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.stats.checkpoint.store(
                u64::try_from(last.global_position.0).unwrap_or(0),
                Ordering::Relaxed,
            );
            metrics::counter!("annals_relay_messages_total").increment(batch.len() as u64);
            metrics::histogram!("annals_relay_batch_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
    }

    /// Hands one event to the producer. When librdkafka's queue is full, waits for the oldest
    /// in-flight delivery of this batch and retries, so the batch never exceeds the queue.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
        event: &RecordedEvent,
        pending: &mut Vec<DeliveryFuture>,
    ) -> Result<DeliveryFuture, RelayError> {
        let value = encode_envelope(event)?;
        let topic = topic_for(&self.config.topic_prefix, &event.stream_type);
        let headers = headers_of(event);
        let mut record = FutureRecord::to(&topic)
            .key(event.stream_id.as_bytes())
            .payload(&value)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        let oldest = pending.remove(0);
                        if let Ok(Err((err, _))) = oldest.await {
                            return Err(self.produce_failed(producer, err));
                        }
                    }
                }
                // Refused at once (e.g. a producer already in its fatal state): a produce
                // error like a failed delivery, counted the same way.
                Err((err, _)) => return Err(self.produce_failed(producer, err)),
            }
        }
    }

    /// Counts a failed produce (at hand-over or at delivery) and says whether the producer must
    /// be rebuilt; the caller ends the term with the returned error.
    fn produce_failed(&self, producer: &FutureProducer, err: KafkaError) -> RelayError {
        self.stats.produce_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("annals_relay_produce_errors_total").increment(1);
        if matches!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal))
            || producer.client().fatal_error().is_some()
        {
            tracing::error!(error = %err, "fatal producer error; recreating the producer");
        }
        RelayError::Kafka(err)
    }

    async fn ensure_topics(
        &self,
        known: &mut HashSet<String>,
        stream_types: &[String],
    ) -> Result<(), RelayError> {
        if self.config.create_topics {
            let unknown: Vec<&String> = stream_types
                .iter()
                .filter(|t| !known.contains(*t))
                .collect();
            self.create_missing_topics(&unknown).await?;
        }
        known.extend(stream_types.iter().cloned());
        Ok(())
    }

    /// Creates the topics of `stream_types` that the broker does not list.
    async fn create_missing_topics(&self, stream_types: &[&String]) -> Result<(), RelayError> {
        if stream_types.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.config.client_config().create()?;
        // Only topics the broker does not list are created: asking to create existing ones is
        // needless admin traffic.
        let (admin, existing) = listed_topics(admin).await?;
        let names: Vec<String> = stream_types
            .iter()
            .map(|t| topic_for(&self.config.topic_prefix, t))
            .filter(|topic| !existing.contains(topic))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                NewTopic::new(
                    n,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.create_topics(&new_topics, &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => {
                            tracing::error!(%topic, ?code, "creating topic failed");
                            return Err(RelayError::Kafka(KafkaError::AdminOp(code)));
                        }
                    }
                }
            }
            Err(err) => {
                // Some Kafka-compatible brokers (tansu 0.6) create the topics but answer with a
                // reply librdkafka cannot parse; what matters is whether the broker lists them.
                let (_, existing) = listed_topics(admin).await?;
                if let Some(topic) = names.iter().find(|n| !existing.contains(*n)) {
                    tracing::error!(%topic, error = %err, "creating topic failed");
                    return Err(RelayError::Kafka(err));
                }
                tracing::debug!(error = %err, "create-topics reply unreadable; every topic is listed");
            }
        }
        Ok(())
    }
}

/// Counting stops here so that a far-behind relay does not make sampling expensive.
pub const MAX_COUNTED_LAG: i64 = 1_000_000;

/// Committed events above `after` (up to [`MAX_COUNTED_LAG`]): all of them, those held back
/// (from the first one a reader may not deliver yet, because a transaction that started before
/// it is still open: see the store's gap safety), and the age of the oldest. The deliverable
/// test is the store's own (`read_all`), in the same statement, so it sees the same snapshot.
const LAG: &str = "WITH behind AS ( \
         SELECT global_position AS p, recorded_at, \
                (global_position < annals_delivery_floor() \
                 OR tx_id < pg_snapshot_xmin(pg_current_snapshot())) AS deliverable \
           FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2), \
       cut AS (SELECT min(p) AS p FROM behind WHERE NOT deliverable) \
     SELECT count(*) AS events, \
            count(*) FILTER (WHERE behind.p >= cut.p) AS held_back, \
            COALESCE(extract(epoch FROM now() - min(behind.recorded_at))::float8, 0) AS secs \
       FROM behind, cut";

/// Sets the lag gauges from the events above `published_up_to` (the checkpoint).
async fn sample_lag(conn: &mut PgConnection, published_up_to: Position) -> Result<(), RelayError> {
    let row = sqlx::query(LAG)
        .bind(published_up_to.0)
        .bind(MAX_COUNTED_LAG)
        .fetch_one(conn)
        .await?;
    let events: i64 = row.try_get("events")?;
    let held_back: i64 = row.try_get("held_back")?;
    let secs: f64 = row.try_get("secs")?;
    metrics::gauge!("annals_relay_lag_events").set(events as f64);
    metrics::gauge!("annals_relay_held_back_events").set(held_back as f64);
    metrics::gauge!("annals_relay_lag_seconds").set(secs.max(0.0));
    Ok(())
}

/// Describes every metric of the relay (`# HELP`) and registers its unlabelled series at zero,
/// so that they are exported before the first event or failure. Call once at start-up, after
/// the recorder is installed.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "annals_relay_messages_total",
        Unit::Count,
        "Messages the broker acknowledged."
    );
    describe_counter!(
        "annals_relay_produce_errors_total",
        Unit::Count,
        "Failed deliveries; each one makes the relay resume from its checkpoint."
    );
    describe_gauge!(
        "annals_relay_lag_events",
        Unit::Count,
        "Committed events above the relay's checkpoint, those held back by an open transaction included (counted up to 1000000)."
    );
    describe_gauge!(
        "annals_relay_held_back_events",
        Unit::Count,
        "Committed events above the checkpoint that cannot be published yet because an older transaction is still open."
    );
    describe_gauge!(
        "annals_relay_lag_seconds",
        Unit::Seconds,
        "Age of the oldest committed event not yet published (0 when caught up)."
    );
    describe_gauge!(
        "annals_relay_leader",
        "1 while this relay (label relay) holds the leadership lock, else 0."
    );
    describe_histogram!(
        "annals_relay_batch_duration_seconds",
        Unit::Seconds,
        "Time to produce one batch until the broker acknowledged every message."
    );
    metrics::counter!("annals_relay_messages_total").increment(0);
    metrics::counter!("annals_relay_produce_errors_total").increment(0);
    metrics::gauge!("annals_relay_lag_events").set(0.0);
    metrics::gauge!("annals_relay_held_back_events").set(0.0);
    metrics::gauge!("annals_relay_lag_seconds").set(0.0);
}

/// The topic names the broker lists. The metadata call blocks its thread, so it runs off the
/// async workers; the client is handed back for further use.
pub(crate) async fn listed_topics(
    admin: AdminClient<DefaultClientContext>,
) -> Result<(AdminClient<DefaultClientContext>, HashSet<String>), RelayError> {
    let (admin, listed) = tokio::task::spawn_blocking(move || {
        let listed = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .collect::<HashSet<String>>()
            });
        (admin, listed)
    })
    .await
    .map_err(|join| match join.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(_) => RelayError::Kafka(KafkaError::Canceled),
    })?;
    Ok((admin, listed?))
}

/// The message headers of [`wire::headers`], as librdkafka takes them.
fn headers_of(event: &RecordedEvent) -> OwnedHeaders {
    let pairs = wire::headers(event);
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len()),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        },
    )
}
