//! The disks of a region's planned releases (`DescribeDisks`), zone by zone: only the zones that
//! have releases are read. In each, one instance at a time when that costs fewer calls than
//! listing the zone (about two disks per instance, 500 a page), else the zone's listing
//! (`ZoneId`): its system disks and its data disks side by side, each page by page (each page
//! needs the token of the one before).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ecs::client::{DiskQuery, MAX_DISK_PAGE};
use crate::ecs::types::DiskKind;
use crate::ecs::{ChargeType, Disk, EcsClient};
use crate::inventory::Listed;

/// Each instance's disks (or why they are unknown), the calls made, the failures in words.
pub type RegionDisks = (
    Vec<(String, Result<Vec<KeptDisk>, String>)>,
    usize,
    Vec<String>,
);

/// What pricing keeps of a disk: a third of a [`Disk`]'s size, the category shared by every
/// disk of it (an all-matching pass keeps hundreds of thousands).
#[derive(Debug, Clone)]
pub struct KeptDisk {
    pub disk_id: Box<str>,
    pub category: Arc<str>,
    pub size_gb: u32,
    pub kind: DiskKind,
    pub delete_with_instance: bool,
    pub charge_type: ChargeType,
}

impl KeptDisk {
    fn of(d: Disk, categories: &mut HashSet<Arc<str>>) -> KeptDisk {
        let category = match categories.get(d.category.as_str()) {
            Some(c) => c.clone(),
            None => {
                let c: Arc<str> = d.category.into();
                categories.insert(c.clone());
                c
            }
        };
        KeptDisk {
            disk_id: d.disk_id.into_boxed_str(),
            category,
            size_gb: d.size_gb,
            kind: d.kind,
            delete_with_instance: d.delete_with_instance,
            charge_type: d.charge_type,
        }
    }

    /// The disk again, for the estimate (`instance_id`, region, zone and status left empty).
    pub fn to_disk(&self) -> Disk {
        Disk {
            disk_id: self.disk_id.to_string(),
            instance_id: String::new(),
            region_id: String::new(),
            zone_id: String::new(),
            category: self.category.to_string(),
            size_gb: self.size_gb,
            kind: self.kind,
            delete_with_instance: self.delete_with_instance,
            charge_type: self.charge_type,
            status: String::new(),
        }
    }
}

/// A part of an (account, region) whose releases' disks are read together: a zone, or the
/// whole region.
#[derive(Debug, Clone, PartialEq)]
pub struct Part<'a> {
    /// The zone; `None` for the whole region.
    pub zone: Option<&'a str>,
    /// About how many disks it holds: what a listing of it reads.
    pub disks: usize,
    /// Its releases' instances.
    pub ids: Vec<&'a str>,
}

/// The disks of the releases of an (account, region) (`zones`: each zone's releases), with what
/// the pass listed there. A disk is in the zone of the instance it is attached to (ECS attaches
/// a disk only to an instance of its zone), so a zone without releases need not be read, and
/// the zones that have some are read side by side. Each call holds a permit of `slots`, the
/// region's bound on pricing's calls in flight.
///
/// When the pass listed the region through server-side filters, it saw only the instances they
/// let through, and the region may hold many more disks: unless one call a release is the
/// fewest calls even then, one DescribeDisks call counts them first (paged by number, the
/// paging that counts; its page of 100 is all the reading a small region needs).
pub async fn region_disks(
    client: &EcsClient,
    region: &str,
    zones: &BTreeMap<&str, Vec<&str>>,
    listed: Option<&Listed>,
    slots: &Semaphore,
) -> RegionDisks {
    let mut calls = 0;
    let mut parts = plan_parts(zones, listed, None);
    let complete = listed.is_some_and(|l| l.complete);
    if !complete && parts.iter().any(|p| p.ids.len() > listing_pages(p.disks)) {
        calls += 1;
        let counted = {
            let _slot = slots.acquire().await;
            client.count_disks(region, &DiskQuery::default()).await
        };
        match counted {
            // The count's page held every disk of the region: nothing more to read.
            Ok((page, total)) if page.len() >= total => {
                let ids: Vec<&str> = zones.values().flatten().copied().collect();
                return (of_page(page, &ids), calls, Vec::new());
            }
            Ok((_, total)) => parts = plan_parts(zones, listed, Some(total)),
            // Without the count, the estimates stand: the most that is lost is calls.
            Err(_) => {}
        }
    }
    let reads = parts.iter().map(|p| part_disks(client, region, p, slots));
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for (got, n, failed) in futures::future::join_all(reads).await {
        out.extend(got);
        calls += n;
        failures.extend(failed);
    }
    (out, calls, failures)
}

/// Each of `ids`' disks among `page`.
fn of_page(page: Vec<Disk>, ids: &[&str]) -> Vec<(String, Result<Vec<KeptDisk>, String>)> {
    let wanted: HashSet<&str> = ids.iter().copied().collect();
    let mut categories = HashSet::new();
    let mut of: HashMap<String, Vec<KeptDisk>> = HashMap::new();
    for mut d in page
        .into_iter()
        .filter(|d| wanted.contains(d.instance_id.as_str()))
    {
        let instance = std::mem::take(&mut d.instance_id);
        of.entry(instance)
            .or_default()
            .push(KeptDisk::of(d, &mut categories));
    }
    ids.iter()
        .map(|id| (id.to_string(), Ok(of.remove(*id).unwrap_or_default())))
        .collect()
}

/// The parts to read an (account, region)'s releases by: each zone that has releases, or the
/// whole region at once when that costs fewer calls by more than a twentieth, the count
/// included (many small zones each end on a partial page), or a release's zone is unknown. `total`: the region's disks, when
/// counted; a zone is then taken to hold its share of them by what the pass listed there.
/// Without it, two disks an instance listed.
pub fn plan_parts<'a>(
    zones: &BTreeMap<&'a str, Vec<&'a str>>,
    listed: Option<&Listed>,
    total: Option<usize>,
) -> Vec<Part<'a>> {
    let ids: Vec<&str> = zones.values().flatten().copied().collect();
    let listed_in = |zone: &str, ids: usize| {
        listed
            .and_then(|l| l.zones.get(zone))
            .copied()
            .unwrap_or(ids)
            .max(ids)
    };
    let listed_all = listed
        .map_or(0, |l| l.zones.values().sum::<usize>())
        .max(ids.len());
    let disks_in = |listed: usize| match total {
        Some(t) => (t * listed).div_ceil(listed_all.max(1)).max(2 * listed),
        None => 2 * listed,
    };
    let whole = Part {
        zone: None,
        disks: total.unwrap_or(0).max(2 * listed_all),
        ids,
    };
    if zones.contains_key("") {
        return vec![whole];
    }
    let parts: Vec<Part<'a>> = zones
        .iter()
        .map(|(zone, ids)| Part {
            zone: Some(zone),
            disks: disks_in(listed_in(zone, ids.len())),
            ids: ids.clone(),
        })
        .collect();
    // The count, when made, is spent either way, but it too counts against the twentieth.
    let counted = usize::from(total.is_some());
    let by_zone: usize = parts.iter().map(|p| read_calls(p.ids.len(), p.disks)).sum();
    let at_once = read_calls(whole.ids.len(), whole.disks);
    if (by_zone + counted) * 20 > at_once * 21 {
        vec![whole]
    } else {
        parts
    }
}

/// Whether `disks` are listed as system disks and data disks side by side: when they take
/// more than a page.
fn listed_in_kinds(disks: usize) -> bool {
    disks > MAX_DISK_PAGE
}

/// About how many pages listing `disks` takes: one when they fit in one, else as many of
/// system disks as of data disks (about one of each an instance).
pub fn listing_pages(disks: usize) -> usize {
    if listed_in_kinds(disks) {
        2 * disks.div_ceil(2).div_ceil(MAX_DISK_PAGE)
    } else {
        1
    }
}

/// About how many calls reading the disks of `ids` releases among `disks` takes: one a
/// release, or the listing, whichever is fewer.
pub fn read_calls(ids: usize, disks: usize) -> usize {
    ids.min(listing_pages(disks))
}

/// The disks of one part's releases: read one instance at a time when that costs fewer calls
/// than listing the part (500 disks a page), else the part's listing.
async fn part_disks(
    client: &EcsClient,
    region: &str,
    z: &Part<'_>,
    slots: &Semaphore,
) -> RegionDisks {
    let ids = &z.ids;
    let split = listed_in_kinds(z.disks);
    if ids.len() <= listing_pages(z.disks) {
        let reads = ids.iter().map(|id| read_one(client, region, id, slots));
        let reads = futures::future::join_all(reads).await;
        let failures = reads
            .iter()
            .filter_map(|(id, got)| got.as_ref().err().map(|w| format!("{id}: {w}")))
            .collect();
        return (reads, ids.len(), failures);
    }
    // The zone's system disks and its data disks, two listings side by side: each page needs
    // the token of the one before, so one listing is as slow as its pages in a row. The two
    // together cost at most one page more than one listing.
    // (DescribeDisks' `DiskType` is `all`, `system` or `data`: every disk is one of the two.)
    let wanted: HashSet<&str> = ids.iter().copied().collect();
    let list = |kind| list_kind(client, region, z.zone, kind, &wanted, slots);
    let (system, data) = if split {
        futures::join!(list(Some(DiskKind::System)), list(Some(DiskKind::Data)))
    } else {
        (list(None).await, (Ok(HashMap::new()), 0))
    };
    let calls = system.1 + data.1;
    let mut of = match (system.0, data.0) {
        (Ok(mut of), Ok(more)) => {
            for (id, ds) in more {
                of.entry(id).or_default().extend(ds);
            }
            of
        }
        (Err(w), _) | (_, Err(w)) => {
            let out = ids.iter().map(|id| (id.to_string(), Err(w.clone())));
            let place = z.zone.unwrap_or(region);
            return (out.collect(), calls, vec![format!("{place}: {w}")]);
        }
    };
    let out = ids
        .iter()
        .map(|id| (id.to_string(), Ok(of.remove(*id).unwrap_or_default())))
        .collect();
    (out, calls, Vec::new())
}

/// The disks of one kind (or of both) of `region`'s `wanted` instances in `zone` (or in the
/// whole region), page after page, each page holding a slot of the region; with the calls made.
/// Keeps only what pricing reads: a listing holds every disk of the zone, and an all-matching
/// pass prices hundreds of thousands.
async fn list_kind(
    client: &EcsClient,
    region: &str,
    zone: Option<&str>,
    kind: Option<DiskKind>,
    wanted: &HashSet<&str>,
    slots: &Semaphore,
) -> (Result<HashMap<String, Vec<KeptDisk>>, String>, usize) {
    let mut of: HashMap<String, Vec<KeptDisk>> = HashMap::new();
    let mut categories = HashSet::new();
    let mut token: Option<String> = None;
    let mut calls = 0;
    let query = DiskQuery {
        zone,
        kind,
        ..DiskQuery::default()
    };
    loop {
        calls += 1;
        let page = {
            let _slot = slots.acquire().await;
            client
                .describe_disks_page(region, &query, token.as_deref())
                .await
        };
        let (page, next) = match page {
            Ok(p) => p,
            Err(e) => return (Err(e.to_string()), calls),
        };
        for mut d in page
            .into_iter()
            .filter(|d| wanted.contains(d.instance_id.as_str()))
        {
            let instance = std::mem::take(&mut d.instance_id);
            let d = KeptDisk::of(d, &mut categories);
            // Most instances have a disk or two of a kind, and a vector grows to four at its
            // first push: over a fleet, that alone was 100 MB.
            of.entry(instance)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(d);
        }
        match next {
            Some(t) => token = Some(t),
            None => {
                return (Ok(of), calls);
            }
        }
    }
}

/// One instance's disks, holding a slot of its region for the call.
async fn read_one(
    client: &EcsClient,
    region: &str,
    id: &str,
    slots: &Semaphore,
) -> (String, Result<Vec<KeptDisk>, String>) {
    let _slot = slots.acquire().await;
    let mut categories = HashSet::new();
    let got = client
        .describe_disks(region, Some(id))
        .await
        .map(|ds| {
            ds.into_iter()
                .map(|d| KeptDisk::of(d, &mut categories))
                .collect()
        })
        .map_err(|e| e.to_string());
    (id.to_string(), got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(zones: &[(&str, usize)], complete: bool) -> Listed {
        Listed {
            zones: zones.iter().map(|(z, n)| (z.to_string(), *n)).collect(),
            complete,
        }
    }

    fn shape(parts: &[Part<'_>]) -> Vec<(Option<String>, usize, usize)> {
        parts
            .iter()
            .map(|p| (p.zone.map(str::to_string), p.disks, p.ids.len()))
            .collect()
    }

    #[test]
    fn each_zone_with_releases_is_a_part_of_two_disks_an_instance_listed_there() {
        let zones = BTreeMap::from([("z-a", vec!["i-1", "i-2"]), ("z-b", vec!["i-3"])]);
        let l = listed(&[("z-a", 700), ("z-b", 5), ("z-c", 900)], true);
        let parts = plan_parts(&zones, Some(&l), None);
        assert_eq!(
            shape(&parts),
            [(Some("z-a".into()), 1400, 2), (Some("z-b".into()), 10, 1)]
        );
    }

    #[test]
    fn many_zones_each_ending_on_a_partial_page_are_read_as_one_region() {
        // Eight zones of 300 instances, 200 releases in each: by zone, a page of system disks
        // and one of data disks each (16 calls); the region at once, 4,800 disks (10 calls).
        let ids: Vec<String> = (0..1600).map(|n| format!("i-{n}")).collect();
        let names: Vec<String> = (0..8).map(|z| format!("z-{z}")).collect();
        let zones: BTreeMap<&str, Vec<&str>> = names
            .iter()
            .enumerate()
            .map(|(z, name)| {
                let mine = ids[z * 200..(z + 1) * 200].iter().map(String::as_str);
                (name.as_str(), mine.collect())
            })
            .collect();
        let counts: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 300)).collect();
        let parts = plan_parts(&zones, Some(&listed(&counts, true)), None);
        assert_eq!(shape(&parts), [(None, 4800, 1600)]);
        // Three zones of 3,334 instances (14 pages each) against the region's 10,002 (42):
        // by zone, the three read side by side.
        let zones = BTreeMap::from([
            ("z-a", vec!["i-1"; 900]),
            ("z-b", vec!["i-2"; 900]),
            ("z-c", vec!["i-3"; 900]),
        ]);
        let l = listed(&[("z-a", 3334), ("z-b", 3334), ("z-c", 3334)], true);
        assert_eq!(plan_parts(&zones, Some(&l), None).len(), 3);
        // Counted (a filtered pass listed 3,333 in each; the region holds 20,000 disks), the
        // count call tips it: 14 pages a zone and the count, 43 calls, against 40 at once.
        let l = listed(&[("z-a", 3333), ("z-b", 3333), ("z-c", 3333)], false);
        let parts = plan_parts(&zones, Some(&l), Some(20_000));
        assert_eq!(shape(&parts), [(None, 20_000, 2700)]);
    }

    #[test]
    fn a_release_of_unknown_zone_makes_the_region_one_part() {
        let zones = BTreeMap::from([("", vec!["i-1"]), ("z-a", vec!["i-2", "i-3"])]);
        let l = listed(&[("", 10), ("z-a", 600)], true);
        let parts = plan_parts(&zones, Some(&l), None);
        assert_eq!(shape(&parts), [(None, 1220, 3)]);
    }

    #[test]
    fn a_counted_region_gives_each_zone_its_share_of_the_disks() {
        // A filtered pass listed 10 instances in z-a and 30 in z-b. Taking two disks each, the
        // region's fit one page (and so its releases would be listed, whence the count). It
        // holds 8,000: z-a is taken to hold a quarter, 2,000 (four pages), so its two releases
        // are read one at a time, and z-b listed (12 pages): 14 calls, where the region at once
        // would take 16.
        let zones = BTreeMap::from([("z-a", vec!["i-1", "i-2"]), ("z-b", vec!["i-3"; 30])]);
        let l = listed(&[("z-a", 10), ("z-b", 30)], false);
        let before = plan_parts(&zones, Some(&l), None);
        assert_eq!(shape(&before), [(None, 80, 32)]);
        let after = plan_parts(&zones, Some(&l), Some(8000));
        assert_eq!(
            shape(&after),
            [
                (Some("z-a".into()), 2000, 2),
                (Some("z-b".into()), 6000, 30)
            ]
        );
        assert_eq!(read_calls(2, 2000), 2);
        assert_eq!(read_calls(30, 6000), 12);
        assert_eq!(read_calls(32, 8000), 16);
    }

    #[test]
    fn listing_pages_counts_system_and_data_disks_apart_past_one_page() {
        assert_eq!(listing_pages(0), 1);
        assert_eq!(listing_pages(500), 1);
        assert_eq!(listing_pages(501), 2);
        assert_eq!(listing_pages(1200), 4);
        assert_eq!(listing_pages(20_000), 40);
    }
}
