//! The access log, as `AUTOMATION_API__ACCESS_LOG` says (docs/operations.md, "Access log"): by
//! default a summary line per interval (requests, status classes, p50/p99/max latency) and a line
//! of its own for each 5xx and each slow request, so a busy API does not format a line per
//! request; `all` for a line per request, `errors` for 4xx, 5xx and slow ones, `off` for none.
//! The request's span (`request_spans`) is the same in every mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use automation_shared::config::{AccessLog as Mode, ApiConfig};
use axum::http::{Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::Span;

/// The access log of this process: its mode and the summary of the current interval.
#[derive(Debug)]
pub struct AccessLog {
    mode: Mode,
    slow: Option<Duration>,
    interval: Duration,
    summary: Summary,
}

impl AccessLog {
    pub fn new(config: &ApiConfig) -> AccessLog {
        AccessLog {
            mode: config.access_log,
            slow: (config.access_log_slow_ms > 0).then(|| Duration::from_millis(config.access_log_slow_ms)),
            interval: Duration::from_secs(config.access_log_interval_secs.max(1)),
            summary: Summary::default(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Called in the request's span when the answer is ready.
    fn record(&self, status: StatusCode, latency: Duration) {
        let slow = self.slow.is_some_and(|slow| latency >= slow);
        let line = match self.mode {
            Mode::Off => false,
            Mode::All => true,
            Mode::Errors => status.is_client_error() || status.is_server_error() || slow,
            Mode::Summary => {
                self.summary.add(status, latency);
                status.is_server_error() || slow
            }
        };
        if line {
            tracing::info!(
                http.response.status_code = status.as_u16(),
                latency_ms = latency.as_secs_f64() * 1000.0,
                slow,
                "request served"
            );
        }
    }

    /// In `summary` mode, writes the summary every interval until `stop`, and once more then.
    pub async fn report(self: Arc<Self>, stop: CancellationToken) {
        if self.mode != Mode::Summary {
            return;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.write_summary();
                    return;
                }
                _ = ticks.tick() => self.write_summary(),
            }
        }
    }

    /// One line for the interval; none when nothing was served.
    fn write_summary(&self) {
        let taken = self.summary.take();
        if taken.requests == 0 {
            return;
        }
        tracing::info!(
            interval_secs = self.interval.as_secs(),
            requests = taken.requests,
            status_1xx = taken.classes[0],
            status_2xx = taken.classes[1],
            status_3xx = taken.classes[2],
            status_4xx = taken.classes[3],
            status_5xx = taken.classes[4],
            latency_p50_ms = taken.percentile_ms(0.50),
            latency_p99_ms = taken.percentile_ms(0.99),
            latency_max_ms = taken.max_us as f64 / 1000.0,
            "requests served"
        );
    }
}

/// The `TraceLayer` hook: records the answer on the request's span, then logs as the mode says.
#[derive(Debug, Clone)]
pub struct OnResponse(pub Arc<AccessLog>);

impl<B> tower_http::trace::OnResponse<B> for OnResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        crate::request_spans::record_status(response.status(), span);
        self.0.record(response.status(), latency);
    }
}

/// Sub-buckets per power of two of the latency histogram: within 12.5%.
const SUB_BUCKETS: usize = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Up to 2^40 µs (about 12 days): far past any request timeout.
const BUCKETS: usize = SUB_BUCKETS + (40 - SUB_BITS as usize) * SUB_BUCKETS;

/// Counters of one interval, lock-free: a request costs three atomic additions.
#[derive(Debug)]
struct Summary {
    classes: [AtomicU64; 5],
    buckets: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

impl Default for Summary {
    fn default() -> Summary {
        Summary {
            classes: Default::default(),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

/// What one interval saw.
#[derive(Debug, Default, PartialEq)]
struct Taken {
    requests: u64,
    classes: [u64; 5],
    buckets: Vec<u64>,
    max_us: u64,
}

impl Summary {
    fn add(&self, status: StatusCode, latency: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The counts so far, and a fresh start. A request counted meanwhile may land in the next
    /// interval's line; none is lost.
    fn take(&self) -> Taken {
        let classes: [u64; 5] = std::array::from_fn(|i| self.classes[i].swap(0, Ordering::Relaxed));
        Taken {
            requests: classes.iter().sum(),
            classes,
            buckets: self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect(),
            max_us: self.max_us.swap(0, Ordering::Relaxed),
        }
    }
}

impl Taken {
    /// The latency under which a share `p` of the requests stayed, in ms: the upper end of its
    /// bucket, never above the slowest request.
    fn percentile_ms(&self, p: f64) -> f64 {
        let counted: u64 = self.buckets.iter().sum();
        if counted == 0 {
            return 0.0;
        }
        let rank = ((p * counted as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_us(index).min(self.max_us) as f64 / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }
}

/// The bucket of a latency in µs: exact below 8 µs, then eight per power of two.
fn bucket(us: u64) -> usize {
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = ((us >> shift) as usize) - SUB_BUCKETS;
    (SUB_BUCKETS + shift as usize * SUB_BUCKETS + mantissa).min(BUCKETS - 1)
}

/// The largest latency in µs that falls in `index`.
fn upper_us(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let shift = ((index - SUB_BUCKETS) / SUB_BUCKETS) as u32;
    let mantissa = ((index - SUB_BUCKETS) % SUB_BUCKETS) as u64;
    ((SUB_BUCKETS as u64 + mantissa + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_latencies_within_an_eighth() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 30, (1 << 40) - 1]) {
            let index = bucket(us);
            assert!(index >= last, "{us} µs");
            last = index;
            assert!(upper_us(index) >= us, "{us} µs in bucket {index} up to {}", upper_us(index));
            assert!(upper_us(index) as f64 <= (us as f64 * 1.125).max(us as f64 + 1.0), "{us} µs");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_summary_counts_status_classes_and_percentiles_then_starts_again() {
        let summary = Summary::default();
        for ms in 1..=100 {
            summary.add(StatusCode::OK, Duration::from_millis(ms));
        }
        summary.add(StatusCode::NOT_FOUND, Duration::from_micros(500));
        summary.add(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(2));
        let taken = summary.take();
        assert_eq!(taken.requests, 102);
        assert_eq!(taken.classes, [0, 100, 0, 1, 1]);
        let p50 = taken.percentile_ms(0.5);
        assert!((50.0..=57.0).contains(&p50), "p50 {p50}");
        let p99 = taken.percentile_ms(0.99);
        assert!((100.0..=113.0).contains(&p99), "p99 {p99}");
        assert_eq!(taken.percentile_ms(1.0), 2000.0, "the slowest, exactly");
        assert_eq!(summary.take().requests, 0, "the next interval starts empty");
    }
}
