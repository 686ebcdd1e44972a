//! One pass's view of the fleet: each (account, region)'s instances, fetched once with
//! DescribeInstances signed as that account, narrowed by the server-side filters that every policy
//! of the account and region shares (so a filter never hides an instance some policy could
//! select).

use std::collections::BTreeMap;

use crate::ecs::client::DescribeFilter;
use crate::ecs::{Accounts, EcsError, Instance};
use crate::policy::{account_of, Policy};

/// Instances by (account, region); `""` is the default account. One vector holds them all,
/// each (account, region) a contiguous run of it, so the planner reads them without a copy.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    instances: Vec<Instance>,
    runs: BTreeMap<(String, String), std::ops::Range<usize>>,
    /// The server-side filter each (account, region) was listed with.
    filters: BTreeMap<(String, String), DescribeFilter>,
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

impl Inventory {
    /// Every instance, account by account and region by region.
    pub fn all(&self) -> &[Instance] {
        &self.instances
    }

    /// The instances of `account`, region by region (contiguous: runs are stored in
    /// (account, region) order).
    pub fn of_account(&self, account: &str) -> &[Instance] {
        let mut mine = self
            .runs
            .iter()
            .filter(|((a, _), _)| a == account)
            .map(|(_, r)| r.clone());
        let Some(first) = mine.next() else {
            return &[];
        };
        let end = mine.next_back().map_or(first.end, |r| r.end);
        &self.instances[first.start..end]
    }

    /// Each (account, region) with its instances.
    pub fn regions(&self) -> impl Iterator<Item = (&(String, String), &[Instance])> {
        self.runs
            .iter()
            .map(|(k, r)| (k, &self.instances[r.clone()]))
    }

    /// The filter an (account, region) was listed with (none: unfiltered).
    pub fn filter_of(&self, account: &str, region: &str) -> DescribeFilter {
        self.filters
            .get(&(account.to_string(), region.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
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

/// Fetches every (account, region) any of `policies` names, once each.
pub async fn fetch(accounts: &Accounts, policies: &[Policy]) -> Result<Inventory, InventoryError> {
    let mut regions: BTreeMap<(&str, &str), Vec<&Policy>> = BTreeMap::new();
    for p in policies {
        for r in &p.regions {
            regions
                .entry((account_of(p), r.as_str()))
                .or_default()
                .push(p);
        }
    }
    let mut inv = Inventory::default();
    for ((account, region), ps) in regions {
        let filter = shared_filter(ps);
        let listed = accounts
            .client(account)
            .describe_instances(region, &filter)
            .await
            .map_err(|source| InventoryError {
                account: account.to_string(),
                region: region.to_string(),
                source,
            })?;
        let instances = listed;
        tracing::debug!(
            account,
            region,
            count = instances.len(),
            ?filter,
            "inventory fetched"
        );
        let start = inv.instances.len();
        inv.instances.extend(instances);
        inv.runs.insert(
            (account.to_string(), region.to_string()),
            start..inv.instances.len(),
        );
        inv.filters
            .insert((account.to_string(), region.to_string()), filter);
    }
    Ok(inv)
}
