//! Live subscription to all events: catch-up reads woken by LISTEN/NOTIFY.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::store::EventStore;
use crate::types::{Position, RecordedEvent};

/// Channel on which every `EventStore` announces its committed appends (a bare wake-up).
pub const NOTIFY_CHANNEL: &str = "annals_events";

/// Tuning of a [`Subscription`]; the defaults suit projections and relays.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// Most events returned by one [`Subscription::next_batch`].
    pub batch_size: u32,
    /// Longest wait for a notification before reading anyway. Only a safety net for lost
    /// notifications (e.g. across a reconnect); wake-ups normally come from NOTIFY.
    pub idle_recheck: Duration,
    /// Longest pause between reads while committed events are held back behind an open
    /// transaction (the pause starts at 1 ms and doubles). A notification on any channel
    /// listened to ends the pause at once, so this only bounds how late the end of a holder
    /// that sends none (e.g. the sealer's transactions) is noticed.
    pub max_held_back_pause: Duration,
    /// Only events of these stream types; all when `None`.
    pub stream_types: Option<Vec<String>>,
    /// Further channels announcing commits of transactions that may hold events back (e.g. the
    /// projection runners' progress channel): while held back, a notification on one of them
    /// re-reads at once; while caught up they are ignored (they bring no new events).
    pub holder_channels: Vec<String>,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_recheck: Duration::from_secs(5),
            max_held_back_pause: Duration::from_millis(20),
            stream_types: None,
            holder_channels: Vec::new(),
        }
    }
}

/// A live, gap-safe subscription to all events after a position.
///
/// Every committed event is delivered exactly once, in global order. When caught up it waits on
/// `LISTEN` (no polling); the listener is set up before each read, so a commit between a read
/// and the wait still wakes it. While events are held back behind an open transaction it waits
/// for the next notification on any of its channels (an append's or a runner's commit is what
/// usually ends the holder), re-reading after a short pause when none comes.
#[derive(Debug)]
pub struct Subscription {
    store: EventStore,
    options: SubscriptionOptions,
    after: Position,
    listener: Option<PgListener>,
}

impl Subscription {
    /// Subscribes to events after `after`.
    pub fn new(store: EventStore, after: Position, options: SubscriptionOptions) -> Self {
        Self {
            store,
            options,
            after,
            listener: None,
        }
    }

    /// Position of the last delivered event.
    pub fn position(&self) -> Position {
        self.after
    }

    /// The next non-empty batch of events, waiting for new ones when caught up.
    ///
    /// Cancel-safe: dropping the future loses nothing, because the position only advances when
    /// a batch is returned.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.listener.is_none() {
                let mut listener = PgListener::connect_with(self.store.pool()).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                for channel in &self.options.holder_channels {
                    listener.listen(channel).await?;
                }
                self.listener = Some(listener);
            }
            let batch = match &self.options.stream_types {
                Some(types) => {
                    self.store
                        .read_all_of_types(self.after, self.options.batch_size, types)
                        .await?
                }
                None => {
                    self.store
                        .read_all(self.after, self.options.batch_size)
                        .await?
                }
            };
            if let Some(last) = batch.events.last() {
                self.after = last.global_position;
                return Ok(batch.events);
            }
            let held_back = batch.held_back;
            let wait = if held_back {
                // An older transaction is still open; its end sends no notification when it
                // neither appended nor committed a projection batch, so re-read after a short,
                // growing pause at the latest.
                let wait = pause;
                pause = (pause * 2).min(self.options.max_held_back_pause);
                wait
            } else {
                pause = Duration::from_millis(1);
                self.options.idle_recheck
            };
            let Some(listener) = self.listener.as_mut() else {
                continue;
            };
            if let Err(err) = wait_for_wake_up(listener, held_back, wait).await {
                tracing::warn!(error = %err, "subscription listener failed; reconnecting");
                self.listener = None;
            }
        }
    }
}

/// Waits at most `wait` for a notification that calls for a re-read: any one while `held_back`,
/// one on [`NOTIFY_CHANNEL`] otherwise (other channels only announce ends of holders). One
/// read serves every wake-up already buffered, so those are drained.
async fn wait_for_wake_up(
    listener: &mut PgListener,
    held_back: bool,
    wait: Duration,
) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + wait;
    loop {
        let Ok(notification) = tokio::time::timeout_at(deadline, listener.recv()).await else {
            return Ok(());
        };
        let mut wakes = notification?.channel() == NOTIFY_CHANNEL || held_back;
        while let Some(n) = listener.next_buffered() {
            wakes |= n.channel() == NOTIFY_CHANNEL;
        }
        if wakes {
            return Ok(());
        }
    }
}

impl EventStore {
    /// A live subscription to all events after `after`.
    pub fn subscribe(&self, after: Position, options: SubscriptionOptions) -> Subscription {
        Subscription::new(self.clone(), after, options)
    }
}
