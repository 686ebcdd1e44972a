//! What releasing one instance saves each month, honestly (pure: the disks and prices are given).
//!
//! The basis follows how ECS bills (../shared/ecs-more.md 1.1):
//!
//! - **PostPaid, Running (or any state but Stopped), or Stopped in `KeepCharging` mode:** the
//!   instance type's price plus every disk released with it ([`Basis::ComputeAndDisks`]).
//! - **PostPaid, Stopped in `StopCharging` mode:** compute is not billed while stopped, so only
//!   the disks released with it ([`Basis::DisksOnly`]).
//! - **PrePaid:** a subscription accrues nothing per hour; its run-rate saving is only its
//!   pay-as-you-go disks, and the month of renewal it avoids is a separate figure
//!   ([`Basis::RenewalAvoided`]), never added to the headline.
//!
//! A disk set to outlive its instance (`DeleteWithInstance=false`) is not saved: it stays and is
//! billed as a pay-as-you-go disk, and the estimate says so. A security-locked instance's disks
//! are all released with it, whatever that flag says. A figure that cannot be had is unknown
//! (`None`), never 0.

use std::collections::HashMap;

use crate::ecs::{ChargeType, Disk, InstanceStatus};
use crate::money::{Money, Totals};

/// Why a release saves what it saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Basis {
    ComputeAndDisks,
    DisksOnly,
    RenewalAvoided,
}

impl Basis {
    /// The JSON name.
    pub fn code(self) -> &'static str {
        match self {
            Basis::ComputeAndDisks => "compute_and_disks",
            Basis::DisksOnly => "disks_only",
            Basis::RenewalAvoided => "renewal_avoided",
        }
    }

    /// In words, for the text plan.
    pub fn words(self) -> &'static str {
        match self {
            Basis::ComputeAndDisks => "compute + disks",
            Basis::DisksOnly => "disks only: stopped in StopCharging mode",
            Basis::RenewalAvoided => "a subscription: no run-rate",
        }
    }
}

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// ECS `DescribePrice`: a list price.
    DescribePrice,
    /// ECS `DescribeRenewalPrice`: a list price.
    DescribeRenewalPrice,
    /// The user's price file (`prices`).
    PriceFile,
}

impl Source {
    pub fn code(self) -> &'static str {
        match self {
            Source::DescribePrice => "describe_price",
            Source::DescribeRenewalPrice => "describe_renewal_price",
            Source::PriceFile => "price_file",
        }
    }
}

/// A monthly price, where it came from, or why there is none.
pub type Priced = Result<(Money, Source), String>;

/// The prices an estimate may use, each looked up once per configuration. Kept by region, so a
/// lookup borrows its key (an estimate runs for every release of a plan).
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    /// region → instance type → a month of the type, pay-as-you-go.
    instance: HashMap<String, HashMap<String, Priced>>,
    /// region → disk category → GiB → a month of the disk, pay-as-you-go.
    disk: HashMap<String, HashMap<String, HashMap<u32, Priced>>>,
    /// region → instance type → a month of renewal of the type (a subscription's prepaid disks
    /// are added at their monthly list price).
    renewal: HashMap<String, HashMap<String, Priced>>,
}

impl PriceBook {
    pub fn set_instance(&mut self, region: &str, instance_type: &str, p: Priced) {
        self.instance
            .entry(region.to_string())
            .or_default()
            .insert(instance_type.to_string(), p);
    }

    pub fn set_disk(&mut self, region: &str, category: &str, size_gb: u32, p: Priced) {
        self.disk
            .entry(region.to_string())
            .or_default()
            .entry(category.to_string())
            .or_default()
            .insert(size_gb, p);
    }

    pub fn set_renewal(&mut self, region: &str, instance_type: &str, p: Priced) {
        self.renewal
            .entry(region.to_string())
            .or_default()
            .insert(instance_type.to_string(), p);
    }

    pub fn instance(&self, region: &str, instance_type: &str) -> Option<&Priced> {
        self.instance.get(region)?.get(instance_type)
    }

    pub fn disk(&self, region: &str, category: &str, size_gb: u32) -> Option<&Priced> {
        self.disk.get(region)?.get(category)?.get(&size_gb)
    }

    pub fn renewal(&self, region: &str, instance_type: &str) -> Option<&Priced> {
        self.renewal.get(region)?.get(instance_type)
    }
}

/// One resource of an estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `instance_type`, `system_disk`, `data_disk` or `renewal`.
    pub resource: &'static str,
    /// The instance type, or the disk's id.
    pub id: String,
    /// `ecs.g6.large`, `cloud_essd 40 GiB`.
    pub detail: String,
    /// Released with the instance (saved), or staying and still billed.
    pub released: bool,
    /// Counted in the run-rate saving (compute of a StopCharging instance, or a subscription's
    /// prepaid parts, are listed but not counted).
    pub counted: bool,
    pub monthly: Option<Money>,
    pub source: Option<Source>,
    /// Why the price is unknown.
    pub unknown: Option<String>,
}

/// What releasing one instance saves per month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saving {
    pub basis: Basis,
    /// The run-rate saving; `None` when any part of it is unknown.
    pub monthly: Option<Money>,
    /// Subscriptions: a month of renewal avoided (not in `monthly`).
    pub renewal_avoided: Option<Money>,
    /// Disks that stay after the release and keep billing.
    pub staying_disks: usize,
    /// What those disks cost per month (`None` when unknown or there are none).
    pub staying_monthly: Option<Money>,
    /// Each priced resource. A reconcile pass drops them once priced ([`Saving::without_lines`]):
    /// it queues totals, and a plan of a whole fleet would hold hundreds of thousands.
    pub lines: Vec<Line>,
    /// Every source a figure came from, once each, in order.
    pub sources: Vec<Source>,
    /// Why the run-rate saving is unknown, in words.
    pub unknown: Vec<String>,
}

impl Saving {
    /// Every source a figure came from, once each.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The saving without its per-resource lines: its totals, sources and unknowns stay.
    pub fn without_lines(&mut self) {
        self.lines = Vec::new();
    }

    /// A saving that cannot be estimated at all (its disks could not be listed).
    pub fn unknown(basis: Basis, why: String) -> Saving {
        Saving {
            basis,
            monthly: None,
            renewal_avoided: None,
            staying_disks: 0,
            staying_monthly: None,
            lines: Vec::new(),
            sources: Vec::new(),
            unknown: vec![why],
        }
    }
}

/// What an estimate needs to know about the instance.
#[derive(Debug, Clone, Copy)]
pub struct Billing<'a> {
    pub instance_id: &'a str,
    pub region: &'a str,
    pub instance_type: &'a str,
    pub status: InstanceStatus,
    pub stopped_mode: &'a str,
    pub charge_type: ChargeType,
    pub security_locked: bool,
}

impl Billing<'_> {
    /// The basis of the saving.
    pub fn basis(&self) -> Basis {
        match self.charge_type {
            ChargeType::PrePaid => Basis::RenewalAvoided,
            ChargeType::PostPaid
                if self.status == InstanceStatus::Stopped
                    && self.stopped_mode == "StopCharging" =>
            {
                Basis::DisksOnly
            }
            ChargeType::PostPaid => Basis::ComputeAndDisks,
        }
    }

    /// Whether the instance type's hourly price is billed now (and so saved).
    pub fn compute_billed(&self) -> bool {
        self.basis() == Basis::ComputeAndDisks
    }

    /// Whether `d` is released with the instance.
    pub fn releases(&self, d: &Disk) -> bool {
        self.releases_disk(d.delete_with_instance)
    }

    /// Whether a disk set to `delete_with_instance` (or not) is released with the instance.
    pub fn releases_disk(&self, delete_with_instance: bool) -> bool {
        self.disk_pricing().releases(delete_with_instance)
    }

    /// Which of this instance's disks its saving needs a price for.
    pub fn disk_pricing(&self) -> DiskPricing {
        DiskPricing {
            security_locked: self.security_locked,
            subscription: self.charge_type == ChargeType::PrePaid,
        }
    }
}

/// What telling which of an instance's disks need a price takes from its billing (two flags:
/// pricing keeps one per release while it reads disks).
#[derive(Debug, Clone, Copy)]
pub struct DiskPricing {
    security_locked: bool,
    subscription: bool,
}

impl DiskPricing {
    /// Whether a disk set to `delete_with_instance` (or not) is released with the instance: a
    /// security-locked instance's disks all go with it.
    pub fn releases(&self, delete_with_instance: bool) -> bool {
        delete_with_instance || self.security_locked
    }

    /// Whether the saving needs the price of a disk: every disk that stays (and bills on),
    /// every pay-as-you-go one, and a subscription's prepaid ones (renewed with it).
    pub fn needs(&self, delete_with_instance: bool, disk_charge: ChargeType) -> bool {
        !self.releases(delete_with_instance)
            || disk_charge == ChargeType::PostPaid
            || self.subscription
    }
}

/// The monthly saving of releasing `b`, with its disks `disks`, priced from `book`.
pub fn estimate(b: &Billing<'_>, disks: &[Disk], book: &PriceBook) -> Saving {
    let basis = b.basis();
    // Sized exactly: an all-matching pass keeps 100,000 of these.
    let mut lines = Vec::with_capacity(usize::from(b.compute_billed()) + disks.len());
    let line = |resource, id: String, detail, released, counted, p: Option<&Priced>| {
        let (monthly, source, unknown) = match p {
            Some(Ok((m, s))) => (Some(m.clone()), Some(*s), None),
            Some(Err(why)) => (None, None, Some(why.clone())),
            None => (None, None, Some("not priced".to_string())),
        };
        Line {
            resource,
            id,
            detail,
            released,
            counted,
            monthly,
            source,
            unknown,
        }
    };
    if b.compute_billed() {
        lines.push(line(
            "instance_type",
            b.instance_type.to_string(),
            b.instance_type.to_string(),
            true,
            true,
            book.instance(b.region, b.instance_type),
        ));
    }
    for d in disks {
        let released = b.releases(d);
        // A prepaid disk released with its subscription is part of the renewal, not of the
        // run-rate; one that stays becomes pay-as-you-go (DeleteInstance's documentation).
        let counted = released && d.charge_type == ChargeType::PostPaid;
        if released && !counted {
            continue;
        }
        let resource = match d.kind {
            crate::ecs::DiskKind::System => "system_disk",
            crate::ecs::DiskKind::Data => "data_disk",
        };
        lines.push(line(
            resource,
            d.disk_id.clone(),
            format!("{} {} GiB", d.category, d.size_gb),
            released,
            counted,
            book.disk(b.region, &d.category, d.size_gb),
        ));
    }
    let mut unknown = Vec::new();
    let mut saved = Totals::new();
    let mut staying = Totals::new();
    let mut staying_known = true;
    let mut staying_disks = 0;
    for l in &lines {
        if !l.released {
            staying_disks += 1;
        }
        match (&l.monthly, l.counted) {
            (Some(m), true) => saved.add(m),
            (Some(m), false) => staying.add(m),
            (None, true) => unknown.push(format!(
                "{} {}: {}",
                l.resource.replace('_', " "),
                l.detail,
                l.unknown.as_deref().unwrap_or("unknown")
            )),
            (None, false) => staying_known = false,
        }
    }
    let renewal_avoided = match basis {
        Basis::RenewalAvoided => renewal(b, disks, book, &mut lines),
        _ => None,
    };
    Saving {
        basis,
        monthly: if unknown.is_empty() {
            one_currency(&saved, &lines)
        } else {
            None
        },
        renewal_avoided,
        staying_disks,
        staying_monthly: if staying_known && staying_disks > 0 {
            one_currency(&staying, &lines)
        } else {
            None
        },
        sources: {
            let mut s: Vec<Source> = lines.iter().filter_map(|l| l.source).collect();
            s.sort();
            s.dedup();
            s
        },
        lines,
        unknown,
    }
}

/// A month of renewal of the subscription `b`: its instance type's renewal price, plus each of
/// its prepaid disks at its monthly list price (every one of them is renewed with it, those
/// set to outlive it included). `None` when any part is unknown.
fn renewal(
    b: &Billing<'_>,
    disks: &[Disk],
    book: &PriceBook,
    lines: &mut Vec<Line>,
) -> Option<Money> {
    let (m, source) = book.renewal(b.region, b.instance_type)?.as_ref().ok()?;
    let mut total = m.clone();
    lines.push(Line {
        resource: "renewal",
        id: b.instance_id.to_string(),
        detail: format!("{}: one month", b.instance_type),
        released: true,
        counted: false,
        monthly: Some(m.clone()),
        source: Some(*source),
        unknown: None,
    });
    for d in disks
        .iter()
        .filter(|d| d.charge_type == ChargeType::PrePaid)
    {
        let (dm, ds) = book.disk(b.region, &d.category, d.size_gb)?.as_ref().ok()?;
        if dm.currency != total.currency {
            return None;
        }
        total.minor += dm.minor;
        lines.push(Line {
            resource: "renewal",
            id: d.disk_id.clone(),
            detail: format!("{} {} GiB: one month", d.category, d.size_gb),
            released: true,
            counted: false,
            monthly: Some(dm.clone()),
            source: Some(*ds),
            unknown: None,
        });
    }
    Some(total)
}

/// The single currency sum of `t` (0 in the lines' currency when empty); `None` when an
/// instance's parts came in two currencies, which no honest sum can add.
fn one_currency(t: &Totals, lines: &[Line]) -> Option<Money> {
    let all: Vec<Money> = t.iter().collect();
    match all.len() {
        0 => {
            let currency = lines
                .iter()
                .find_map(|l| l.monthly.as_ref().map(|m| m.currency.clone()))
                .unwrap_or_else(|| "CNY".to_string());
            Some(Money::new(0, currency))
        }
        1 => all.into_iter().next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::DiskKind;

    const REGION: &str = "cn-hangzhou";

    fn disk(id: &str, kind: DiskKind, cat: &str, size: u32, dwi: bool, charge: ChargeType) -> Disk {
        Disk {
            disk_id: id.into(),
            instance_id: "i-1".into(),
            region_id: REGION.into(),
            zone_id: "cn-hangzhou-h".into(),
            category: cat.into(),
            size_gb: size,
            kind,
            delete_with_instance: dwi,
            charge_type: charge,
            status: "In_use".into(),
            creation_time: None,
        }
    }

    fn book() -> PriceBook {
        let mut b = PriceBook::default();
        let cny = |minor| Ok((Money::new(minor, "CNY"), Source::DescribePrice));
        b.set_instance(REGION, "ecs.g6.large", cny(35_040));
        b.set_disk(REGION, "cloud_essd", 40, cny(4_000));
        b.set_disk(REGION, "cloud_essd", 200, cny(20_002));
        b.set_renewal(
            REGION,
            "ecs.g6.large",
            Ok((Money::new(26_280, "CNY"), Source::DescribeRenewalPrice)),
        );
        b
    }

    fn billing(status: InstanceStatus, mode: &'static str, charge: ChargeType) -> Billing<'static> {
        Billing {
            instance_id: "i-1",
            region: REGION,
            instance_type: "ecs.g6.large",
            status,
            stopped_mode: mode,
            charge_type: charge,
            security_locked: false,
        }
    }

    fn disks(charge: ChargeType) -> Vec<Disk> {
        vec![
            disk("d-sys", DiskKind::System, "cloud_essd", 40, true, charge),
            disk("d-keep", DiskKind::Data, "cloud_essd", 200, false, charge),
        ]
    }

    #[test]
    fn running_and_keep_charging_save_compute_and_released_disks() {
        for (status, mode) in [
            (InstanceStatus::Running, "Not-applicable"),
            (InstanceStatus::Stopped, "KeepCharging"),
        ] {
            let s = estimate(
                &billing(status, mode, ChargeType::PostPaid),
                &disks(ChargeType::PostPaid),
                &book(),
            );
            assert_eq!(s.basis, Basis::ComputeAndDisks);
            // ¥350.40 compute + ¥40.00 system disk; the kept 200 GiB disk is not saved.
            assert_eq!(s.monthly, Some(Money::new(39_040, "CNY")), "{status}");
            assert_eq!(s.staying_disks, 1);
            assert_eq!(s.staying_monthly, Some(Money::new(20_002, "CNY")));
            assert_eq!(s.sources(), vec![Source::DescribePrice]);
        }
    }

    #[test]
    fn stop_charging_saves_only_the_disks() {
        let s = estimate(
            &billing(
                InstanceStatus::Stopped,
                "StopCharging",
                ChargeType::PostPaid,
            ),
            &disks(ChargeType::PostPaid),
            &book(),
        );
        assert_eq!(s.basis, Basis::DisksOnly);
        assert_eq!(s.monthly, Some(Money::new(4_000, "CNY")));
        assert!(s.lines.iter().all(|l| l.resource != "instance_type"));
    }

    #[test]
    fn a_subscription_saves_no_run_rate_and_shows_the_renewal_apart() {
        let s = estimate(
            &billing(
                InstanceStatus::Stopped,
                "Not-applicable",
                ChargeType::PrePaid,
            ),
            &disks(ChargeType::PrePaid),
            &book(),
        );
        assert_eq!(s.basis, Basis::RenewalAvoided);
        assert_eq!(s.monthly, Some(Money::new(0, "CNY")));
        // The type's month, and both prepaid disks (the one that will stay included).
        assert_eq!(
            s.renewal_avoided,
            Some(Money::new(26_280 + 4_000 + 20_002, "CNY"))
        );
        // The kept prepaid disk becomes pay-as-you-go: it stays and bills.
        assert_eq!(s.staying_monthly, Some(Money::new(20_002, "CNY")));
    }

    #[test]
    fn a_security_locked_instance_takes_every_disk_with_it() {
        let mut b = billing(
            InstanceStatus::Stopped,
            "KeepCharging",
            ChargeType::PostPaid,
        );
        b.security_locked = true;
        let s = estimate(&b, &disks(ChargeType::PostPaid), &book());
        assert_eq!(s.monthly, Some(Money::new(35_040 + 4_000 + 20_002, "CNY")));
        assert_eq!(s.staying_disks, 0);
        assert_eq!(s.staying_monthly, None);
    }

    #[test]
    fn an_unknown_price_makes_the_saving_unknown_never_zero() {
        let mut b = billing(InstanceStatus::Running, "", ChargeType::PostPaid);
        b.instance_type = "ecs.nonesuch";
        let mut book = book();
        book.set_instance(
            REGION,
            "ecs.nonesuch",
            Err("DescribePrice refused: InvalidInstanceType.ValueNotSupported".into()),
        );
        let s = estimate(&b, &disks(ChargeType::PostPaid), &book);
        assert_eq!(s.monthly, None);
        assert_eq!(s.unknown.len(), 1, "{:?}", s.unknown);
        assert!(
            s.unknown[0].contains("InvalidInstanceType"),
            "{:?}",
            s.unknown
        );
    }
}
