//! Prometheus metrics: the names, types and labels of product.md, in one registry,
//! and their text rendering for the metrics listener.
//!
//! Label values are bounded: `route` is a configured route name or `none`,
//! `outcome` is `forwarded` or an error code, `status` a class like `2xx`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: sub-millisecond gateway work up to sipgate's ~10 s timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 7.5, 10.0, 15.0, 30.0,
];

/// Body size buckets, in bytes: 256 B up to 64 MiB, the largest body a route
/// may accept (`max_body_bytes`).
pub const SIZE_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// The `status` label values of `hookgate_upstream_responses_total`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`]; anything outside 100..=499 counts as 5xx.
fn class_index(status: u16) -> usize {
    match status {
        100..=499 => usize::from(status / 100) - 1,
        _ => 4,
    }
}

/// The `route` label when no route matched.
pub const NO_ROUTE: &str = "none";

/// Every metric hookgate exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `hookgate_requests_total{route,outcome}`
    pub requests: IntCounterVec,
    /// `hookgate_request_duration_seconds{route}`
    pub request_duration: HistogramVec,
    /// `hookgate_upstream_duration_seconds{route}`
    pub upstream_duration: HistogramVec,
    /// `hookgate_upstream_responses_total{route,status}`
    pub upstream_responses: IntCounterVec,
    /// `hookgate_request_body_bytes{route}`
    pub body_bytes: HistogramVec,
    /// `hookgate_schema_violations_total{route}`
    pub schema_violations: IntCounterVec,
    /// `hookgate_transcriptions_removed_total{route,mode}`
    pub transcriptions_removed: IntCounterVec,
    /// `hookgate_connections_rejected_total`
    pub connections_rejected: IntCounter,
    /// `hookgate_requests_in_flight`
    pub in_flight: IntGauge,
    /// `hookgate_build_info{version}`
    pub build_info: IntGaugeVec,
    /// `hookgate_upstream_retries_total{route}`
    pub upstream_retries: IntCounterVec,
    /// `hookgate_connections_open`
    pub connections_open: IntGauge,
    /// `hookgate_connections_over_limit_total`
    pub connections_over_limit: IntCounter,
    /// The spool's series.
    pub spool: SpoolMetrics,
}

/// The durable spool's series.
#[derive(Clone)]
pub struct SpoolMetrics {
    /// `hookgate_spool_messages{route}`: messages waiting for delivery.
    pub messages: IntGaugeVec,
    /// `hookgate_spool_oldest_age_seconds{route}`: age of the oldest waiting message.
    pub oldest_age: prometheus::GaugeVec,
    /// `hookgate_spool_deliveries_total{route,result}`: background delivery attempts
    /// by result (`delivered`, `retry`, `dead_lettered`).
    pub deliveries: IntCounterVec,
    /// `hookgate_spool_dead_letters{route}`: messages in the dead-letter area.
    pub dead_letters: IntGaugeVec,
    /// `hookgate_spool_bytes`: disk used by queued and dead-lettered messages.
    pub bytes: IntGauge,
    /// `hookgate_spool_capacity_bytes`: the configured disk budget.
    pub capacity: IntGauge,
    /// `hookgate_spool_corrupt_total`: damaged records set aside.
    pub corrupt: IntCounter,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static: an error here is a programming error caught by tests.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "hookgate_requests_total",
                "Requests by route and outcome (forwarded or the error code).",
            ),
            &["route", "outcome"],
        ));
        let request_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "hookgate_request_duration_seconds",
                "Whole request at the gateway, in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        ));
        let upstream_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "hookgate_upstream_duration_seconds",
                "Upstream exchange, in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        ));
        let upstream_responses = must(IntCounterVec::new(
            Opts::new(
                "hookgate_upstream_responses_total",
                "Upstream responses by status class.",
            ),
            &["route", "status"],
        ));
        let body_bytes = must(HistogramVec::new(
            HistogramOpts::new(
                "hookgate_request_body_bytes",
                "Size of request bodies read, in bytes.",
            )
            .buckets(SIZE_BUCKETS.to_vec()),
            &["route"],
        ));
        let schema_violations = must(IntCounterVec::new(
            Opts::new(
                "hookgate_schema_violations_total",
                "Requests that violated the route's schema (report mode included).",
            ),
            &["route"],
        ));
        let transcriptions_removed = must(IntCounterVec::new(
            Opts::new(
                "hookgate_transcriptions_removed_total",
                "Transcriptions removed or emptied before forwarding.",
            ),
            &["route", "mode"],
        ));
        let connections_rejected = must(IntCounter::new(
            "hookgate_connections_rejected_total",
            "Connections dropped at accept time (peer not in the allow list).",
        ));
        let in_flight = must(IntGauge::new(
            "hookgate_requests_in_flight",
            "Requests being processed.",
        ));
        let build_info = must(IntGaugeVec::new(
            Opts::new("hookgate_build_info", "Build information (always 1)."),
            &["version"],
        ));
        let upstream_retries = must(IntCounterVec::new(
            Opts::new(
                "hookgate_upstream_retries_total",
                "Moves of a request to another upstream target after a failed connect.",
            ),
            &["route"],
        ));
        let connections_open = must(IntGauge::new(
            "hookgate_connections_open",
            "Client connections open now.",
        ));
        let connections_over_limit = must(IntCounter::new(
            "hookgate_connections_over_limit_total",
            "Connections closed at once because server.max_connections were open.",
        ));
        let spool = SpoolMetrics {
            messages: must(IntGaugeVec::new(
                Opts::new(
                    "hookgate_spool_messages",
                    "Spooled webhooks waiting for delivery, by route.",
                ),
                &["route"],
            )),
            oldest_age: must(prometheus::GaugeVec::new(
                Opts::new(
                    "hookgate_spool_oldest_age_seconds",
                    "Age of the oldest spooled webhook waiting for delivery, by route (0 when none).",
                ),
                &["route"],
            )),
            deliveries: must(IntCounterVec::new(
                Opts::new(
                    "hookgate_spool_deliveries_total",
                    "Background delivery attempts by route and result (delivered, retry, dead_lettered).",
                ),
                &["route", "result"],
            )),
            dead_letters: must(IntGaugeVec::new(
                Opts::new(
                    "hookgate_spool_dead_letters",
                    "Webhooks in the dead-letter area, by route.",
                ),
                &["route"],
            )),
            bytes: must(IntGauge::new(
                "hookgate_spool_bytes",
                "Disk used by queued and dead-lettered webhooks, in bytes.",
            )),
            capacity: must(IntGauge::new(
                "hookgate_spool_capacity_bytes",
                "The spool's disk budget (spool.max_bytes), in bytes.",
            )),
            corrupt: must(IntCounter::new(
                "hookgate_spool_corrupt_total",
                "Damaged spool records found and set aside.",
            )),
        };
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(body_bytes.clone()),
            Box::new(schema_violations.clone()),
            Box::new(transcriptions_removed.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(in_flight.clone()),
            Box::new(build_info.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_over_limit.clone()),
            Box::new(spool.messages.clone()),
            Box::new(spool.oldest_age.clone()),
            Box::new(spool.deliveries.clone()),
            Box::new(spool.dead_letters.clone()),
            Box::new(spool.bytes.clone()),
            Box::new(spool.capacity.clone()),
            Box::new(spool.corrupt.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_responses,
            body_bytes,
            schema_violations,
            transcriptions_removed,
            connections_rejected,
            in_flight,
            build_info,
            upstream_retries,
            connections_open,
            connections_over_limit,
            spool,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            out.clear();
        }
        out
    }

    /// The status class label (`2xx` …) of a status code.
    pub fn status_class(status: u16) -> &'static str {
        STATUS_CLASSES[class_index(status)]
    }
}

/// A route's series, resolved once at start so a request updates them without
/// hashing label values.
#[derive(Clone)]
pub struct RouteMetrics {
    /// `hookgate_requests_total{route, outcome="forwarded"}`
    pub forwarded: IntCounter,
    /// `hookgate_request_duration_seconds{route}`
    pub duration: Histogram,
    /// `hookgate_upstream_duration_seconds{route}`
    pub upstream_duration: Histogram,
    /// `hookgate_request_body_bytes{route}`
    pub body_bytes: Histogram,
    /// `hookgate_schema_violations_total{route}`
    pub schema_violations: IntCounter,
    /// `hookgate_transcriptions_removed_total{route, mode}` (routes that remove)
    pub transcriptions_removed: Option<IntCounter>,
    /// `hookgate_upstream_responses_total{route, status}` for 1xx..5xx
    pub responses: [IntCounter; 5],
    /// `hookgate_upstream_retries_total{route}`
    pub retries: IntCounter,
}

impl Metrics {
    /// Resolve (and create at zero) a route's series.
    pub fn route(&self, route: &str, removal_mode: Option<&str>) -> RouteMetrics {
        let responses =
            STATUS_CLASSES.map(|c| self.upstream_responses.with_label_values(&[route, c]));
        RouteMetrics {
            forwarded: self.requests.with_label_values(&[route, "forwarded"]),
            duration: self.request_duration.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
            body_bytes: self.body_bytes.with_label_values(&[route]),
            schema_violations: self.schema_violations.with_label_values(&[route]),
            transcriptions_removed: removal_mode
                .map(|m| self.transcriptions_removed.with_label_values(&[route, m])),
            responses,
            retries: self.upstream_retries.with_label_values(&[route]),
        }
    }
}

impl RouteMetrics {
    /// The counter of an upstream status's class.
    pub fn response(&self, status: u16) -> &IntCounter {
        &self.responses[class_index(status)]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        for (status, class) in [
            (100, "1xx"),
            (204, "2xx"),
            (399, "3xx"),
            (499, "4xx"),
            (500, "5xx"),
            (599, "5xx"),
            (0, "5xx"),
            (999, "5xx"),
        ] {
            assert_eq!(Metrics::status_class(status), class, "{status}");
        }
    }

    #[test]
    fn renders_product_names() {
        let m = Metrics::new();
        let _ = m.route("crm", Some("strip"));
        m.requests.with_label_values(&["crm", "forwarded"]).inc();
        m.connections_rejected.inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "hookgate_requests_total{outcome=\"forwarded\",route=\"crm\"} 1",
            "hookgate_request_duration_seconds_bucket",
            "hookgate_connections_rejected_total 1",
            "hookgate_build_info{version=",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
