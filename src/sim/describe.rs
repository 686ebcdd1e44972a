//! DescribeInstances as ECS answers it: the filters (`Status`, `InstanceChargeType`,
//! `InstanceIds`, `Tag.N`), both paging styles (`PageNumber`/`PageSize` and
//! `NextToken`/`MaxResults`) and the cap on tag-filtered listings.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use serde::Serialize;

use super::params::{parse_bool, require_region, RegionFleet};
use super::{api_err, ApiError, SimState};
use crate::ecs::types::{ChargeType, Instance, InstanceStatus, WireInstance};

/// The most `Tag.N` filters DescribeInstances takes.
pub const MAX_TAG_FILTERS: usize = 20;
/// The most instances a DescribeInstances filtered by tags returns, over all its pages (beyond
/// that ECS points to ListTagResources).
pub const MAX_TAG_FILTERED: usize = 1000;

/// Answers one DescribeInstances call by `account`.
pub(super) fn describe(
    st: &SimState,
    account: &str,
    map: &HashMap<&str, &str>,
) -> Result<String, ApiError> {
    let (_, fleet) = require_region(st, map)?;
    let filters = Filters::parse(map)?;
    let paging = Paging::parse(map)?;
    if parse_bool(map, "DryRun")? {
        return Err(api_err(
            400,
            "DryRunOperation",
            "Request validation has been passed with DryRun flag set.",
        ));
    }
    let candidates = candidates(fleet, filters.ids.as_ref());
    let listing = Listing::new(&candidates, &filters, st, account);
    if paging.token_mode {
        token_page(&listing, map, paging.size)
    } else {
        numbered_page(&listing, map, paging.size)
    }
}

/// What a call selects by: every filter it gives must hold.
struct Filters {
    status: Option<InstanceStatus>,
    charge: Option<ChargeType>,
    ids: Option<HashSet<String>>,
    tags: Vec<(String, Option<String>)>,
}

impl Filters {
    fn parse(map: &HashMap<&str, &str>) -> Result<Filters, ApiError> {
        let status = match map.get("Status") {
            None => None,
            Some(s) => Some(InstanceStatus::parse(s).ok_or_else(|| {
                api_err(
                    404,
                    "InvalidStatus.NotFound",
                    format!("The specified Status {s:?} is not found."),
                )
            })?),
        };
        let charge = match map.get("InstanceChargeType") {
            None => None,
            Some(s) => Some(ChargeType::parse(s).ok_or_else(|| {
                api_err(
                    404,
                    "InvalidInstanceChargeType.NotFound",
                    format!("The specified InstanceChargeType {s:?} is not found."),
                )
            })?),
        };
        let ids = instance_ids(map)?;
        let tags = tag_filters(map)?;
        Ok(Filters {
            status,
            charge,
            ids,
            tags,
        })
    }

    fn matches(&self, i: &Instance) -> bool {
        self.status.is_none_or(|s| i.status == s)
            && self.charge.is_none_or(|c| i.charge_type == c)
            && self
                .ids
                .as_ref()
                .is_none_or(|set| set.contains(&i.instance_id))
            && self.tags.iter().all(|(k, v)| match (i.tags.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
    }
}

/// The `InstanceIds` filter: a JSON array of at most 100 ids.
fn instance_ids(map: &HashMap<&str, &str>) -> Result<Option<HashSet<String>>, ApiError> {
    let Some(raw) = map.get("InstanceIds") else {
        return Ok(None);
    };
    let v: Vec<String> = serde_json::from_str(raw).map_err(|_| {
        api_err(
            400,
            "InvalidParameter",
            "The specified parameter \"InstanceIds\" is not a JSON array of instance ids.",
        )
    })?;
    if v.len() > 100 {
        return Err(api_err(
            400,
            "InvalidParameter",
            "The specified parameter \"InstanceIds\" holds more than 100 ids.",
        ));
    }
    Ok(Some(v.into_iter().collect()))
}

/// DescribeInstances' tag filters: `Tag.N.Key` with an optional `Tag.N.Value` (the deprecated
/// lowercase `key`/`value` too), N = 1..20.
fn tag_filters(map: &HashMap<&str, &str>) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut by_n: BTreeMap<usize, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (k, v) in map {
        let Some(rest) = k.strip_prefix("Tag.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        let e = by_n.entry(n).or_default();
        match field {
            "Key" => e.0 = Some(v),
            "key" => e.0 = e.0.or(Some(v)),
            "Value" => e.1 = Some(v),
            "value" => e.1 = e.1.or(Some(v)),
            _ => {}
        }
    }
    let mut tags = Vec::new();
    for (n, (key, value)) in by_n {
        if key.is_none() && value.is_none() {
            continue;
        }
        if n == 0 || n > MAX_TAG_FILTERS {
            return Err(api_err(
                400,
                "InvalidTagCount",
                format!("The number of tags exceeds {MAX_TAG_FILTERS}: Tag.N counts from 1 to {MAX_TAG_FILTERS}, got Tag.{n}."),
            ));
        }
        match key {
            Some(k) => tags.push((k.to_string(), value.map(str::to_string))),
            None => {
                return Err(api_err(
                    400,
                    "InvalidTag.Mismatch",
                    format!("Tag.{n}.Value is given without Tag.{n}.Key."),
                ))
            }
        }
    }
    Ok(tags)
}

/// The paging style a call uses, and its page size.
struct Paging {
    /// `NextToken`/`MaxResults` rather than `PageNumber`/`PageSize`.
    token_mode: bool,
    size: usize,
}

impl Paging {
    fn parse(map: &HashMap<&str, &str>) -> Result<Paging, ApiError> {
        let token_mode = map.contains_key("NextToken") || map.contains_key("MaxResults");
        let size_param = if token_mode { "MaxResults" } else { "PageSize" };
        let default_size = 10;
        let size = match map.get(size_param) {
            None => default_size,
            // MaxResults outside 10..100 is brought into it, as ECS documents (GO-V2-ECS).
            Some(s) if token_mode => match s.parse::<u64>() {
                Ok(n) => n.clamp(10, 100) as usize,
                Err(_) => {
                    return Err(api_err(
                        400,
                        "InvalidParameter",
                        "The specified parameter \"MaxResults\" is not a number.",
                    ))
                }
            },
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => return Err(page_size_out_of_range(size_param)),
            },
        };
        Ok(Paging { token_mode, size })
    }
}

pub(super) fn page_size_out_of_range(size_param: &str) -> ApiError {
    api_err(
        400,
        "InvalidParameter",
        format!("The specified parameter \"{size_param}\" must be a number from 1 to 100."),
    )
}

/// The instances a call can see: its region's, or with `InstanceIds` only those, looked up by
/// id, as ECS does, rather than by scanning the region.
fn candidates<'a>(
    fleet: RegionFleet<'a>,
    ids: Option<&HashSet<String>>,
) -> Cow<'a, BTreeMap<String, Instance>> {
    let Some(fleet) = fleet else {
        return Cow::Owned(BTreeMap::new());
    };
    match ids {
        Some(set) => Cow::Owned(
            set.iter()
                .filter_map(|id| fleet.get_key_value(id))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Cow::Borrowed(fleet),
    }
}

/// What a call lists, in id order: the candidates its filters select and its account owns, none
/// past the tag cap.
struct Listing<'a> {
    candidates: &'a BTreeMap<String, Instance>,
    filters: &'a Filters,
    st: &'a SimState,
    account: &'a str,
    /// With tag filters, the id of the [`MAX_TAG_FILTERED`]-th match: nothing past it is listed.
    cap: Option<String>,
}

impl<'a> Listing<'a> {
    fn new(
        candidates: &'a BTreeMap<String, Instance>,
        filters: &'a Filters,
        st: &'a SimState,
        account: &'a str,
    ) -> Listing<'a> {
        let mut listing = Listing {
            candidates,
            filters,
            st,
            account,
            cap: None,
        };
        // With tag filters, nothing past the MAX_TAG_FILTERED-th match is listed.
        if !filters.tags.is_empty() {
            let cap = listing
                .after(None)
                .nth(MAX_TAG_FILTERED - 1)
                .map(|i| i.instance_id.clone());
            listing.cap = cap;
        }
        listing
    }

    /// The listed instances after the id `after` (from the first when `None`).
    fn after(&self, after: Option<&String>) -> impl Iterator<Item = &'a Instance> + '_ {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.candidates
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(_, i)| i)
            .filter(|i| self.filters.matches(i) && self.st.owns(self.account, &i.instance_id))
            .take_while(|i| self.cap.as_ref().is_none_or(|c| i.instance_id <= *c))
    }
}

/// A `NextToken`/`MaxResults` page: `size` instances after the token's, and a token for the
/// next page when there are more.
fn token_page(
    listing: &Listing<'_>,
    map: &HashMap<&str, &str>,
    size: usize,
) -> Result<String, ApiError> {
    let after = match map.get("NextToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(decode_token(t).ok_or_else(|| {
            api_err(
                400,
                "InvalidParameter",
                "The specified parameter \"NextToken\" is not valid.",
            )
        })?),
    };
    let mut page: Vec<&Instance> = Vec::with_capacity(size);
    let mut more = false;
    for i in listing.after(after.as_ref()) {
        if page.len() == size {
            more = true;
            break;
        }
        page.push(i);
    }
    let next = if more {
        page.last()
            .map(|i| encode_token(&i.instance_id))
            .unwrap_or_default()
    } else {
        String::new()
    };
    answer_text(&InstancePage {
        paging: PageEcho::Token {
            next_token: next,
            max_results: size,
        },
        total_count: page.len(),
        instances: InstanceList {
            instance: page.iter().map(|i| i.to_wire()).collect(),
        },
    })
}

/// `PageNumber`: 1 when absent, refused unless a number from 1.
pub(super) fn page_number(map: &HashMap<&str, &str>) -> Result<usize, ApiError> {
    match map.get("PageNumber") {
        None => Ok(1),
        Some(s) => s.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            api_err(
                400,
                "InvalidParameter",
                "The specified parameter \"PageNumber\" must be a number from 1.",
            )
        }),
    }
}

/// A `PageNumber`/`PageSize` page, with the total count of listed instances.
fn numbered_page(
    listing: &Listing<'_>,
    map: &HashMap<&str, &str>,
    size: usize,
) -> Result<String, ApiError> {
    let number = page_number(map)?;
    let all: Vec<&Instance> = listing.after(None).collect();
    let page: Vec<_> = all
        .iter()
        .skip((number - 1).saturating_mul(size))
        .take(size)
        .map(|i| i.to_wire())
        .collect();
    answer_text(&InstancePage {
        paging: PageEcho::Numbered {
            page_number: number,
            page_size: size,
        },
        total_count: all.len(),
        instances: InstanceList { instance: page },
    })
}

/// A DescribeInstances page as ECS shapes it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InstancePage {
    #[serde(flatten)]
    paging: PageEcho,
    total_count: usize,
    instances: InstanceList,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceList {
    instance: Vec<WireInstance>,
}

/// How a listing page was asked for, as its answer echoes it.
#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "PascalCase")]
pub(super) enum PageEcho {
    Token {
        next_token: String,
        max_results: usize,
    },
    Numbered {
        page_number: usize,
        page_size: usize,
    },
}

/// A listing's answer as text. Built as a `serde_json::Value` first, a page of 100 instances
/// or 500 disks took the simulator longer than the rest of its call (a map, and a key, a
/// field), on the cores a benchmark shares with what it measures.
pub(super) fn answer_text(answer: &impl Serialize) -> Result<String, ApiError> {
    serde_json::to_string(answer).map_err(|e| {
        api_err(
            500,
            "InternalError",
            format!("cannot serialise the answer: {e}"),
        )
    })
}

/// NextToken is the hex of the last id served: opaque to clients, stable across releases.
pub(super) fn encode_token(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_token(t: &str) -> Option<String> {
    if !t.len().is_multiple_of(2) || t.len() > 256 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}
