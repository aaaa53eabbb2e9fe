//! Liveness and readiness flags and the HTTP listener that reports them.
//!
//! Like [`crate::serve_prometheus`], [`serve_health`] logs its bound address at info because
//! it is a process lifecycle event.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::TelemetryError;

/// Shared liveness and readiness state; clones share the same flags.
///
/// A new `Health` is live and not ready.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    live: AtomicBool,
    ready: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Creates state that is live and not ready.
    pub fn new() -> Self {
        let state = HealthState {
            live: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            reason: Mutex::new(None),
        };
        Self {
            inner: Arc::new(state),
        }
    }

    /// Sets the liveness flag.
    pub fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::Release);
    }

    /// Sets the readiness flag and clears the reason.
    pub fn set_ready(&self, ready: bool) {
        *self.lock_reason() = None;
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Marks the process not ready and records why, for the `/ready` body.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock_reason() = Some(reason.into());
        self.inner.ready.store(false, Ordering::Release);
    }

    /// Returns the liveness flag.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Returns the readiness flag.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Returns the reason given to the last [`Health::set_not_ready`], if still current.
    pub fn reason(&self) -> Option<String> {
        self.lock_reason().clone()
    }

    fn lock_reason(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // The guarded value is a plain Option, so a poisoned lock still holds usable data.
        self.inner
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves `GET live_path` and `GET ready_path` on `addr`.
///
/// Each returns 200 with `{"live":true}` or `{"ready":true}` when the flag is set, and 503 with
/// the flag false (plus `"reason"` for readiness when one was given) otherwise. The listener is
/// bound before this returns.
///
/// # Errors
/// Returns [`TelemetryError::Bind`] when `addr` cannot be bound.
pub async fn serve_health(
    addr: SocketAddr,
    live_path: &str,
    ready_path: &str,
    health: Health,
) -> Result<JoinHandle<std::io::Result<()>>, TelemetryError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, live_path, ready_path, "health listener bound");
    let app = Router::new()
        .route(live_path, get(live))
        .route(ready_path, get(ready))
        .with_state(health);
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

async fn live(State(health): State<Health>) -> (StatusCode, Json<Value>) {
    let live = health.is_live();
    (status_for(live), Json(json!({ "live": live })))
}

async fn ready(State(health): State<Health>) -> (StatusCode, Json<Value>) {
    let ready = health.is_ready();
    let body = match health.reason() {
        Some(reason) if !ready => json!({ "ready": false, "reason": reason }),
        _ => json!({ "ready": ready }),
    };
    (status_for(ready), Json(body))
}

fn status_for(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::{free_loopback_addr, get_path};

    async fn start(health: &Health) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
        let addr = free_loopback_addr().await;
        let task = serve_health(addr, "/live", "/ready", health.clone())
            .await
            .unwrap();
        (addr, task)
    }

    #[tokio::test]
    async fn ready_turns_200_after_set_ready() {
        let health = Health::new();
        let (addr, task) = start(&health).await;
        let (status, body) = get_path(addr, "/ready").await;
        assert_eq!(status, 503);
        assert_eq!(body, r#"{"ready":false}"#);

        health.set_ready(true);
        let (status, body) = get_path(addr, "/ready").await;
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"ready":true}"#);
        task.abort();
    }

    #[tokio::test]
    async fn live_follows_flag() {
        let health = Health::new();
        let (addr, task) = start(&health).await;
        let (status, body) = get_path(addr, "/live").await;
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"live":true}"#);

        health.set_live(false);
        let (status, _) = get_path(addr, "/live").await;
        assert_eq!(status, 503);
        task.abort();
    }

    #[tokio::test]
    async fn not_ready_reason_is_in_body() {
        let health = Health::new();
        health.set_ready(true);
        health.set_not_ready("datastore unreachable");
        let (addr, task) = start(&health).await;
        let (status, body) = get_path(addr, "/ready").await;
        assert_eq!(status, 503);
        assert!(
            body.contains(r#""reason":"datastore unreachable""#),
            "{body}"
        );
        task.abort();
    }

    #[test]
    fn clones_share_flags() {
        let health = Health::new();
        let clone = health.clone();
        clone.set_ready(true);
        assert!(health.is_ready());
        assert_eq!(health.reason(), None);
    }
}
