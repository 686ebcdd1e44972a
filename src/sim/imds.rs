//! The ECS instance metadata service, as much of it as the RAM-role credentials path needs, so
//! that [`crate::ecs::imds::ImdsProvider`] can be tested end to end against the simulator.
//!
//! It issues IMDSv2 tokens (`PUT /latest/api/token`), lists the role
//! (`GET /latest/meta-data/ram/security-credentials/`) and issues STS-style temporary credentials
//! for it (`GET .../<role>`): the simulator's own AccessKey pair plus a fresh `SecurityToken`,
//! expiring a configurable time after the clock's now. The simulator's `DescribeInstances`
//! accepts them because the pair is the one it checks signatures against.
//!
//! Token policy, chosen per service with [`TokenMode`]: by default every read requires a valid
//! token (401 without or with a wrong or expired one), as on an instance hardened to IMDSv2
//! only. That is the strictest choice, so a client that forgets the token fails here rather than
//! on a hardened instance. `Optional` accepts v1 reads too, and `Unavailable` has no token
//! endpoint at all (404), like an old metadata service, to exercise a client's v1 fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::clock::SharedClock;
use crate::ecs::credentials::Credentials;
use crate::ecs::imds::{TOKEN_HEADER, TOKEN_TTL_HEADER};

/// The RAM role the simulator's instance has.
pub const DEFAULT_ROLE: &str = "EcsJanitorSimRole";
/// How long issued credentials live unless told otherwise.
pub const DEFAULT_LIFETIME: chrono::Duration = chrono::Duration::hours(1);
/// The longest token lifetime the service grants, in seconds.
pub const MAX_TOKEN_TTL_SECONDS: i64 = 21600;

/// Whether metadata reads need an IMDSv2 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    /// Every read needs a valid token (401 otherwise).
    #[default]
    Required,
    /// Reads without a token are served; a token that is sent must be valid.
    Optional,
    /// There is no token endpoint (404); reads are served without one.
    Unavailable,
}

/// How many requests of each kind the service has answered (successfully or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataCounts {
    pub token: u64,
    pub role_list: u64,
    pub credentials: u64,
    /// Reads refused for a missing or invalid token.
    pub unauthorized: u64,
}

#[derive(Default)]
struct Counters {
    token: AtomicU64,
    role_list: AtomicU64,
    credentials: AtomicU64,
    unauthorized: AtomicU64,
}

struct Settings {
    lifetime: chrono::Duration,
    mode: TokenMode,
}

struct Inner {
    role: String,
    access_key_id: String,
    access_key_secret: String,
    clock: SharedClock,
    settings: Mutex<Settings>,
    /// token → when it stops being valid.
    tokens: Mutex<HashMap<String, DateTime<Utc>>>,
    issued: AtomicU64,
    counts: Counters,
}

/// A metadata service for one instance with one RAM role. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct MetadataService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetadataService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lifetime, mode) = {
            let s = self.settings();
            (s.lifetime, s.mode)
        };
        f.debug_struct("MetadataService")
            .field("role", &self.inner.role)
            .field("access_key_id", &self.inner.access_key_id)
            .field("lifetime", &lifetime)
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

impl MetadataService {
    /// A service for `role`, handing out `creds`' AccessKey pair (its token, if any, is
    /// ignored: each issue gets a new one) with [`DEFAULT_LIFETIME`] and [`TokenMode::Required`].
    pub fn new(role: &str, creds: Credentials, clock: SharedClock) -> Self {
        MetadataService {
            inner: Arc::new(Inner {
                role: role.to_string(),
                access_key_id: creds.access_key_id,
                access_key_secret: creds.access_key_secret.expose().to_string(),
                clock,
                settings: Mutex::new(Settings {
                    lifetime: DEFAULT_LIFETIME,
                    mode: TokenMode::Required,
                }),
                tokens: Mutex::new(HashMap::new()),
                issued: AtomicU64::new(0),
                counts: Counters::default(),
            }),
        }
    }

    /// Issued credentials expire this long after they are issued.
    pub fn with_lifetime(self, lifetime: chrono::Duration) -> Self {
        self.settings().lifetime = lifetime;
        self
    }

    /// Sets the token policy.
    pub fn with_token_mode(self, mode: TokenMode) -> Self {
        self.settings().mode = mode;
        self
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.inner
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Requests answered so far.
    pub fn counts(&self) -> MetadataCounts {
        let c = &self.inner.counts;
        MetadataCounts {
            token: c.token.load(Ordering::SeqCst),
            role_list: c.role_list.load(Ordering::SeqCst),
            credentials: c.credentials.load(Ordering::SeqCst),
            unauthorized: c.unauthorized.load(Ordering::SeqCst),
        }
    }

    /// The routes, to serve alone or merge into the simulator's router.
    pub fn router(&self) -> Router {
        let list = get(role_list);
        Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/ram/security-credentials/", list.clone())
            .route("/latest/meta-data/ram/security-credentials", list)
            .route(
                "/latest/meta-data/ram/security-credentials/{role}",
                get(role_credentials),
            )
            .with_state(self.clone())
    }

    /// Whether the read may go on; counts a refusal.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let sent = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
        let valid = sent.is_some_and(|t| {
            let now = self.inner.clock.now();
            let mut tokens = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, until| *until > now);
            tokens.contains_key(t)
        });
        let mode = self.settings().mode;
        let ok = match (mode, sent) {
            (_, Some(_)) => valid,
            (TokenMode::Required, None) => false,
            (_, None) => true,
        };
        if !ok {
            self.inner
                .counts
                .unauthorized
                .fetch_add(1, Ordering::SeqCst);
        }
        ok
    }
}

/// A metadata router for `role` handing out `creds`' AccessKey pair, with default settings
/// (see [`MetadataService`] to change them or to count requests).
pub fn metadata_router(role: &str, creds: Credentials, clock: SharedClock) -> Router {
    MetadataService::new(role, creds, clock).router()
}

async fn token(State(svc): State<MetadataService>, headers: HeaderMap) -> Response {
    let inner = &svc.inner;
    inner.counts.token.fetch_add(1, Ordering::SeqCst);
    if svc.settings().mode == TokenMode::Unavailable {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    // The real service refuses tokens to anything that looks proxied (SSRF defence).
    if headers.contains_key("x-forwarded-for") {
        return (StatusCode::FORBIDDEN, "Forbidden").into_response();
    }
    let ttl = headers
        .get(TOKEN_TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=MAX_TOKEN_TTL_SECONDS).contains(t)) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{TOKEN_TTL_HEADER} must be 1 to {MAX_TOKEN_TTL_SECONDS}"),
        )
            .into_response();
    };
    let token = format!("sim-imds-token-{}", uuid::Uuid::new_v4().simple());
    let until = inner.clock.now() + chrono::Duration::seconds(ttl);
    inner
        .tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token.clone(), until);
    token.into_response()
}

async fn role_list(State(svc): State<MetadataService>, headers: HeaderMap) -> Response {
    svc.inner.counts.role_list.fetch_add(1, Ordering::SeqCst);
    if !svc.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    svc.inner.role.clone().into_response()
}

async fn role_credentials(
    State(svc): State<MetadataService>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    let inner = &svc.inner;
    inner.counts.credentials.fetch_add(1, Ordering::SeqCst);
    if !svc.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    if role != inner.role {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let now = inner.clock.now();
    let lifetime = svc.settings().lifetime;
    let n = inner.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    Json(json!({
        "Code": "Success",
        "AccessKeyId": inner.access_key_id,
        "AccessKeySecret": inner.access_key_secret,
        "SecurityToken": format!("sim-sts-token-{n}-{}", uuid::Uuid::new_v4().simple()),
        "Expiration": fmt(now + lifetime),
        "LastUpdated": fmt(now),
    }))
    .into_response()
}
