//! One pass's view of the fleet: each region's instances, fetched once with DescribeInstances,
//! narrowed by the server-side filters that every policy of the region shares (so a filter never
//! hides an instance some policy could select).

use std::collections::BTreeMap;

use crate::ecs::client::{DescribeFilter, EcsClient};
use crate::ecs::{EcsError, Instance};
use crate::policy::Policy;

/// Instances by region.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub regions: BTreeMap<String, Vec<Instance>>,
}

impl Inventory {
    /// Every instance, region by region.
    pub fn all(&self) -> Vec<Instance> {
        self.regions.values().flatten().cloned().collect()
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

/// Fetches every region any of `policies` names, once each.
pub async fn fetch(client: &EcsClient, policies: &[Policy]) -> Result<Inventory, EcsError> {
    let mut regions: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    for p in policies {
        for r in &p.regions {
            regions.entry(r.as_str()).or_default().push(p);
        }
    }
    let mut inv = Inventory::default();
    for (region, ps) in regions {
        let filter = shared_filter(ps);
        let instances = client.describe_instances(region, &filter).await?;
        tracing::debug!(
            region,
            count = instances.len(),
            ?filter,
            "inventory fetched"
        );
        inv.regions.insert(region.to_string(), instances);
    }
    Ok(inv)
}
