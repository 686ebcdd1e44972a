//! The disks of a region's planned releases (`DescribeDisks`), zone by zone: only the zones that
//! have releases are read. In each, one instance at a time when that costs fewer calls than
//! listing the zone (about two disks per instance, 500 a page), else the zone's listing
//! (`ZoneId`): its system disks and its data disks side by side, each page by page (each page
//! needs the token of the one before).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ecs::client::{DiskQuery, MAX_DISK_PAGE};
use crate::ecs::types::DiskKind;
use crate::ecs::{ChargeType, Disk, EcsClient};

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

/// The releases of one zone of an (account, region), for reading their disks.
#[derive(Debug, Clone)]
pub struct ZoneReleases<'a> {
    /// The zone; `None` for the whole region (a release whose zone is unknown).
    pub zone: Option<&'a str>,
    /// How many instances the pass listed in it.
    pub listed: usize,
    /// Its releases' instances.
    pub ids: Vec<&'a str>,
}

/// The disks of `zones`' releases in `region`, zone by zone side by side. A disk is in the zone
/// of the instance it is attached to (ECS attaches a disk only to an instance of its zone), so
/// a zone without releases is never read. Each call holds a permit of `slots`, the region's
/// bound on pricing's calls in flight.
pub async fn region_disks(
    client: &EcsClient,
    region: &str,
    zones: &[ZoneReleases<'_>],
    slots: &Semaphore,
) -> RegionDisks {
    let parts = zones.iter().map(|z| zone_disks(client, region, z, slots));
    let mut out = Vec::new();
    let (mut calls, mut failures) = (0, Vec::new());
    for (got, n, failed) in futures::future::join_all(parts).await {
        out.extend(got);
        calls += n;
        failures.extend(failed);
    }
    (out, calls, failures)
}

/// The disks of one zone's releases: read one instance at a time when that costs fewer calls
/// than listing the zone (about two disks per instance, 500 a page), else the zone's listing.
async fn zone_disks(
    client: &EcsClient,
    region: &str,
    z: &ZoneReleases<'_>,
    slots: &Semaphore,
) -> RegionDisks {
    let ids = &z.ids;
    // About two disks per instance. A zone of more than a page is listed in two kinds side
    // by side (each may end on a partial page: one page more at most).
    let pages = (z.listed * 2).div_ceil(MAX_DISK_PAGE).max(1);
    let split = pages > 1;
    let listing_pages = pages + usize::from(split);
    if ids.len() <= listing_pages {
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
