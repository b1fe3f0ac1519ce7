//! Post-commit wake-ups for live subscriptions, coalesced per process.
//!
//! `NOTIFY` inside the append transaction would make Postgres serialise every appending commit
//! on its notify lock (held through the WAL flush). Instead each [`crate::EventStore`] sends
//! `pg_notify` after its appends commit, from one background task: any number of appends that
//! commit while a notification is being sent are covered by the single one sent after it.
//! Subscribers only use notifications as wake-ups and re-read on their own every few seconds,
//! so a wake-up lost to a crash delays delivery, it never loses an event.

use std::sync::{Arc, OnceLock};

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::subscription::NOTIFY_CHANNEL;

/// Sends at most one `pg_notify` at a time, and one more for everything that committed since.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    pending: Arc<Notify>,
    started: OnceLock<()>,
}

impl Waker {
    /// Asks for a wake-up covering every append committed before this call.
    pub(crate) fn wake(&self, pool: &PgPool) {
        self.started.get_or_init(|| {
            // Appends run inside a runtime; without one there is nobody to wake in-process
            // and subscribers fall back to their periodic re-read.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(send_wake_ups(pool.clone(), Arc::clone(&self.pending)));
            }
        });
        self.pending.notify_one();
    }
}

async fn send_wake_ups(pool: PgPool, pending: Arc<Notify>) {
    loop {
        pending.notified().await;
        match sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&pool)
            .await
        {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot notify subscribers; they re-read on their own")
            }
        }
    }
}
