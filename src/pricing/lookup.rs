//! One price a plan needs, whichever kind it is (an instance type, a disk, a renewal): where
//! its figure comes from (the price file, else ECS: DescribePrice or DescribeRenewalPrice),
//! the one ECS call that asks for it, and where the answer goes in the [`PriceBook`].

use crate::ecs::client::PriceRequest;
use crate::ecs::{EcsClient, EcsError};
use crate::money::{self, Money};
use crate::plan::savings::{Priced, Source};
use crate::plan::PriceBook;

use super::PriceFile;

/// What is looked up (in a region of an account).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lookup {
    /// A month of an instance type, pay-as-you-go (DescribePrice).
    Instance { instance_type: String },
    /// A month of a disk, pay-as-you-go (DescribePrice).
    Disk { category: String, size_gb: u32 },
    /// A month of renewal of an instance type (DescribeRenewalPrice of one subscription of it:
    /// its instance type's line stands for every subscription of that type).
    Renewal { instance_type: String },
}

/// The ECS action a lookup calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    DescribePrice,
    DescribeRenewalPrice,
}

impl Lookup {
    pub fn action(&self) -> Action {
        match self {
            Lookup::Instance { .. } | Lookup::Disk { .. } => Action::DescribePrice,
            Lookup::Renewal { .. } => Action::DescribeRenewalPrice,
        }
    }

    /// The figure the user's price file gives, if it does.
    pub fn from_file(&self, file: &PriceFile, region: &str) -> Option<Money> {
        match self {
            Lookup::Instance { instance_type } => file.instance(region, instance_type),
            Lookup::Disk { category, size_gb } => file.disk(region, category, *size_gb),
            Lookup::Renewal { instance_type } => file.renewal(region, instance_type),
        }
    }

    /// Asks ECS for the figure with one call (the client signs, paces and retries it).
    /// `subscription` is the instance a renewal is asked for.
    pub async fn ask(
        &self,
        client: &EcsClient,
        region: &str,
        subscription: Option<&str>,
    ) -> Priced {
        let why = |e: EcsError| e.to_string();
        match self {
            Lookup::Instance { instance_type } => {
                let req = PriceRequest::Instance {
                    instance_type: instance_type.clone(),
                };
                let q = client.describe_price(region, &req).await.map_err(why)?;
                let hourly = q
                    .detail("instanceType")
                    .ok_or("DescribePrice answered no instanceType price")?;
                let m = Money::new(money::monthly_from_hourly(hourly), q.currency);
                Ok((m, Source::DescribePrice))
            }
            Lookup::Disk { category, size_gb } => {
                let req = PriceRequest::Disk {
                    category: category.clone(),
                    size_gb: *size_gb,
                };
                let q = client.describe_price(region, &req).await.map_err(why)?;
                let m = Money::new(money::monthly_from_hourly(q.original_micros), q.currency);
                Ok((m, Source::DescribePrice))
            }
            Lookup::Renewal { .. } => {
                let id = subscription.ok_or("no subscription to ask a renewal price for")?;
                let q = client
                    .describe_renewal_price(region, id)
                    .await
                    .map_err(why)?;
                let month = q
                    .detail("instanceType")
                    .ok_or("DescribeRenewalPrice answered no instanceType price")?;
                let m = Money::new(money::minor_from_micros(month), q.currency);
                Ok((m, Source::DescribeRenewalPrice))
            }
        }
    }

    /// The lookup in words, for a failure: `cn-hangzhou ecs.g6.large`, `cn-hangzhou cloud_essd
    /// 40 GiB`, `the renewal of i-… (ecs.g6.large)`.
    pub fn words(&self, region: &str, subscription: Option<&str>) -> String {
        match self {
            Lookup::Instance { instance_type } => format!("{region} {instance_type}"),
            Lookup::Disk { category, size_gb } => format!("{region} {category} {size_gb} GiB"),
            Lookup::Renewal { instance_type } => format!(
                "the renewal of {} ({instance_type})",
                subscription.unwrap_or(region)
            ),
        }
    }

    /// Puts the figure (or why there is none) in the book.
    pub fn record(&self, book: &mut PriceBook, region: &str, p: Priced) {
        match self {
            Lookup::Instance { instance_type } => book.set_instance(region, instance_type, p),
            Lookup::Disk { category, size_gb } => book.set_disk(region, category, *size_gb, p),
            Lookup::Renewal { instance_type } => book.set_renewal(region, instance_type, p),
        }
    }
}
