//! DescribePrice and DescribeRenewalPrice as ECS answers them, from a deterministic price table.
//!
//! The parameters and the answer's shape (`PriceInfo.Price.{Currency, OriginalPrice,
//! DiscountPrice, TradePrice, DetailInfos.DetailInfo[]{Resource, ...}}`, `PriceInfo.Rules`) are
//! ECS's (ECS-V2 `describe_price_request_model.go` and its response model; ../shared/ecs-more.md
//! 1.2, 1.3). The prices are the simulator's own, chosen to sit near Alibaba's published
//! China-site list prices; they are list prices, so `DiscountPrice` is 0 and `TradePrice` equals
//! `OriginalPrice`.
//!
//! # The price table (CNY; an account answering in USD pays [`USD_PER_CNY`] of these)
//!
//! | what | list price |
//! |---|---|
//! | an instance type, pay-as-you-go | ¥0.12 per vCPU-hour + ¥0.03 per GiB-hour of memory; burstable (`t`) families half that |
//! | vCPUs | `small`/`medium` 1, `large` 2, `xlarge` 4, `Nxlarge` 4·N |
//! | memory per vCPU | `c` families 2 GiB, `g` 4 GiB, `r` 8 GiB, `t…-cXmY` Y/X GiB |
//! | a disk, per GiB-month | `cloud` ¥0.30, `cloud_efficiency` ¥0.35, `cloud_ssd`, `cloud_essd`, `cloud_auto` ¥1.00 |
//! | a disk, per hour | its monthly price ÷ 730, to four decimals |
//! | region | `ap-southeast-1` costs 1.2 times the above; every other region 1.0 |
//! | a month of subscription | 0.75 of 730 pay-as-you-go hours for the instance type; disks at their monthly price |
//!
//! An instance type outside this grammar is refused with `InvalidInstanceType.ValueNotSupported`
//! and a category outside the table with `InvalidDataDiskCategory.ValueNotSupported`: the
//! simulator's stand-in for the configurations a real region does not sell (ECS's exact codes for
//! those are not documented in the facts file).

use std::collections::HashMap;

use serde_json::json;

use super::params::require_region;
use super::{api_err, ApiError, SimState};
use crate::ecs::types::{ChargeType, Disk, DiskKind};

/// What a USD-billed account pays per CNY of the table.
pub const USD_PER_CNY: f64 = 0.15;

/// The disk categories the table prices, per GiB-month in CNY.
const DISK_PER_GB_MONTH: [(&str, f64); 5] = [
    ("cloud", 0.30),
    ("cloud_efficiency", 0.35),
    ("cloud_ssd", 1.00),
    ("cloud_essd", 1.00),
    ("cloud_auto", 1.00),
];

fn region_factor(region: &str) -> f64 {
    if region == "ap-southeast-1" {
        1.2
    } else {
        1.0
    }
}

fn currency_factor(currency: &str) -> f64 {
    if currency == "USD" {
        USD_PER_CNY
    } else {
        1.0
    }
}

/// Rounded as ECS answers prices: four decimals.
fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// (vCPUs, GiB, burstable) of an instance type in the table's grammar.
fn shape(instance_type: &str) -> Option<(f64, f64, bool)> {
    let rest = instance_type.strip_prefix("ecs.")?;
    let (family, size) = rest.split_once('.')?;
    let cpus = match size {
        "small" | "medium" => 1.0,
        "large" => 2.0,
        "xlarge" => 4.0,
        s => s.strip_suffix("xlarge")?.parse::<f64>().ok()? * 4.0,
    };
    let (per_cpu, burst) = match family.chars().next()? {
        'c' => (2.0, false),
        'g' => (4.0, false),
        'r' => (8.0, false),
        't' => {
            // t6-c1m2: 1 vCPU share to 2 GiB.
            let (_, ratio) = family.split_once('-')?;
            let ratio = ratio.strip_prefix('c')?;
            let (c, m) = ratio.split_once('m')?;
            (m.parse::<f64>().ok()? / c.parse::<f64>().ok()?, true)
        }
        _ => return None,
    };
    Some((cpus, cpus * per_cpu, burst))
}

/// The pay-as-you-go hourly list price of an instance type in `region`, or `None` when the table
/// does not sell it.
pub fn instance_hourly(region: &str, instance_type: &str, currency: &str) -> Option<f64> {
    let (cpus, mem, burst) = shape(instance_type)?;
    let base = cpus * 0.12 + mem * 0.03;
    let base = if burst { base / 2.0 } else { base };
    Some(round4(
        base * region_factor(region) * currency_factor(currency),
    ))
}

/// The monthly list price of a disk of `category` and `size_gb` GiB in `region`.
pub fn disk_monthly(region: &str, category: &str, size_gb: u32, currency: &str) -> Option<f64> {
    let per_gb = DISK_PER_GB_MONTH
        .iter()
        .find(|(c, _)| *c == category)
        .map(|(_, p)| *p)?;
    Some(per_gb * f64::from(size_gb) * region_factor(region) * currency_factor(currency))
}

/// The pay-as-you-go hourly list price of a disk.
pub fn disk_hourly(region: &str, category: &str, size_gb: u32, currency: &str) -> Option<f64> {
    disk_monthly(region, category, size_gb, currency).map(|m| round4(m / 730.0))
}

/// The subscription list price of a month of an instance type.
pub fn instance_subscription_month(
    region: &str,
    instance_type: &str,
    currency: &str,
) -> Option<f64> {
    instance_hourly(region, instance_type, currency).map(|h| round4(h * 730.0 * 0.75))
}

fn price_line(resource: &str, price: f64) -> serde_json::Value {
    json!({
        "Resource": resource,
        "OriginalPrice": price,
        "DiscountPrice": 0.0,
        "TradePrice": price,
        "SubRules": {"Rule": []},
    })
}

fn answer(currency: &str, lines: Vec<(String, f64)>) -> serde_json::Value {
    let total = round4(lines.iter().map(|(_, p)| p).sum());
    let details: Vec<_> = lines.iter().map(|(r, p)| price_line(r, *p)).collect();
    json!({
        "PriceInfo": {
            "Price": {
                "Currency": currency,
                "OriginalPrice": total,
                "DiscountPrice": 0.0,
                "TradePrice": total,
                "ReservedInstanceHourPrice": 0.0,
                "DetailInfos": {"DetailInfo": details},
            },
            "Rules": {"Rule": []},
        },
    })
}

fn missing(name: &str) -> ApiError {
    api_err(
        400,
        "MissingParameter",
        format!("The input parameter \"{name}\" that is mandatory for processing this request is not supplied."),
    )
}

fn unsold_disk(category: &str) -> ApiError {
    api_err(
        400,
        "InvalidDataDiskCategory.ValueNotSupported",
        format!("The specified disk category {category:?} is not supported."),
    )
}

fn disk_param(map: &HashMap<&str, &str>, prefix: &str) -> Result<Option<(String, u32)>, ApiError> {
    let cat = map.get(format!("{prefix}.Category").as_str()).copied();
    let size = map.get(format!("{prefix}.Size").as_str()).copied();
    match (cat, size) {
        (None, None) => Ok(None),
        (Some(c), Some(s)) => {
            let size = s.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    format!("The specified parameter \"{prefix}.Size\" is not valid."),
                )
            })?;
            Ok(Some((c.to_string(), size)))
        }
        (Some(_), None) => Err(missing(&format!("{prefix}.Size"))),
        (None, Some(_)) => Err(missing(&format!("{prefix}.Category"))),
    }
}

/// How many hours one price unit is (`PriceUnit`, default `Hour`).
fn unit_hours(map: &HashMap<&str, &str>) -> Result<f64, ApiError> {
    match map.get("PriceUnit").copied().unwrap_or("Hour") {
        "Hour" => Ok(1.0),
        "Week" => Ok(168.0),
        "Month" => Ok(730.0),
        "Year" => Ok(8760.0),
        other => Err(api_err(
            400,
            "InvalidPriceUnit.ValueNotSupported",
            format!("The specified PriceUnit {other:?} is not supported."),
        )),
    }
}

/// Answers one DescribePrice: `ResourceType=instance` (default; `InstanceType`, optional
/// `SystemDisk.*` — a 40 GiB `cloud_efficiency` disk when absent — and `DataDisk.N.*`, N ≤ 16) or
/// `ResourceType=disk` (`DataDisk.1.*`), priced per `PriceUnit` times `Amount`.
pub(super) fn describe_price(
    st: &SimState,
    currency: &str,
    map: &HashMap<&str, &str>,
) -> Result<serde_json::Value, ApiError> {
    let (_, _) = require_region(st, map)?;
    let region = map.get("RegionId").copied().unwrap_or_default();
    let hours = unit_hours(map)?;
    let amount = match map.get("Amount") {
        None => 1.0,
        Some(a) => a
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .map(f64::from)
            .ok_or_else(|| {
                api_err(
                    400,
                    "InvalidAmount.ValueNotSupported",
                    "Amount must be 1 to 1000.",
                )
            })?,
    };
    let scale = |hourly: f64| round4(hourly * hours * amount);
    let disk_line = |(category, size): (String, u32)| -> Result<f64, ApiError> {
        disk_hourly(region, &category, size, currency)
            .map(scale)
            .ok_or_else(|| unsold_disk(&category))
    };
    let mut data = 0.0;
    let mut any_data = false;
    for n in 1..=16 {
        if let Some(d) = disk_param(map, &format!("DataDisk.{n}"))? {
            data += disk_line(d)?;
            any_data = true;
        }
    }
    let mut lines: Vec<(String, f64)> = Vec::new();
    match map.get("ResourceType").copied().unwrap_or("instance") {
        "instance" => {
            let t = map
                .get("InstanceType")
                .copied()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| missing("InstanceType"))?;
            let hourly = instance_hourly(region, t, currency).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidInstanceType.ValueNotSupported",
                    format!("The specified InstanceType {t:?} is not supported in {region}."),
                )
            })?;
            lines.push(("instanceType".into(), scale(hourly)));
            let system = disk_param(map, "SystemDisk")?
                .unwrap_or_else(|| ("cloud_efficiency".to_string(), 40));
            lines.push(("systemDisk".into(), disk_line(system)?));
        }
        "disk" => {
            if !any_data {
                return Err(missing("DataDisk.1.Category"));
            }
        }
        other => {
            return Err(api_err(
                400,
                "InvalidResourceType.ValueNotSupported",
                format!("The simulator prices ResourceType instance and disk, not {other:?}."),
            ))
        }
    }
    if any_data {
        lines.push(("dataDisk".into(), round4(data)));
    }
    Ok(answer(currency, lines))
}

/// Answers one DescribeRenewalPrice by `account`: `ResourceId` must be a subscription instance
/// of the caller in the region; one month by default (`PriceUnit` `Month` or `Year`, `Period`
/// 1–9 or 1–3, as ../shared/ecs-more.md 1.3 says). A year is priced as ten months (undocumented
/// here; Alibaba's yearly subscriptions are discounted). The subscription disks are priced with it.
pub(super) fn describe_renewal_price(
    st: &SimState,
    account: &str,
    currency: &str,
    map: &HashMap<&str, &str>,
) -> Result<serde_json::Value, ApiError> {
    let (region, fleet) = require_region(st, map)?;
    let id = map
        .get("ResourceId")
        .copied()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("ResourceId"))?;
    let (unit, max_period) = match map.get("PriceUnit").copied().unwrap_or("Month") {
        "Month" => (1.0, 9),
        "Year" => (10.0, 3),
        other => {
            return Err(api_err(
                400,
                "InvalidPriceUnit.ValueNotSupported",
                format!("The specified PriceUnit {other:?} is not supported."),
            ))
        }
    };
    let period = match map.get("Period") {
        None => 1,
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max_period).contains(n))
            .ok_or_else(|| {
                api_err(
                    400,
                    "InvalidPeriod.ValueNotSupported",
                    format!("Period must be 1 to {max_period}."),
                )
            })?,
    };
    let inst = fleet
        .and_then(|f| f.get(id))
        .filter(|i| st.owns(account, &i.instance_id))
        .ok_or_else(|| {
            api_err(
                404,
                "InvalidInstanceId.NotFound",
                format!("The specified instance {id} does not exist."),
            )
        })?;
    if inst.charge_type != ChargeType::PrePaid {
        // Subscription only (ecs-more.md 1.3); the exact code for a pay-as-you-go instance is
        // not documented there.
        return Err(api_err(
            400,
            "InvalidInstanceChargeType.ValueNotSupported",
            format!("The instance {id} is not a subscription instance."),
        ));
    }
    let months = unit * f64::from(period);
    let instance =
        instance_subscription_month(region, &inst.instance_type, currency).ok_or_else(|| {
            api_err(
                400,
                "InvalidInstanceType.ValueNotSupported",
                format!(
                    "The instance type {:?} is not supported.",
                    inst.instance_type
                ),
            )
        })?;
    let mut lines = vec![("instanceType".to_string(), round4(instance * months))];
    let disks: Vec<&Disk> = st.disks.of(id, region);
    for (kind, name) in [
        (DiskKind::System, "systemDisk"),
        (DiskKind::Data, "dataDisk"),
    ] {
        let mut sum = 0.0;
        let mut any = false;
        for d in disks
            .iter()
            .filter(|d| d.kind == kind && d.charge_type == ChargeType::PrePaid)
        {
            sum += disk_monthly(region, &d.category, d.size_gb, currency)
                .ok_or_else(|| unsold_disk(&d.category))?;
            any = true;
        }
        if any {
            lines.push((name.to_string(), round4(sum * months)));
        }
    }
    Ok(answer(currency, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_prices_shapes_as_documented() {
        // g6.large: 2 vCPU, 8 GiB → 0.24 + 0.24.
        assert_eq!(
            instance_hourly("cn-hangzhou", "ecs.g6.large", "CNY"),
            Some(0.48)
        );
        // c7.large: 2 vCPU, 4 GiB.
        assert_eq!(
            instance_hourly("cn-hangzhou", "ecs.c7.large", "CNY"),
            Some(0.36)
        );
        // r7.2xlarge: 8 vCPU, 64 GiB.
        assert_eq!(
            instance_hourly("cn-hangzhou", "ecs.r7.2xlarge", "CNY"),
            Some(2.88)
        );
        // t6-c1m2.large: 2 vCPU, 4 GiB, burstable: half.
        assert_eq!(
            instance_hourly("cn-hangzhou", "ecs.t6-c1m2.large", "CNY"),
            Some(0.18)
        );
        assert_eq!(
            instance_hourly("ap-southeast-1", "ecs.g6.large", "CNY"),
            Some(0.576)
        );
        assert_eq!(
            instance_hourly("cn-hangzhou", "ecs.g6.large", "USD"),
            Some(0.072)
        );
        assert_eq!(instance_hourly("cn-hangzhou", "ecs.unknown", "CNY"), None);
        assert_eq!(
            disk_hourly("cn-hangzhou", "cloud_essd", 40, "CNY"),
            Some(0.0548)
        );
        assert_eq!(disk_hourly("cn-hangzhou", "floppy", 40, "CNY"), None);
    }
}
