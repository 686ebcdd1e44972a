//! Several accounts: a policy naming `account: NAME` lists and releases only that account's
//! instances, signed with the profile NAME maps to; batches never mix accounts; an account
//! without usable credentials is refused up front, naming the policy and the fix.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ecs_janitor::app::App;
use ecs_janitor::backoff::Backoff;
use ecs_janitor::clock::OffsetClock;
use ecs_janitor::ecs::credentials::{SharedProvider, StaticProvider};
use ecs_janitor::ecs::{Accounts, ChargeType, Credentials, Instance, InstanceStatus};
use ecs_janitor::policy::{self, Policy};
use ecs_janitor::sim::{self, fleet, Faults, SimAccount, SimConfig, SimHandle, Simulator};
use ecs_janitor::store::ReleaseFilter;
use ecs_janitor::worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");
const PROD_KEY: &str = "LTAIprodkey0001";
const PROD_SECRET: &str = "prod-secret-value-0001";

/// The same selection in both accounts: only `account:` tells them apart.
const POLICIES: &str = r#"
name: ci-default
schedule: "0 */15 * * * *"
regions: [cn-hangzhou, cn-shanghai]
select:
  charge_type: PostPaid
  status: Stopped
  tags: {purpose: ci}
limits:
  max_releases_per_run: 10000
---
name: ci-prod
account: prod
schedule: "0 */15 * * * *"
regions: [cn-hangzhou, cn-shanghai]
select:
  charge_type: PostPaid
  status: Stopped
  tags: {purpose: ci}
limits:
  max_releases_per_run: 10000
"#;

use common::policies;

/// A simulator with a second account, `prod`, owning every third instance.
async fn two_account_sim(
    fleet: Vec<Instance>,
    faults: Faults,
    seed: u64,
) -> (SimHandle, HashMap<String, String>) {
    let cfg = SimConfig {
        faults,
        seed,
        accounts: vec![SimAccount {
            name: "prod".into(),
            access_key_id: PROD_KEY.into(),
            access_key_secret: PROD_SECRET.into(),
        }],
        ..SimConfig::default()
    };
    let s = Simulator::new(cfg, fleet.clone());
    let mut owner = HashMap::new();
    for (n, i) in fleet.iter().enumerate() {
        let account = if n % 3 == 0 { "prod" } else { "" };
        s.assign(&i.instance_id, account);
        owner.insert(i.instance_id.clone(), account.to_string());
    }
    let h = s.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (h, owner)
}

/// What each policy must release, from the fleet and the ownership, without the planner.
fn expected(fleet: &[Instance], owner: &HashMap<String, String>) -> BTreeMap<String, String> {
    fleet
        .iter()
        .filter(|i| {
            ["cn-hangzhou", "cn-shanghai"].contains(&i.region_id.as_str())
                && i.charge_type == ChargeType::PostPaid
                && i.status == InstanceStatus::Stopped
                && i.tags.get("purpose").map(String::as_str) == Some("ci")
                && i.tags.get("janitor:protect").map(String::as_str) != Some("true")
                && !i.deletion_protection
                && !i.security_locked()
        })
        .map(|i| {
            let policy = if owner[&i.instance_id] == "prod" {
                "ci-prod"
            } else {
                "ci-default"
            };
            (i.instance_id.clone(), policy.to_string())
        })
        .collect()
}

/// The simulator released exactly `want`, each instance with its own account's key.
fn assert_released_by_owners(
    h: &SimHandle,
    want: &BTreeMap<String, String>,
    owner: &HashMap<String, String>,
) {
    let released: BTreeMap<String, String> = h
        .sim
        .releases()
        .into_iter()
        .map(|r| (r.instance_id, r.account))
        .collect();
    assert_eq!(
        released.keys().collect::<BTreeSet<_>>(),
        want.keys().collect::<BTreeSet<_>>()
    );
    for (id, account) in &released {
        assert_eq!(account, &owner[id], "{id} released by its owner's key");
    }
}

/// Clients for `default` and for account `prod`, which maps to profile `janitor-prod`.
fn accounts(h: &SimHandle) -> Accounts {
    let factory = Arc::new(|profile: &str| -> Result<SharedProvider, String> {
        match profile {
            "janitor-prod" => Ok(Arc::new(StaticProvider(Credentials::new(
                PROD_KEY,
                PROD_SECRET,
            )))),
            other => Err(format!("no profile {other:?}")),
        }
    });
    Accounts::new(
        common::client(h),
        BTreeMap::from([("prod".to_string(), "janitor-prod".to_string())]),
        factory,
    )
}

fn app(h: &SimHandle, db: &common::TestDb, ps: Vec<Policy>, clock: OffsetClock) -> App {
    common::Pipeline {
        accounts: accounts(h),
        cfg: WorkerConfig {
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(100)),
            max_attempts: 40,
            lease: Duration::from_secs(10),
            max_batch: 7,
            ..WorkerConfig::default()
        },
        clock: Arc::new(clock),
        ..common::Pipeline::new(&db.store, common::client(h), ps)
    }
    .build()
}

async fn releases_each_account_with_its_own_key(db: common::TestDb) {
    let fleet = fleet::generate(1500, 71, Utc::now());
    let faults = Faults {
        internal_error_rate: 0.1,
        throttle_rate: 0.05,
        drop_after_commit_rate: 0.1,
        ..Faults::default()
    };
    let (h, owner) = two_account_sim(fleet.clone(), faults, 71).await;
    let want = expected(&fleet, &owner);
    let in_prod = want.values().filter(|p| *p == "ci-prod").count();
    assert!(
        in_prod > 5 && want.len() - in_prod > 5,
        "both accounts have work"
    );

    let app = app(&h, &db, policies(POLICIES), OffsetClock::new());
    app.apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();

    // Exactly the expected set, each instance released by its own account's key.
    assert_released_by_owners(&h, &want, &owner);
    // No call ever named another account's instance (ECS would answer NotFound).
    for c in h.sim.calls() {
        assert_ne!(c.outcome, "InvalidInstanceId.NotFound", "{c:?}");
        if c.action == "DeleteInstances" {
            for id in &c.instance_ids {
                assert_eq!(
                    owner[id], c.account,
                    "{id} in a call signed by {:?}",
                    c.account
                );
            }
        }
    }
    common::assert_tokens_consistent(&h);
    // The queue says which account and policy each release belonged to.
    let rows = db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), want.len());
    for r in rows {
        assert_eq!(r.state, "succeeded", "{r:?}");
        assert_eq!(r.policy, want[&r.instance_id]);
        assert_eq!(r.account, owner[&r.instance_id]);
        assert!(r.request_id.is_some());
    }
}

#[tokio::test]
async fn each_account_is_released_with_its_own_key_sqlite() {
    releases_each_account_with_its_own_key(common::sqlite().await).await;
}

#[tokio::test]
async fn each_account_is_released_with_its_own_key_postgres() {
    if let Some(db) = common::postgres().await {
        releases_each_account_with_its_own_key(db).await;
    }
}

#[tokio::test]
async fn a_release_whose_policy_moved_to_another_account_is_cancelled_by_the_recheck() {
    let fleet = common::ci_fleet(4);
    let (h, owner) = two_account_sim(fleet, Faults::default(), 72).await;
    let yaml = r#"
name: ci-grace
account: prod
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
release:
  grace: 1h
"#;
    let db = common::sqlite().await;
    let clock = OffsetClock::new();
    let app = app(&h, &db, policies(yaml), clock.clone());
    let first = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    let queued: Vec<_> = first.in_state("pending").collect();
    let prod: Vec<&String> = owner
        .iter()
        .filter(|(_, a)| *a == "prod")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        queued.len(),
        prod.len(),
        "prod's instances wait out the grace"
    );
    // During the grace period the policy is pointed at another account.
    app.set_policies(policies(&yaml.replace("account: prod", "account: staging")));
    clock.advance(chrono::Duration::minutes(61));
    app.workers.drain(CancellationToken::new()).await.unwrap();
    assert!(h.sim.releases().is_empty(), "nothing released");
    for r in db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap()
    {
        assert_eq!(r.state, "cancelled", "{r:?}");
        assert!(
            r.last_error.as_deref().unwrap_or("").contains("account"),
            "{r:?}"
        );
    }
}

#[test]
fn an_invalid_account_name_is_reported_at_its_line() {
    let e = policy::load_str(
        "bad.yaml",
        "name: p\naccount: \"prod account\"\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect: {status: Stopped}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.yaml:2:"), "{e}");
    assert!(e.contains("invalid account name"), "{e}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_maps_accounts_to_profiles_and_refuses_an_unknown_one() {
    let fleet = fleet::generate(400, 73, Utc::now());
    let (h, owner) = two_account_sim(fleet.clone(), Faults::default(), 73).await;
    let want = expected(&fleet, &owner);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join(".aliyun")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(d.join("policies/ci.yaml"), POLICIES).unwrap();
    let profiles = serde_json::json!({
        "current": "default",
        "profiles": [
            {"name": "default", "mode": "AK", "access_key_id": sim::DEFAULT_ACCESS_KEY_ID,
             "access_key_secret": sim::DEFAULT_ACCESS_KEY_SECRET},
            {"name": "janitor-prod", "mode": "AK", "access_key_id": PROD_KEY,
             "access_key_secret": PROD_SECRET}
        ]
    });
    std::fs::write(d.join(".aliyun/config.json"), profiles.to_string()).unwrap();

    // Without the mapping, account `prod` looks for a profile called `prod`: refused up front.
    let out = tokio::task::spawn_blocking({
        let (h, d) = (h.endpoint(), d.to_path_buf());
        move || run_endpoint(&h, &d, &["plan"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for needle in [
        "ci-prod",
        "ci.yaml:",
        "account \"prod\"",
        "profile \"prod\"",
        "accounts:",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert!(
        !err.contains(PROD_SECRET) && !err.contains("panicked"),
        "{err}"
    );
    assert!(h.sim.calls().is_empty(), "refused before any call");

    // Mapped in janitor.yaml: each policy acts on its own account.
    std::fs::write(
        d.join("janitor.yaml"),
        "accounts:\n  prod: {profile: janitor-prod}\n",
    )
    .unwrap();
    // `config check` says which profile each account signs with, and that it is usable.
    let out = tokio::task::spawn_blocking({
        let (h, d) = (h.endpoint(), d.to_path_buf());
        move || run_endpoint(&h, &d, &["config", "check"])
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("account prod"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("profile janitor-prod") && line.contains("AK") && !line.contains("UNUSABLE"),
        "{line}"
    );
    assert!(!stdout.contains(PROD_SECRET), "{stdout}");
    let out = tokio::task::spawn_blocking({
        let (h, d) = (h.endpoint(), d.to_path_buf());
        move || run_endpoint(&h, &d, &["apply"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_released_by_owners(&h, &want, &owner);
}

/// Runs the binary with `dir` as HOME (its profile file) and working directory (its
/// janitor.yaml), and no credentials in the environment.
fn run_endpoint(endpoint: &url::Url, dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .env_remove("ALIBABA_CLOUD_PROFILE")
        .env_remove("JANITOR_CONFIG")
        .env(
            "JANITOR_DATABASE_URL",
            format!("sqlite://{}", dir.join("j.db").display()),
        )
        .env("JANITOR_POLICIES", dir.join("policies"))
        .env("JANITOR_ECS_ENDPOINT", endpoint.as_str())
        .env("JANITOR_BACKOFF_BASE_MS", "5")
        .output()
        .unwrap()
}
