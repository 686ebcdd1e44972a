//! The disks of a region's planned releases (`DescribeDisks`): read one instance at a time when
//! that costs fewer calls than listing the region (500 disks a page), else the region's listing:
//! its system disks and its data disks side by side, each page by page (each page needs the
//! token of the one before), a long listing split further by creation time. A region listed
//! through server-side filters is counted first. Each disk read is shown to the caller as it
//! comes (`on_disk`), so the prices it calls for can be asked while later pages are still on
//! their way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::Semaphore;

use crate::ecs::client::{DiskQuery, MAX_DISK_PAGE};
use crate::ecs::types::DiskKind;
use crate::ecs::{ChargeType, Disk, EcsClient};
use crate::inventory::Listed;

/// Each instance's disks, or why they are unknown.
pub type InstanceDisks = Vec<(String, Result<Vec<KeptDisk>, String>)>;

/// Each instance's disks (or why they are unknown), the calls made, the failures in words.
pub type RegionDisks = (InstanceDisks, usize, Vec<String>);

/// Called with each disk of a wanted instance as it is read (the instance's id, the disk).
pub type OnDisk<'a> = &'a (dyn Fn(&str, &KeptDisk) + Sync);

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
            creation_time: None,
        }
    }
}

/// The disks of `ids`, the releases of an (account, region), with what the pass listed there.
/// Each call holds a permit of `slots`, the region's bound on pricing's calls in flight;
/// `on_disk` sees each disk of `ids` as it is read.
///
/// When the pass listed the region through server-side filters, it saw only the instances they
/// let through, and the region may hold many more disks: unless one call a release is the
/// fewest calls even then, one DescribeDisks call counts them first (paged by number, the
/// paging that counts; its page of 100 is all the reading a small region needs). The count
/// comes before any page of the listing: the listing's length decides how it is split, and
/// listing beside the count (as an earlier version did) lost the pages asked for before the
/// count showed a long region, to save one round trip on a short one.
///
/// The region is read whole, never zone by zone (`ZoneId`): which zone DescribeDisks gives a
/// regional (zone-redundant) disk is not documented, and a zone's listing might leave one out.
pub async fn region_disks(
    client: &EcsClient,
    region: &str,
    ids: &[&str],
    listed: Option<&Listed>,
    slots: &Semaphore,
    on_disk: OnDisk<'_>,
) -> RegionDisks {
    let mut calls = 0;
    let mut disks = 2 * listed.map_or(0, |l| l.instances).max(ids.len());
    let complete = listed.is_some_and(|l| l.complete);
    let read = Reader {
        client,
        region,
        ids,
        slots,
        on_disk,
        created: listed.and_then(|l| l.created),
    };
    if !complete && ids.len() > listing_pages(disks) {
        calls += 1;
        match read.count().await {
            // The count's page held every disk of the region: nothing more to read.
            Ok((page, total)) if page.len() >= total => {
                return (read.of_page(page), calls, Vec::new());
            }
            Ok((_, total)) => disks = disks.max(total),
            // Without the count the estimate stands, and the most that is lost is calls.
            Err(e) => {
                tracing::warn!(region, error = %e, "cannot count the region's disks; reading them as listed")
            }
        }
    }
    let (got, n, failures) = read.disks(disks).await;
    (got, calls + n, failures)
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

/// How many pages of one kind of disk (system or data) a listing reads in a row before it is
/// split in time: a kind of disk is listed in one part more for every this many pages. Each
/// part may cost a page more than one listing would (its last page is partly full), so the
/// split costs at most one call in this many, and shortens the longest chain of pages, each
/// waiting for the token of the one before, by about as many times as there are parts.
pub const PAGES_A_PART: usize = 10;

/// The creation-time ranges (after, before) a kind of disk among `disks` is listed in, side by
/// side: one range, unbounded, unless the kind takes [`PAGES_A_PART`] pages or more and the
/// listed instances' creation times are known (`created`). Then the cuts are at those times'
/// deciles, on the assumption that disks are created about when their instances are (a
/// system disk is created with its instance): ranges of about as many disks each, as far as
/// that holds; when it does not, the parts are uneven and the split gains less, never loses a
/// disk.
///
/// ECS filters by the minute, and does not document whether a disk created at the minute named
/// is in the answer; so each range ends a minute after the next one starts, and a disk of that
/// minute may be listed twice (the caller keeps it once).
pub fn time_ranges(disks: usize, created: Option<&[DateTime<Utc>; 9]>) -> Vec<TimeRange> {
    let pages = if listed_in_kinds(disks) {
        disks.div_ceil(2).div_ceil(MAX_DISK_PAGE)
    } else {
        disks.div_ceil(MAX_DISK_PAGE)
    };
    let parts = (1 + pages / PAGES_A_PART).min(10);
    let Some(created) = created.filter(|_| parts > 1) else {
        return vec![(None, None)];
    };
    let minute = |d: usize| {
        let t = created[d];
        t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
    };
    // A cut whose minute is a neighbouring decile's too has a tenth of the instances or more
    // in that minute, listed in both ranges: it is left out (with every instance created in
    // one minute, nothing is split).
    let mut cuts: Vec<DateTime<Utc>> = (1..parts)
        .map(|j| (10 * j / parts).clamp(1, 9) - 1)
        .filter(|&d| {
            let at = minute(d);
            (d == 0 || minute(d - 1) != at) && (d == 8 || minute(d + 1) != at)
        })
        .map(minute)
        .collect();
    cuts.dedup();
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    // The first range starts before any disk: ECS's reference does not say what a
    // `Filter.2` without a `Filter.1` does, so both are always sent.
    let mut after = (!cuts.is_empty()).then(listing_floor);
    for cut in cuts {
        ranges.push((after, Some(cut + TimeDelta::minutes(1))));
        after = Some(cut);
    }
    ranges.push((after, None));
    ranges
}

/// A time before any disk: the start of the first creation-time range (2009, before ECS).
pub fn listing_floor() -> DateTime<Utc> {
    DateTime::from_timestamp(1_230_768_000, 0).unwrap_or_default()
}

/// Created after, created before (`None`: unbounded), as DescribeDisks' filters take them.
pub type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// What a listing keeps: each wanted instance's disks.
type Kept = HashMap<String, Vec<KeptDisk>>;

/// What reading one region's disks works with.
struct Reader<'a> {
    client: &'a EcsClient,
    region: &'a str,
    ids: &'a [&'a str],
    slots: &'a Semaphore,
    on_disk: OnDisk<'a>,
    /// The listed instances' creation times, by tenths ([`Listed::created`]).
    created: Option<[DateTime<Utc>; 9]>,
}

impl Reader<'_> {
    /// The region's disks counted: the first page of 100 and the total.
    async fn count(&self) -> Result<(Vec<Disk>, usize), crate::ecs::EcsError> {
        let _slot = self.slots.acquire().await;
        self.client
            .count_disks(self.region, &DiskQuery::default())
            .await
    }

    /// Each of `ids`' disks among `page`.
    fn of_page(&self, page: Vec<Disk>) -> InstanceDisks {
        let wanted: HashSet<&str> = self.ids.iter().copied().collect();
        let mut of = Kept::new();
        self.keep(page, &wanted, &mut of, &mut HashSet::new());
        self.ids
            .iter()
            .map(|id| (id.to_string(), Ok(of.remove(*id).unwrap_or_default())))
            .collect()
    }

    /// Keeps the disks of `wanted` instances among `page` in `of`, each shown to `on_disk`.
    fn keep(
        &self,
        page: Vec<Disk>,
        wanted: &HashSet<&str>,
        of: &mut Kept,
        categories: &mut HashSet<Arc<str>>,
    ) {
        for mut d in page
            .into_iter()
            .filter(|d| wanted.contains(d.instance_id.as_str()))
        {
            let instance = std::mem::take(&mut d.instance_id);
            let d = KeptDisk::of(d, categories);
            (self.on_disk)(&instance, &d);
            // Most instances have a disk or two of a kind, and a vector grows to four at its
            // first push: over a fleet, that alone was 100 MB.
            of.entry(instance)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(d);
        }
    }

    /// The disks of `ids` among the region's `disks`: read one instance at a time when that
    /// costs fewer calls than listing the region (500 disks a page), else the region's listing.
    async fn disks(&self, disks: usize) -> RegionDisks {
        if self.ids.len() <= listing_pages(disks) {
            let reads = self.ids.iter().map(|id| self.one(id));
            let reads = futures::future::join_all(reads).await;
            let failures = reads
                .iter()
                .filter_map(|(id, got)| got.as_ref().err().map(|w| format!("{id}: {w}")))
                .collect();
            return (reads, self.ids.len(), failures);
        }
        let (got, failures, calls) = self.listing(disks).await;
        (got, calls, failures)
    }

    /// The region's listing of about `disks` disks: its system disks and its data disks side by
    /// side when they take more than a page, each kind in [`time_ranges`] side by side, else all
    /// at once; with the failures in words and the pages asked for.
    async fn listing(&self, disks: usize) -> (InstanceDisks, Vec<String>, usize) {
        // Listings side by side: each page needs the token of the one before, so one listing
        // is as slow as its pages in a row. Each more listing costs at most one page more.
        // (DescribeDisks' `DiskType` is `all`, `system` or `data`: every disk is one of the two.)
        let wanted: HashSet<&str> = self.ids.iter().copied().collect();
        let kinds: &[Option<DiskKind>] = if listed_in_kinds(disks) {
            &[Some(DiskKind::System), Some(DiskKind::Data)]
        } else {
            &[None]
        };
        let ranges = time_ranges(disks, self.created.as_ref());
        let parts = kinds.iter().flat_map(|kind| {
            ranges.iter().map(|&(after, before)| DiskQuery {
                kind: *kind,
                created_after: after,
                created_before: before,
                ..DiskQuery::default()
            })
        });
        let read = futures::future::join_all(parts.map(|q| self.part(q, &wanted))).await;
        let calls = read.iter().map(|(_, n)| n).sum();
        if let Some(w) = read.iter().find_map(|(got, _)| got.as_ref().err()) {
            let out = self.ids.iter().map(|id| (id.to_string(), Err(w.clone())));
            return (out.collect(), vec![format!("{}: {w}", self.region)], calls);
        }
        let mut of = Kept::new();
        for (more, _) in read {
            for (id, ds) in more.unwrap_or_default() {
                of.entry(id).or_default().extend(ds);
            }
        }
        if ranges.len() > 1 {
            // A disk created in the minute two ranges share may have come in both.
            for ds in of.values_mut() {
                let mut seen = HashSet::new();
                ds.retain(|d| seen.insert(d.disk_id.clone()));
            }
        }
        let out = self
            .ids
            .iter()
            .map(|id| (id.to_string(), Ok(of.remove(*id).unwrap_or_default())))
            .collect();
        (out, Vec::new(), calls)
    }

    /// The disks `query` asks for (one kind or both, in one time range or all) of the `wanted`
    /// instances, page after page, each page holding a slot of the region; with the calls
    /// made. Keeps only what pricing reads: a region's listing holds every disk of the
    /// region, and an all-matching pass prices hundreds of thousands.
    async fn part(
        &self,
        query: DiskQuery<'_>,
        wanted: &HashSet<&str>,
    ) -> (Result<Kept, String>, usize) {
        let mut of = Kept::new();
        let mut categories = HashSet::new();
        let mut token: Option<String> = None;
        let mut calls = 0;
        loop {
            calls += 1;
            let page = {
                let _slot = self.slots.acquire().await;
                self.client
                    .describe_disks_page_of(self.region, &query, token.as_deref(), &|id| {
                        wanted.contains(id)
                    })
                    .await
            };
            let (page, next) = match page {
                Ok(p) => p,
                Err(e) => return (Err(e.to_string()), calls),
            };
            self.keep(page, wanted, &mut of, &mut categories);
            match next {
                Some(t) => token = Some(t),
                None => return (Ok(of), calls),
            }
        }
    }

    /// One instance's disks, holding a slot of its region for the call.
    async fn one(&self, id: &str) -> (String, Result<Vec<KeptDisk>, String>) {
        let _slot = self.slots.acquire().await;
        let mut categories = HashSet::new();
        let got = self
            .client
            .describe_disks(self.region, Some(id))
            .await
            .map(|ds| {
                ds.into_iter()
                    .map(|d| {
                        let d = KeptDisk::of(d, &mut categories);
                        (self.on_disk)(id, &d);
                        d
                    })
                    .collect()
            })
            .map_err(|e| e.to_string());
        (id.to_string(), got)
    }
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

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 - 1_700_000_000 % 60, 0).unwrap()
            + TimeDelta::minutes(minute)
            + TimeDelta::seconds(17)
    }

    #[test]
    fn a_long_listing_is_split_at_the_instances_creation_deciles_in_overlapping_minutes() {
        // Instances created one every ten minutes: deciles at minutes 10, 20, ... 90.
        let created: [DateTime<Utc>; 9] = std::array::from_fn(|d| at(10 * (d as i64 + 1)));
        let minute = |m| at(m) - TimeDelta::seconds(17);
        // Fewer than 10 pages of a kind (9,000 disks: 9 pages of system disks and 9 of data
        // disks), or no creation times: one unbounded range.
        assert_eq!(time_ranges(9_000, Some(&created)), vec![(None, None)]);
        assert_eq!(time_ranges(20_000, None), vec![(None, None)]);
        assert_eq!(time_ranges(400, Some(&created)), vec![(None, None)]);
        // 10 pages of each kind: two ranges cut at the median's minute, each reaching a minute
        // into the other, the first from before any disk (both filters always sent).
        assert_eq!(
            time_ranges(10_000, Some(&created)),
            vec![
                (Some(listing_floor()), Some(minute(51))),
                (Some(minute(50)), None)
            ]
        );
        // 20 pages of each: three ranges, at the third and sixth deciles.
        assert_eq!(
            time_ranges(20_000, Some(&created)),
            vec![
                (Some(listing_floor()), Some(minute(31))),
                (Some(minute(30)), Some(minute(61))),
                (Some(minute(60)), None)
            ]
        );
        // 60 pages of each: seven ranges, at the deciles nearest the sevenths.
        let r = time_ranges(60_000, Some(&created));
        assert_eq!(r.len(), 7, "{r:?}");
        assert_eq!(r[1], (Some(minute(10)), Some(minute(21))));
        // Every instance created in one minute: a cut would list nearly everything twice.
        let same = [at(5); 9];
        assert_eq!(time_ranges(60_000, Some(&same)), vec![(None, None)]);
        // A cut in a minute shared with a neighbouring decile is left out, the others kept.
        let mut crowded = created;
        crowded[4] = crowded[3];
        let r = time_ranges(60_000, Some(&crowded));
        assert_eq!(r.len(), 5, "{r:?}");
    }
}
