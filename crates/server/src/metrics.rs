//! Prometheus metrics: requests by route, method and status, and their latency (HTTP listeners and the MQTT
//! endpoint).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

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

    /// Counts a delivery of a hub job.
    pub fn hub_attempt(&self, hub: &str, action: &str) {
        self.hub_attempts.with_label_values(&[hub, action]).inc();
    }

    /// Counts a failed delivery of a hub job.
    pub fn hub_failure(&self, hub: &str, action: &str) {
        self.hub_failures.with_label_values(&[hub, action]).inc();
    }

    /// Sets a hub's backlog.
    pub fn hub_backlog(&self, hub: &str, depth: u64, oldest_age_seconds: f64) {
        self.hub_queue_depth.with_label_values(&[hub]).set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.hub_oldest_job_age.with_label_values(&[hub]).set(oldest_age_seconds);
    }

    /// Counts and times a request of the MQTT endpoint: listener `mqtt`, method `PUBLISH`, the request's kind as
    /// its route (`register`, `operationStatus`, `(unmatched)`), and the status its response topic carries.
    pub fn observe_mqtt(&self, route: &str, status: u16, started: Instant) {
        self.observe("mqtt", route, "PUBLISH", status, started);
    }

    fn observe(&self, listener: &str, route: &str, method: &str, status: u16, started: Instant) {
        self.requests.with_label_values(&[listener, route, method, &status.to_string()]).inc();
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
    let method = req.method().to_string();
    let path = req.path().to_owned();
    tracing::debug!(target: "zerotouch::access", listener, method, path, "request received");
    let response = next.call(req).await?;
    let route = response.request().match_pattern().unwrap_or_else(|| "(unmatched)".to_owned());
    let status = response.status().as_u16();
    if let Some(metrics) = metrics {
        metrics.observe(listener, &route, &method, status, started);
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // Device requests come by the thousand per second: their access lines are debug-level; metrics count them.
    if listener == "device" {
        tracing::debug!(target: "zerotouch::access", listener, method, path, status, elapsed_ms, "request");
    } else {
        tracing::info!(target: "zerotouch::access", listener, method, path, status, elapsed_ms, "request");
    }
    Ok(response)
}
