//! Pricing a plan of a 100,000-instance simulated fleet against the cost of listing it: the ECS
//! calls pricing makes (DescribeDisks pages, one DescribePrice per configuration, one
//! DescribeRenewalPrice per subscription configuration) beside the DescribeInstances pages of the
//! listing, and the wall time of each, at the client's own pace, against the in-process
//! simulator; then a second pricing of the same plan with the list prices kept (a later pass).
//!
//! The policy selects every instance it may release (any status, subscriptions too), so nearly
//! the whole fleet is planned and priced: the worst case for pricing.
//!
//! `cargo bench --bench pricing` measures; under `cargo test` it runs a small smoke pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecs_janitor::ecs::client::{ClientConfig, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::ecs::pace::PaceConfig;
use ecs_janitor::ecs::Accounts;
use ecs_janitor::plan::{self, EvalContext};
use ecs_janitor::pricing::{self, PriceConfig};
use ecs_janitor::sim::{self, fleet};

#[path = "support/harness.rs"]
mod harness;

const POLICY: &str = r#"
name: sweep
schedule: "0 0 * * * *"
regions: [cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]
select:
  created_before: 1h
release:
  force: true
  terminate_subscription: true
  allow_security_locked: true
limits:
  max_releases_per_run: 1000000
"#;

fn count(h: &ecs_janitor::sim::SimHandle, action: &str) -> usize {
    h.sim.calls().iter().filter(|c| c.action == action).count()
}

/// A client of `h` paced by `pace`.
fn client(h: &ecs_janitor::sim::SimHandle, pace: PaceConfig) -> EcsClient {
    let cfg = ClientConfig {
        endpoint: Some(h.endpoint()),
        pace,
        ..ClientConfig::default()
    };
    let creds = Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, sim::DEFAULT_ACCESS_KEY_SECRET);
    EcsClient::new(cfg, Arc::new(StaticProvider(creds))).expect("client")
}

async fn run(instances: usize, measuring: bool, pace: (&str, PaceConfig)) {
    let now = chrono::Utc::now();
    let h = harness::start_sim(fleet::generate(instances, 7, now), Duration::ZERO).await;
    let (paced, pace) = pace;
    let accounts = Accounts::single(client(&h, pace));
    let policies = ecs_janitor::policy::load_str("bench.yaml", POLICY)
        .expect("the policy loads")
        .policies;

    let t = Instant::now();
    let inv = ecs_janitor::inventory::fetch(&accounts, &policies)
        .await
        .expect("listing");
    let listing_s = t.elapsed().as_secs_f64();
    let listing_calls = count(&h, "DescribeInstances");

    let mut e = plan::Evaluation::new(&policies, now);
    for (_, instances) in inv.regions() {
        e.add(instances, &EvalContext::default());
    }
    let mut plan = e.finish();
    let planned = plan.releases().count();
    let sizes = inv.listed();
    let t = Instant::now();
    let cache = pricing::PriceCache::default();
    let pricer = pricing::Pricer {
        accounts: &accounts,
        config: &PriceConfig::default(),
        cache: &cache,
        lines: true,
    };
    let report = pricer.price_plan(&mut plan, &sizes, |_| true, now).await;
    let pricing_s = t.elapsed().as_secs_f64();
    let (disks, prices, renewals) = (
        count(&h, "DescribeDisks"),
        count(&h, "DescribePrice"),
        count(&h, "DescribeRenewalPrice"),
    );
    let pricing_calls = disks + prices + renewals;
    assert_eq!(
        report.calls(),
        pricing_calls,
        "the report counts what was sent"
    );
    // A later pass of the same process, pricing the same plan again: the list prices are
    // kept, so only the disks are read.
    let mut again = plan.clone();
    let t = Instant::now();
    let second = pricer.price_plan(&mut again, &sizes, |_| true, now).await;
    let second_s = t.elapsed().as_secs_f64();
    assert_eq!(
        (second.describe_price, second.describe_renewal_price),
        (0, 0),
        "a second pass asks no price already known"
    );
    assert_eq!(again, plan, "the same figures");
    let s = plan.savings();
    let priced = plan
        .releases()
        .filter(|r| r.saving.as_ref().is_some_and(|s| s.monthly.is_some()))
        .count();
    println!(
        "pricing [{paced}]: {instances} instances, {planned} planned; listing {listing_calls} DescribeInstances pages in {listing_s:.2} s; \
         pricing {pricing_calls} calls ({disks} DescribeDisks, {prices} DescribePrice, {renewals} DescribeRenewalPrice) in {pricing_s:.2} s; \
         calls {:.2}× and time {:.2}× the listing's; {priced} priced, {} unknown; ≈ {}/month; \
         a second pass with the prices kept: {} calls ({} DescribeDisks) in {second_s:.2} s",
        pricing_calls as f64 / listing_calls as f64,
        pricing_s / listing_s,
        s.unknown,
        s.due.display_whole("CNY"),
        second.calls(),
        second.describe_disks,
    );
    // At full size the listing's pages dominate; a small smoke fleet is all fixed costs (one
    // price per configuration), so only the full run holds pricing to the listing's calls.
    if measuring {
        assert!(
            pricing_calls <= listing_calls,
            "pricing costs no more calls than the listing"
        );
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let instances = if measuring { 100_000 } else { 2_000 };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            // At the client's default pace (every key starts at 50 calls per second, as
            // against ECS), then with the pace out of the way (what the two cores can do).
            run(
                instances,
                measuring,
                ("default pace", PaceConfig::default()),
            )
            .await;
            let unpaced = PaceConfig {
                start_per_second: 1e9,
                ..PaceConfig::default()
            };
            run(instances, measuring, ("unpaced", unpaced)).await;
        });
}
