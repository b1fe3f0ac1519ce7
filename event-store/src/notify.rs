//! Post-commit wake-ups, coalesced per process.
//!
//! `NOTIFY` inside a transaction makes Postgres serialise every notifying commit on its notify
//! lock (held through the WAL flush). Instead a [`Waker`] sends `pg_notify` after the commits it
//! covers, from one background task: any number of commits that land while a notification is
//! being sent are covered by the single one sent after it. Each [`crate::EventStore`] wakes
//! subscribers on [`crate::NOTIFY_CHANNEL`] after its appends; projection runners use their
//! own waker to announce committed batches. Listeners only use notifications as wake-ups and
//! re-read on their own, so a wake-up lost to a crash delays an answer, it never loses data.
//! For the same reason a wake-up commits asynchronously (`synchronous_commit` off for its own
//! transaction): `pg_notify` gives the transaction an xid, and a durable commit would cost a
//! WAL flush per wake-up, as much as the appends it announces.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use sqlx::PgPool;
use tokio::sync::Notify;

/// Sends at most one `pg_notify(channel, payload)` at a time, and one more for everything that
/// committed since. Its task ends after the waker is dropped (sending what was still asked).
#[derive(Debug)]
pub struct Waker {
    channel: &'static str,
    payload: Arc<str>,
    pending: Arc<Pending>,
    started: OnceLock<()>,
}

#[derive(Debug, Default)]
struct Pending {
    wake: Notify,
    closed: AtomicBool,
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.pending.closed.store(true, Ordering::Release);
        self.pending.wake.notify_one();
    }
}

impl Waker {
    /// A waker notifying `channel` with `payload`; its task starts with the first wake-up.
    pub fn new(channel: &'static str, payload: impl Into<Arc<str>>) -> Self {
        Self {
            channel,
            payload: payload.into(),
            pending: Arc::default(),
            started: OnceLock::new(),
        }
    }

    /// Asks for a notification covering every commit made before this call.
    pub fn wake(&self, pool: &PgPool) {
        self.started.get_or_init(|| {
            // Commits run inside a runtime; without one there is nobody to wake in-process
            // and listeners fall back to their periodic re-read.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(send_wake_ups(
                    pool.clone(),
                    self.channel,
                    Arc::clone(&self.payload),
                    Arc::clone(&self.pending),
                ));
            }
        });
        self.pending.wake.notify_one();
    }
}

async fn send_wake_ups(
    pool: PgPool,
    channel: &'static str,
    payload: Arc<str>,
    pending: Arc<Pending>,
) {
    loop {
        pending.wake.notified().await;
        let closing = pending.closed.load(Ordering::Acquire);
        match sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
            .bind(channel)
            .bind(&*payload)
            .execute(&pool)
            .await
        {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, channel, "cannot notify listeners; they re-read on their own")
            }
        }
        if closing {
            return;
        }
    }
}
