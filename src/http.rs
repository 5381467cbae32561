//! HTTP: `/metrics` (Prometheus), `/healthz` (process alive), `/readyz`
//! (broker connected and database reachable), and the admin API under
//! `/admin/v1` ([`crate::admin_api`]).

use crate::health::Health;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub health: Arc<Health>,
    /// Circuit breakers, whose open accounts are rendered at scrape time.
    pub circuits: Option<Arc<crate::circuit::Breakers>>,
    /// The admin API, mounted under `/admin/v1` when given.
    pub admin: Option<crate::admin_api::AdminState>,
}

pub fn router(state: HttpState) -> Router {
    let admin = state.admin.clone();
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state);
    match admin {
        Some(a) => r.nest("/admin/v1", crate::admin_api::router(a)),
        None => r,
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&s.metrics, |out| {
            if let Some(c) = &s.circuits {
                c.render(out)
            }
        }),
    )
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    let broker = s.health.broker_up();
    let database = s.health.database_up();
    let code = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "broker": broker, "database": database })),
    )
}

/// Serve until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
