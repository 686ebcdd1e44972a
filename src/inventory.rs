//! One pass's view of the fleet: each (account, region)'s instances, listed with DescribeInstances
//! signed as that account. The listing plan asks ECS, per (account, region), one query per
//! distinct server-side filter of its policies (status, charge type, tags, instance ids), so a
//! region is listed whole only when some policy could select anything in it. Listings run
//! concurrently, and so do the pages of each; the results are deduplicated, and each query is
//! kept with what it listed, for the observations of `stopped_for`.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::ecs::client::DescribeFilter;
use crate::ecs::{Accounts, EcsError, Instance, InstanceStatus};
use crate::policy::{account_of, Policy};

/// Instances by (account, region); `""` is the default account. Each (account, region) has a
/// vector of its own, so the planner can let each go once it is planned: a pass over a whole
/// fleet never holds its instances twice.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// In (account, region) order.
    runs: BTreeMap<(String, String), Vec<Instance>>,
    /// Every query made, with what it listed.
    listings: Vec<Listing>,
}

/// One DescribeInstances query of a pass and what it listed: the instances' ids and states.
#[derive(Debug, Clone)]
pub struct Listing {
    pub account: String,
    pub region: String,
    pub filter: DescribeFilter,
    pub listed: Vec<(String, InstanceStatus)>,
}

/// Why an (account, region) could not be listed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot list the instances of {region}{}: {source}",
    account_suffix(account)
)]
pub struct InventoryError {
    pub account: String,
    pub region: String,
    #[source]
    pub source: EcsError,
}

/// ` in account "prod"`, or nothing for the default account.
pub fn account_suffix(account: &str) -> String {
    if account.is_empty() {
        String::new()
    } else {
        format!(" in account {account:?}")
    }
}

/// What a pass listed in one (account, region), kept for pricing once the instances themselves
/// are let go: how many instances, and whether that is every instance there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    pub instances: usize,
    /// The region was listed without a server-side filter: `instances` counts all of its
    /// instances, not only those the policies' filters let through.
    pub complete: bool,
    /// When the listed instances were created, at each tenth of them (the 10th to the 90th
    /// percentile); `None` when none gave a time. Pricing splits a long listing of the region's
    /// disks at these times, into parts of about as many disks each.
    pub created: Option<[DateTime<Utc>; 9]>,
}

/// The creation times of `instances` at each tenth of them (see [`Listed::created`]).
pub fn creation_deciles(instances: &[Instance]) -> Option<[DateTime<Utc>; 9]> {
    let mut times: Vec<DateTime<Utc>> = instances.iter().filter_map(|i| i.creation_time).collect();
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    Some(std::array::from_fn(|d| {
        times[(d + 1) * (times.len() - 1) / 10]
    }))
}

/// [`Listed`] for each (account, region) of a pass.
pub type ListedByRegion = HashMap<(String, String), Listed>;

impl Inventory {
    /// What each (account, region) listed.
    pub fn listed(&self) -> ListedByRegion {
        self.regions()
            .map(|(k, instances)| {
                let complete = self.listings.iter().any(|l| {
                    (&l.account, &l.region) == (&k.0, &k.1) && l.filter == DescribeFilter::default()
                });
                let listed = Listed {
                    instances: instances.len(),
                    complete,
                    created: creation_deciles(instances),
                };
                (k.clone(), listed)
            })
            .collect()
    }

    /// The instances of each (account, region), in (account, region) order.
    pub fn regions(&self) -> impl Iterator<Item = (&(String, String), &[Instance])> {
        self.runs.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// Takes the instances, (account, region) by (account, region), leaving the listings.
    pub fn take_regions(&mut self) -> BTreeMap<(String, String), Vec<Instance>> {
        std::mem::take(&mut self.runs)
    }

    /// Every query the pass made, with what each listed.
    pub fn listings(&self) -> &[Listing] {
        &self.listings
    }
}

/// The filter all `policies` of one region share: a field is set only when every policy sets
/// it to the same value. Tags are never filtered on the server: ECS returns at most 1,000
/// instances to a tag-filtered DescribeInstances, whatever the paging (../shared/ecs-api.md 2.1),
/// so a tag filter could hide instances from the plan; tags are matched in the plan instead.
pub fn shared_filter<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> DescribeFilter {
    let mut out: Option<DescribeFilter> = None;
    for p in policies {
        let f = p.select.server_filters();
        let mine = DescribeFilter {
            status: f.status,
            charge_type: f.charge_type,
            tags: Vec::new(),
            instance_ids: None,
        };
        out = Some(match out {
            None => mine,
            Some(acc) => DescribeFilter {
                status: acc.status.filter(|s| mine.status == Some(*s)),
                charge_type: acc.charge_type.filter(|c| mine.charge_type == Some(*c)),
                tags: acc
                    .tags
                    .into_iter()
                    .filter(|t| mine.tags.contains(t))
                    .collect(),
                instance_ids: None,
            },
        });
    }
    out.unwrap_or_default()
}

/// At most this many distinct queries per (account, region); past it, one shared query.
const MAX_QUERIES: usize = 8;
/// Listings (queries) in flight at once, over all accounts and regions.
const LISTINGS_IN_FLIGHT: usize = 16;
/// DescribeInstances calls in flight at once per (account, region), shared by the region's
/// listings, so one long listing may use what the region's short ones leave. (A region of
/// several long listings has 24 in all, where each listing had 8: the pacer, which keeps each
/// region's DescribeInstances within its quota from a burst of 50 at 50 a second, bounds a
/// long pass well before that.)
pub const PAGES_IN_FLIGHT: usize = 24;
/// ECS lists at most this many instances for a tag-filtered query (../shared/ecs-api.md 2.1).
pub const TAG_FILTER_CAP: usize = 1000;

/// The queries that list what `policies` (of one account and region) can select: one per
/// distinct server-side filter, or a single shared one when some policy filters nothing (it
/// needs the whole region anyway) or there are more than [`MAX_QUERIES`] of them.
pub fn listing_plan(policies: &[&Policy]) -> Vec<DescribeFilter> {
    let mut out: Vec<DescribeFilter> = Vec::new();
    for p in policies {
        let f = p.select.server_filters();
        let q = DescribeFilter {
            status: f.status,
            charge_type: f.charge_type,
            tags: if f.tags.len() <= 20 {
                f.tags
            } else {
                Vec::new()
            },
            instance_ids: (!f.instance_ids.is_empty()).then_some(f.instance_ids),
        };
        if q == DescribeFilter::default() {
            return vec![DescribeFilter::default()];
        }
        if !out.contains(&q) {
            out.push(q);
        }
    }
    if out.len() > MAX_QUERIES {
        return vec![shared_filter(policies.iter().copied())];
    }
    out
}

/// Lists one query: with tags, a listing ECS may have cut at [`TAG_FILTER_CAP`] is listed again
/// without them (the plan matches tags itself).
async fn list(
    accounts: &Accounts,
    account: &str,
    region: &str,
    filter: DescribeFilter,
    slots: &Semaphore,
) -> Result<(DescribeFilter, Vec<Instance>), InventoryError> {
    let err = |source| InventoryError {
        account: account.to_string(),
        region: region.to_string(),
        source,
    };
    let client = accounts.client(account);
    let listed = client
        .describe_instances_concurrently(region, &filter, slots)
        .await
        .map_err(err)?;
    if filter.tags.is_empty() || listed.len() < TAG_FILTER_CAP {
        return Ok((filter, listed));
    }
    let wider = DescribeFilter {
        tags: Vec::new(),
        ..filter
    };
    let listed = client
        .describe_instances_concurrently(region, &wider, slots)
        .await
        .map_err(err)?;
    Ok((wider, listed))
}

/// Lists every (account, region) any of `policies` names, by its listing plan, with up to
/// [`LISTINGS_IN_FLIGHT`] queries at once. Fails with the first (account, region) that could
/// not be listed; [`fetch_each`] lists the others anyway.
pub async fn fetch(accounts: &Accounts, policies: &[Policy]) -> Result<Inventory, InventoryError> {
    let (inv, mut failed) = fetch_each(accounts, policies).await;
    match failed.is_empty() {
        true => Ok(inv),
        false => Err(failed.remove(0)),
    }
}

/// [`fetch`], but an (account, region) that cannot be listed is left out of the inventory and
/// returned beside it (one error each), so the policies of the other regions can go on.
pub async fn fetch_each(
    accounts: &Accounts,
    policies: &[Policy],
) -> (Inventory, Vec<InventoryError>) {
    let mut regions: BTreeMap<(&str, &str), Vec<&Policy>> = BTreeMap::new();
    for p in policies {
        for r in &p.regions {
            regions
                .entry((account_of(p), r.as_str()))
                .or_default()
                .push(p);
        }
    }
    let jobs: Vec<(String, String, DescribeFilter)> = regions
        .iter()
        .flat_map(|((account, region), ps)| {
            listing_plan(ps)
                .into_iter()
                .map(move |f| (account.to_string(), region.to_string(), f))
        })
        .collect();
    let slots: HashMap<(&str, &str), Semaphore> = regions
        .keys()
        .map(|k| (*k, Semaphore::new(PAGES_IN_FLIGHT)))
        .collect();
    type Listed = (String, String, DescribeFilter, Vec<Instance>);
    let results: Vec<Result<Listed, InventoryError>> = futures::stream::iter(jobs)
        .map(|(account, region, f)| {
            let accounts = accounts.clone();
            let slots = &slots;
            async move {
                let slots = &slots[&(account.as_str(), region.as_str())];
                list(&accounts, &account, &region, f, slots)
                    .await
                    .map(|(f, listed)| (account, region, f, listed))
            }
        })
        .buffered(LISTINGS_IN_FLIGHT)
        .collect()
        .await;
    let mut inv = Inventory::default();
    let mut failed: Vec<InventoryError> = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut ids: HashSet<String> = HashSet::new();
    for r in results {
        let (account, region, filter, mut listed) = match r {
            Ok(listed) => listed,
            Err(e) => {
                if !failed
                    .iter()
                    .any(|f| f.account == e.account && f.region == e.region)
                {
                    failed.push(e);
                }
                continue;
            }
        };
        let key = (account.clone(), region.clone());
        if current.as_ref() != Some(&key) {
            ids.clear();
            current = Some(key.clone());
        }
        tracing::debug!(account, region, count = listed.len(), ?filter, "listed");
        inv.listings.push(Listing {
            account,
            region,
            filter,
            listed: listed
                .iter()
                .map(|i| (i.instance_id.clone(), i.status))
                .collect(),
        });
        // A query's instances are moved, not copied; another query's of the same region add
        // only those not listed yet.
        listed.retain(|i| ids.insert(i.instance_id.clone()));
        let run = inv.runs.entry(key).or_default();
        if run.is_empty() {
            *run = listed;
        } else {
            run.append(&mut listed);
        }
    }
    // What a region's other queries listed is dropped with it: half a region is no view of it.
    for f in &failed {
        inv.runs.remove(&(f.account.clone(), f.region.clone()));
        inv.listings
            .retain(|l| !(l.account == f.account && l.region == f.region));
    }
    (inv, failed)
}

/// Where [`locate`] found an instance.
#[derive(Debug, Clone)]
pub enum Located {
    /// Listed there (in one place, unless the policies' accounts share a fleet).
    Found(Vec<(String, Instance)>),
    /// Listed by none of the (account, region) pairs the policies cover, each asked.
    Nowhere(Vec<(String, String)>),
    /// Some pair could not be asked (`why`); the others did not list it.
    Unchecked(String),
}

/// How long [`locate`] waits for all its answers.
pub const LOCATE_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Looks `instance_id` up in every (account, region) that `policies` cover, with one
/// DescribeInstances call each, side by side: so an operator exempting an instance learns which
/// machine the id names, or that it names none any policy could release (a mistyped id would
/// otherwise leave the intended machine unprotected). Bounded by [`LOCATE_WITHIN`].
pub async fn locate(accounts: &Accounts, policies: &[Policy], instance_id: &str) -> Located {
    let mut pairs: Vec<(String, String)> = policies
        .iter()
        .flat_map(|p| {
            p.regions
                .iter()
                .map(|r| (account_of(p).to_string(), r.clone()))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    let filter = DescribeFilter {
        instance_ids: Some(vec![instance_id.to_string()]),
        ..DescribeFilter::default()
    };
    let asks = pairs.iter().map(|(account, region)| {
        let client = accounts.client(account);
        let filter = &filter;
        async move {
            (
                account,
                region,
                client.describe_instances(region, filter).await,
            )
        }
    });
    let Ok(answers) = tokio::time::timeout(LOCATE_WITHIN, futures::future::join_all(asks)).await
    else {
        return Located::Unchecked(format!(
            "ECS did not answer within {} s",
            LOCATE_WITHIN.as_secs()
        ));
    };
    let mut found = Vec::new();
    let mut failed = None;
    for (account, region, answer) in answers {
        match answer {
            Ok(listed) => found.extend(
                listed
                    .into_iter()
                    .filter(|i| i.instance_id == instance_id)
                    .map(|i| (account.clone(), i)),
            ),
            // A region ECS says does not exist holds no instance: asked, it lists nothing (and
            // a policy over a mistyped region must not turn the typo guard off for good).
            Err(e) if e.code().starts_with("InvalidRegionId") => {}
            Err(e) => {
                failed.get_or_insert_with(|| {
                    format!("cannot ask {region}{}: {e}", account_suffix(account))
                });
            }
        }
    }
    match (found.is_empty(), failed) {
        (false, _) => Located::Found(found),
        (true, Some(why)) => Located::Unchecked(why),
        (true, None) => Located::Nowhere(pairs),
    }
}
