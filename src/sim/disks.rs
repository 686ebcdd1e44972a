//! The simulator's disks: each instance's system disk and data disks (category, size,
//! `DeleteWithInstance`, billing), `DescribeDisks` as ECS answers it, and what a release does to
//! them.
//!
//! ECS documents (DeleteInstance, https://help.aliyun.com/en/ecs/developer-reference/api-ecs-2014-05-26-deleteinstance):
//! a disk with `DeleteWithInstance=false` is converted to a pay-as-you-go disk and kept; every
//! other disk is released with its instance; a security-locked instance's disks are all released,
//! whatever `DeleteWithInstance` says. When that happens relative to the instance leaving
//! DescribeInstances is not documented: the simulator does it when the release is accepted.
//!
//! An instance given no disks gets a default set drawn from its id (so the same fleet always has
//! the same disks): a 40 GiB `cloud_essd` system disk, released with it, and zero to two data
//! disks of 20, 100, 200 or 500 GiB, `cloud_essd` or `cloud_efficiency`, about one in five kept
//! after release. Disks are billed as their instance is.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::describe::{answer_text, decode_token, encode_token, PageEcho};
use super::params::require_region;
use super::{api_err, ApiError, SimState};
use chrono::{DateTime, Utc};

use crate::ecs::types::{parse_ecs_time, ChargeType, Disk, DiskKind, Instance};

/// FNV-1a: a hash that is the same on every build, for disks drawn from an instance's id.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A disk of `inst`, attached to it and billed as it is.
pub fn disk_of(
    inst: &Instance,
    n: usize,
    kind: DiskKind,
    category: &str,
    size_gb: u32,
    delete_with_instance: bool,
) -> Disk {
    let tail = inst.instance_id.trim_start_matches("i-");
    Disk {
        disk_id: format!("d-{tail}-{n}"),
        instance_id: inst.instance_id.clone(),
        region_id: inst.region_id.clone(),
        zone_id: inst.zone_id.clone(),
        category: category.to_string(),
        size_gb,
        kind,
        delete_with_instance,
        charge_type: inst.charge_type,
        status: "In_use".to_string(),
        creation_time: inst.creation_time,
    }
}

/// The default disks of an instance, drawn from its id (see the module's note).
pub fn default_disks(inst: &Instance) -> Vec<Disk> {
    let h = fnv(&inst.instance_id);
    let mut out = vec![disk_of(inst, 0, DiskKind::System, "cloud_essd", 40, true)];
    let data = (h % 3) as usize;
    for n in 1..=data {
        let bits = h >> (8 * n);
        let size = [20, 100, 200, 500][(bits % 4) as usize];
        let category = ["cloud_essd", "cloud_efficiency"][((bits >> 2) % 2) as usize];
        let keep = (bits >> 3).is_multiple_of(5);
        out.push(disk_of(inst, n, DiskKind::Data, category, size, !keep));
    }
    out
}

/// The disks the simulator holds: region → disk id → disk, and instance id → its disks' ids.
#[derive(Debug, Default)]
pub(super) struct DiskStore {
    by_region: HashMap<String, BTreeMap<String, Disk>>,
    of_instance: HashMap<String, Vec<String>>,
    /// Disk id → the account of the instance it outlived.
    detached_owner: HashMap<String, String>,
}

impl DiskStore {
    /// Replaces the disks of `instance_id` with `disks`.
    pub(super) fn set(&mut self, instance_id: &str, disks: Vec<Disk>) {
        self.remove_of(instance_id);
        let ids: Vec<String> = disks.iter().map(|d| d.disk_id.clone()).collect();
        for d in disks {
            self.by_region
                .entry(d.region_id.clone())
                .or_default()
                .insert(d.disk_id.clone(), d);
        }
        self.of_instance.insert(instance_id.to_string(), ids);
    }

    fn remove_of(&mut self, instance_id: &str) {
        for id in self.of_instance.remove(instance_id).unwrap_or_default() {
            for r in self.by_region.values_mut() {
                r.remove(&id);
            }
        }
    }

    /// The instance disk `disk_id` of `region` is attached to, if it is attached.
    pub(super) fn owner_of(&self, disk_id: &str, region: &str) -> Option<String> {
        self.by_region
            .get(region)?
            .get(disk_id)
            .map(|d| d.instance_id.clone())
            .filter(|i| !i.is_empty())
    }

    /// Whether `instance_id` has disks recorded.
    pub(super) fn has(&self, instance_id: &str) -> bool {
        self.of_instance.contains_key(instance_id)
    }

    /// The disks of `instance_id`.
    pub(super) fn of(&self, instance_id: &str, region: &str) -> Vec<&Disk> {
        let Some(r) = self.by_region.get(region) else {
            return Vec::new();
        };
        self.of_instance
            .get(instance_id)
            .map(|ids| ids.iter().filter_map(|id| r.get(id)).collect())
            .unwrap_or_default()
    }

    /// Every disk, by region then id.
    pub(super) fn all(&self) -> Vec<Disk> {
        let mut regions: Vec<&String> = self.by_region.keys().collect();
        regions.sort();
        regions
            .into_iter()
            .flat_map(|r| self.by_region[r].values().cloned())
            .collect()
    }

    /// What releasing `instance_id` does to its disks: each with `DeleteWithInstance` (or every
    /// one, when `all` — a security-locked instance) is released; the others are detached and
    /// become pay-as-you-go (`Available`). Returns how many were kept.
    pub(super) fn release_with(
        &mut self,
        instance_id: &str,
        region: &str,
        all: bool,
        account: &str,
    ) -> usize {
        let ids = self.of_instance.remove(instance_id).unwrap_or_default();
        let Some(r) = self.by_region.get_mut(region) else {
            return 0;
        };
        let mut kept = 0;
        for id in ids {
            let keep = r.get(&id).is_some_and(|d| !d.delete_with_instance) && !all;
            if keep {
                if let Some(d) = r.get_mut(&id) {
                    d.instance_id.clear();
                    d.status = "Available".to_string();
                    d.charge_type = ChargeType::PostPaid;
                }
                self.detached_owner.insert(id.clone(), account.to_string());
                kept += 1;
            } else {
                r.remove(&id);
            }
        }
        kept
    }
}

/// Answers one DescribeDisks call by `account`: the `InstanceId`, `ZoneId`, `DiskIds` and
/// `DiskType` (`all`, `system` or `data`, default `all`) filters, ANDed (DescribeDisks' API
/// reference: "RegionId, ZoneId, DiskIds and InstanceId act as filters ... a logical AND"),
/// PageNumber/PageSize paging with a TotalCount, and NextToken/MaxResults paging, MaxResults brought into 10..500 with 10 when absent, as ECS
/// documents (ECS-V2 `describe_disks_request_model.go`).
pub(super) fn describe_disks(
    st: &SimState,
    account: &str,
    map: &HashMap<&str, &str>,
) -> Result<String, ApiError> {
    let (region, _) = require_region(st, map)?;
    let size = match map.get("MaxResults") {
        None => 10,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| {
                api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"MaxResults\" is not a number.",
                )
            })?
            .clamp(10, 500),
    };
    let ids: Option<Vec<String>> = match map.get("DiskIds") {
        None => None,
        Some(raw) => Some(serde_json::from_str(raw).map_err(|_| {
            api_err(
                400,
                "InvalidDiskIds.Malformed",
                "The specified parameter \"DiskIds\" is not a JSON array.",
            )
        })?),
    };
    let instance = map.get("InstanceId").copied().filter(|s| !s.is_empty());
    // Undocumented: what ECS answers for a zone that is not one of the region's; the sim
    // answers no disks, as for any filter nothing matches.
    let zone = map.get("ZoneId").copied().filter(|s| !s.is_empty());
    let kind = match map.get("DiskType").copied().unwrap_or("all") {
        "all" | "" => None,
        "system" => Some(DiskKind::System),
        "data" => Some(DiskKind::Data),
        // Undocumented: the code ECS answers an unknown DiskType; the generic one is used.
        other => {
            return Err(api_err(
                400,
                "InvalidParameter",
                format!("The specified parameter \"DiskType\" ({other}) is not valid."),
            ))
        }
    };
    let (created_after, created_before) = creation_filters(map)?;
    let after = map
        .get("NextToken")
        .filter(|t| !t.is_empty())
        .map(|t| {
            decode_token(t).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"NextToken\" is not valid.",
                )
            })
        })
        .transpose()?;
    // The two ways of paging (DescribeDisks' API reference): NextToken and MaxResults, or
    // PageNumber (from 1, 1 when absent) and PageSize (at most 100, 10 when absent; ECS-V2
    // `DescribeDisksRequest`) with a valid TotalCount. With a NextToken, PageNumber and
    // PageSize are ignored. Undocumented, and modelled as the sim's DescribeInstances does: a
    // MaxResults alone also selects token paging, and a PageNumber or PageSize that is not in
    // range is refused with InvalidParameter.
    let by_page = if !map.contains_key("NextToken")
        && !map.contains_key("MaxResults")
        && (map.contains_key("PageNumber") || map.contains_key("PageSize"))
    {
        let number = super::describe::page_number(map)?;
        let size = map.get("PageSize").map_or(Ok(10), |v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| super::describe::page_size_out_of_range("PageSize"))
        })?;
        Some((number, size))
    } else {
        None
    };
    let empty = BTreeMap::new();
    let fleet = st.disks.by_region.get(region).unwrap_or(&empty);
    // A detached disk stays its instance's owner's.
    let owned = |d: &Disk| {
        if d.instance_id.is_empty() {
            st.disks
                .detached_owner
                .get(&d.disk_id)
                .map_or("", String::as_str)
                == account
        } else {
            st.owns(account, &d.instance_id)
        }
    };
    // The cheap comparisons first: a page of a creation-time range passes over the disks of
    // the other ranges, and the owner is two lookups.
    let visible = |d: &&Disk| {
        kind.is_none_or(|k| d.kind == k)
            && created_after.is_none_or(|t| d.creation_time.is_some_and(|c| c > t))
            && created_before.is_none_or(|t| d.creation_time.is_some_and(|c| c < t))
            && instance.is_none_or(|i| d.instance_id == i)
            && zone.is_none_or(|z| d.zone_id == z)
            && ids.as_ref().is_none_or(|ids| ids.contains(&d.disk_id))
            && owned(d)
    };
    let range = match &after {
        Some(a) => fleet.range::<String, _>((
            std::ops::Bound::Excluded(a.clone()),
            std::ops::Bound::Unbounded,
        )),
        None => fleet.range::<String, _>(..),
    };
    if let Some((number, page_size)) = by_page {
        // PageNumber/PageSize: any page of the matching disks, with their TotalCount.
        let matching: Vec<&Disk> = fleet.values().filter(|d| visible(d)).collect();
        let disks: Vec<_> = matching
            .iter()
            .skip((number - 1).saturating_mul(page_size))
            .take(page_size)
            .map(|d| d.to_wire())
            .collect();
        return answer_text(&DiskPage {
            paging: PageEcho::Numbered {
                page_number: number,
                page_size,
            },
            next_token: Some(String::new()),
            total_count: matching.len(),
            disks: DiskList { disk: disks },
        });
    }
    let mut page: Vec<&Disk> = Vec::with_capacity(size);
    let mut more = false;
    for (_, d) in range {
        if !visible(&d) {
            continue;
        }
        if page.len() == size {
            more = true;
            break;
        }
        page.push(d);
    }
    let next = match (more, page.last()) {
        (true, Some(d)) => encode_token(&d.disk_id),
        _ => String::new(),
    };
    let disks: Vec<_> = page.iter().map(|d| d.to_wire()).collect();
    answer_text(&DiskPage {
        total_count: disks.len(),
        paging: PageEcho::Token {
            next_token: next,
            max_results: size,
        },
        next_token: None,
        disks: DiskList { disk: disks },
    })
}

/// A DescribeDisks page as ECS shapes it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DiskPage<'a> {
    #[serde(flatten)]
    paging: PageEcho,
    /// Paged by number, the answer still carries an empty `NextToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
    total_count: usize,
    disks: DiskList<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DiskList<'a> {
    disk: Vec<crate::ecs::types::WireDisk<'a>>,
}

/// Created after, created before (`None`: not asked).
type CreatedBetween = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// DescribeDisks' creation-time filters (its API reference): `Filter.1.Key` must be
/// `CreationStartTime` and asks for the disks created after `Filter.1.Value`; `Filter.2.Key` must
/// be `CreationEndTime` and asks for those created before `Filter.2.Value`; each value is
/// `yyyy-MM-ddTHH:mmZ`, UTC, and needs its key.
///
/// Undocumented, and modelled strictly: whether a disk created at the very time named is in the
/// answer (the simulator leaves it out of both, so ranges that only touch lose it: a client
/// must make its ranges overlap), and the error for a wrong key, a value without its key or a
/// value that is not a time (the generic `InvalidParameter`; a time given in seconds is taken).
/// Every disk has a creation time in ECS; a simulated disk given none matches neither filter.
fn creation_filters(map: &HashMap<&str, &str>) -> Result<CreatedBetween, ApiError> {
    let filter = |n: u8, key: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        let k = map.get(format!("Filter.{n}.Key").as_str()).copied();
        let v = map.get(format!("Filter.{n}.Value").as_str()).copied();
        let bad = |what: String| api_err(400, "InvalidParameter", what);
        match (k, v) {
            (None, None) => Ok(None),
            (Some(k), _) if k != key => Err(bad(format!(
                "The specified parameter \"Filter.{n}.Key\" ({k}) is not valid: it must be {key}."
            ))),
            (_, None) => Err(bad(format!(
                "The specified parameter \"Filter.{n}.Value\" is missing."
            ))),
            (None, Some(_)) => Err(bad(format!(
                "The specified parameter \"Filter.{n}.Key\" is missing."
            ))),
            (Some(_), Some(v)) => parse_ecs_time(v).map(Some).ok_or_else(|| {
                bad(format!(
                    "The specified parameter \"Filter.{n}.Value\" ({v}) is not a time of the form yyyy-MM-ddTHH:mmZ."
                ))
            }),
        }
    };
    Ok((
        filter(1, "CreationStartTime")?,
        filter(2, "CreationEndTime")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::types::InstanceStatus;

    fn inst(id: &str) -> Instance {
        // A fixed time: the disks take their instance's creation time.
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let mut i = crate::sim::fleet::generate(1, 1, now).remove(0);
        i.instance_id = id.to_string();
        i.status = InstanceStatus::Stopped;
        i
    }

    #[test]
    fn default_disks_are_drawn_from_the_id_and_vary() {
        let a = default_disks(&inst("i-a"));
        assert_eq!(a, default_disks(&inst("i-a")));
        assert_eq!(a[0].kind, DiskKind::System);
        let many: Vec<Vec<Disk>> = (0..200)
            .map(|n| default_disks(&inst(&format!("i-{n}"))))
            .collect();
        assert!(many.iter().any(|d| d.len() == 1));
        assert!(many.iter().any(|d| d.len() == 3));
        assert!(many.iter().flatten().any(|d| !d.delete_with_instance));
        assert!(many
            .iter()
            .flatten()
            .any(|d| d.category == "cloud_efficiency"));
    }

    #[test]
    fn a_release_keeps_only_disks_set_to_outlive_it_unless_all_go() {
        let i = inst("i-x");
        let disks = vec![
            disk_of(&i, 0, DiskKind::System, "cloud_essd", 40, true),
            disk_of(&i, 1, DiskKind::Data, "cloud_essd", 100, false),
        ];
        let mut s = DiskStore::default();
        s.set("i-x", disks.clone());
        assert_eq!(s.release_with("i-x", &i.region_id, false, ""), 1);
        let left = s.all();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].status, "Available");
        assert_eq!(left[0].charge_type, ChargeType::PostPaid);
        assert!(left[0].instance_id.is_empty());

        let mut s = DiskStore::default();
        s.set("i-x", disks);
        assert_eq!(s.release_with("i-x", &i.region_id, true, ""), 0);
        assert!(s.all().is_empty());
    }
}
