//! Lag per projection: gauges `annals_projection_lag_events` and
//! `annals_projection_lag_seconds` (label `projection`).
//!
//! Events = committed events of the projection's stream types after its progress position
//! (counted up to [`MAX_COUNTED`]); seconds = age of the oldest of them (0 when caught up). In
//! Kafka mode the progress position is the highest applied one across partitions, so the lag
//! is a lower bound there.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::projection::{Projection, ProjectionError};

/// Counting stops here so that a far-behind projection does not make sampling expensive.
pub const MAX_COUNTED: i64 = 1_000_000;

/// Lag of one projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Unapplied events (capped at [`MAX_COUNTED`]).
    pub events: i64,
    /// Age of the oldest unapplied event in seconds.
    pub seconds: f64,
}

/// Measures the lag of `projection`.
pub async fn measure(pool: &PgPool, projection: &dyn Projection) -> Result<Lag, ProjectionError> {
    let types: Option<Vec<String>> = projection
        .stream_types()
        .map(|t| t.iter().map(|s| (*s).to_owned()).collect());
    let row = sqlx::query(
        "WITH p AS (SELECT COALESCE((SELECT position FROM projection_progress \
                                      WHERE projection = $1), 0) AS pos), \
              behind AS (SELECT e.recorded_at FROM events e, p \
                          WHERE e.global_position > p.pos \
                            AND ($2::text[] IS NULL OR e.stream_type = ANY($2)) \
                          ORDER BY e.global_position LIMIT $3) \
         SELECT count(*) AS n, \
                COALESCE(extract(epoch FROM now() - min(recorded_at))::float8, 0) AS secs \
           FROM behind",
    )
    .bind(projection.name())
    .bind(&types)
    .bind(MAX_COUNTED)
    .fetch_one(pool)
    .await?;
    Ok(Lag {
        events: row.try_get("n")?,
        seconds: row.try_get::<f64, _>("secs")?.max(0.0),
    })
}

/// Samples every projection's lag every `interval` until `shutdown`.
pub async fn sample(
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        for p in &projections {
            match measure(&pool, p.as_ref()).await {
                Ok(lag) => {
                    metrics::gauge!("annals_projection_lag_events", "projection" => p.name())
                        .set(lag.events as f64);
                    metrics::gauge!("annals_projection_lag_seconds", "projection" => p.name())
                        .set(lag.seconds);
                }
                Err(err) => {
                    tracing::warn!(projection = p.name(), error = %err, "lag sampling failed")
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
