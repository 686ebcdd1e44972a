//! DeleteInstances as ECS answers it: the request's checks, ClientToken replays, each member's
//! refusals (protection, subscription, status), and the release of the batch as a whole.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::params::{parse_bool, require_region, unique_ids};
use super::{api_err, ApiError, ReleaseRecord, SimState, TokenEntry};
use crate::ecs::types::{ChargeType, Instance, InstanceStatus};

/// Answers one DeleteInstances call by `account`: every member is released, or none is.
pub(super) fn delete(
    st: &mut SimState,
    account: &str,
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
    request_id: &str,
    now: DateTime<Utc>,
    release_delay: Duration,
) -> Result<serde_json::Value, ApiError> {
    let req = Request::parse(st, account, map, params)?;
    if let Some(t) = &req.token_key {
        if let Some(prev) = st.tokens.get(t) {
            if prev.fingerprint == req.fingerprint {
                return Ok(json!({"RequestId": prev.request_id}));
            }
            return Err(api_err(
                400,
                "IdempotentParameterMismatch",
                "The request is retried with updated parameters.",
            ));
        }
    }
    if req.dry_run {
        return Err(api_err(
            400,
            "DryRunOperation",
            "Request validation has been passed with DryRun flag set.",
        ));
    }
    for id in &req.ids {
        check_member(st, account, &req, id, now)?;
    }
    carry_out(st, account, req, request_id, now, release_delay);
    Ok(json!({"RequestId": request_id}))
}

/// A DeleteInstances as asked, its parameters checked.
struct Request {
    /// The region as the simulator holds it (`""` for a known region it holds nothing in).
    region: String,
    /// Each instance once, in `InstanceId.N` order.
    ids: Vec<String>,
    force: bool,
    terminate: bool,
    dry_run: bool,
    token: Option<String>,
    /// What a replay with the same ClientToken must repeat.
    fingerprint: String,
    /// The ClientToken as stored: scoped to the account that sent it.
    token_key: Option<String>,
}

impl Request {
    fn parse(
        st: &SimState,
        account: &str,
        map: &HashMap<&str, &str>,
        params: &[(String, String)],
    ) -> Result<Request, ApiError> {
        let (region, _) = require_region(st, map)?;
        let region = region.to_string();
        let region_param = map.get("RegionId").copied().unwrap_or_default().to_string();
        // An id named twice (under one index or two) is one instance, released once.
        let ids = unique_ids(params, "InstanceId.")?;
        if ids.len() > 100 {
            return Err(api_err(
                403,
                "InvalidParameter.TooManyInstanceIds",
                "Instance ids cannot be more than 100.",
            ));
        }
        let force = parse_bool(map, "Force")?;
        let terminate = parse_bool(map, "TerminateSubscription")?;
        let dry_run = parse_bool(map, "DryRun")?;
        let token = map.get("ClientToken").map(|s| s.to_string());
        if let Some(t) = &token {
            if t.is_empty() || t.chars().count() > 64 || !t.is_ascii() {
                return Err(api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"ClientToken\" must be 1 to 64 ASCII characters.",
                ));
            }
        }
        let fingerprint = format!(
            "{region_param}|{}|{force}|{terminate}|{dry_run}",
            ids.join(",")
        );
        // ClientTokens are scoped to the account that sent them.
        let token_key = token.as_ref().map(|t| {
            if account.is_empty() {
                t.clone()
            } else {
                format!("{account}/{t}")
            }
        });
        Ok(Request {
            region,
            ids,
            force,
            terminate,
            dry_run,
            token,
            fingerprint,
            token_key,
        })
    }
}

/// Refuses the release of `id` the way ECS would, or lets it through.
fn check_member(
    st: &SimState,
    account: &str,
    req: &Request,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let Some(i) = st
        .fleet
        .get(&req.region)
        .and_then(|f| f.get(id))
        .filter(|_| st.owns(account, id))
    else {
        return Err(api_err(
            404,
            "InvalidInstanceId.NotFound",
            format!("The specified InstanceId does not exist: {id}"),
        ));
    };
    if st.releasing.contains_key(id) {
        // Undocumented: what ECS answers a second release of an instance it is releasing.
        return Err(api_err(
            403,
            "IncorrectInstanceStatus",
            format!("The specified instance {id} is being released."),
        ));
    }
    if i.deletion_protection {
        return Err(api_err(
            403,
            "InvalidOperation.DeletionProtection",
            format!("The operation is not allowed due to deletion protection: {id}"),
        ));
    }
    // A security lock does not block a release ("DeleteInstances: Unaffected"); the
    // instance's disks then go with it whatever their DeleteWithInstance says (recorded in
    // the release). InstanceLockedForSecurity is answered only when a test scripts it.
    if i.charge_type == ChargeType::PrePaid {
        let expired = i.expired_time.is_some_and(|t| t <= now);
        if !req.terminate || !expired {
            let why = if !expired {
                "the subscription has not expired"
            } else {
                "TerminateSubscription is not true"
            };
            return Err(api_err(
                403,
                "ChargeTypeViolation",
                format!("The subscription instance {id} cannot be released: {why}."),
            ));
        }
    }
    match i.status {
        InstanceStatus::Stopped => {}
        InstanceStatus::Running | InstanceStatus::Starting | InstanceStatus::Stopping
            if req.force => {}
        InstanceStatus::Pending => {
            return Err(api_err(
                403,
                "IncorrectInstanceStatus.Initializing",
                format!("The instance {id} is still initializing."),
            ))
        }
        other => {
            return Err(api_err(
                403,
                "IncorrectInstanceStatus",
                format!("The specified instance is in an incorrect status for the requested action; Status of {id} is {other} but the expected status is in (Stopped)."),
            ))
        }
    }
    Ok(())
}

/// Releases every member of a request that passed: at once, or after `release_delay` during
/// which ECS still lists them; records each release and the ClientToken's answer.
fn carry_out(
    st: &mut SimState,
    account: &str,
    req: Request,
    request_id: &str,
    now: DateTime<Utc>,
    release_delay: Duration,
) {
    let Request {
        region,
        ids,
        force,
        terminate,
        token,
        fingerprint,
        token_key,
        ..
    } = req;
    let locked: HashSet<String> = st
        .fleet
        .get(&region)
        .map(|f| {
            ids.iter()
                .filter(|id| f.get(*id).is_some_and(Instance::security_locked))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // Every member passed: the batch is carried out as a whole.
    if release_delay.is_zero() {
        if let Some(f) = st.fleet.get_mut(&region) {
            for id in &ids {
                f.remove(id);
            }
        }
    } else {
        let until = now + chrono::Duration::from_std(release_delay).unwrap_or_default();
        for id in &ids {
            st.releasing.insert(id.clone(), until);
        }
    }
    for id in &ids {
        // A snapshot still progressing is deleted with its disk (CreateSnapshot's description).
        let going: Vec<String> = st
            .disks
            .of(id, &region)
            .into_iter()
            .filter(|d| d.delete_with_instance || locked.contains(id))
            .map(|d| d.disk_id.clone())
            .collect();
        st.snapshots.disks_released(&going, now);
        // Disks go with the instance unless set to outlive it; a security-locked instance's
        // all go (DeleteInstance's documentation, see `super::disks`).
        let disks_kept = st
            .disks
            .release_with(id, &region, locked.contains(id), account);
        st.releases.push(ReleaseRecord {
            all_disks_released: locked.contains(id),
            disks_kept,
            account: account.to_string(),
            instance_id: id.clone(),
            region: region.clone(),
            client_token: token.clone(),
            force,
            terminate_subscription: terminate,
            request_id: request_id.to_string(),
            at: now,
        });
    }
    if let Some(t) = token_key {
        st.tokens.insert(
            t,
            TokenEntry {
                fingerprint,
                request_id: request_id.to_string(),
            },
        );
    }
}
