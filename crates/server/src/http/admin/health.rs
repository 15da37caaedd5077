//! `GET /healthz` (alive), `GET /readyz` (database reachable, migrations applied), `GET /metrics` (Prometheus).
//! These three need no token, so that probes and scrapers work without credentials.

use actix_web::{HttpResponse, web};
use zerotouch_store::Readiness;

use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// The process is alive.
pub(super) async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// The database answers and its schema is current.
pub(super) async fn ready(readiness: web::Data<Readiness>) -> Result<HttpResponse, ApiError> {
    match readiness.is_ready().await {
        Ok(true) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))),
        Ok(false) => Err(ApiError::NotReady("database migrations are pending (run zerotouch migrate)".into())),
        Err(e) => {
            tracing::warn!("readiness check failed: {e}");
            Err(ApiError::NotReady("the database does not answer".into()))
        }
    }
}

/// Prometheus text exposition.
pub(super) async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics.render())
}
