//! One authenticated ECS call, from its parameters to its outcome: a fresh RequestId, the
//! signature check ([`super::auth`]), releases whose delay is over, scripted answers, injected
//! faults, the action itself, and the call log.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;

use super::delete::delete;
use super::describe::describe;
use super::disks::describe_disks;
use super::params::{indexed_params, instance_id_params};
use super::price::{describe_price, describe_renewal_price};
use super::tags::{tag_resources, untag_resources};
use super::{api_err, auth, ApiError, CallLogEntry, Scripted, SimConfig, SimState, Simulator};

/// What a handled action produced.
pub(super) enum Outcome {
    Ok(serde_json::Value),
    /// The same, already serialised: a JSON object without its `RequestId` (the listings).
    Text(String),
    /// Carried out, but the connection is closed before the answer.
    Dropped,
    /// A gateway's HTML error page (status 503), without doing anything.
    Html503,
}

/// One authenticated call, as the actions see it.
struct Call<'a> {
    /// `""`: the default account.
    account: &'a str,
    action: &'a str,
    map: HashMap<&'a str, &'a str>,
    params: &'a [(String, String)],
    request_id: &'a str,
    now: DateTime<Utc>,
}

impl Call<'_> {
    fn delete(
        &self,
        st: &mut SimState,
        release_delay: Duration,
    ) -> Result<serde_json::Value, ApiError> {
        delete(
            st,
            self.account,
            &self.map,
            self.params,
            self.request_id,
            self.now,
            release_delay,
        )
    }
}

impl Simulator {
    fn next_request_id(&self, st: &mut SimState) -> String {
        st.request_seq += 1;
        let r: u64 = st.rng.gen();
        let s = format!("{:016X}{:016X}", st.request_seq, r);
        format!(
            "{}-{}-{}-{}-{}",
            &s[0..8],
            &s[8..12],
            &s[12..16],
            &s[16..20],
            &s[20..32]
        )
    }

    /// Authenticates and answers one request: its outcome, its RequestId, and for a throttling
    /// answer the wait to advertise.
    pub(super) fn process(
        &self,
        req: &auth::Incoming<'_>,
    ) -> (Result<Outcome, ApiError>, String, Option<Duration>) {
        let cfg = self.config();
        let mut st = self.state();
        let request_id = self.next_request_id(&mut st);
        let (account, params, signature) = match auth::authenticate(&cfg, &mut st, req) {
            Ok(a) => (a.account, a.params, a.signature),
            Err(e) => return (Err(e), request_id, None),
        };
        let params = params.as_slice();
        let map: HashMap<&str, &str> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let action = map.get("Action").copied().unwrap_or_default().to_string();
        let mut log = call_log(&account, &action, &map, params, signature);
        let now = cfg.clock.now();
        expire_releases(&mut st, now);
        let scripted = take_scripted(&mut st, &action, &log.instance_ids);
        let call = Call {
            account: &account,
            action: &action,
            map,
            params,
            request_id: &request_id,
            now,
        };
        let mut retry_after = None;
        let region = log.region.clone();
        let result =
            if let Some((e, wait)) = over_quota(&cfg, &mut st, &account, &region, &action, now) {
                retry_after = Some(wait);
                Err(e)
            } else if let Some(answer) = scripted {
                if matches!(&answer, Scripted::Error { code, .. } if code.contains("Throttling")) {
                    // A scripted throttle advertises the same wait as an injected one.
                    retry_after = Some(cfg.throttle_time_left);
                }
                answer_scripted(&call, &cfg, &mut st, answer)
            } else if let Some((e, wait)) = injected_fault(&cfg, &mut st, &action) {
                retry_after = wait;
                Err(e)
            } else {
                act(&call, &cfg, &mut st)
            };
        log.outcome = match &result {
            Ok(Outcome::Ok(_) | Outcome::Text(_)) => "OK".into(),
            Ok(Outcome::Dropped) => "Dropped".into(),
            Ok(Outcome::Html503) => "Html503".into(),
            Err(e) => e.code.clone(),
        };
        st.calls.push(log);
        (result, request_id, retry_after)
    }
}

/// A call past its quota: ECS counts calls per account, region and API in each wall-clock
/// minute (the simulator's `quota_window`), and refuses the rest of the minute with `Throttling.User` ("Request was denied due
/// to user flow control.", ../shared/ecs-api.md 3.2) and `x-ratelimit-user-api` naming the
/// time left. The quota values themselves are per API in Quota Center and not documented; the
/// simulator takes them from `--quota API=N/min`. A refused call is not counted.
fn over_quota(
    cfg: &SimConfig,
    st: &mut SimState,
    account: &str,
    region: &str,
    action: &str,
    now: DateTime<Utc>,
) -> Option<(ApiError, Duration)> {
    let limit = *cfg.quotas.get(action)?;
    let window = (cfg.quota_window.as_millis() as i64).max(1);
    let minute = now.timestamp_millis().div_euclid(window);
    let key = (account.to_string(), region.to_string(), action.to_string());
    let used = st.quota_used.entry(key).or_insert((minute, 0));
    if used.0 != minute {
        *used = (minute, 0);
    }
    if used.1 < limit {
        used.1 += 1;
        return None;
    }
    let into = now.timestamp_millis().rem_euclid(window);
    let left = Duration::from_millis((window - into) as u64);
    Some((
        api_err(
            400,
            "Throttling.User",
            "Request was denied due to user flow control.",
        ),
        left,
    ))
}

/// The call's entry in the call log, its outcome still blank.
fn call_log(
    account: &str,
    action: &str,
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
    signature: &str,
) -> CallLogEntry {
    CallLogEntry {
        account: account.to_string(),
        action: action.to_string(),
        region: map.get("RegionId").copied().unwrap_or_default().to_string(),
        client_token: map.get("ClientToken").map(|s| s.to_string()),
        instance_ids: match map.get("InstanceIds") {
            Some(raw) => serde_json::from_str(raw).unwrap_or_default(),
            None if matches!(action, "TagResources" | "UntagResources") => {
                indexed_params(params, "ResourceId.")
                    .map(|ids| ids.into_iter().map(|(_, id)| id).collect())
                    .unwrap_or_default()
            }
            None => instance_id_params(params)
                .map(|ids| ids.into_iter().map(|(_, id)| id).collect())
                .unwrap_or_default(),
        },
        page: map
            .get("NextToken")
            .filter(|t| !t.is_empty())
            .or_else(|| map.get("PageNumber").filter(|n| **n != "1"))
            .map(|s| s.to_string()),
        by_cursor: map.contains_key("NextToken") || map.contains_key("MaxResults"),
        disk_filters: if action == "DescribeDisks" {
            ["DiskType", "Filter.1.Value", "Filter.2.Value"]
                .iter()
                .filter_map(|k| map.get(k).map(|v| (k.to_string(), v.to_string())))
                .collect()
        } else {
            Vec::new()
        },
        outcome: String::new(),
        signature: signature.to_string(),
    }
}

/// Released instances stop being listed once their delay is over.
fn expire_releases(st: &mut SimState, now: DateTime<Utc>) {
    for id in st.releasing.expire(now) {
        for f in st.fleet.values_mut() {
            f.remove(&id);
        }
    }
}

/// The first scripted answer this call matches, used up.
fn take_scripted(st: &mut SimState, action: &str, instance_ids: &[String]) -> Option<Scripted> {
    let scripted = st.script.iter().position(|s| {
        s.action == action
            && s.instance_id
                .as_ref()
                .is_none_or(|id| instance_ids.contains(id))
    });
    scripted.map(|i| st.script.remove(i).answer)
}

fn answer_scripted(
    call: &Call<'_>,
    cfg: &SimConfig,
    st: &mut SimState,
    answer: Scripted,
) -> Result<Outcome, ApiError> {
    match answer {
        Scripted::Html503 => Ok(Outcome::Html503),
        Scripted::EmptyList => Ok(Outcome::Ok(json!({
            "Instances": {"Instance": []},
            "TotalCount": 0,
            "PageNumber": 1,
            "PageSize": 100,
            "NextToken": "",
        }))),
        Scripted::Error { status, code } => Err(api_err(
            status,
            code.clone(),
            format!("scripted answer {code}"),
        )),
        Scripted::LostAnswer if call.action == "DeleteInstances" => {
            call.delete(st, cfg.release_delay).map(|_| Outcome::Dropped)
        }
        Scripted::LostAnswer => Ok(Outcome::Dropped),
    }
}

/// An injected InternalError or Throttling (with the wait to advertise), drawn from the seeded
/// source, for the actions the faults apply to.
fn injected_fault(
    cfg: &SimConfig,
    st: &mut SimState,
    action: &str,
) -> Option<(ApiError, Option<Duration>)> {
    let faults_apply =
        cfg.faults.actions.is_empty() || cfg.faults.actions.iter().any(|a| a == action);
    if !faults_apply {
        return None;
    }
    if st
        .rng
        .gen_bool(cfg.faults.internal_error_rate.clamp(0.0, 1.0))
    {
        return Some((
            api_err(
                500,
                "InternalError",
                "The request processing has failed due to some unknown error.",
            ),
            None,
        ));
    }
    if st.rng.gen_bool(cfg.faults.throttle_rate.clamp(0.0, 1.0)) {
        return Some((
            api_err(
                400,
                "Throttling",
                "Request was denied due to request throttling.",
            ),
            Some(cfg.throttle_time_left),
        ));
    }
    None
}

/// Carries out the action the call names.
fn act(call: &Call<'_>, cfg: &SimConfig, st: &mut SimState) -> Result<Outcome, ApiError> {
    match call.action {
        "" => Err(api_err(
            400,
            "MissingParameter",
            "The input parameter \"Action\" that is mandatory for processing this request is not supplied.",
        )),
        "DescribeInstances" => describe(st, call.account, &call.map).map(Outcome::Text),
        "DescribeDisks" => describe_disks(st, call.account, &call.map).map(Outcome::Text),
        "DescribePrice" => describe_price(st, &cfg.price_currency, &call.map).map(Outcome::Ok),
        "DescribeRenewalPrice" => {
            describe_renewal_price(st, call.account, &cfg.price_currency, &call.map)
                .map(Outcome::Ok)
        }
        "CreateSnapshot" => super::snapshots::create_snapshot(
            st,
            call.account,
            &call.map,
            call.now,
            cfg.snapshot_time,
        )
        .map(Outcome::Ok),
        "DescribeSnapshots" => {
            super::snapshots::describe_snapshots(st, &call.map, call.now).map(Outcome::Ok)
        }
        "TagResources" => {
            tag_resources(st, call.account, &call.map, call.params, call.request_id)
                .map(Outcome::Ok)
        }
        "UntagResources" => {
            untag_resources(st, call.account, &call.map, call.params, call.request_id)
                .map(Outcome::Ok)
        }
        "DeleteInstances" => {
            let drop = st.rng.gen_bool(cfg.faults.drop_after_commit_rate.clamp(0.0, 1.0));
            call.delete(st, cfg.release_delay).map(|v| {
                if drop && v.get("RequestId").is_some() {
                    Outcome::Dropped
                } else {
                    Outcome::Ok(v)
                }
            })
        }
        action => Err(api_err(
            404,
            "InvalidAction.NotFound",
            format!("Specified api {action} is not found, please check your url and method."),
        )),
    }
}
