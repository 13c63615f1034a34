//! The HTTP endpoints: `/livez`, `/readyz`, `/metrics` (Prometheus text format).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Health;

#[derive(Clone)]
struct AppState {
    health: Health,
    registry: Registry,
}

/// Errors starting the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The router, for embedding or testing.
pub fn router(health: Health, registry: Registry) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { health, registry })
}

/// Bind `addr` and serve until `shutdown` is cancelled. Returns the bound address (useful with
/// port 0) and the server task.
pub async fn serve(
    addr: &str,
    health: Health,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let app = router(health, registry);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "HTTP server stopped");
        }
    });
    tracing::info!(%local, "serving /livez, /readyz and /metrics");
    Ok((local, task))
}

async fn livez(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "dead\n".to_owned())
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        let note = state.health.reason();
        (
            StatusCode::OK,
            if note.is_empty() {
                "ready\n".to_owned()
            } else {
                format!("ready: {note}\n")
            },
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.health.reason()),
        )
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            format!("encoding metrics failed: {error}\n").into_bytes(),
        ),
    }
}
