//! Latency histograms, measurements and ratios: the harness's own logic (unit-tested).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records (60 s, in microseconds); slower samples are clamped.
const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds with 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        // 1 µs .. 60 s at 3 significant digits: fixed, valid bounds, so creation cannot fail.
        #[allow(clippy::expect_used)]
        let hist = Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds");
        Self { hist }
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS);
        self.hist.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds all samples of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail; saturate instead of panicking.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The outcome of one timed run: a fixed number of operations at a fixed concurrency.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measurement {
    /// Operations timed (warm-up excluded).
    pub ops: u64,
    /// Events (or messages, rows) those operations carried.
    pub events: u64,
    /// Wall time of the timed part, in seconds.
    pub seconds: f64,
    /// `events / seconds`.
    pub events_per_sec: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// Median latency of one operation, in milliseconds (absent when not sampled).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Worst latency, in milliseconds.
    pub max_ms: Option<f64>,
}

impl Measurement {
    /// A measurement of `ops` operations carrying `events` events in `elapsed`, with latencies.
    pub fn new(ops: u64, events: u64, elapsed: Duration, lat: Option<&Latencies>) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let lat = lat.filter(|l| !l.is_empty());
        Self {
            ops,
            events,
            seconds,
            events_per_sec: events as f64 / seconds,
            ops_per_sec: ops as f64 / seconds,
            p50_ms: lat.map(|l| l.quantile_ms(0.50)),
            p99_ms: lat.map(|l| l.quantile_ms(0.99)),
            max_ms: lat.map(|l| l.quantile_ms(1.0)),
        }
    }
}

/// `value / reference`, or `None` when the reference is zero or either is not finite.
pub fn ratio(value: f64, reference: f64) -> Option<f64> {
    if reference > 0.0 && value.is_finite() && reference.is_finite() {
        Some(value / reference)
    } else {
        None
    }
}

/// Formats an optional ratio as `0.83×`, or `–`.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

/// Formats an optional latency in milliseconds, or `–`.
pub fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "–".to_owned(),
    }
}

/// Formats a rate with a thousands separator.
pub fn fmt_rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.len(), 100);
        let p50 = l.quantile_ms(0.5);
        let p99 = l.quantile_ms(0.99);
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        assert!((98.9..=99.1).contains(&p99), "{p99}");
    }

    #[test]
    fn merging_keeps_every_sample_and_clamps_extremes() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_micros(0));
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert!(a.quantile_ms(1.0) <= 60_100.0);
    }

    #[test]
    fn measurement_rates_and_ratios() {
        let m = Measurement::new(50, 5_000, Duration::from_secs(2), None);
        assert_eq!(m.events_per_sec, 2_500.0);
        assert_eq!(m.ops_per_sec, 25.0);
        assert_eq!(m.p99_ms, None);
        assert_eq!(ratio(800.0, 1000.0), Some(0.8));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(fmt_ratio(Some(0.8)), "0.80×");
        assert_eq!(fmt_rate(1_234_567.4), "1,234,567");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_ms(Some(1.234)), "1.23");
    }
}
