//! What the event pipeline has done in this process, for operators and the load benchmark:
//! events published, events applied per projection, and how long an event took from being
//! recorded to being applied. Kept per tenant, and rendered in Prometheus' text format by
//! `GET /metrics` for the caller's tenant only: one shop's volume is not another's business.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

/// Upper bounds (milliseconds) of the latency histogram's buckets.
pub const BUCKETS_MS: [f64; 22] = [
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0,
    300.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket of [`BUCKETS_MS`], then one for everything above.
    counts: Vec<u64>,
    sum_ms: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS_MS.len() + 1];
        }
        let at = BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(BUCKETS_MS.len());
        if let Some(slot) = self.counts.get_mut(at) {
            *slot += 1;
        }
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// One tenant's figures.
#[derive(Debug, Default)]
struct Figures {
    published: u64,
    applied: BTreeMap<&'static str, u64>,
    failed_batches: BTreeMap<&'static str, u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

type Registry = BTreeMap<String, Figures>;

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn with<R>(tenant: &str, f: impl FnOnce(&mut Figures) -> R) -> R {
    let mut guard = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.entry(tenant.to_owned()).or_default())
}

pub fn published(tenant: &str, events: usize) {
    with(tenant, |r| r.published += events as u64);
}

/// Events of a tenant a projection applied for the first time, with when each was recorded.
pub fn applied(tenant: &str, projection: &'static str, recorded_at_ms: &[i64], now_ms: i64) {
    with(tenant, |r| {
        *r.applied.entry(projection).or_default() += recorded_at_ms.len() as u64;
        let histogram = r.latency.entry(projection).or_default();
        for at in recorded_at_ms {
            histogram.observe((now_ms - at).max(0) as f64);
        }
    });
}

pub fn batch_failed(tenant: &str, projection: &'static str) {
    with(tenant, |r| {
        *r.failed_batches.entry(projection).or_default() += 1
    });
}

/// One tenant's figures in Prometheus' text exposition format.
pub fn render(tenant: &str) -> String {
    with(tenant, |r| {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP commerce_events_published_total Events taken from the change feed to the bus.\n# TYPE commerce_events_published_total counter\ncommerce_events_published_total {}",
            r.published
        );
        let _ = writeln!(
            out,
            "# HELP commerce_events_applied_total Events a projection applied for the first time.\n# TYPE commerce_events_applied_total counter"
        );
        for (name, n) in &r.applied {
            let _ = writeln!(
                out,
                "commerce_events_applied_total{{projection=\"{name}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP commerce_projector_failed_batches_total Batches a projection could not apply (retried).\n# TYPE commerce_projector_failed_batches_total counter"
        );
        for (name, n) in &r.failed_batches {
            let _ = writeln!(
                out,
                "commerce_projector_failed_batches_total{{projection=\"{name}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP commerce_commit_to_apply_ms From an event's recording to its projection.\n# TYPE commerce_commit_to_apply_ms histogram"
        );
        for (name, h) in &r.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS_MS.iter().zip(&h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "commerce_commit_to_apply_ms_bucket{{projection=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "commerce_commit_to_apply_ms_bucket{{projection=\"{name}\",le=\"+Inf\"}} {}\ncommerce_commit_to_apply_ms_sum{{projection=\"{name}\"}} {}\ncommerce_commit_to_apply_ms_count{{projection=\"{name}\"}} {}",
                h.count, h.sum_ms, h.count
            );
        }
        out
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn latencies_land_in_cumulative_buckets() {
        super::applied("acme", "test-projection", &[1000, 996, 900], 1000);
        let text = super::render("acme");
        assert!(
            !super::render("globex").contains("test-projection"),
            "another tenant sees none of it"
        );
        assert!(
            text.contains(
                r#"commerce_commit_to_apply_ms_bucket{projection="test-projection",le="1"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"commerce_commit_to_apply_ms_bucket{projection="test-projection",le="5"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"commerce_commit_to_apply_ms_bucket{projection="test-projection",le="100"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"commerce_events_applied_total{projection="test-projection"} 3"#),
            "{text}"
        );
    }
}
