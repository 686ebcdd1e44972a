//! The admin HTTP server of `run`: liveness (`/healthz`) and readiness (`/readyz`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::store::Store;

/// What readiness depends on, shared with the daemon.
#[derive(Debug, Default)]
pub struct Health {
    /// A policy set has been loaded (and is running).
    pub policies_loaded: AtomicBool,
    /// The last policy load problem, if the last attempt failed.
    pub last_load_error: Mutex<Option<String>>,
}

#[derive(Clone)]
struct AdminState {
    store: Store,
    health: Arc<Health>,
}

/// The admin routes.
pub fn router(store: Store, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { store, health })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let db = match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("database: {e}")),
        Err(_) => Err("database: no answer within 2 s".to_string()),
    };
    let loaded = s.health.policies_loaded.load(Ordering::SeqCst);
    let load_error = s
        .health
        .last_load_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut reasons = Vec::new();
    if let Err(e) = &db {
        reasons.push(e.clone());
    }
    if !loaded {
        reasons.push(format!(
            "policies: not loaded{}",
            load_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": reasons.is_empty(),
            "reasons": reasons,
            "last_policy_load_error": load_error,
        })),
    )
}
