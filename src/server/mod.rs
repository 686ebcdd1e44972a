//! The admin HTTP server of `run`: liveness (`/healthz`), readiness (`/readyz`), Prometheus
//! metrics (`/metrics`), a JSON API (releases, policies, retry, cancel, pause, resume) and a
//! server-rendered status page at `/`. Mutating endpoints need `Authorization: Bearer <token>`
//! with the token from `JANITOR_ADMIN_TOKEN`; with no token configured they answer 403.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use crate::store::StoreError;

mod api;
mod page;
pub mod tokens;

pub use tokens::AdminTokens;

use api::*;
use page::status_page;

/// What readiness depends on, shared with the daemon.
#[derive(Debug, Default)]
pub struct Health {
    /// A policy set has been loaded (and is running).
    pub policies_loaded: AtomicBool,
    /// The last policy load problem, if the last attempt failed.
    pub last_load_error: Mutex<Option<String>>,
}

impl Health {
    /// The last policy load problem, if the last attempt failed.
    pub fn load_error(&self) -> Option<String> {
        self.last_load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything the admin server reads.
#[derive(Clone)]
pub struct AdminContext {
    /// The store, the policies, the metrics and the clock the daemon runs with.
    pub ctx: crate::context::Context,
    pub health: Arc<Health>,
    /// The tokens of the mutating endpoints; none disables them.
    pub admin_tokens: AdminTokens,
}

/// The OpenAPI 3.1 description of [`routes`], served at `/api/v1/openapi.json`; a test checks
/// it against the routes themselves (every path, every method, the bodies' schemas).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route: its path and what it answers, by method.
fn routes() -> Vec<(&'static str, MethodRouter<AdminContext>)> {
    vec![
        ("/", get(status_page)),
        ("/healthz", get(|| async { "ok\n" })),
        ("/readyz", get(readyz)),
        ("/metrics", get(metrics)),
        (
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        ),
        ("/api/v1/releases", get(list_releases)),
        ("/api/v1/policies", get(list_policies)),
        ("/api/v1/releases/{id}/retry", post(retry_release)),
        ("/api/v1/releases/{id}/cancel", post(cancel_release)),
        ("/api/v1/pause", post(pause).get(pause_state)),
        ("/api/v1/resume", post(resume)),
        ("/api/v1/exemptions", get(list_exemptions)),
        ("/api/v1/exemptions/{instance}", post(exempt)),
        (
            "/api/v1/exemptions/{instance}/remove",
            post(remove_exemption),
        ),
    ]
}

/// The path of every route the admin server answers, as [`OPENAPI`] writes them.
pub fn route_paths() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// The admin routes.
pub fn router(ctx: AdminContext) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |r, (path, method)| r.route(path, method))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route: see the README's Operations section for the admin API".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method (mutations are POST)".into(),
            )
        })
        .with_state(ctx)
}

/// An API error: a status and a JSON body `{"error": {"code": ..., "message": ...}}`, the same
/// shape for every route and failure.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    /// A stable machine code for the status.
    fn code(&self) -> &'static str {
        match self.0 {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code(), "message": self.1 } });
        (self.0, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NoSuchRelease(_) => StatusCode::NOT_FOUND,
            StoreError::WrongState { .. } => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

/// A query string, or the JSON 400 every API error is (axum's own rejection is plain text;
/// found trying `GET /api/v1/releases?limit=abc`).
struct ApiQuery<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| ApiQuery(t))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// A release id from the path, or a 400 that says what an id looks like.
fn release_id(raw: &str) -> Result<crate::store::ReleaseId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{raw:?} is not a release id: use the number `queue list` or GET /api/v1/releases shows"
        ))
    })
}

/// The name of the token a mutating call came with: who the audit log records.
struct Caller(String);

fn authorize(ctx: &AdminContext, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if ctx.admin_tokens.is_empty() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "mutating endpoints are disabled: set JANITOR_ADMIN_TOKEN (or JANITOR_ADMIN_TOKENS) to enable them"
                .into(),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match ctx.admin_tokens.name_of(given) {
        Some(name) => Ok(Caller(name.to_string())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token>, a token of JANITOR_ADMIN_TOKEN or JANITOR_ADMIN_TOKENS"
                .into(),
        )),
    }
}
