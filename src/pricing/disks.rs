//! The disks of a region's planned releases (`DescribeDisks`): read one instance at a time when
//! that costs fewer calls than listing the region (500 disks a page), else the region's listing:
//! its system disks and its data disks side by side, each page by page (each page needs the
//! token of the one before). A region listed through server-side filters is counted first.

use std::collections::{HashMap, HashSet};
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

/// The disks of `ids`, the releases of an (account, region), with what the pass listed there.
/// Each call holds a permit of `slots`, the region's bound on pricing's calls in flight.
///
/// When the pass listed the region through server-side filters, it saw only the instances they
/// let through, and the region may hold many more disks: unless one call a release is the
/// fewest calls even then, one DescribeDisks call counts them first (paged by number, the
/// paging that counts; its page of 100 is all the reading a small region needs).
///
/// The region is read whole, never zone by zone (`ZoneId`): which zone DescribeDisks gives a
/// regional (zone-redundant) disk is not documented, and a zone's listing might leave one out.
pub async fn region_disks(
    client: &EcsClient,
    region: &str,
    ids: &[&str],
    listed: Option<&Listed>,
    slots: &Semaphore,
) -> RegionDisks {
    let mut calls = 0;
    let mut disks = 2 * listed.map_or(0, |l| l.instances).max(ids.len());
    let complete = listed.is_some_and(|l| l.complete);
    if !complete && ids.len() > listing_pages(disks) {
        calls += 1;
        let counted = {
            let _slot = slots.acquire().await;
            client.count_disks(region, &DiskQuery::default()).await
        };
        match counted {
            // The count's page held every disk of the region: nothing more to read.
            Ok((page, total)) if page.len() >= total => {
                return (of_page(page, ids), calls, Vec::new());
            }
            Ok((_, total)) => disks = disks.max(total),
            // Without the count the estimate stands, and the most that is lost is calls.
            Err(e) => {
                tracing::warn!(region, error = %e, "cannot count the region's disks; reading them as listed")
            }
        }
    }
    let (got, n, failures) = read_disks(client, region, ids, disks, slots).await;
    (got, calls + n, failures)
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

/// The disks of `ids` among a region's `disks`: read one instance at a time when that costs
/// fewer calls than listing the region (500 disks a page), else the region's listing.
async fn read_disks(
    client: &EcsClient,
    region: &str,
    ids: &[&str],
    disks: usize,
    slots: &Semaphore,
) -> RegionDisks {
    let split = listed_in_kinds(disks);
    if ids.len() <= listing_pages(disks) {
        let reads = ids.iter().map(|id| read_one(client, region, id, slots));
        let reads = futures::future::join_all(reads).await;
        let failures = reads
            .iter()
            .filter_map(|(id, got)| got.as_ref().err().map(|w| format!("{id}: {w}")))
            .collect();
        return (reads, ids.len(), failures);
    }
    // The region's system disks and its data disks, two listings side by side: each page needs
    // the token of the one before, so one listing is as slow as its pages in a row. The two
    // together cost at most one page more than one listing.
    // (DescribeDisks' `DiskType` is `all`, `system` or `data`: every disk is one of the two.)
    let wanted: HashSet<&str> = ids.iter().copied().collect();
    let list = |kind| list_kind(client, region, kind, &wanted, slots);
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
            return (out.collect(), calls, vec![format!("{region}: {w}")]);
        }
    };
    let out = ids
        .iter()
        .map(|id| (id.to_string(), Ok(of.remove(*id).unwrap_or_default())))
        .collect();
    (out, calls, Vec::new())
}

/// The disks of one kind (or of both) of `region`'s `wanted` instances, page after page, each
/// page holding a slot of the region; with the calls made. Keeps only what pricing reads: a
/// region's listing holds every disk of the region, and an all-matching pass prices hundreds of
/// thousands.
async fn list_kind(
    client: &EcsClient,
    region: &str,
    kind: Option<DiskKind>,
    wanted: &HashSet<&str>,
    slots: &Semaphore,
) -> (Result<HashMap<String, Vec<KeptDisk>>, String>, usize) {
    let mut of: HashMap<String, Vec<KeptDisk>> = HashMap::new();
    let mut categories = HashSet::new();
    let mut token: Option<String> = None;
    let mut calls = 0;
    let query = DiskQuery {
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

    #[test]
    fn listing_pages_counts_system_and_data_disks_apart_past_one_page() {
        assert_eq!(listing_pages(0), 1);
        assert_eq!(listing_pages(500), 1);
        assert_eq!(listing_pages(501), 2);
        assert_eq!(listing_pages(1200), 4);
        assert_eq!(listing_pages(20_000), 40);
    }
}
