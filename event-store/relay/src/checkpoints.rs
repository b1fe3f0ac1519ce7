//! Publishes the global chain's signed checkpoints to a Kafka topic: a copy outside the
//! database that an owner of the database cannot rewrite.
//!
//! One JSON message per checkpoint ([`event_store::SignedCheckpoint`], the same line the
//! checkpoint file holds), keyed by the signing key's id, on a single-partition topic so that
//! a reader sees them in signing order. Any consumer decodes them with `serde_json` alone.

use std::time::Duration;

use event_store::SignedCheckpoint;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use crate::RelayConfig;
use crate::error::RelayError;
use crate::relay::listed_topics;

/// The default topic of checkpoints.
pub const CHECKPOINT_TOPIC: &str = "annals.checkpoints";

/// A producer of checkpoint messages.
pub struct CheckpointPublisher {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for CheckpointPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl CheckpointPublisher {
    /// A publisher to `topic` with the relay's producer settings (idempotent, `acks=all`);
    /// creates the topic (one partition) when the broker does not list it.
    pub async fn new(config: &RelayConfig, topic: impl Into<String>) -> Result<Self, RelayError> {
        let topic = topic.into();
        let client = config.client_config();
        let admin: AdminClient<DefaultClientContext> = client.create()?;
        let (admin, existing) = listed_topics(admin).await?;
        if !existing.contains(&topic) {
            let new = [NewTopic::new(
                &topic,
                1,
                TopicReplication::Fixed(config.replication),
            )];
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            match admin.create_topics(&new, &options).await {
                Ok(results) => {
                    for result in results {
                        match result {
                            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((_, code)) => {
                                return Err(RelayError::Kafka(KafkaError::AdminOp(code)));
                            }
                        }
                    }
                }
                // As in the relay: some brokers create the topic but answer unreadably.
                Err(err) => {
                    let (_, existing) = listed_topics(admin).await?;
                    if !existing.contains(&topic) {
                        return Err(RelayError::Kafka(err));
                    }
                }
            }
        }
        Ok(Self {
            producer: client.create()?,
            topic,
        })
    }

    /// Publishes one checkpoint and waits for the broker's acknowledgement.
    pub async fn publish(&self, checkpoint: &SignedCheckpoint) -> Result<(), RelayError> {
        let payload = serde_json::to_vec(checkpoint)
            .map_err(|e| RelayError::Store(event_store::StoreError::Checkpoint(e.to_string())))?;
        let record = FutureRecord::to(&self.topic)
            .key(&checkpoint.key_id)
            .payload(&payload);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| RelayError::Kafka(e))?;
        metrics::counter!("annals_checkpoints_published_total").increment(1);
        Ok(())
    }

    /// Publishes every checkpoint received on `checkpoints` until the sender is gone (the
    /// sealer drops it after signing its last checkpoint, so a clean stop publishes that one
    /// too). A failed publication is logged, not retried: the table and the file keep every
    /// checkpoint, and the next one supersedes it.
    #[tracing::instrument(name = "relay.checkpoints", skip_all, fields(topic = %self.topic))]
    pub async fn run(self, mut checkpoints: mpsc::Receiver<SignedCheckpoint>) {
        while let Some(cp) = checkpoints.recv().await {
            if let Err(e) = self.publish(&cp).await {
                tracing::warn!(error = %e, leaf_count = cp.leaf_count, "publishing a checkpoint failed");
            }
        }
    }
}

/// Decodes a checkpoint message.
pub fn decode_checkpoint(payload: &[u8]) -> Result<SignedCheckpoint, serde_json::Error> {
    serde_json::from_slice(payload)
}
