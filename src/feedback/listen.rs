//! The webhook listener's connections. Providers reach it from the
//! internet, so a client that connects and then sends nothing, or a byte
//! every few seconds, must not hold a file descriptor (shared with the
//! database, broker and provider connections) for long:
//!
//! - at most `webhooks.max_connections` connections at once (a semaphore
//!   permit held by each); one more is answered 503 and closed at once;
//! - a request's line and headers within `webhooks.header_read_timeout_ms`
//!   of the first wait for them (hyper's header timer, which also runs while
//!   a kept-alive connection waits idle), or the connection is closed;
//! - its body within `webhooks.body_read_timeout_ms` in total
//!   ([`super::server`] reads it under that deadline: 408, closed).
//!
//! HTTP/1.1 only: providers and TLS proxies send webhooks so, and HTTP/2's
//! connection preface is read before any header timer runs.

use super::throttle::Throttle;
use super::verify::Refusal;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What one connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Written to a connection over the limit before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Serve `app` on `listener` until `stop`, then let open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    refusals: Arc<Throttle>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::error!(error = %e, "webhooks: cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            turn_away(stream, &refusals);
            continue;
        };
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that went away or timed out: nothing to report.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One connection too many: counted, logged (throttled), 503 and closed.
fn turn_away(stream: TcpStream, refusals: &Throttle) {
    super::throttle::refused(refusals, "unknown", "-", Refusal::ConnectionLimit);
    // Best effort and never waiting: the socket's buffer is empty.
    let _ = stream.try_write(BUSY);
}
