//! A fast in-process fake of the two HTTP providers the bench sends through:
//! SendGrid-shaped `POST /v3/mail/send` (202 + `X-Message-Id`) and
//! Twilio-shaped `POST /2010-04-01/Accounts/{sid}/Messages.json` (201 + JSON
//! `sid`). It can add latency and answer 500 for a fraction of calls.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the fake answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct FakeBehaviour {
    /// Added to every call before answering.
    pub latency: Duration,
    /// Fraction of calls (0.0–1.0) answered with 500, spread evenly.
    pub fault_ratio: f64,
}

struct FakeState {
    behaviour: FakeBehaviour,
    calls: AtomicU64,
    faults: AtomicU64,
}

/// A running fake; stops when its token is cancelled.
pub struct FakeProvider {
    /// `http://127.0.0.1:<port>`, the base URL to configure providers with.
    pub base_url: String,
    state: Arc<FakeState>,
}

impl FakeProvider {
    /// Bind 127.0.0.1 on a free port and serve until `stop` fires. Must run
    /// inside a tokio runtime (the bench runs it on its auxiliary runtime).
    pub async fn start(
        behaviour: FakeBehaviour,
        stop: CancellationToken,
    ) -> std::io::Result<FakeProvider> {
        let state = Arc::new(FakeState {
            behaviour,
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v3/mail/send", post(sendgrid))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(FakeProvider { base_url, state })
    }

    /// Calls answered so far, and how many of them were faults.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.state.calls.load(Ordering::Relaxed),
            self.state.faults.load(Ordering::Relaxed),
        )
    }
}

/// Wait, count, and decide whether this call is a fault (evenly spread:
/// call n fails when the running fault count is behind `n * ratio`).
async fn begin(s: &FakeState) -> bool {
    if !s.behaviour.latency.is_zero() {
        tokio::time::sleep(s.behaviour.latency).await;
    }
    let n = s.calls.fetch_add(1, Ordering::Relaxed) + 1;
    let due = (n as f64 * s.behaviour.fault_ratio) as u64;
    let fault = due > s.faults.load(Ordering::Relaxed);
    if fault {
        s.faults.fetch_add(1, Ordering::Relaxed);
    }
    fault
}

fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [("content-type", "application/json")],
        r#"{"errors":[{"message":"injected fault"}],"code":20500,"message":"injected fault"}"#,
    )
        .into_response()
}

async fn sendgrid(State(s): State<Arc<FakeState>>) -> Response {
    if begin(&s).await {
        return server_error();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    (StatusCode::ACCEPTED, [("x-message-id", id)]).into_response()
}

async fn twilio(State(s): State<Arc<FakeState>>, Path(_sid): Path<String>) -> Response {
    if begin(&s).await {
        return server_error();
    }
    let body = format!(
        r#"{{"sid":"SM{}","status":"queued"}}"#,
        uuid::Uuid::new_v4().simple()
    );
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}
