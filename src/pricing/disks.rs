//! The disks of a region's planned releases (`DescribeDisks`): read one instance at a time when
//! that costs fewer calls than listing the region (about two disks per instance, 500 a page),
//! else the region's listing, page by page (each page needs the token of the one before).

use std::collections::HashMap;

use tokio::sync::Semaphore;

use crate::ecs::client::MAX_DISK_PAGE;
use crate::ecs::{Disk, EcsClient};

/// Each instance's disks (or why they are unknown), the calls made, the failures in words.
pub type RegionDisks = (Vec<(String, Result<Vec<Disk>, String>)>, usize, Vec<String>);

/// The disks of `ids` in `region`, of `listed` instances listed there. Each call holds a permit
/// of `slots`, the region's bound on pricing's calls in flight.
pub async fn region_disks(
    client: &EcsClient,
    region: &str,
    ids: &[&str],
    listed: usize,
    slots: &Semaphore,
) -> RegionDisks {
    let listing_pages = (listed * 2).div_ceil(MAX_DISK_PAGE).max(1);
    if ids.len() <= listing_pages {
        let reads = ids.iter().map(|id| read_one(client, region, id, slots));
        let reads = futures::future::join_all(reads).await;
        let failures = reads
            .iter()
            .filter_map(|(id, got)| got.as_ref().err().map(|w| format!("{id}: {w}")))
            .collect();
        return (reads, ids.len(), failures);
    }
    let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
    let mut of: HashMap<String, Vec<Disk>> = HashMap::new();
    let mut token: Option<String> = None;
    let mut calls = 0;
    loop {
        calls += 1;
        let page = {
            let _slot = slots.acquire().await;
            client
                .describe_disks_page(region, None, token.as_deref())
                .await
        };
        match page {
            Ok((page, next)) => {
                // Only the disks of the releases, with only what pricing reads: a region's
                // listing holds every disk of the region, and an all-matching pass prices
                // hundreds of thousands.
                for mut d in page
                    .into_iter()
                    .filter(|d| wanted.contains(d.instance_id.as_str()))
                {
                    let instance = std::mem::take(&mut d.instance_id);
                    d.region_id = String::new();
                    d.zone_id = String::new();
                    d.status = String::new();
                    of.entry(instance).or_default().push(d);
                }
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            Err(e) => {
                let w = e.to_string();
                let out = ids.iter().map(|id| (id.to_string(), Err(w.clone())));
                return (out.collect(), calls, vec![format!("{region}: {w}")]);
            }
        }
    }
    let out = ids
        .iter()
        .map(|id| (id.to_string(), Ok(of.remove(*id).unwrap_or_default())))
        .collect();
    (out, calls, Vec::new())
}

/// One instance's disks, holding a slot of its region for the call.
async fn read_one(
    client: &EcsClient,
    region: &str,
    id: &str,
    slots: &Semaphore,
) -> (String, Result<Vec<Disk>, String>) {
    let _slot = slots.acquire().await;
    let got = client
        .describe_disks(region, Some(id))
        .await
        .map_err(|e| e.to_string());
    (id.to_string(), got)
}
