//! Prices a plan: each planned release's disks (`DescribeDisks`) and what releasing it saves per
//! month, from the user's price file when it has the figure, else from ECS's list prices
//! (`DescribePrice`, `DescribeRenewalPrice`).
//!
//! Every lookup is made at most once per plan: one DescribePrice per (account, region, instance
//! type) and per (account, region, disk category, size), one DescribeRenewalPrice per (account,
//! region, instance type) of the subscriptions planned: the instance type's line of one
//! subscription's renewal answer stands for every subscription of that type, and its prepaid disks
//! are added at their monthly list price (DescribePrice), so the renewal lookups do not grow with
//! the variety of disk sets. Disks are read per instance
//! when a region has few releases and by listing the region when that costs fewer calls. Calls go
//! through the ECS client (signed, retried, classified), one at a time, paced at
//! `pricing.calls_per_second`. A lookup that fails makes the figures that need it unknown; it never
//! stops the plan, and never blocks a release.
//!
//! The pure part (what a release saves, given disks and prices) is [`crate::plan::savings`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ecs::client::PriceRequest;
use crate::ecs::{Accounts, ChargeType, Disk, EcsError};
use crate::money::{self, Money};
use crate::plan::savings::{estimate, Priced, Source};
use crate::plan::{Plan, PriceBook, Saving};
use crate::policy::node::{Node, Value};

/// How a plan is priced.
#[derive(Debug, Clone, Default)]
pub struct PriceConfig {
    /// The user's prices, which win over ECS's.
    pub file: Option<Arc<PriceFile>>,
    /// Price and disk calls per second (0: unpaced).
    pub calls_per_second: u32,
    /// Do not price at all (tests of other things, and `plan --no-prices`).
    pub disabled: bool,
}

/// The user's prices (`prices.yaml`), per region: a month of each instance type, a GiB-month of
/// each disk category, and optionally a month of renewal of each instance type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceFile {
    pub path: PathBuf,
    pub currency: String,
    /// region → its prices.
    pub regions: BTreeMap<String, RegionPrices>,
}

/// One region's prices in a price file, in minor units of the file's currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionPrices {
    pub instance_types: BTreeMap<String, i64>,
    /// Per GiB-month, in hundredths of a minor unit (so ¥0.35 per GiB is 3500).
    pub disks_per_gb: BTreeMap<String, i64>,
    pub renewal: BTreeMap<String, i64>,
}

/// Why a price file cannot be used: each problem at its `file:line:col`.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct PriceFileError {
    pub problems: Vec<String>,
}

const REGION_KEYS: [&str; 3] = ["instance_types", "disks_per_gb", "renewal"];

impl PriceFile {
    /// Reads and checks a price file.
    pub fn load(path: &Path) -> Result<PriceFile, PriceFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| PriceFileError {
            problems: vec![format!(
                "{}: cannot read the price file: {e}",
                path.display()
            )],
        })?;
        PriceFile::parse(path, &text)
    }

    /// Parses the text of a price file; `path` names it in problems.
    pub fn parse(path: &Path, text: &str) -> Result<PriceFile, PriceFileError> {
        let name = path.display().to_string();
        let root: Node = serde_saphyr::from_str(text).map_err(|e| PriceFileError {
            problems: vec![format!("{name}: not YAML: {e}")],
        })?;
        let mut problems = Vec::new();
        let at = |n: &Node| format!("{name}:{}:{}", n.pos.line, n.pos.col);
        let mut out = PriceFile {
            path: path.to_path_buf(),
            ..PriceFile::default()
        };
        let Value::Map(top) = &root.value else {
            return Err(PriceFileError {
                problems: vec![format!(
                    "{}: a price file is a mapping with `currency` and `regions`, not {}",
                    at(&root),
                    root.value.kind()
                )],
            });
        };
        for (k, v) in top {
            match (&k.value, &v.value) {
                (Value::Str(key), Value::Str(c)) if key == "currency" => {
                    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                        out.currency = c.clone();
                    } else {
                        problems.push(format!(
                            "{}: currency {c:?} is not an ISO 4217 code such as CNY or USD",
                            at(v)
                        ));
                    }
                }
                (Value::Str(key), Value::Map(regions)) if key == "regions" => {
                    for (rk, rv) in regions {
                        let region = match &rk.value {
                            Value::Str(r) if crate::ecs::client::valid_region(r) => r.clone(),
                            other => {
                                problems.push(format!(
                                    "{}: {} is not a region id such as cn-hangzhou",
                                    at(rk),
                                    other.kind()
                                ));
                                continue;
                            }
                        };
                        let prices = region_prices(&name, rv, &mut problems);
                        out.regions.insert(region, prices);
                    }
                }
                (Value::Str(key), _) if key == "currency" || key == "regions" => {
                    problems.push(format!(
                        "{}: `{key}` must be {}, not {}",
                        at(v),
                        if key == "currency" {
                            "a currency code"
                        } else {
                            "a mapping of region ids"
                        },
                        v.value.kind()
                    ));
                }
                (other, _) => problems.push(format!(
                    "{}: unknown key {}; a price file has `currency` and `regions`",
                    at(k),
                    other.kind()
                )),
            }
        }
        if out.currency.is_empty() && problems.is_empty() {
            problems.push(format!(
                "{name}: `currency` is missing (the currency of every price, e.g. CNY)"
            ));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(PriceFileError { problems })
        }
    }

    fn region(&self, region: &str) -> Option<&RegionPrices> {
        self.regions.get(region)
    }

    /// A month of `instance_type` in `region`, when the file gives it.
    pub fn instance(&self, region: &str, instance_type: &str) -> Option<Money> {
        let v = *self.region(region)?.instance_types.get(instance_type)?;
        Some(Money::new(v, self.currency.clone()))
    }

    /// A month of a disk, when the file prices its category in `region`.
    pub fn disk(&self, region: &str, category: &str, size_gb: u32) -> Option<Money> {
        let per_gb = *self.region(region)?.disks_per_gb.get(category)?;
        let v = (per_gb * i64::from(size_gb) + 50) / 100;
        Some(Money::new(v, self.currency.clone()))
    }

    /// A month of renewal of `instance_type`, when the file gives it.
    pub fn renewal(&self, region: &str, instance_type: &str) -> Option<Money> {
        let v = *self.region(region)?.renewal.get(instance_type)?;
        Some(Money::new(v, self.currency.clone()))
    }
}

fn region_prices(name: &str, node: &Node, problems: &mut Vec<String>) -> RegionPrices {
    let at = |n: &Node| format!("{name}:{}:{}", n.pos.line, n.pos.col);
    let mut out = RegionPrices::default();
    let Value::Map(entries) = &node.value else {
        problems.push(format!(
            "{}: a region's prices are a mapping ({}), not {}",
            at(node),
            REGION_KEYS.join(", "),
            node.value.kind()
        ));
        return out;
    };
    for (k, v) in entries {
        let key = match &k.value {
            Value::Str(s) if REGION_KEYS.contains(&s.as_str()) => s.as_str(),
            other => {
                problems.push(format!(
                    "{}: unknown key {}; a region has {}",
                    at(k),
                    other.kind(),
                    REGION_KEYS.join(", ")
                ));
                continue;
            }
        };
        let Value::Map(items) = &v.value else {
            problems.push(format!(
                "{}: `{key}` is a mapping of names to amounts, not {}",
                at(v),
                v.value.kind()
            ));
            continue;
        };
        for (ik, iv) in items {
            let Value::Str(item) = &ik.value else {
                problems.push(format!("{}: {} is not a name", at(ik), ik.value.kind()));
                continue;
            };
            if (key == "instance_types" || key == "renewal") && !item.starts_with("ecs.") {
                problems.push(format!(
                    "{}: {item:?} is not an instance type such as ecs.g6.large",
                    at(ik)
                ));
                continue;
            }
            // Per-GiB disk prices keep two more decimals than a currency has.
            let places = if key == "disks_per_gb" { 4 } else { 2 };
            match amount(&iv.value, places) {
                Ok(a) => {
                    let map = match key {
                        "instance_types" => &mut out.instance_types,
                        "disks_per_gb" => &mut out.disks_per_gb,
                        _ => &mut out.renewal,
                    };
                    map.insert(item.clone(), a);
                }
                Err(why) => problems.push(format!("{}: {item}: {why}", at(iv))),
            }
        }
    }
    out
}

/// An amount of at most `places` decimals, in units of 10^-places, exactly: numbers are read
/// from their text, never summed as floats.
fn amount(v: &Value, places: u32) -> Result<i64, String> {
    let text = match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Str(s) => s.clone(),
        other => return Err(format!("expected an amount, found {}", other.kind())),
    };
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (!frac.is_empty() && !digits(frac)) || frac.len() > places as usize {
        return Err(format!(
            "{t:?} is not an amount of at most {places} decimals, such as 12.5"
        ));
    }
    let scale = 10_i64.pow(places);
    let w: i64 = whole.parse().map_err(|_| format!("{t:?} is too large"))?;
    let f: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<width$}", width = places as usize)
            .parse()
            .map_err(|_| format!("{t:?} is not an amount"))?
    };
    w.checked_mul(scale)
        .and_then(|x| x.checked_add(f))
        .ok_or_else(|| format!("{t:?} is too large"))
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

/// One call at a time, at most `per_second`.
struct Pacer {
    every: Option<Duration>,
    next: Option<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_second: u32) -> Pacer {
        Pacer {
            every: (per_second > 0).then(|| Duration::from_secs(1) / per_second),
            next: None,
        }
    }

    async fn wait(&mut self) {
        let Some(every) = self.every else { return };
        if let Some(at) = self.next {
            tokio::time::sleep_until(at).await;
        }
        self.next = Some(tokio::time::Instant::now() + every);
    }
}

/// A failed lookup in words: the error names the action, its code, message and RequestId.
fn why(e: &EcsError) -> String {
    e.to_string()
}

/// The disks of `ids` in `region` (of `listed` instances): read one instance at a time when that
/// costs fewer calls than listing the region (about two disks per instance, 500 a page), else
/// the region's listing, page by page. Returns each instance's disks (or why they are unknown),
/// the calls made and the failures in words.
async fn region_disks(
    client: crate::ecs::EcsClient,
    region: &str,
    ids: &[String],
    listed: usize,
    pacer: &tokio::sync::Mutex<Pacer>,
) -> (Vec<(String, Result<Vec<Disk>, String>)>, usize, Vec<String>) {
    let mut out = Vec::with_capacity(ids.len());
    let mut failures = Vec::new();
    let mut calls = 0;
    let listing_pages = (listed * 2)
        .div_ceil(crate::ecs::client::MAX_DISK_PAGE)
        .max(1);
    if ids.len() <= listing_pages {
        for id in ids {
            pacer.lock().await.wait().await;
            calls += 1;
            let got = client
                .describe_disks(region, Some(id))
                .await
                .map_err(|e| why(&e));
            if let Err(w) = &got {
                failures.push(format!("{id}: {w}"));
            }
            out.push((id.clone(), got));
        }
        return (out, calls, failures);
    }
    let mut of: HashMap<String, Vec<Disk>> = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        pacer.lock().await.wait().await;
        calls += 1;
        match client
            .describe_disks_page(region, None, token.as_deref())
            .await
        {
            Ok((page, next)) => {
                for d in page.into_iter().filter(|d| !d.instance_id.is_empty()) {
                    of.entry(d.instance_id.clone()).or_default().push(d);
                }
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            Err(e) => {
                let w = why(&e);
                failures.push(format!("{region}: {w}"));
                for id in ids {
                    out.push((id.clone(), Err(w.clone())));
                }
                return (out, calls, failures);
            }
        }
    }
    for id in ids {
        let mine = of.remove(id).unwrap_or_default();
        out.push((id.clone(), Ok(mine)));
    }
    (out, calls, failures)
}

/// Prices every planned release of `plan` in place (`PlannedRelease::saving`). `region_sizes`
/// holds how many instances each (account, region) listed, to choose how to read disks.
pub async fn price_plan(
    plan: &mut Plan,
    accounts: &Accounts,
    region_sizes: &HashMap<(String, String), usize>,
    cfg: &PriceConfig,
) -> PricingReport {
    let mut report = PricingReport::default();
    if cfg.disabled {
        return report;
    }
    let pacer = Pacer::new(cfg.calls_per_second);
    // (account, region) → the ids of its releases.
    let mut by_region: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for pp in &plan.policies {
        let account = pp.account.clone().unwrap_or_default();
        for r in &pp.releases {
            by_region
                .entry((account.clone(), r.region.clone()))
                .or_default()
                .push(r.instance_id.clone());
        }
    }
    // Disks, per instance id: every (account, region) at once, the calls paced together.
    let shared = tokio::sync::Mutex::new(pacer);
    let reads = by_region.iter().map(|((account, region), ids)| {
        let listed = region_sizes
            .get(&(account.clone(), region.clone()))
            .copied()
            .unwrap_or(ids.len());
        region_disks(accounts.client(account), region, ids, listed, &shared)
    });
    let mut disks: HashMap<String, Result<Vec<Disk>, String>> = HashMap::new();
    for (got, calls, failures) in futures::future::join_all(reads).await {
        report.describe_disks += calls;
        report.failures.extend(failures);
        disks.extend(got);
    }
    let mut pacer = shared.into_inner();

    // What each account's releases need priced.
    let mut books: HashMap<String, PriceBook> = HashMap::new();
    // (account, region, instance type) → the subscription whose renewal price stands for it.
    let mut renewal_first: BTreeMap<(&str, &str, &str), &str> = BTreeMap::new();
    let mut needs_instance: std::collections::BTreeSet<(&str, &str, &str)> = Default::default();
    let mut needs_disk: std::collections::BTreeSet<(&str, &str, &str, u32)> = Default::default();
    for pp in &plan.policies {
        let account = pp.account.as_deref().unwrap_or_default();
        for r in &pp.releases {
            let b = r.billing();
            if b.compute_billed() {
                needs_instance.insert((account, &r.region, &r.instance_type));
            }
            let Some(Ok(ds)) = disks.get(&r.instance_id) else {
                continue;
            };
            for d in ds {
                // Every disk that stays, every pay-as-you-go one, and a subscription's prepaid
                // ones (renewed with it) are priced.
                let released = b.releases(d);
                if !released
                    || d.charge_type == ChargeType::PostPaid
                    || r.charge_type == ChargeType::PrePaid
                {
                    needs_disk.insert((account, &r.region, &d.category, d.size_gb));
                }
            }
            if r.charge_type == ChargeType::PrePaid {
                renewal_first
                    .entry((account, &r.region, &r.instance_type))
                    .or_insert(&r.instance_id);
            }
        }
    }
    let file = cfg.file.as_deref();
    for (account, region, ty) in needs_instance {
        let priced: Priced = match file.and_then(|f| f.instance(region, ty)) {
            Some(m) => Ok((m, Source::PriceFile)),
            None => {
                pacer.wait().await;
                report.describe_price += 1;
                let q = accounts
                    .client(account)
                    .describe_price(
                        region,
                        &PriceRequest::Instance {
                            instance_type: ty.to_string(),
                        },
                    )
                    .await;
                match q {
                    Ok(q) => match q.detail("instanceType") {
                        Some(h) => Ok((
                            Money::new(money::monthly_from_hourly(h), q.currency),
                            Source::DescribePrice,
                        )),
                        None => Err("DescribePrice answered no instanceType price".to_string()),
                    },
                    Err(e) => Err(why(&e)),
                }
            }
        };
        if let Err(w) = &priced {
            report.failures.push(format!("{region} {ty}: {w}"));
        }
        books
            .entry(account.to_string())
            .or_default()
            .set_instance(region, ty, priced);
    }
    for (account, region, category, size) in needs_disk {
        let priced: Priced = match file.and_then(|f| f.disk(region, category, size)) {
            Some(m) => Ok((m, Source::PriceFile)),
            None => {
                pacer.wait().await;
                report.describe_price += 1;
                let q = accounts
                    .client(account)
                    .describe_price(
                        region,
                        &PriceRequest::Disk {
                            category: category.to_string(),
                            size_gb: size,
                        },
                    )
                    .await;
                match q {
                    Ok(q) => Ok((
                        Money::new(money::monthly_from_hourly(q.original_micros), q.currency),
                        Source::DescribePrice,
                    )),
                    Err(e) => Err(why(&e)),
                }
            }
        };
        if let Err(w) = &priced {
            report
                .failures
                .push(format!("{region} {category} {size} GiB: {w}"));
        }
        books
            .entry(account.to_string())
            .or_default()
            .set_disk(region, category, size, priced);
    }
    for ((account, region, ty), first) in renewal_first {
        let priced: Priced = match file.and_then(|f| f.renewal(region, ty)) {
            Some(m) => Ok((m, Source::PriceFile)),
            None => {
                pacer.wait().await;
                report.describe_renewal_price += 1;
                match accounts
                    .client(account)
                    .describe_renewal_price(region, first)
                    .await
                {
                    Ok(q) => match q.detail("instanceType") {
                        Some(v) => Ok((
                            Money::new(money::minor_from_micros(v), q.currency),
                            Source::DescribeRenewalPrice,
                        )),
                        None => Err("DescribeRenewalPrice answered no instanceType price".into()),
                    },
                    Err(e) => Err(why(&e)),
                }
            }
        };
        if let Err(w) = &priced {
            report.failures.push(format!("{first}: {w}"));
        }
        books
            .entry(account.to_string())
            .or_default()
            .set_renewal(region, ty, priced);
    }

    for pp in &mut plan.policies {
        let account = pp.account.clone().unwrap_or_default();
        let book = books.entry(account.clone()).or_default();
        for r in &mut pp.releases {
            let b = r.billing();
            let saving = match disks.get(&r.instance_id) {
                Some(Ok(ds)) => estimate(&b, ds, book),
                Some(Err(w)) => Saving::unknown(b.basis(), format!("its disks: {w}")),
                None => Saving::unknown(b.basis(), "its disks were not read".into()),
            };
            r.saving = Some(saving);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn price_calls_are_paced() {
        let mut p = Pacer::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            p.wait().await;
        }
        // The first goes at once, each next 100 ms after the one before.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        let mut unpaced = Pacer::new(0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            unpaced.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    fn parse(text: &str) -> Result<PriceFile, PriceFileError> {
        PriceFile::parse(Path::new("prices.yaml"), text)
    }

    #[test]
    fn a_price_file_reads_exactly() {
        let f = parse(
            "currency: CNY\nregions:\n  cn-hangzhou:\n    instance_types:\n      ecs.g6.large: 300.4\n    disks_per_gb:\n      cloud_essd: 0.8125\n    renewal:\n      ecs.g6.large: '200'\n",
        )
        .unwrap();
        assert_eq!(
            f.instance("cn-hangzhou", "ecs.g6.large"),
            Some(Money::new(30_040, "CNY"))
        );
        // 0.8125 × 40 GiB = 32.50.
        assert_eq!(
            f.disk("cn-hangzhou", "cloud_essd", 40),
            Some(Money::new(3_250, "CNY"))
        );
        assert_eq!(
            f.renewal("cn-hangzhou", "ecs.g6.large"),
            Some(Money::new(20_000, "CNY"))
        );
        assert_eq!(f.instance("cn-beijing", "ecs.g6.large"), None);
    }

    #[test]
    fn a_bad_price_file_names_every_problem_at_its_line() {
        let e = parse(
            "currency: yuan\nregions:\n  cn-hangzhou:\n    instance_typs:\n      ecs.g6.large: 1\n    disks_per_gb:\n      cloud_essd: cheap\n  Bad_Region: {}\nextra: 1\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "prices.yaml:1:11: currency \"yuan\"",
            "prices.yaml:4:5: unknown key the string \"instance_typs\"",
            "prices.yaml:7:19: cloud_essd: \"cheap\" is not an amount",
            "prices.yaml:8:3:",
            "prices.yaml:9:1: unknown key",
        ] {
            assert!(e.contains(want), "{want:?} in:\n{e}");
        }
    }
}
