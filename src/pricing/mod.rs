//! Prices a plan: each planned release's disks (`DescribeDisks`) and what releasing it saves per
//! month, from the user's price file when it has the figure, else from ECS's list prices
//! (`DescribePrice`, `DescribeRenewalPrice`).
//!
//! Every lookup is made at most once per plan: one DescribePrice per (account, region, instance
//! type) and per (account, region, disk category, size), one DescribeRenewalPrice per (account,
//! region, instance type) of the subscriptions planned: the instance type's line of one
//! subscription's renewal answer stands for every subscription of that type, and its prepaid disks
//! are added at their monthly list price (DescribePrice), so the renewal lookups do not grow with
//! the variety of disk sets. List prices answered are kept in the process's [`PriceCache`] for
//! six hours, so a later pass asks again only what it has not priced yet; and a pass prices only
//! the releases that need a figure (those it will queue), not those already queued with theirs.
//!
//! Calls go through the account's ECS client, which signs, retries and classifies them and paces
//! each (region, API) like every other call ([`crate::ecs::pace`]); pricing has no pace of its
//! own. They run concurrently, at most [`IN_FLIGHT_PER_REGION`] at once per (account, region):
//! the instance-type and renewal lookups beside the disk reads, and each disk configuration's
//! lookup as soon as a disk of it is read, while a region's later pages are still listed. A
//! lookup that fails makes the figures that need it unknown; it never stops the plan, and never
//! blocks a release.
//!
//! The pure part (what a release saves, given disks and prices) is [`crate::plan::savings`]; the
//! price file is [`file`], the cache [`cache`], one lookup of any kind [`lookup`], the disk reads
//! [`disks`].

pub mod cache;
pub mod disks;
pub mod file;
pub mod lookup;

pub use cache::PriceCache;
pub use file::{PriceFile, PriceFileError, RegionPrices};
pub use lookup::Lookup;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::ecs::{Accounts, ChargeType, Disk};
use crate::inventory::ListedByRegion;
use crate::plan::savings::{estimate, DiskPricing, Priced};
use crate::plan::{Plan, PlannedRelease, PriceBook, Saving};

/// Pricing's calls in flight at once per (account, region): the two disk listings and the
/// price lookups beside them, a region's lookups in one or two round trips. The pacer keeps
/// each API of the region within its quota.
pub const IN_FLIGHT_PER_REGION: usize = 12;

/// How a plan is priced.
#[derive(Debug, Clone, Default)]
pub struct PriceConfig {
    /// The user's prices, which win over ECS's.
    pub file: Option<Arc<PriceFile>>,
    /// Do not price at all (no command sets it yet; for callers that want a bare plan).
    pub disabled: bool,
}

/// What pricing runs with: the ECS clients by account, the configuration, and the prices
/// already answered.
#[derive(Debug, Clone, Copy)]
pub struct Pricer<'a> {
    pub accounts: &'a Accounts,
    pub config: &'a PriceConfig,
    pub cache: &'a PriceCache,
    /// Keep each saving's lines (each priced resource), for a plan to review; without them a
    /// saving keeps its totals, sources and unknowns ([`Saving::without_lines`]), and a pass
    /// over a whole fleet never holds hundreds of thousands of lines.
    pub lines: bool,
}

/// How many calls pricing made, by action (the benchmark and tests count them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PricingReport {
    pub describe_price: usize,
    pub describe_renewal_price: usize,
    /// DescribeDisks pages (one per instance read alone, one per page of a region's listing).
    pub describe_disks: usize,
    /// Lookups that failed, in words (each made a figure unknown).
    pub failures: Vec<String>,
}

impl PricingReport {
    pub fn calls(&self) -> usize {
        self.describe_price + self.describe_renewal_price + self.describe_disks
    }
}

/// A lookup a plan needs, in a region of an account, with the subscription a renewal is asked
/// for.
#[derive(Debug)]
struct Need<'p> {
    account: &'p str,
    region: &'p str,
    what: Lookup,
    subscription: Option<&'p str>,
}

/// Per (account, region), the permits bounding pricing's calls in flight there.
type Slots<'p> = HashMap<(&'p str, &'p str), Semaphore>;

/// The disk configurations asked for as disks were read: (account, region, category, size).
type Asked<'p> = HashSet<(&'p str, &'p str, String, u32)>;

/// A lookup's figure (or why there is none), and whether ECS was asked for it.
type Looked<'p> = (Need<'p>, Priced, bool);

impl Pricer<'_> {
    /// Prices, in place (`PlannedRelease::saving`), the releases of `plan` that `wanted` picks;
    /// the others stay unpriced (`None`). `listed` holds what each (account, region) listed, to
    /// choose how to read disks; `now` dates what the cache keeps.
    pub async fn price_plan(
        &self,
        plan: &mut Plan,
        listed: &ListedByRegion,
        wanted: impl Fn(&PlannedRelease) -> bool,
        now: DateTime<Utc>,
    ) -> PricingReport {
        let mut report = PricingReport::default();
        if self.config.disabled {
            return report;
        }
        // (account, region) → the ids of its releases; what needs no disks to be known.
        let mut by_region: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        let mut instance_types: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
        // (account, region, instance type) → the subscription whose renewal price stands for it.
        let mut renewals: BTreeMap<(&str, &str, &str), &str> = BTreeMap::new();
        // Per (account, region), which disks of each release need a price.
        let mut pricing: HashMap<(&str, &str), HashMap<&str, DiskPricing>> = HashMap::new();
        for pp in &plan.policies {
            let account = pp.account.as_deref().unwrap_or_default();
            for r in pp.releases.iter().filter(|r| wanted(r)) {
                by_region
                    .entry((account, &r.region))
                    .or_default()
                    .push(&r.instance_id);
                pricing
                    .entry((account, &r.region))
                    .or_default()
                    .insert(&r.instance_id, r.billing().disk_pricing());
                if r.billing().compute_billed() {
                    instance_types.insert((account, &r.region, &r.instance_type));
                }
                if r.charge_type == ChargeType::PrePaid {
                    renewals
                        .entry((account, &r.region, &r.instance_type))
                        .or_insert(&r.instance_id);
                }
            }
        }
        let slots: Slots = by_region
            .keys()
            .map(|k| (*k, Semaphore::new(IN_FLIGHT_PER_REGION)))
            .collect();
        let first: Vec<Need> = instance_types
            .into_iter()
            .map(|(account, region, ty)| Need {
                account,
                region,
                what: Lookup::Instance {
                    instance_type: ty.to_string(),
                },
                subscription: None,
            })
            .chain(
                renewals
                    .into_iter()
                    .map(|((account, region, ty), first)| Need {
                        account,
                        region,
                        what: Lookup::Renewal {
                            instance_type: ty.to_string(),
                        },
                        subscription: Some(first),
                    }),
            )
            .collect();
        // The disks of every (account, region), beside the lookups that do not need them.
        let ((reads, asked, looked_as_found), looked) = futures::join!(
            self.read_disks(&by_region, listed, &pricing, &slots, now),
            self.look_up(first, &slots, now),
        );
        let mut books: HashMap<String, PriceBook> = HashMap::new();
        self.record(looked, &mut report, &mut books, now);
        self.record(looked_as_found, &mut report, &mut books, now);
        let mut disks: HashMap<String, Result<Vec<disks::KeptDisk>, String>> = HashMap::new();
        for (got, calls, failures) in reads {
            report.describe_disks += calls;
            report.failures.extend(failures);
            disks.extend(got);
        }

        // The disk configurations to price, less those asked for as their disks were read (each
        // read shows its disks, so normally all of them: this keeps every figure whole whatever
        // way its disks were read).
        let mut sizes: BTreeSet<(&str, &str, &str, u32)> = BTreeSet::new();
        for pp in &plan.policies {
            let account = pp.account.as_deref().unwrap_or_default();
            for r in pp.releases.iter().filter(|r| wanted(r)) {
                let Some(Ok(ds)) = disks.get(&r.instance_id) else {
                    continue;
                };
                let rule = r.billing().disk_pricing();
                for d in ds
                    .iter()
                    .filter(|d| rule.needs(d.delete_with_instance, d.charge_type))
                {
                    sizes.insert((account, &r.region, &d.category, d.size_gb));
                }
            }
        }
        let then: Vec<Need> = sizes
            .into_iter()
            .filter(|(account, region, category, size_gb)| {
                !asked.contains(&(*account, *region, category.to_string(), *size_gb))
            })
            .map(|(account, region, category, size_gb)| Need {
                account,
                region,
                what: Lookup::Disk {
                    category: category.to_string(),
                    size_gb,
                },
                subscription: None,
            })
            .collect();
        let looked = self.look_up(then, &slots, now).await;
        self.record(looked, &mut report, &mut books, now);

        // Each instance's disks are let go as its saving is made: a pass over a whole fleet
        // never holds every disk and every saving at once.
        for pp in &mut plan.policies {
            let book = books
                .entry(pp.account.clone().unwrap_or_default())
                .or_default();
            for r in pp.releases.iter_mut().filter(|r| wanted(r)) {
                let b = r.billing();
                let mut saving = match disks.remove(&r.instance_id) {
                    Some(Ok(ds)) => {
                        let ds: Vec<Disk> = ds.iter().map(disks::KeptDisk::to_disk).collect();
                        estimate(&b, &ds, book)
                    }
                    Some(Err(w)) => Saving::unknown(b.basis(), format!("its disks: {w}")),
                    None => Saving::unknown(b.basis(), "its disks were not read".into()),
                };
                if !self.lines {
                    saving.without_lines();
                }
                r.saving = Some(Box::new(saving));
            }
        }
        if !report.failures.is_empty() {
            tracing::warn!(
                failures = report.failures.len(),
                first = %report.failures[0],
                "some prices are unknown; their savings show as unknown"
            );
        }
        report
    }

    /// The disks of each (account, region) of `by_region` (its releases' ids), and the lookup
    /// of each disk configuration `pricing` says needs a price, asked as soon as a disk of it
    /// is read, while the region's later pages are still on their way. Returns each region's
    /// reads, the configurations asked, and their figures.
    async fn read_disks<'p>(
        &self,
        by_region: &BTreeMap<(&'p str, &'p str), Vec<&'p str>>,
        listed: &ListedByRegion,
        pricing: &HashMap<(&'p str, &'p str), HashMap<&'p str, DiskPricing>>,
        slots: &Slots<'p>,
        now: DateTime<Utc>,
    ) -> (Vec<disks::RegionDisks>, Asked<'p>, Vec<Looked<'p>>) {
        let (found, configs) = tokio::sync::mpsc::unbounded_channel::<Need>();
        let reads = async {
            let found = found;
            let reads = by_region.iter().map(|((account, region), ids)| {
                let listed = listed.get(&(account.to_string(), region.to_string()));
                let client = self.accounts.client(account);
                let slots = &slots[&(*account, *region)];
                let rules = &pricing[&(*account, *region)];
                let found = &found;
                async move {
                    // The region's configurations already sent for.
                    let sent: std::sync::Mutex<HashSet<(Arc<str>, u32)>> = Default::default();
                    let on_disk = |id: &str, d: &disks::KeptDisk| {
                        let needed = rules
                            .get(id)
                            .is_some_and(|p| p.needs(d.delete_with_instance, d.charge_type));
                        let new = needed
                            && sent
                                .lock()
                                .map(|mut s| s.insert((d.category.clone(), d.size_gb)))
                                .unwrap_or(true);
                        if new {
                            let _ = found.send(Need {
                                account,
                                region,
                                what: Lookup::Disk {
                                    category: d.category.to_string(),
                                    size_gb: d.size_gb,
                                },
                                subscription: None,
                            });
                        }
                    };
                    disks::region_disks(&client, region, ids, listed, slots, &on_disk).await
                }
            });
            futures::future::join_all(reads).await
        };
        let as_found = async {
            let mut configs = configs;
            let mut asking = futures::stream::FuturesUnordered::new();
            let mut asked = Asked::new();
            let mut looked = Vec::new();
            loop {
                tokio::select! {
                    need = configs.recv() => match need {
                        Some(n) => {
                            if let Lookup::Disk { category, size_gb } = &n.what {
                                asked.insert((n.account, n.region, category.clone(), *size_gb));
                            }
                            asking.push(self.look_up(vec![n], slots, now));
                        }
                        // Every region is read.
                        None => break,
                    },
                    Some(l) = asking.next(), if !asking.is_empty() => looked.extend(l),
                }
            }
            while let Some(l) = asking.next().await {
                looked.extend(l);
            }
            (asked, looked)
        };
        let (reads, (asked, looked)) = futures::join!(reads, as_found);
        (reads, asked, looked)
    }

    /// The figure of each of `needs`: from the price file when it has it, else from the cache,
    /// else asked of ECS, concurrently within each (account, region)'s slots.
    async fn look_up<'p>(
        &self,
        needs: Vec<Need<'p>>,
        slots: &Slots<'p>,
        now: DateTime<Utc>,
    ) -> Vec<Looked<'p>> {
        let file = self.config.file.as_deref();
        let mut done = Vec::with_capacity(needs.len());
        let mut ask = Vec::new();
        for n in needs {
            if let Some(m) = file.and_then(|f| n.what.from_file(f, n.region)) {
                done.push((n, Ok((m, crate::plan::Source::PriceFile)), false));
            } else if let Some(p) = self.cache.get(n.account, n.region, &n.what, now) {
                done.push((n, Ok(p), false));
            } else {
                ask.push(n);
            }
        }
        // Every lookup waits for a slot of its region, so at most a few are in flight there.
        let asked = futures::future::join_all(ask.into_iter().map(|n| self.ask(n, slots))).await;
        done.extend(asked);
        done
    }

    /// Asks ECS for one figure, holding a slot of its region for the call.
    async fn ask<'p>(&self, n: Need<'p>, slots: &Slots<'p>) -> Looked<'p> {
        let client = self.accounts.client(n.account);
        let _slot = slots[&(n.account, n.region)].acquire().await;
        let p = n.what.ask(&client, n.region, n.subscription).await;
        (n, p, true)
    }

    /// Counts the calls made, keeps what ECS answered in the cache, and puts every figure (or
    /// why it is unknown) in its account's book.
    fn record(
        &self,
        looked: Vec<Looked<'_>>,
        report: &mut PricingReport,
        books: &mut HashMap<String, PriceBook>,
        now: DateTime<Utc>,
    ) {
        for (n, p, asked) in looked {
            if asked {
                match n.what.action() {
                    lookup::Action::DescribePrice => report.describe_price += 1,
                    lookup::Action::DescribeRenewalPrice => report.describe_renewal_price += 1,
                }
                if let Ok(figure) = &p {
                    self.cache
                        .put(n.account, n.region, n.what.clone(), figure.clone(), now);
                }
            }
            if let Err(w) = &p {
                let what = n.what.words(n.region, n.subscription);
                report.failures.push(format!("{what}: {w}"));
            }
            let book = books.entry(n.account.to_string()).or_default();
            n.what.record(book, n.region, p);
        }
    }
}
