//! The simulator's snapshots: `CreateSnapshot` and `DescribeSnapshots` as ECS documents them
//! (ECS-V2 `create_snapshot_request_model.go`, `describe_snapshots_request_model.go`; see
//! ../shared/ecs-more.md section 2), and what a release does to them.
//!
//! - A snapshot starts `progressing` and is `accomplished` after `SimConfig::snapshot_time` on
//!   the simulator's clock (ECS bounds this nowhere; the first snapshot of a disk is full and
//!   slow). `Simulator::fail_snapshots_of` makes the disk's next snapshots end `failed`.
//! - `ClientToken`: the same token with the same parameters answers the same `SnapshotId` and
//!   creates nothing; with other parameters it is `IdempotentParameterMismatch`.
//! - Errors: `InvalidDiskId.NotFound`, `IncorrectDiskStatus.CreatingSnapshot` (a snapshot of the
//!   disk is still progressing), `InstanceLockedForSecurity`, `InvalidRetentionDays.Malformed`
//!   (outside 1–65536; the code's exact name is not documented), `InvalidSnapshotName.Malformed`
//!   (2–128 characters starting with a letter, not `http(s)://` or `auto`; the code's name is
//!   not documented either), `NumberExceed.Tags` (more than 20).
//! - **The trap:** releasing an instance releases its disks, and a snapshot of a released disk
//!   still `progressing` is deleted with it (CreateSnapshot's description). Accomplished manual
//!   snapshots outlive the disk.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::params::require_region;
use super::{api_err, ApiError, SimState};

/// One snapshot the simulator holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub region_id: String,
    pub source_disk_id: String,
    pub name: String,
    pub retention_days: Option<u32>,
    pub tags: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// When it is accomplished (or fails, when `fails`).
    pub done_at: DateTime<Utc>,
    pub fails: bool,
}

impl Snapshot {
    /// `progressing`, `accomplished` or `failed`, at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        match (now >= self.done_at, self.fails) {
            (false, _) => "progressing",
            (true, false) => "accomplished",
            (true, true) => "failed",
        }
    }
}

/// Every snapshot, the tokens that made them, and the disks whose next snapshots fail.
#[derive(Debug, Default)]
pub(super) struct SnapshotStore {
    /// Snapshot id → snapshot, in creation order of ids.
    by_id: BTreeMap<String, Snapshot>,
    /// (account, ClientToken) → (the parameters' fingerprint, the snapshot id).
    tokens: HashMap<(String, String), (String, String)>,
    pub(super) failing_disks: HashSet<String>,
    seq: u64,
}

impl SnapshotStore {
    pub(super) fn all(&self) -> Vec<Snapshot> {
        self.by_id.values().cloned().collect()
    }

    pub(super) fn delete(&mut self, snapshot_id: &str) -> bool {
        self.by_id.remove(snapshot_id).is_some()
    }

    /// A release took `disk_ids` with it: their snapshots still progressing at `now` go too.
    pub(super) fn disks_released(&mut self, disk_ids: &[String], now: DateTime<Utc>) {
        self.by_id.retain(|_, s| {
            !(disk_ids.contains(&s.source_disk_id) && s.status(now) == "progressing")
        });
    }
}

/// `Tag.N.Key` / `Tag.N.Value`, optional here, checked as TagResources checks them.
fn tags_of(map: &HashMap<&str, &str>) -> Result<BTreeMap<String, String>, ApiError> {
    let given: Vec<(String, String)> = map
        .iter()
        .filter(|(k, _)| k.starts_with("Tag."))
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    if given.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(super::tags::tags_of(map, &given)?.into_iter().collect())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let lower = name.to_ascii_lowercase();
    let ok = (2..=128).contains(&name.chars().count())
        && name.chars().next().is_some_and(char::is_alphabetic)
        && !lower.starts_with("http://")
        && !lower.starts_with("https://")
        && !lower.starts_with("auto");
    if ok {
        Ok(())
    } else {
        Err(api_err(
            400,
            "InvalidSnapshotName.Malformed",
            "The specified SnapshotName is wrongly formed: 2 to 128 characters, starting with a letter, not with http://, https:// or auto.",
        ))
    }
}

/// Answers one CreateSnapshot by `account` at `now`; a snapshot takes `snapshot_time`.
pub(super) fn create_snapshot(
    st: &mut SimState,
    account: &str,
    map: &HashMap<&str, &str>,
    now: DateTime<Utc>,
    snapshot_time: std::time::Duration,
) -> Result<serde_json::Value, ApiError> {
    let disk_id = map.get("DiskId").copied().unwrap_or_default();
    if disk_id.is_empty() {
        return Err(api_err(
            400,
            "MissingParameter",
            "The input parameter \"DiskId\" that is mandatory for processing this request is not supplied.",
        ));
    }
    let retention = match map.get("RetentionDays") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(d) if (1..=65_536).contains(&d) => Some(d),
            _ => {
                return Err(api_err(
                    400,
                    "InvalidRetentionDays.Malformed",
                    "The specified RetentionDays is not valid: 1 to 65536.",
                ))
            }
        },
    };
    let name = map.get("SnapshotName").copied().unwrap_or_default();
    if !name.is_empty() {
        check_name(name)?;
    }
    let tags = tags_of(map)?;
    let token = map.get("ClientToken").copied().unwrap_or_default();
    let fingerprint = format!("{disk_id}|{retention:?}|{name}|{tags:?}");
    if !token.is_empty() {
        if let Some((fp, id)) = st
            .snapshots
            .tokens
            .get(&(account.to_string(), token.to_string()))
        {
            if *fp != fingerprint {
                return Err(api_err(
                    403,
                    "IdempotentParameterMismatch",
                    "The request uses the same client token as a previous, but non-identical request.",
                ));
            }
            return Ok(json!({ "SnapshotId": id }));
        }
    }
    let (region, _) = require_region(st, map)?;
    let region = region.to_string();
    let owner = st.disks.owner_of(disk_id, &region);
    let Some(instance_id) = owner else {
        return Err(api_err(
            404,
            "InvalidDiskId.NotFound",
            format!("The specified disk {disk_id:?} does not exist in {region}."),
        ));
    };
    if !st.owns(account, &instance_id) {
        return Err(api_err(
            404,
            "InvalidDiskId.NotFound",
            format!("The specified disk {disk_id:?} does not exist in {region}."),
        ));
    }
    if st
        .fleet
        .get(&region)
        .and_then(|f| f.get(&instance_id))
        .is_some_and(crate::ecs::Instance::security_locked)
    {
        return Err(api_err(
            403,
            "InstanceLockedForSecurity",
            "The specified operation is denied as your instance is locked for security reasons.",
        ));
    }
    if st
        .snapshots
        .by_id
        .values()
        .any(|s| s.source_disk_id == disk_id && s.status(now) == "progressing")
    {
        return Err(api_err(
            403,
            "IncorrectDiskStatus.CreatingSnapshot",
            "A snapshot is being created for the disk.",
        ));
    }
    st.snapshots.seq += 1;
    let id = format!("s-sim{:08}", st.snapshots.seq);
    let fails = st.snapshots.failing_disks.contains(disk_id);
    st.snapshots.by_id.insert(
        id.clone(),
        Snapshot {
            snapshot_id: id.clone(),
            region_id: region,
            source_disk_id: disk_id.to_string(),
            name: name.to_string(),
            retention_days: retention,
            tags,
            created_at: now,
            done_at: now + chrono::Duration::from_std(snapshot_time).unwrap_or_default(),
            fails,
        },
    );
    if !token.is_empty() {
        st.snapshots.tokens.insert(
            (account.to_string(), token.to_string()),
            (fingerprint, id.clone()),
        );
    }
    Ok(json!({ "SnapshotId": id }))
}

/// Answers one DescribeSnapshots at `now`: the `SnapshotIds` (a JSON array of up to 100) and
/// `DiskId` filters, PageNumber/PageSize paging (PageSize 1–100, 10 when absent).
pub(super) fn describe_snapshots(
    st: &mut SimState,
    map: &HashMap<&str, &str>,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, ApiError> {
    let (region, _) = require_region(st, map)?;
    let region = region.to_string();
    let ids: Option<Vec<String>> = match map.get("SnapshotIds") {
        None => None,
        Some(raw) => Some(serde_json::from_str(raw).map_err(|_| {
            api_err(
                400,
                "InvalidParameter.SnapshotIds",
                "The specified SnapshotIds is not a JSON array of snapshot ids.",
            )
        })?),
    };
    if ids.as_ref().is_some_and(|v| v.len() > 100) {
        return Err(api_err(
            400,
            "InvalidParameter.SnapshotIds",
            "At most 100 snapshot ids.",
        ));
    }
    let disk = map.get("DiskId").copied();
    let size: usize = map
        .get("PageSize")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let page: usize = map
        .get("PageNumber")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let matching: Vec<&Snapshot> = st
        .snapshots
        .by_id
        .values()
        .filter(|s| s.region_id == region)
        .filter(|s| ids.as_ref().is_none_or(|v| v.contains(&s.snapshot_id)))
        .filter(|s| disk.is_none_or(|d| s.source_disk_id == d))
        .collect();
    let total = matching.len();
    let items: Vec<serde_json::Value> = matching
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|s| {
            let status = s.status(now);
            let progress = match status {
                "progressing" => {
                    let all = (s.done_at - s.created_at).num_milliseconds().max(1);
                    let gone = (now - s.created_at).num_milliseconds().clamp(0, all);
                    format!("{}%", gone * 100 / all)
                }
                _ => "100%".to_string(),
            };
            json!({
                "SnapshotId": s.snapshot_id,
                "SnapshotName": s.name,
                "SourceDiskId": s.source_disk_id,
                "Status": status,
                "Progress": progress,
                "RemainTime": (s.done_at - now).num_seconds().max(0),
                "RetentionDays": s.retention_days,
                "CreationTime": s.created_at.format("%Y-%m-%dT%H:%MZ").to_string(),
                "Tags": { "Tag": s.tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>() },
            })
        })
        .collect();
    Ok(json!({
        "TotalCount": total,
        "PageNumber": page,
        "PageSize": size,
        "Snapshots": { "Snapshot": items },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::types::InstanceStatus;
    use crate::sim::{SimConfig, Simulator};
    use std::time::Duration;

    fn sim() -> (Simulator, String, DateTime<Utc>) {
        let now = Utc::now();
        let mut i = crate::sim::fleet::generate(1, 1, now).remove(0);
        i.instance_id = "i-a".into();
        i.status = InstanceStatus::Stopped;
        let region = i.region_id.clone();
        let sim = Simulator::new(SimConfig::default(), vec![i]);
        (sim, region, now)
    }

    fn params<'a>(region: &'a str, pairs: &[(&'a str, &'a str)]) -> HashMap<&'a str, &'a str> {
        let mut m: HashMap<&str, &str> = pairs.iter().copied().collect();
        m.insert("RegionId", region);
        m
    }

    fn code(r: Result<serde_json::Value, ApiError>) -> String {
        r.map(|_| "OK".to_string()).unwrap_or_else(|e| e.code)
    }

    #[test]
    fn a_token_answers_the_same_snapshot_and_other_parameters_are_refused() {
        let (sim, region, now) = sim();
        let disk = sim.disks()[0].disk_id.clone();
        let mut st = sim.state();
        let t = Duration::from_secs(2);
        let p = params(
            &region,
            &[
                ("DiskId", &disk),
                ("ClientToken", "tok-1"),
                ("RetentionDays", "7"),
            ],
        );
        let a = create_snapshot(&mut st, "", &p, now, t).unwrap();
        let b = create_snapshot(&mut st, "", &p, now, t).unwrap();
        assert_eq!(a["SnapshotId"], b["SnapshotId"]);
        assert_eq!(st.snapshots.all().len(), 1);
        let other = params(
            &region,
            &[
                ("DiskId", &disk),
                ("ClientToken", "tok-1"),
                ("RetentionDays", "8"),
            ],
        );
        assert_eq!(
            code(create_snapshot(&mut st, "", &other, now, t)),
            "IdempotentParameterMismatch"
        );
        // Another token while the first progresses: the disk is busy.
        let busy = params(&region, &[("DiskId", &disk), ("ClientToken", "tok-2")]);
        assert_eq!(
            code(create_snapshot(&mut st, "", &busy, now, t)),
            "IncorrectDiskStatus.CreatingSnapshot"
        );
        let later = now + chrono::Duration::seconds(3);
        assert_eq!(code(create_snapshot(&mut st, "", &busy, later, t)), "OK");
    }

    #[test]
    fn bad_parameters_get_the_documented_errors() {
        let (sim, region, now) = sim();
        let disk = sim.disks()[0].disk_id.clone();
        let mut st = sim.state();
        let t = Duration::from_secs(2);
        for (pairs, want) in [
            (vec![("DiskId", "d-nope")], "InvalidDiskId.NotFound"),
            (
                vec![("DiskId", disk.as_str()), ("RetentionDays", "0")],
                "InvalidRetentionDays.Malformed",
            ),
            (
                vec![("DiskId", disk.as_str()), ("RetentionDays", "65537")],
                "InvalidRetentionDays.Malformed",
            ),
            (
                vec![("DiskId", disk.as_str()), ("SnapshotName", "auto-1")],
                "InvalidSnapshotName.Malformed",
            ),
            (
                vec![("DiskId", disk.as_str()), ("SnapshotName", "1abc")],
                "InvalidSnapshotName.Malformed",
            ),
            (vec![], "MissingParameter"),
        ] {
            let p = params(&region, &pairs);
            assert_eq!(
                code(create_snapshot(&mut st, "", &p, now, t)),
                want,
                "{pairs:?}"
            );
        }
        assert_eq!(
            code(create_snapshot(
                &mut st,
                "someone-else",
                &params(&region, &[("DiskId", &disk)]),
                now,
                t
            )),
            "InvalidDiskId.NotFound",
            "another account's disk"
        );
    }

    #[test]
    fn snapshots_progress_to_accomplished_or_fail_and_a_release_deletes_progressing_ones() {
        let (sim, region, now) = sim();
        let disks: Vec<String> = sim.disks().into_iter().map(|d| d.disk_id).collect();
        sim.fail_snapshots_of(&disks[0]);
        let mut st = sim.state();
        let t = Duration::from_secs(2);
        let id = create_snapshot(
            &mut st,
            "",
            &params(&region, &[("DiskId", &disks[0])]),
            now,
            t,
        )
        .unwrap()["SnapshotId"]
            .as_str()
            .unwrap()
            .to_string();
        let ids = format!("[\"{id}\"]");
        let look = |st: &mut SimState, at| {
            describe_snapshots(st, &params(&region, &[("SnapshotIds", &ids)]), at).unwrap()
                ["Snapshots"]["Snapshot"][0]["Status"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(look(&mut st, now), "progressing");
        assert_eq!(look(&mut st, now + chrono::Duration::seconds(2)), "failed");
        // A progressing snapshot goes with its disk; an accomplished one stays.
        st.snapshots.failing_disks.clear();
        let later = now + chrono::Duration::seconds(10);
        create_snapshot(
            &mut st,
            "",
            &params(&region, &[("DiskId", &disks[0])]),
            later,
            t,
        )
        .unwrap();
        st.snapshots
            .disks_released(&disks[..1], later + chrono::Duration::seconds(1));
        assert_eq!(
            st.snapshots.all().len(),
            1,
            "only the finished (failed) one is left"
        );
    }
}
