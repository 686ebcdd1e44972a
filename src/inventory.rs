//! One pass's view of the fleet: each (account, region)'s instances, fetched once with
//! DescribeInstances signed as that account, narrowed by the server-side filters that every policy
//! of the account and region shares (so a filter never hides an instance some policy could
//! select).

use std::collections::BTreeMap;

use crate::ecs::client::DescribeFilter;
use crate::ecs::{account_of, Accounts, EcsError, Instance};
use crate::policy::Policy;

/// Instances by (account, region); `""` is the default account.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub regions: BTreeMap<(String, String), Vec<Instance>>,
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
    /// Every instance, region by region.
    pub fn all(&self) -> Vec<Instance> {
        self.regions.values().flatten().cloned().collect()
    }

    /// The instances of `account`, region by region.
    pub fn of_account(&self, account: &str) -> Vec<Instance> {
        self.regions
            .iter()
            .filter(|((a, _), _)| a == account)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.regions.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The filter all `policies` of one region share: a field is set only when every policy sets
/// it to the same value.
pub fn shared_filter<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> DescribeFilter {
    let mut out: Option<DescribeFilter> = None;
    for p in policies {
        let f = p.select.server_filters();
        let mine = DescribeFilter {
            status: f.status,
            charge_type: f.charge_type,
            tags: f.tags.clone(),
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
        let instances = accounts
            .client(account)
            .describe_instances(region, &filter)
            .await
            .map_err(|source| InventoryError {
                account: account.to_string(),
                region: region.to_string(),
                source,
            })?;
        tracing::debug!(
            account,
            region,
            count = instances.len(),
            ?filter,
            "inventory fetched"
        );
        inv.regions
            .insert((account.to_string(), region.to_string()), instances);
    }
    Ok(inv)
}
