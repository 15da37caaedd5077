//! Prometheus metrics: requests by route, method and status, and their latency (HTTP listeners and the MQTT
//! endpoint).
//!
//! **Every label value comes from a fixed set**, never from what a client sends: each new value is a new series
//! that lives until the process ends, so a label a client could choose would let anyone on the internet grow the
//! service's memory, and the monitoring system's, without limit. The listener is one of the servers'
//! (`service`, `device`, `mqtt`); the route is a pattern written in the code's route tables (or MQTT's request
//! kinds), and anything else is `(unmatched)`; the method is one of [`METHODS`], anything else `other`; the
//! status is one the service itself answers. Hub labels are hub host names and job actions: hubs exist only when
//! an owner creates them, so their number is bounded by an administrator, not by devices.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The HTTP methods counted by name (RFC 9110 §9 and PATCH); any other is counted as [`OTHER`].
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];

/// The label of a method not in [`METHODS`] and of a status outside 100-599.
pub const OTHER: &str = "other";

/// The route label of a request that matched no route (any path the code does not serve).
pub const UNMATCHED: &str = "(unmatched)";

/// The method's label: its name if it is one of [`METHODS`] (methods are case-sensitive), else [`OTHER`].
fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|known| **known == method).copied().unwrap_or(OTHER)
}

/// The status's label: the code the service answered (one of the few it uses, chosen by the service and never by
/// the client; in any case one of 100-599), else [`OTHER`].
fn status_label(status: u16) -> String {
    if (100..600).contains(&status) { status.to_string() } else { OTHER.to_owned() }
}

/// The service's metrics registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    hub_queue_depth: IntGaugeVec,
    hub_oldest_job_age: GaugeVec,
    hub_attempts: IntCounterVec,
    hub_failures: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("zerotouch_http_requests_total", "HTTP requests answered, by route, method and status"),
            &["listener", "route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("zerotouch_http_request_duration_seconds", "Time to answer HTTP requests")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["listener", "route", "method"],
        )?;
        let info = IntCounterVec::new(Opts::new("zerotouch_build_info", "Build information"), &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).inc();
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let hub_queue_depth = IntGaugeVec::new(
            Opts::new("zerotouch_hub_queue_depth", "Hub jobs waiting (outbox), by hub; read every 5 s"),
            &["hub"],
        )?;
        let hub_oldest_job_age = GaugeVec::new(
            Opts::new("zerotouch_hub_oldest_job_age_seconds", "Age of the oldest waiting hub job, by hub"),
            &["hub"],
        )?;
        let hub_attempts = IntCounterVec::new(
            Opts::new("zerotouch_hub_attempts_total", "Hub job deliveries tried by this replica, by hub and action"),
            &["hub", "action"],
        )?;
        let hub_failures = IntCounterVec::new(
            Opts::new("zerotouch_hub_failures_total", "Hub job deliveries that failed, by hub and action"),
            &["hub", "action"],
        )?;
        registry.register(Box::new(info))?;
        registry.register(Box::new(hub_queue_depth.clone()))?;
        registry.register(Box::new(hub_oldest_job_age.clone()))?;
        registry.register(Box::new(hub_attempts.clone()))?;
        registry.register(Box::new(hub_failures.clone()))?;
        Ok(Self { registry, requests, latency, hub_queue_depth, hub_oldest_job_age, hub_attempts, hub_failures })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Counts a delivery of a hub job. `hub` is the host name of a hub an owner created (bounded by them).
    pub fn hub_attempt(&self, hub: &str, action: &'static str) {
        self.hub_attempts.with_label_values(&[hub, action]).inc();
    }

    /// Counts a failed delivery of a hub job. `hub` is the host name of a hub an owner created.
    pub fn hub_failure(&self, hub: &str, action: &'static str) {
        self.hub_failures.with_label_values(&[hub, action]).inc();
    }

    /// Sets a hub's backlog. `hub` is the host name of a hub an owner created; a deleted hub's series stay
    /// (reading zero) until the process restarts, which an owner's deletions bound.
    pub fn hub_backlog(&self, hub: &str, depth: u64, oldest_age_seconds: f64) {
        self.hub_queue_depth.with_label_values(&[hub]).set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.hub_oldest_job_age.with_label_values(&[hub]).set(oldest_age_seconds);
    }

    /// Counts and times a request of the MQTT endpoint: listener `mqtt`, method `PUBLISH`, the request's kind as
    /// its route (`register`, `operationStatus`, `(unmatched)`: a fixed set, hence `'static`), and the status
    /// its response topic carries.
    pub fn observe_mqtt(&self, route: &'static str, status: u16, started: Instant) {
        self.observe("mqtt", route, "PUBLISH", status, started);
    }

    /// Counts and times one request. Every label must come from a fixed set (module comment): the listener and
    /// the method are `'static` for that reason, the route is a pattern of the code's or [`UNMATCHED`].
    fn observe(&self, listener: &'static str, route: &str, method: &'static str, status: u16, started: Instant) {
        self.requests.with_label_values(&[listener, route, method, &status_label(status)]).inc();
        self.latency.with_label_values(&[listener, route, method]).observe(started.elapsed().as_secs_f64());
    }
}

/// Which listener a request came in on, for metrics and logs (app data of each server).
#[derive(Debug, Clone, Copy)]
pub struct Listener(pub &'static str);

/// Middleware: counts and times every request, and logs it (never its headers or body).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let listener = req.app_data::<web::Data<Listener>>().map_or("unknown", |l| l.0);
    let method = method_label(req.method().as_str());
    // Field values are only evaluated when the line is enabled: nothing is copied for a line not written.
    tracing::debug!(target: "zerotouch::access", listener, method = %req.method(), path = req.path(), "request received");
    let response = next.call(req).await?;
    let request = response.request();
    // A route pattern is a string of the code's route table, never the path the client sent.
    let route = request.match_pattern().unwrap_or_else(|| UNMATCHED.to_owned());
    let status = response.status().as_u16();
    if let Some(metrics) = metrics {
        metrics.observe(listener, &route, method, status, started);
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (method, path) = (request.method(), request.path());
    // Device requests come by the thousand per second: their access lines are debug-level; metrics count them.
    if listener == "device" {
        tracing::debug!(target: "zerotouch::access", listener, %method, path, status, elapsed_ms, "request");
    } else {
        tracing::info!(target: "zerotouch::access", listener, %method, path, status, elapsed_ms, "request");
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The label values of every series of `name` in `metrics`' exposition.
    fn series(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics.render().lines().filter(|l| l.starts_with(&format!("{name}{{"))).map(str::to_owned).collect()
    }

    #[test]
    fn methods_outside_the_known_set_share_one_label() {
        for method in METHODS {
            assert_eq!(method_label(method), method);
        }
        for made_up in ["FOO", "get", "PROPFIND", "BREW", "", "GET ", "X-\u{1F600}"] {
            assert_eq!(method_label(made_up), OTHER, "{made_up:?}");
        }
    }

    #[test]
    fn statuses_are_their_codes_within_http_range() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(599), "599");
        for odd in [0, 99, 600, 999, 1000, u16::MAX] {
            assert_eq!(status_label(odd), OTHER, "{odd}");
        }
    }

    #[test]
    fn made_up_methods_add_no_series() {
        let metrics = Metrics::new().unwrap();
        let started = Instant::now();
        metrics.observe("device", UNMATCHED, method_label("FOO"), 404, started);
        let before = metrics.render().lines().count();
        for i in 0..300 {
            metrics.observe("device", UNMATCHED, method_label(&format!("M{i}")), 404, started);
        }
        assert_eq!(metrics.render().lines().count(), before);
        let requests = series(&metrics, "zerotouch_http_requests_total");
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(requests[0].contains("method=\"other\"") && requests[0].ends_with(" 301"), "{requests:?}");
    }
}
