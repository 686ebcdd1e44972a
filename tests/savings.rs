//! What each release saves, priced against the simulator's price table: every basis (running,
//! stopped KeepCharging, stopped StopCharging, an expired subscription), disks that outlive
//! their instance, a security-locked instance's disks, unknown prices (never 0, never blocking),
//! the price file winning, one price call per configuration, and the plan's text and JSON.

mod common;

use std::sync::Arc;

use chrono::Utc;
use ecs_janitor::ecs::types::{ChargeType, Disk, DiskKind, Instance, InstanceStatus};
use ecs_janitor::plan::Plan;
use ecs_janitor::pricing::{PriceConfig, PriceFile};
use ecs_janitor::sim::disks::disk_of;
use ecs_janitor::sim::{Faults, SimHandle};

const REGION: &str = "cn-hangzhou";

const POLICY: &str = r#"
name: sweep
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: sweep}
release:
  force: true
  terminate_subscription: true
  allow_security_locked: true
limits:
  max_releases_per_run: 1000
"#;

fn tagged(id: &str, status: InstanceStatus, charge: ChargeType, mode: &str) -> Instance {
    let mut i = common::inst(id, REGION, status, charge);
    i.tags.insert("purpose".into(), "sweep".into());
    i.stopped_mode = mode.into();
    if charge == ChargeType::PrePaid {
        i.expired_time = Some(Utc::now() - chrono::Duration::days(5));
    }
    i
}

/// A 40 GiB ESSD system disk (¥40.00 a month) and a 200 GiB ESSD data disk (¥200.02 a month at
/// ¥0.2740 an hour) that stays unless `data_goes`.
fn disks(i: &Instance, data_goes: bool) -> Vec<Disk> {
    vec![
        disk_of(i, 0, DiskKind::System, "cloud_essd", 40, true),
        disk_of(i, 1, DiskKind::Data, "cloud_essd", 200, data_goes),
    ]
}

fn fleet() -> Vec<Instance> {
    let mut locked = tagged(
        "i-locked",
        InstanceStatus::Stopped,
        ChargeType::PostPaid,
        "KeepCharging",
    );
    locked.lock_reasons = vec!["security".into()];
    let mut odd = tagged(
        "i-odd",
        InstanceStatus::Running,
        ChargeType::PostPaid,
        "Not-applicable",
    );
    odd.instance_type = "ecs.nonesuch.large".into();
    vec![
        tagged(
            "i-running",
            InstanceStatus::Running,
            ChargeType::PostPaid,
            "Not-applicable",
        ),
        tagged(
            "i-keep",
            InstanceStatus::Stopped,
            ChargeType::PostPaid,
            "KeepCharging",
        ),
        tagged(
            "i-stopcharging",
            InstanceStatus::Stopped,
            ChargeType::PostPaid,
            "StopCharging",
        ),
        tagged(
            "i-sub",
            InstanceStatus::Stopped,
            ChargeType::PrePaid,
            "Not-applicable",
        ),
        locked,
        odd,
    ]
}

async fn sim_with_disks() -> SimHandle {
    let h = common::start_sim(fleet(), Faults::default(), 3).await;
    for i in fleet() {
        h.sim.set_disks(&i.instance_id, disks(&i, false));
    }
    h
}

async fn plan_with(h: &SimHandle, prices: PriceConfig) -> Plan {
    plan_of(h, POLICY, prices).await
}

/// The plan of `policies` (YAML) over the simulator's fleet, priced with `prices`.
async fn plan_of(h: &SimHandle, policies: &str, prices: PriceConfig) -> Plan {
    let db = common::sqlite().await;
    let ps = common::policies(policies);
    let mut p = common::Pipeline::new(&db.store, common::client(h), ps.clone());
    p.extras.prices = prices;
    let app = p.build();
    app.reconciler.plan_only(&ps, Utc::now()).await.unwrap()
}

fn saving_of<'a>(plan: &'a Plan, id: &str) -> &'a ecs_janitor::plan::Saving {
    plan.releases()
        .find(|r| r.instance_id == id)
        .unwrap_or_else(|| panic!("{id} is planned"))
        .saving
        .as_ref()
        .unwrap_or_else(|| panic!("{id} is priced"))
}

fn cny(minor: i64) -> Option<ecs_janitor::money::Money> {
    Some(ecs_janitor::money::Money::new(minor, "CNY"))
}

// g6.large: ¥0.48 an hour, ¥350.40 a month. System disk ¥0.0548 an hour, ¥40.00 a month.
// The 200 GiB data disk ¥0.2740 an hour, ¥200.02 a month.

#[tokio::test]
async fn every_basis_is_priced_honestly() {
    let h = sim_with_disks().await;
    let plan = plan_with(&h, PriceConfig::default()).await;
    use ecs_janitor::plan::Basis;

    for id in ["i-running", "i-keep"] {
        let s = saving_of(&plan, id);
        assert_eq!(s.basis, Basis::ComputeAndDisks, "{id}");
        assert_eq!(
            s.monthly,
            cny(35_040 + 4_000),
            "{id}: compute + the system disk"
        );
        assert_eq!(s.staying_disks, 1, "{id}: the data disk outlives it");
        assert_eq!(s.staying_monthly, cny(20_002), "{id}");
    }
    let s = saving_of(&plan, "i-stopcharging");
    assert_eq!(s.basis, Basis::DisksOnly);
    assert_eq!(
        s.monthly,
        cny(4_000),
        "a StopCharging instance saves only its disks"
    );

    let s = saving_of(&plan, "i-sub");
    assert_eq!(s.basis, Basis::RenewalAvoided);
    assert_eq!(s.monthly, cny(0), "a subscription accrues no run-rate");
    // A month of renewal: 0.75 × 730 h × ¥0.48 (DescribeRenewalPrice's instanceType line), and
    // both prepaid disks at their monthly list price (¥40.00 + ¥200.02), the one that outlives
    // the instance included; after the release that disk bills pay-as-you-go.
    assert_eq!(s.renewal_avoided, cny(26_280 + 4_000 + 20_002));
    assert_eq!(
        s.staying_monthly,
        cny(20_002),
        "the kept disk becomes pay-as-you-go"
    );

    let s = saving_of(&plan, "i-locked");
    assert_eq!(
        s.monthly,
        cny(35_040 + 4_000 + 20_002),
        "every disk goes with it"
    );
    assert_eq!(s.staying_disks, 0);

    // The unknown type: unknown, never 0; and it is still planned.
    let s = saving_of(&plan, "i-odd");
    assert_eq!(s.monthly, None);
    assert!(
        s.unknown
            .iter()
            .any(|u| u.contains("InvalidInstanceType.ValueNotSupported")),
        "{:?}",
        s.unknown
    );

    let t = plan.savings();
    assert_eq!(t.unknown, 1);
    let due: Vec<_> = t.due.iter().collect();
    let expected = 2 * (35_040 + 4_000) + 4_000 + (35_040 + 4_000 + 20_002);
    assert_eq!(due, vec![ecs_janitor::money::Money::new(expected, "CNY")]);
}

#[tokio::test]
async fn a_region_of_several_pages_of_disks_is_listed_as_system_and_data_disks_side_by_side() {
    // 600 running instances with two disks each: 1,200 disks, three pages of 500 in one
    // listing. Listed as 600 system and 600 data disks, two pages each: one call more than the
    // single listing, and the two listings no longer wait for each other's pages.
    let f: Vec<Instance> = (0..600)
        .map(|n| {
            tagged(
                &format!("i-{n:03}"),
                InstanceStatus::Running,
                ChargeType::PostPaid,
                "",
            )
        })
        .collect();
    let h = common::start_sim(f.clone(), Faults::default(), 3).await;
    for i in &f {
        h.sim.set_disks(&i.instance_id, disks(i, true));
    }
    let plan = plan_with(&h, PriceConfig::default()).await;
    assert_eq!(plan.releases().count(), 600);
    let disk_calls = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == "DescribeDisks")
        .count();
    assert_eq!(
        disk_calls, 5,
        "the region's disks counted (the pass listed through a tag filter, so it may have seen \
         only some of the region), then two pages of system disks and two of data disks"
    );
    // Every release was priced from both of its disks.
    for r in plan.releases() {
        let s = r.saving.as_ref().expect("priced");
        assert!(s.monthly.is_some(), "{}: {:?}", r.instance_id, s.unknown);
        assert_eq!(
            s.lines
                .iter()
                .filter(|l| l.resource.ends_with("_disk"))
                .count(),
            2,
            "{}",
            r.instance_id
        );
    }
}

#[tokio::test]
async fn a_long_listing_of_disks_is_split_by_creation_time_and_keeps_each_disk_once() {
    // 10,000 instances with two disks each, created ten a minute over 1,000 minutes (at :00,
    // :06, ... :54): twenty pages of system disks and twenty of data disks, each a chain of
    // pages that wait for one another. Split at the instances' third and sixth creation
    // deciles, each kind is read in three chains of six to nine pages side by side; the disks
    // of a minute two ranges share come in both and are kept once.
    let h = created_over_time(10_000, |_| true).await;
    let unlimited = POLICY.replace("max_releases_per_run: 1000", "max_releases_per_run: 10000");
    let plan = plan_of(&h, &unlimited, PriceConfig::default()).await;
    assert_eq!(plan.releases().count(), 10_000);
    for r in plan.releases() {
        let s = r.saving.as_ref().expect("priced");
        assert!(s.monthly.is_some(), "{}: {:?}", r.instance_id, s.unknown);
        let disk_lines = s.lines.iter().filter(|l| l.resource.ends_with("_disk"));
        assert_eq!(disk_lines.count(), 2, "{}: each disk once", r.instance_id);
    }
    // The chains: each (kind, range) and how many pages it took.
    let calls = h.sim.calls();
    let listing: Vec<_> = calls
        .iter()
        .filter(|c| c.action == "DescribeDisks" && c.by_cursor)
        .collect();
    let mut chains: std::collections::BTreeMap<&[(String, String)], usize> = Default::default();
    for c in &listing {
        *chains.entry(c.disk_filters.as_slice()).or_default() += 1;
    }
    assert_eq!(
        chains.len(),
        6,
        "two kinds in three ranges each: {chains:?}"
    );
    // The minutes of the 3,000th and 6,000th instances (deciles 3 and 6).
    let cuts = ["2026-03-01T04:59Z", "2026-03-01T09:59Z"];
    for kind in ["system", "data"] {
        let ranges: Vec<_> = chains
            .keys()
            .filter(|f| f.contains(&("DiskType".to_string(), kind.to_string())))
            .collect();
        assert_eq!(ranges.len(), 3, "{kind}: {ranges:?}");
        for cut in cuts {
            assert!(
                ranges
                    .iter()
                    .any(|f| f.contains(&("Filter.1.Value".to_string(), cut.to_string()))),
                "{kind}: a range starts at {cut}: {ranges:?}"
            );
        }
    }
    let longest = chains.values().max().copied().unwrap_or(0);
    assert!(
        longest <= 9,
        "the longest chain {longest} pages (the last range holds four tenths), against 20 unsplit"
    );
    // One count, then at most one page more a range than the forty a listing needs.
    let all = calls.iter().filter(|c| c.action == "DescribeDisks").count();
    assert!(all <= 1 + 40 + 3, "{all} DescribeDisks calls");
}

/// A simulator of `n` running instances `i-00000`.. with a system and a data disk each, created
/// ten a minute from 2026-03-01T00:00Z (at :00, :06, ... :54); those `tag(n)` chooses tagged
/// for the sweep.
async fn created_over_time(n: i64, tag: impl Fn(i64) -> bool) -> SimHandle {
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let f: Vec<Instance> = (0..n)
        .map(|k| {
            let mut i = tagged(
                &format!("i-{k:05}"),
                InstanceStatus::Running,
                ChargeType::PostPaid,
                "",
            );
            i.creation_time = Some(start + chrono::Duration::seconds(60 * (k / 10) + 6 * (k % 10)));
            if !tag(k) {
                i.tags.clear();
            }
            i
        })
        .collect();
    let h = common::start_sim(f.clone(), Faults::default(), 3).await;
    for i in &f {
        h.sim.set_disks(&i.instance_id, disks(i, true));
    }
    h
}

#[tokio::test]
async fn a_region_its_count_shows_long_is_listed_split_by_creation_time_from_its_first_page() {
    // 300 of 10,000 instances tagged for the sweep: the pass lists the 300, and estimates 600
    // disks, a page of each kind. The region's count, asked first, says 20,000: the listing
    // starts in three time ranges a kind (cut at the 300's deciles), and no page is asked for
    // twice (listed beside the count, as an earlier version did, its first pages were lost).
    let h = created_over_time(10_000, |k| k % 33 == 0).await;
    let plan = plan_with(&h, PriceConfig::default()).await;
    assert_eq!(plan.releases().count(), 304);
    for r in plan.releases() {
        let s = r.saving.as_ref().expect("priced");
        let disk_lines = s.lines.iter().filter(|l| l.resource.ends_with("_disk"));
        assert_eq!(disk_lines.count(), 2, "{}", r.instance_id);
    }
    let calls = h.sim.calls();
    let listing: Vec<_> = calls
        .iter()
        .filter(|c| c.action == "DescribeDisks" && c.by_cursor)
        .collect();
    let ranged = listing
        .iter()
        .filter(|c| c.disk_filters.iter().any(|(k, _)| k.starts_with("Filter.")))
        .count();
    assert_eq!(ranged, listing.len(), "every page in a range");
    // At most a page more a range (its last page part full) than the forty of one listing.
    assert!((40..=46).contains(&ranged), "{ranged} pages in ranges");
    assert_eq!(
        count(&h, "DescribeDisks"),
        1 + ranged,
        "the count, then the ranges"
    );
}

#[tokio::test]
async fn a_few_releases_in_a_large_region_listed_through_a_filter_are_read_one_at_a_time() {
    // 5,000 instances, ten of them tagged for the sweep: the pass lists the ten (a tag filter),
    // but the region holds 10,000 disks, twenty pages. Counted first (one call), the ten are
    // read one at a time: 11 calls instead of the region's 20 pages.
    let f: Vec<Instance> = (0..5000)
        .map(|n| {
            let mut i = tagged(
                &format!("i-{n:04}"),
                InstanceStatus::Running,
                ChargeType::PostPaid,
                "",
            );
            if n % 500 != 0 {
                i.tags.clear();
            }
            i
        })
        .collect();
    let h = common::start_sim(f.clone(), Faults::default(), 3).await;
    for i in &f {
        h.sim.set_disks(&i.instance_id, disks(i, true));
    }
    let plan = plan_with(&h, PriceConfig::default()).await;
    assert_eq!(plan.releases().count(), 10);
    assert_eq!(count(&h, "DescribeDisks"), 11, "one count, ten reads");
    for r in plan.releases() {
        let s = r.saving.as_ref().expect("priced");
        assert!(s.monthly.is_some(), "{}: {:?}", r.instance_id, s.unknown);
    }
}

/// `n` stopped pay-as-you-go instances that stop charging when stopped (their saving is their
/// disks alone: no instance-type lookup), with a 40 GiB system disk and a 200 GiB data disk.
fn disks_only(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            tagged(
                &format!("i-{k:05}"),
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
                "StopCharging",
            )
        })
        .collect()
}

/// A simulator of `f` answering every call after `ms` milliseconds.
async fn slow_sim(f: &[Instance], ms: u64) -> SimHandle {
    let faults = Faults {
        latency: std::time::Duration::from_millis(ms),
        ..Faults::default()
    };
    common::start_sim(f.to_vec(), faults, 3).await
}

#[tokio::test]
async fn a_disk_configuration_is_priced_while_later_pages_of_disks_are_still_listed() {
    // 700 releases with a system disk and two data disks each: two pages of system disks and
    // three of data disks, each page waiting for the one before. Their two disk configurations
    // are asked for as soon as the first pages show them, not after the last page.
    let f = disks_only(700);
    let h = slow_sim(&f, 50).await;
    for i in &f {
        let mut ds = disks(i, true);
        ds.push(disk_of(i, 2, DiskKind::Data, "cloud_essd", 200, true));
        h.sim.set_disks(&i.instance_id, ds);
    }
    let plan = plan_with(&h, PriceConfig::default()).await;
    assert_eq!(plan.releases().count(), 700);
    assert!(plan
        .releases()
        .all(|r| r.saving.as_ref().unwrap().monthly.is_some()));
    let calls = h.sim.calls();
    let at = |action: &str| {
        calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.action == action)
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    let (prices, pages) = (at("DescribePrice"), at("DescribeDisks"));
    assert_eq!(prices.len(), 2, "one lookup per disk configuration");
    assert_eq!(
        pages.len(),
        6,
        "the count, two pages of system disks, three of data disks"
    );
    assert!(
        prices[0] < pages[pages.len() - 1],
        "a disk price was asked before the last page of disks (calls in order: {:?})",
        calls.iter().map(|c| c.action.as_str()).collect::<Vec<_>>()
    );
}

/// The disks of `ids`, read as pricing reads a region the pass listed through a filter that
/// let only them through; with the calls made.
async fn read_filtered_region(
    h: &SimHandle,
    ids: &[&str],
) -> (ecs_janitor::pricing::disks::InstanceDisks, usize) {
    let listed = ecs_janitor::inventory::Listed {
        instances: ids.len(),
        complete: false,
        created: None,
    };
    let slots = tokio::sync::Semaphore::new(ecs_janitor::pricing::IN_FLIGHT_PER_REGION);
    let (got, calls, failures) = ecs_janitor::pricing::disks::region_disks(
        &common::client(h),
        REGION,
        ids,
        Some(&listed),
        &slots,
        &|_, _| {},
    )
    .await;
    assert!(failures.is_empty(), "{failures:?}");
    (got, calls)
}

#[tokio::test]
async fn a_region_with_many_releases_is_counted_before_its_listing_starts() {
    // 600 releases in a region the pass listed through a filter: counted first, then its two
    // kinds of disks listed side by side.
    let f = disks_only(600);
    let h = slow_sim(&f, 50).await;
    for i in &f {
        h.sim.set_disks(&i.instance_id, disks(i, true));
    }
    let ids: Vec<&str> = f.iter().map(|i| i.instance_id.as_str()).collect();
    let (got, calls) = read_filtered_region(&h, &ids).await;
    assert_eq!(calls, 5, "the count, then two pages of each kind");
    assert_eq!(count(&h, "DescribeDisks"), 5);
    assert!(got
        .iter()
        .all(|(_, d)| d.as_ref().is_ok_and(|d| d.len() == 2)));
    let calls = h.sim.calls();
    assert!(
        !calls[0].by_cursor,
        "the count (paged by number) comes first"
    );
    assert!(calls[1..].iter().all(|c| c.by_cursor));
    let peak = h.sim.take_peak_in_flight();
    assert_eq!(
        peak, 2,
        "the two listings in flight together, not the count with them"
    );
}

#[tokio::test]
async fn a_count_that_shows_one_call_a_release_is_fewer_reads_each_release_alone() {
    // 64,000 instances in the region, 251 of them released: the region's disks take more
    // pages than there are releases, so after the count each release's disks are read alone,
    // and no page of the region's listing is asked for.
    let f: Vec<Instance> = (0..64_000)
        .map(|k| {
            common::inst(
                &format!("i-{k:05}"),
                REGION,
                InstanceStatus::Running,
                ChargeType::PostPaid,
            )
        })
        .collect();
    // Answers after a round trip: the count's answer, not how fast each is computed, decides
    // how many pages the listing asks for before it stops.
    let h = slow_sim(&f, 20).await;
    let total = h.sim.disks().len();
    let ids: Vec<&str> = f.iter().take(251).map(|i| i.instance_id.as_str()).collect();
    assert!(
        ecs_janitor::pricing::disks::listing_pages(total) >= ids.len(),
        "the region's {total} disks take more pages than there are releases"
    );
    let (got, calls) = read_filtered_region(&h, &ids).await;
    // Paged by cursor: the reads one instance at a time, and no listing.
    let by_cursor = h.sim.calls().iter().filter(|c| c.by_cursor).count();
    assert_eq!(by_cursor, 251, "one read a release");
    assert_eq!(calls, 1 + 251, "the count, one read a release");
    assert_eq!(count(&h, "DescribeDisks"), calls);
    let sim_disks = h.sim.disks();
    for (id, d) in &got {
        let want = sim_disks.iter().filter(|s| &s.instance_id == id).count();
        assert_eq!(d.as_ref().map(Vec::len), Ok(want), "{id}");
    }
}

#[tokio::test]
async fn each_configuration_is_priced_once() {
    // Twenty identical running instances and one of another type.
    let mut f: Vec<Instance> = (0..20)
        .map(|n| {
            tagged(
                &format!("i-{n:02}"),
                InstanceStatus::Running,
                ChargeType::PostPaid,
                "",
            )
        })
        .collect();
    let mut other = tagged("i-c7", InstanceStatus::Running, ChargeType::PostPaid, "");
    other.instance_type = "ecs.c7.large".into();
    f.push(other);
    let h = common::start_sim(f.clone(), Faults::default(), 3).await;
    for i in &f {
        h.sim.set_disks(&i.instance_id, disks(i, true));
    }
    let plan = plan_with(&h, PriceConfig::default()).await;
    assert_eq!(plan.releases().count(), 21);
    let calls = h.sim.calls();
    let prices = calls.iter().filter(|c| c.action == "DescribePrice").count();
    // Two instance types and two disk configurations (40 GiB and 200 GiB ESSD).
    assert_eq!(prices, 4, "one DescribePrice per configuration");
    let disks = calls.iter().filter(|c| c.action == "DescribeDisks").count();
    assert_eq!(
        disks, 1,
        "21 releases in a 21-instance region: the count's page holds all 42 disks"
    );
    assert!(plan
        .releases()
        .all(|r| r.saving.as_ref().unwrap().monthly.is_some()));
}

#[tokio::test]
async fn the_price_file_wins_and_says_so() {
    let h = sim_with_disks().await;
    let file = PriceFile::parse(
        std::path::Path::new("prices.yaml"),
        "currency: CNY\nregions:\n  cn-hangzhou:\n    instance_types:\n      ecs.g6.large: 100\n      ecs.nonesuch.large: 50\n    disks_per_gb:\n      cloud_essd: 0.5\n",
    )
    .unwrap();
    let plan = plan_with(
        &h,
        PriceConfig {
            file: Some(Arc::new(file)),
            ..PriceConfig::default()
        },
    )
    .await;
    let s = saving_of(&plan, "i-running");
    // ¥100 + 40 GiB × ¥0.50.
    assert_eq!(s.monthly, cny(10_000 + 2_000));
    assert_eq!(s.sources(), vec![ecs_janitor::plan::Source::PriceFile]);
    // The type ECS does not sell is priced from the file.
    assert_eq!(saving_of(&plan, "i-odd").monthly, cny(5_000 + 2_000));
    // Only the renewal (which the file does not give) was asked of ECS.
    let asked: Vec<String> = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action.contains("Price"))
        .map(|c| c.action.clone())
        .collect();
    assert_eq!(asked, vec!["DescribeRenewalPrice"]);
}

#[tokio::test]
async fn a_refused_price_call_leaves_figures_unknown_and_the_plan_whole() {
    let h = sim_with_disks().await;
    // An account that may not call DescribePrice.
    for _ in 0..10 {
        h.sim.script(ecs_janitor::sim::ScriptStep {
            action: "DescribePrice".into(),
            answer: ecs_janitor::sim::Scripted::Error {
                status: 403,
                code: "Forbidden.RAM".into(),
            },
            instance_id: None,
        });
    }
    let plan = plan_with(&h, PriceConfig::default()).await;
    assert_eq!(
        plan.releases().count(),
        6,
        "pricing never removes a release"
    );
    let s = saving_of(&plan, "i-running");
    assert_eq!(s.monthly, None);
    assert!(
        s.unknown.iter().any(|u| u.contains("Forbidden.RAM")),
        "{:?}",
        s.unknown
    );
    let text = ecs_janitor::plan::render_text(&plan, false);
    assert!(text.contains("saves: unknown"), "{text}");
    assert!(!text.contains("saves ≈ ¥0.00/month (compute"), "{text}");
}

#[tokio::test]
async fn the_text_and_json_carry_the_figures() {
    let h = sim_with_disks().await;
    let plan = plan_with(&h, PriceConfig::default()).await;
    let text = ecs_janitor::plan::render_text(&plan, false);
    for want in [
        "ecs.g6.large, Running, PostPaid, 30d old",
        "ecs.g6.large, Stopped (StopCharging), PostPaid, 30d old",
        "saves ≈ ¥390.40/month (compute + disks; list price from describe_price)",
        "saves ≈ ¥40.00/month (disks only: stopped in StopCharging mode;",
        "renewal avoided ≈ ¥502.82/month",
        "! 1 disk stays and keeps billing ≈ ¥200.02/month (DeleteWithInstance=false)",
        "subtotal: 6 to release, ≈ ¥1,411/month saved (1 unknown)",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let last = text.lines().last().unwrap();
    assert_eq!(
        last,
        "Plan: 6 to release, ≈ ¥1,411/month saved (1 unknown), 0 skipped, 0 policies refused."
    );
    let summary = ecs_janitor::plan::render_text_with(
        &plan,
        &ecs_janitor::plan::TextOptions {
            summary: true,
            ..Default::default()
        },
    );
    assert!(
        summary.starts_with("sweep: 6 to release, ≈ ¥1,411/month saved (1 unknown)"),
        "{summary}"
    );

    let json = ecs_janitor::plan::render_json(&plan);
    let r = json["policies"][0]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance_id"] == "i-running")
        .unwrap();
    assert_eq!(r["instance_type"], "ecs.g6.large");
    assert_eq!(r["status"], "Running");
    assert_eq!(r["charge_type"], "PostPaid");
    let s = &r["saving"];
    assert_eq!(s["basis"], "compute_and_disks");
    assert_eq!(
        s["monthly"],
        serde_json::json!({"amount": "390.40", "currency": "CNY"})
    );
    assert_eq!(s["sources"], serde_json::json!(["describe_price"]));
    assert_eq!(s["staying"]["disks"], 1);
    assert_eq!(s["staying"]["monthly"]["amount"], "200.02");
    assert_eq!(s["hours_per_month"], 730);
    let lines = s["resources"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["resource"], "instance_type");
    assert_eq!(lines[0]["monthly"]["amount"], "350.40");
    assert_eq!(lines[2]["released"], false);
    let total = &json["summary"]["savings"];
    assert_eq!(
        total["monthly_due"],
        serde_json::json!([{"amount": "1411.22", "currency": "CNY"}])
    );
    assert_eq!(total["unknown"], 1);
    let odd = json["policies"][0]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance_id"] == "i-odd")
        .unwrap();
    assert!(
        odd["saving"]["monthly"].is_null(),
        "unknown is null, never 0"
    );
}

#[tokio::test]
async fn apply_keeps_the_figure_each_release_went_with_and_sums_it() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let ps = common::policies(POLICY);
    let p = common::Pipeline::new(&db.store, common::client(&h), ps);
    let app = p.build();
    let report = app
        .apply(
            None,
            &Default::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(h.sim.releases().len(), 6);
    let rows = db.store.list_releases(&Default::default()).await.unwrap();
    let saving = |id: &str| {
        rows.iter()
            .find(|r| r.instance_id == id)
            .and_then(|r| r.saving.clone())
            .unwrap()
    };
    assert_eq!(saving("i-running").monthly, cny(39_040));
    assert_eq!(saving("i-odd").monthly, None, "unknown stays unknown");
    assert_eq!(saving("i-sub").basis, "renewal_avoided");
    assert_eq!(saving("i-sub").renewal_avoided, cny(50_282));
    let text = report.render(Utc::now());
    assert!(text.contains("; saves ≈ ¥390.40/month"), "{text}");
    // A subscription's release saves no run rate: what it spares is its renewal, said so.
    assert!(
        text.contains("; saves ≈ ¥0.00/month, renewal avoided ≈ ¥502.82/month"),
        "{text}"
    );
    assert!(
        text.contains(
            "Released 6 instances, ≈ ¥1,411/month saved at list prices (1 unknown); renewal avoided ≈ ¥503/month."
        ),
        "{text}"
    );
    // The disks set to outlive their instance are still there, pay-as-you-go; the
    // security-locked instance's went with it.
    let left: Vec<String> = h.sim.disks().into_iter().map(|d| d.disk_id).collect();
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(!left.iter().any(|d| d.contains("locked")), "{left:?}");
    let sum = db.store.savings_summary(Utc::now()).await.unwrap();
    assert_eq!(
        sum.since_start.iter().collect::<Vec<_>>(),
        vec![ecs_janitor::money::Money::new(141_122, "CNY")]
    );
}

/// Eight running instances of eight types in one region, each with a system disk and a data
/// disk that go with it.
fn eight_types() -> Vec<Instance> {
    [
        "ecs.g6.large",
        "ecs.g6.xlarge",
        "ecs.g6.2xlarge",
        "ecs.c7.large",
        "ecs.c7.xlarge",
        "ecs.r7.large",
        "ecs.r7.xlarge",
        "ecs.r7.2xlarge",
    ]
    .iter()
    .enumerate()
    .map(|(n, ty)| {
        let mut i = tagged(
            &format!("i-t{n}"),
            InstanceStatus::Running,
            ChargeType::PostPaid,
            "",
        );
        i.instance_type = ty.to_string();
        i
    })
    .collect()
}

#[tokio::test]
async fn price_calls_go_several_at_once_through_the_clients_own_pacing() {
    let f = eight_types();
    let faults = Faults {
        latency: std::time::Duration::from_millis(50),
        ..Faults::default()
    };
    let h = common::start_sim(f.clone(), faults, 3).await;
    for i in &f {
        h.sim.set_disks(&i.instance_id, disks(i, true));
    }
    let db = common::sqlite().await;
    let ps = common::policies(POLICY);
    let client = common::client(&h);
    let app = common::Pipeline::new(&db.store, client.clone(), ps.clone()).build();
    // The listing is one page: the peak counted from here on is pricing's.
    let plan = app.reconciler.plan_only(&ps, Utc::now()).await.unwrap();
    assert!(plan
        .releases()
        .all(|r| r.saving.as_ref().unwrap().monthly.is_some()));
    let peak = h.sim.take_peak_in_flight();
    // Eight instance types and two disk sizes: ten DescribePrice calls, not one at a time, and
    // never more than pricing's bound per region.
    assert!(
        peak > 2,
        "pricing's calls overlap (peak {peak} in flight at once)"
    );
    assert!(
        peak <= ecs_janitor::pricing::IN_FLIGHT_PER_REGION,
        "pricing keeps a few calls in flight per region, not all of them (peak {peak})"
    );
    // Every call went through the account's client and its pacing per (region, API).
    for action in ["DescribePrice", "DescribeDisks"] {
        assert!(
            client.pacer().state(REGION, action).is_some(),
            "{action} is paced by the client"
        );
    }
}

fn count(h: &SimHandle, action: &str) -> usize {
    h.sim.calls().iter().filter(|c| c.action == action).count()
}

#[tokio::test]
async fn a_second_pass_asks_no_price_already_known() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let ps = common::policies(POLICY);
    let app = common::Pipeline::new(&db.store, common::client(&h), ps.clone()).build();
    let first = app.reconciler.plan_only(&ps, Utc::now()).await.unwrap();
    let (prices, renewals) = (
        count(&h, "DescribePrice"),
        count(&h, "DescribeRenewalPrice"),
    );
    // g6.large, the type ECS does not sell, and two disk sizes; one renewal.
    assert_eq!((prices, renewals), (4, 1));
    let second = app.reconciler.plan_only(&ps, Utc::now()).await.unwrap();
    assert_eq!(
        count(&h, "DescribePrice"),
        prices + 1,
        "only the lookup that failed (the type ECS does not sell) is asked again"
    );
    assert_eq!(count(&h, "DescribeRenewalPrice"), renewals);
    let figures = |p: &Plan| -> Vec<_> {
        p.releases()
            .map(|r| r.saving.clone().unwrap().monthly)
            .collect()
    };
    assert_eq!(
        figures(&first),
        figures(&second),
        "the same figures, cached"
    );
}

const GRACE_POLICY: &str = r#"
name: sweep
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: sweep}
release:
  force: true
  terminate_subscription: true
  allow_security_locked: true
  grace: 24h
limits:
  max_releases_per_run: 1000
"#;

/// A dry-run policy's releases are shown with what they would save, apart from the plan's
/// total and count, which are what will be released (found trying a plan whose dry-run policy
/// made "Plan: 56 to release, ≈ ¥28,053/month saved" of an apply that released 10).
#[tokio::test]
async fn a_dry_run_policys_releases_are_not_in_the_plans_total() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let ps = common::policies(&POLICY.replace("name: sweep\n", "name: sweep\ndry_run: true\n"));
    let app = common::Pipeline::new(&db.store, common::client(&h), ps.clone()).build();
    let plan = app.reconciler.plan_only(&ps, Utc::now()).await.unwrap();
    let text = ecs_janitor::plan::render_text(&plan, false);
    for want in [
        "i-running (name-i-running) in cn-hangzhou would be released (dry run)",
        "subtotal: 6 in a dry run, ≈ ¥1,411/month if released (1 unknown)",
        "6 releases in dry runs, not in the total (≈ ¥1,411/month if released (1 unknown))",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(!text.contains("in cn-hangzhou will be released"), "{text}");
    assert!(
        text.ends_with("Plan: 0 to release, 0 skipped, 0 policies refused.\n"),
        "{text}"
    );
    let v = ecs_janitor::plan::render_json(&plan);
    assert_eq!(v["summary"]["to_release"], 0);
    assert_eq!(v["summary"]["dry_run"], 6);
    assert_eq!(
        v["summary"]["savings"]["monthly_due"],
        serde_json::json!([])
    );
    assert_eq!(
        v["summary"]["dry_run_savings"]["monthly_due"][0]["amount"],
        "1411.22"
    );
}

/// Releases waiting out their grace are counted apart in the plan's totals, in words that
/// agree with their number.
#[tokio::test]
async fn the_plan_totals_name_what_waits_out_its_grace() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let ps = common::policies(GRACE_POLICY);
    let app = common::Pipeline::new(&db.store, common::client(&h), ps.clone()).build();
    let plan = app.reconciler.plan_only(&ps, Utc::now()).await.unwrap();
    let text = ecs_janitor::plan::render_text(&plan, false);
    assert!(
        text.contains(
            "≈ ¥1,411/month more (1 unknown) from 6 releases still waiting out a grace period;"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("Plan: 0 to release, ≈ ¥0/month saved, 6 skipped, 0 policies refused.\n"),
        "{text}"
    );
}

/// A pass queues each saving's totals and lets its lines go (over a whole fleet they were the
/// bulk of its memory); a plan made for review keeps them, and both say the same.
#[tokio::test]
async fn a_pass_keeps_each_savings_totals_and_a_reviewed_plan_its_lines() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let ps = common::policies(GRACE_POLICY);
    let app = common::Pipeline::new(&db.store, common::client(&h), ps.clone()).build();
    let t0 = Utc::now();
    let reviewed = app.reconciler.plan_only(&ps, t0).await.unwrap();
    let pass = app.reconciler.pass(&ps, t0, None, t0).await.unwrap();
    assert_eq!(pass.plan.releases().count(), 6);
    for r in pass.plan.releases() {
        let s = r.saving.as_ref().expect("priced");
        let full = saving_of(&reviewed, &r.instance_id);
        assert!(s.lines.is_empty(), "{s:?}");
        assert!(!full.lines.is_empty(), "{full:?}");
        assert_eq!(
            (
                &s.monthly,
                &s.renewal_avoided,
                &s.staying_monthly,
                s.staying_disks
            ),
            (
                &full.monthly,
                &full.renewal_avoided,
                &full.staying_monthly,
                full.staying_disks
            )
        );
        assert_eq!(s.sources(), full.sources());
        assert!(!s.sources().is_empty());
    }
}

#[tokio::test]
async fn a_pass_prices_only_the_releases_it_queues() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let ps = common::policies(GRACE_POLICY);
    let app = common::Pipeline::new(&db.store, common::client(&h), ps.clone()).build();
    let t0 = Utc::now();
    let first = app.reconciler.pass(&ps, t0, None, t0).await.unwrap();
    assert_eq!(first.runs[0].enqueued, 6);
    let before = h.sim.calls().len();
    let rows = db.store.list_releases(&Default::default()).await.unwrap();
    assert!(rows.iter().all(|r| r.saving.is_some()), "{rows:?}");
    // The next tick: every release is already queued with its figure, waiting out its grace.
    let t1 = t0 + chrono::Duration::hours(1);
    let second = app.reconciler.pass(&ps, t1, None, t1).await.unwrap();
    assert_eq!(second.runs[0].enqueued, 0);
    let asked: Vec<String> = h.sim.calls()[before..]
        .iter()
        .map(|c| c.action.clone())
        .filter(|a| a != "DescribeInstances")
        .collect();
    assert!(
        asked.is_empty(),
        "nothing needed a figure, so nothing was priced: {asked:?}"
    );
    let after = db.store.list_releases(&Default::default()).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| &r.saving).collect::<Vec<_>>(),
        after.iter().map(|r| &r.saving).collect::<Vec<_>>(),
        "each keeps the figure it was queued with"
    );
}

#[tokio::test]
async fn the_released_notification_carries_each_figure_it_was_queued_with() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let (url, got) = common::receiver().await;
    let n = common::generic_notifier(url);
    let mut p = common::Pipeline::new(&db.store, common::client(&h), common::policies(POLICY));
    p.extras.notifier = Some(n.clone());
    p.build()
        .apply(
            None,
            &Default::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(
        n.flush(std::time::Duration::from_secs(10)).await,
        "delivered"
    );
    let bodies = got.lock().unwrap().clone();
    let released: Vec<&serde_json::Value> = bodies
        .iter()
        .flat_map(|b| b["events"].as_array().unwrap())
        .filter(|e| e["kind"] == "released")
        .collect();
    assert_eq!(released.len(), 1, "one batch of six: {bodies:?}");
    let text = bodies
        .iter()
        .map(|b| b["text"].as_str().unwrap())
        .collect::<String>();
    for want in [
        "sweep: 6 instances released, saving ≈ ¥1,411/month at list prices (1 unknown); renewal avoided ≈ ¥503/month",
        "- i-running (name-i-running) in cn-hangzhou at ",
        "- i-stopcharging (name-i-stopcharging) in cn-hangzhou at ",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let line = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("- {id} ")))
            .unwrap_or_else(|| panic!("{id} in:\n{text}"))
            .to_string()
    };
    for (id, want) in [
        ("i-running", "; saves ≈ ¥390.40/month"),
        ("i-stopcharging", "; saves ≈ ¥40.00/month"),
        ("i-locked", "; saves ≈ ¥590.42/month"),
        (
            "i-sub",
            "; saves ≈ ¥0.00/month, renewal avoided ≈ ¥502.82/month",
        ),
        ("i-odd", "; saving unknown"),
    ] {
        assert!(line(id).ends_with(want), "{want:?} in {}", line(id));
    }
    assert_eq!(
        released[0]["saves"]["monthly"],
        serde_json::json!([{"amount": "1411.22", "currency": "CNY"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_each_release_with_the_saving_it_was_released_with() {
    let h = sim_with_disks().await;
    let db = common::sqlite().await;
    let p = common::Pipeline::new(&db.store, common::client(&h), common::policies(POLICY));
    p.build()
        .apply(
            None,
            &Default::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    let history = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecs-janitor"))
            .arg("history")
            .args(args)
            .env("JANITOR_DATABASE_URL", &db.url)
            .env("JANITOR_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = history(&["--kind", "succeeded"]);
    let line = |id: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("{id} in:\n{text}"))
            .to_string()
    };
    for (id, want) in [
        ("i-running", "saves ≈ ¥390.40/month"),
        ("i-stopcharging", "saves ≈ ¥40.00/month"),
        (
            "i-sub",
            "saves ≈ ¥0.00/month, renewal avoided ≈ ¥502.82/month",
        ),
        ("i-odd", "saving unknown"),
    ] {
        assert!(line(id).ends_with(want), "{want:?} in {}", line(id));
    }
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&history(&["--json", "--instance", "i-running"])).unwrap();
    let succeeded = json.iter().find(|e| e["kind"] == "succeeded").unwrap();
    assert_eq!(
        succeeded["saving"],
        serde_json::json!({"basis": "compute_and_disks",
            "monthly": {"amount": "390.40", "currency": "CNY"}, "renewal_avoided": null})
    );
    let enqueued = json.iter().find(|e| e["kind"] == "enqueued").unwrap();
    assert!(
        enqueued.get("saving").is_none(),
        "only the success carries it: {enqueued}"
    );
}
