//! The JSON API and the probes: readiness, metrics, releases, policies, retry, cancel, pause and
//! resume. Every failure answers [`ApiError`]'s JSON shape.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};

use crate::inventory::Located;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{authorize, release_id, AdminContext, ApiError, ApiQuery, Caller};
use crate::policy::Policy;
use crate::store::{ReleaseFilter, ReleaseRow};

pub(super) async fn readyz(State(s): State<AdminContext>) -> impl IntoResponse {
    let db = match tokio::time::timeout(Duration::from_secs(2), s.ctx.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        // The driver's own words, without the store's "database error:" prefix.
        Ok(Err(crate::store::StoreError::Db(e))) => Err(format!("database: {e}")),
        Ok(Err(e)) => Err(format!("database: {e}")),
        Err(_) => Err("database: no answer within 2 s".to_string()),
    };
    let loaded = s.health.policies_loaded.load(Ordering::SeqCst);
    let load_error = s.health.load_error();
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

pub(super) async fn metrics(State(s): State<AdminContext>) -> Response {
    match s.ctx.metrics.render(&s.ctx.store, s.ctx.clock.now()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ReleaseQuery {
    state: Option<String>,
    policy: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn list_releases(
    State(s): State<AdminContext>,
    ApiQuery(q): ApiQuery<ReleaseQuery>,
) -> Result<Json<Vec<ReleaseRow>>, ApiError> {
    let state = q.state.filter(|v| !v.is_empty());
    // As documented: 1 to 10,000 (a 0 or -1 answered one release, as if asked for it).
    let limit = q.limit.unwrap_or(500);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is not between 1 and 10000"
        )));
    }
    if let Some(st) = &state {
        st.parse::<crate::store::ReleaseState>()
            .map_err(|e| ApiError::bad_request(format!("state: {e}")))?;
    }
    let rows = s
        .ctx
        .store
        .list_releases(&ReleaseFilter {
            state,
            policy: q.policy.filter(|v| !v.is_empty()),
            limit: Some(limit),
            ..ReleaseFilter::default()
        })
        .await?;
    Ok(Json(rows))
}

pub(super) fn loaded(s: &AdminContext) -> Vec<Policy> {
    s.ctx.policies.current().to_vec()
}

pub(super) async fn list_policies(
    State(s): State<AdminContext>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = s.ctx.clock.now();
    let snap = s.ctx.store.metrics_snapshot(now).await?;
    let runs = s.ctx.store.runs(1000).await?;
    let policies = loaded(&s);
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let errors = s.ctx.store.why_runs_failed(&runs, &names).await?;
    let out: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| {
            let last = runs.iter().find(|r| r.policy == p.name);
            let counts: serde_json::Map<String, serde_json::Value> = snap
                .by_policy_state
                .iter()
                .filter(|(pol, _, _)| pol == &p.name)
                .map(|(_, st, n)| (st.to_string(), json!(n)))
                .collect();
            json!({
                "name": p.name,
                "description": p.description,
                "schedule": p.schedule_text,
                "account": p.account,
                "regions": p.regions,
                "dry_run": p.dry_run,
                "next_run": crate::schedule::next_after(p, now).map(crate::timefmt::text),
                "last_run": last.map(|r| json!({
                    "scheduled_for": crate::timefmt::text(r.scheduled_for),
                    "outcome": r.outcome,
                    "owner": r.owner,
                    "planned": r.planned,
                    "enqueued": r.enqueued,
                    "cancelled": r.cancelled,
                    "refused": r.refused != 0,
                    "error": errors.get(p.name.as_str()),
                })),
                "releases": counts,
            })
        })
        .collect();
    Ok(Json(json!(out)))
}

pub(super) async fn retry_release(
    State(s): State<AdminContext>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiQuery(op): ApiQuery<Operator>,
) -> Result<Json<ReleaseRow>, ApiError> {
    let caller = authorize(&s, &headers)?;
    let id = release_id(&raw)?;
    s.ctx
        .store
        .retry_release(id, &op.by(&caller), op.reason(), s.ctx.clock.now())
        .await?;
    Ok(Json(s.ctx.store.release(id).await?))
}

pub(super) async fn cancel_release(
    State(s): State<AdminContext>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiQuery(op): ApiQuery<Operator>,
) -> Result<Json<ReleaseRow>, ApiError> {
    let caller = authorize(&s, &headers)?;
    let id = release_id(&raw)?;
    let now = s.ctx.clock.now();
    let until = op
        .hold_secs
        .filter(|n| *n > 0)
        .map(|n| now + chrono::Duration::seconds(n.min(10 * 365 * 86_400)));
    let reason = op
        .reason
        .clone()
        .unwrap_or_else(|| "no reason given".into());
    s.ctx
        .store
        .cancel_release(id, &op.by(&caller), &reason, until, now)
        .await?;
    Ok(Json(s.ctx.store.release(id).await?))
}

/// Who and why, from the query string of a mutating call (`?by=alice&reason=...`).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Operator {
    by: Option<String>,
    reason: Option<String>,
    /// `queue cancel`'s hold: seconds, e.g. 86400 for a day.
    hold_secs: Option<i64>,
    /// An exemption's end: `2027-01-31` or an RFC 3339 time.
    until: Option<String>,
    /// An exemption recorded without looking the instance up first.
    #[serde(default)]
    unchecked: bool,
}

impl Operator {
    /// Who the audit log records: the token's name, which the caller cannot choose, and the
    /// `?by=` the caller gave, e.g. `alice via token deploy-bot (admin API)`.
    fn by(&self, caller: &Caller) -> String {
        match self.by.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
            Some(b) => format!("{b} via token {} (admin API)", caller.0),
            None => format!("token {} (admin API)", caller.0),
        }
    }

    /// The `?reason=` given, or `""`.
    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or_default()
    }
}

pub(super) async fn pause(
    State(s): State<AdminContext>,
    headers: HeaderMap,
    ApiQuery(op): ApiQuery<Operator>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&s, &headers)?;
    let reason = op.reason.clone().unwrap_or_default();
    let already = s
        .ctx
        .store
        .pause(&op.by(&caller), &reason, s.ctx.clock.now())
        .await?;
    if already.is_none() {
        tracing::warn!(by = %op.by(&caller), reason = %reason, "releases paused through the admin API");
    }
    // The pause in force: this one, or the one before it, kept with its own who and why.
    let mut state = pause_state(State(s)).await?;
    state.0["already"] = json!(already.is_some());
    Ok(state)
}

pub(super) async fn resume(
    State(s): State<AdminContext>,
    headers: HeaderMap,
    ApiQuery(op): ApiQuery<Operator>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&s, &headers)?;
    s.ctx
        .store
        .resume(&op.by(&caller), op.reason(), s.ctx.clock.now())
        .await?;
    tracing::warn!(by = %op.by(&caller), "releases resumed through the admin API");
    pause_state(State(s)).await
}

pub(super) async fn pause_state(
    State(s): State<AdminContext>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(match s.ctx.store.pause_state().await? {
        Some(p) => {
            json!({ "paused": true, "by": p.by, "reason": p.reason, "at": p.at.map(crate::timefmt::text) })
        }
        None => json!({ "paused": false }),
    }))
}

pub(super) async fn list_exemptions(
    State(s): State<AdminContext>,
) -> Result<Json<Vec<crate::store::ExemptionRow>>, ApiError> {
    Ok(Json(s.ctx.store.exemptions(s.ctx.clock.now()).await?))
}

/// An instance id from the path, or a 400 that says what one looks like.
fn instance_id(raw: &str) -> Result<&str, ApiError> {
    crate::plan::exempt::instance_id(raw).map_err(ApiError::bad_request)
}

/// The reason a mutation must give, or a 400.
fn required_reason(op: &Operator) -> Result<&str, ApiError> {
    match op.reason().trim() {
        "" => Err(ApiError::bad_request(
            "give ?reason=: it is recorded with the exemption and shown in plans",
        )),
        r => Ok(r),
    }
}

pub(super) async fn exempt(
    State(s): State<AdminContext>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiQuery(op): ApiQuery<Operator>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&s, &headers)?;
    let instance = instance_id(&raw)?;
    let reason = required_reason(&op)?;
    let now = s.ctx.clock.now();
    let text = op.until.as_deref().unwrap_or_default();
    let until = crate::plan::exempt::new_until(text, now, s.ctx.protection.max_exemption())
        .map_err(|e| ApiError::bad_request(format!("until: {e}")))?;
    // Looked up where the policies look first, as `exempt` does: a mistyped id is refused.
    let (found, unchecked) = if op.unchecked {
        (Vec::new(), Some("unchecked=true".to_string()))
    } else {
        let policies = s.ctx.policies.current();
        match crate::inventory::locate(&s.ctx.accounts, &policies, instance).await {
            Located::Found(found) => (found, None),
            Located::Unchecked(why) => (Vec::new(), Some(why)),
            Located::Nowhere(pairs) => {
                let places: Vec<String> = pairs
                    .iter()
                    .map(|(a, r)| format!("{r}{}", crate::inventory::account_suffix(a)))
                    .collect();
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{instance} is not listed in any region the policies cover ({}), so no policy could release it and nothing was exempted: check the id, or add unchecked=true to record it anyway",
                        places.join(", ")
                    ),
                ));
            }
        }
    };
    let done = s
        .ctx
        .store
        .exempt(instance, until, &op.by(&caller), reason, now)
        .await?;
    let found: Vec<serde_json::Value> = found
        .iter()
        .map(|(account, i)| {
            json!({
                "account": account,
                "region": i.region_id,
                "instance_name": i.instance_name,
                "status": i.status.as_str(),
                "charge_type": i.charge_type.as_str(),
            })
        })
        .collect();
    Ok(Json(json!({
        "instance_id": instance,
        "until": crate::timefmt::text(until),
        "replaced": done.replaced,
        "cancelled_releases": done.cancelled,
        "found": found,
        "unchecked": unchecked,
    })))
}

pub(super) async fn remove_exemption(
    State(s): State<AdminContext>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiQuery(op): ApiQuery<Operator>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&s, &headers)?;
    let instance = instance_id(&raw)?;
    let reason = required_reason(&op)?;
    let removed = s
        .ctx
        .store
        .remove_exemption(instance, &op.by(&caller), reason, s.ctx.clock.now())
        .await?;
    if !removed {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{instance} has no exemption in the database"),
        ));
    }
    Ok(Json(json!({ "instance_id": instance, "removed": true })))
}
