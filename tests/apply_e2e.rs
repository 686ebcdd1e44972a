//! `apply` end to end against the in-process simulator: the exact expected set is released, once,
//! with every retry after a lost answer reusing its ClientToken; refusals split a batch until the
//! offender is alone; the re-check right before the call cancels what became protected; dry runs
//! and saved plans release nothing beyond what they should.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ecs_janitor::app::App;
use ecs_janitor::backoff::Backoff;
use ecs_janitor::clock::{Clock, OffsetClock, SharedClock, SystemClock};
use ecs_janitor::context::Extras;
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::plan::SavedPlan;
use ecs_janitor::policy::Policy;
use ecs_janitor::sim::{fleet, Faults, SimHandle};
use ecs_janitor::store::ReleaseFilter;
use ecs_janitor::worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

use common::{policies, CI_STOPPED as CI_POLICY};

/// Stopped CI runners, released after an hour of grace.
const GRACE_POLICY: &str = r#"
name: ci-grace
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
release:
  grace: 1h
"#;

/// The instances CI_POLICY must release, computed from the fleet without the planner.
fn expected_ci(fleet: &[Instance]) -> BTreeSet<String> {
    fleet
        .iter()
        .filter(|i| {
            i.region_id == "cn-hangzhou"
                && i.charge_type == ChargeType::PostPaid
                && i.status == InstanceStatus::Stopped
                && i.tags.get("purpose").map(String::as_str) == Some("ci")
                && i.tags.get("janitor:protect").map(String::as_str) != Some("true")
                && !i.deletion_protection
                && !i.security_locked()
        })
        .map(|i| i.instance_id.clone())
        .collect()
}

fn fast_workers() -> WorkerConfig {
    WorkerConfig {
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(100)),
        max_attempts: 30,
        lease: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

async fn app_for(h: &SimHandle, db: &common::TestDb, ps: Vec<Policy>, clock: SharedClock) -> App {
    common::Pipeline {
        cfg: fast_workers(),
        clock,
        ..common::Pipeline::new(&db.store, common::client(h), ps)
    }
    .build()
}

fn released(h: &SimHandle) -> BTreeSet<String> {
    h.sim
        .releases()
        .into_iter()
        .map(|r| r.instance_id)
        .collect()
}

#[tokio::test]
async fn apply_releases_exactly_the_expected_set_and_records_it() {
    let fleet = fleet::generate(3000, 5, Utc::now());
    let want = expected_ci(&fleet);
    assert!(want.len() > 20, "the fleet has work: {}", want.len());
    let h = common::start_sim(fleet, Faults::default(), 1).await;
    let db = common::sqlite().await;
    let app = app_for(&h, &db, policies(CI_POLICY), Arc::new(SystemClock)).await;
    let report = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(released(&h), want);
    assert_eq!(report.exit_code(), 0);
    let rows = db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), want.len());
    let sim_rid: HashMap<String, String> = h
        .sim
        .releases()
        .into_iter()
        .map(|r| (r.instance_id, r.request_id))
        .collect();
    for r in &rows {
        assert_eq!(r.state, "succeeded");
        assert_eq!(
            r.request_id.as_ref(),
            sim_rid.get(&r.instance_id),
            "RequestId recorded"
        );
        assert!(r.client_token.is_some());
    }
    // ceil(n/100) DeleteInstances calls, no more.
    let deletes = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == "DeleteInstances")
        .count();
    assert_eq!(deletes, want.len().div_ceil(100));
    // A second apply finds nothing more to do.
    let again = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again.in_state("succeeded").count(), 0);
    assert_eq!(h.sim.releases().len(), want.len());
}

#[tokio::test]
async fn apply_under_faults_releases_the_same_set_once_with_stable_tokens() {
    for (seed, db) in [(21u64, common::sqlite().await)]
        .into_iter()
        .chain(common::postgres().await.map(|db| (22u64, db)))
    {
        let fleet = fleet::generate(10_000, seed, Utc::now());
        let want = expected_ci(&fleet);
        let faults = Faults {
            internal_error_rate: 0.2,
            throttle_rate: 0.1,
            drop_after_commit_rate: 0.1,
            latency: Duration::from_millis(2),
            actions: vec![],
        };
        let h = common::start_sim(fleet, faults, seed).await;
        // Small batches: many calls, so every kind of fault occurs.
        let app = common::Pipeline {
            cfg: WorkerConfig {
                max_batch: 2,
                ..fast_workers()
            },
            ..common::Pipeline::new(&db.store, common::client(&h), policies(CI_POLICY))
        }
        .build();
        let report = app
            .apply(None, &Default::default(), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(released(&h), want, "store {}", db.url);
        assert_eq!(report.exit_code(), 0);
        common::assert_tokens_consistent(&h);
        for outcome in ["Dropped", "InternalError", "Throttling"] {
            let n = h
                .sim
                .calls()
                .iter()
                .filter(|c| c.action == "DeleteInstances" && c.outcome == outcome)
                .count();
            assert!(n > 0, "the run met {outcome}");
        }
        for r in db
            .store
            .list_releases(&ReleaseFilter::default())
            .await
            .unwrap()
        {
            assert_eq!(r.state, "succeeded", "{r:?}");
            assert!(r.request_id.is_some(), "{r:?}");
        }
    }
}

#[tokio::test]
async fn a_refused_batch_is_split_until_the_offender_is_alone() {
    // allow_security_locked lets the plan pick a locked instance; ECS would release it (a
    // security lock does not block DeleteInstances), so the simulator is scripted to refuse it.
    let yaml = r#"
name: locked-too
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
release:
  allow_security_locked: true
"#;
    let mut fleet = common::ci_fleet(8);
    fleet[5].lock_reasons = vec!["security".into()];
    let h = common::start_sim(fleet, Faults::default(), 3).await;
    // Every call naming i-5 is refused: the batch of 8, then the halves of 4, 2 and 1.
    common::refuse_every_call_naming(&h, "i-5", 4);
    let db = common::sqlite().await;
    let app = app_for(&h, &db, policies(yaml), Arc::new(SystemClock)).await;
    let report = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 2, "a failure is reported");
    let failed: Vec<_> = report
        .in_state("failed")
        .map(|r| r.instance_id.clone())
        .collect();
    assert_eq!(failed, ["i-5"]);
    assert_eq!(
        report
            .in_state("failed")
            .next()
            .unwrap()
            .last_code
            .as_deref(),
        Some("InstanceLockedForSecurity")
    );
    let want: BTreeSet<String> = (0..8)
        .filter(|n| *n != 5)
        .map(|n| format!("i-{n}"))
        .collect();
    assert_eq!(released(&h), want);
    common::assert_tokens_consistent(&h);
    // 8 → 4+4 → the half with i-5 splits 2+2 → 1+1: log2(8) levels, each refused call split.
    let deletes = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == "DeleteInstances")
        .count();
    assert_eq!(deletes, 7);
}

#[tokio::test]
async fn the_recheck_before_the_call_cancels_what_became_protected() {
    let yaml = GRACE_POLICY;
    let fleet = common::ci_fleet(3);
    let h = common::start_sim(fleet, Faults::default(), 4).await;
    let db = common::sqlite().await;
    let clock = OffsetClock::new();
    let app = app_for(&h, &db, policies(yaml), Arc::new(clock.clone())).await;
    let first = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        first.in_state("pending").count(),
        3,
        "waiting out the grace period"
    );
    assert!(h.sim.releases().is_empty());
    // During the grace period someone protects one and starts another.
    h.sim.modify("i-1", |i| {
        i.tags.insert("janitor:protect".into(), "true".into());
    });
    h.sim.modify("i-2", |i| i.status = InstanceStatus::Running);
    clock.advance(chrono::Duration::minutes(61));
    // Claim and work directly, without a new reconcile pass, so only the worker's re-check
    // stands between the queue and the release.
    app.workers.drain(CancellationToken::new()).await.unwrap();
    assert_eq!(released(&h), BTreeSet::from(["i-0".to_string()]));
    let rows = db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let by: HashMap<_, _> = rows.iter().map(|r| (r.instance_id.as_str(), r)).collect();
    assert_eq!(by["i-1"].state, "cancelled");
    assert!(
        by["i-1"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("re-check"),
        "{:?}",
        by["i-1"]
    );
    assert_eq!(by["i-2"].state, "cancelled");
}

#[tokio::test]
async fn a_dry_run_sends_dry_run_calls_and_releases_nothing() {
    let fleet = fleet::generate(2000, 6, Utc::now());
    let want = expected_ci(&fleet);
    let h = common::start_sim(fleet, Faults::default(), 5).await;
    let db = common::sqlite().await;
    let app = common::Pipeline {
        cfg: fast_workers(),
        dry_run: true,
        ..common::Pipeline::new(&db.store, common::client(&h), policies(CI_POLICY))
    }
    .build();
    let report = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(h.sim.releases().is_empty());
    assert_eq!(report.pass.runs[0].would_release, want.len());
    let would: BTreeSet<String> = db
        .store
        .events(10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "would_release")
        .filter_map(|e| e.instance_id)
        .collect();
    assert_eq!(would, want);
    assert!(db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn apply_with_a_saved_plan_releases_only_the_reviewed_set() {
    let fleet = fleet::generate(2000, 8, Utc::now());
    let want = expected_ci(&fleet);
    let h = common::start_sim(fleet, Faults::default(), 6).await;
    let db = common::sqlite().await;
    let ps = policies(CI_POLICY);
    let app = app_for(&h, &db, ps.clone(), Arc::new(SystemClock)).await;
    let plan = app.reconciler.plan_only(&ps, Utc::now()).await.unwrap();
    let mut saved = SavedPlan::from_plan(&plan);
    // The reviewer keeps only the first three.
    saved.releases.truncate(3);
    let reviewed: BTreeSet<String> = saved
        .releases
        .iter()
        .map(|r| r.instance_id.clone())
        .collect();
    assert!(reviewed.is_subset(&want));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    saved.save(&path).unwrap();
    let loaded = SavedPlan::load(&path).unwrap();
    app.apply(Some(&loaded), &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(released(&h), reviewed);
}

#[tokio::test]
async fn switching_a_policy_to_dry_run_cancels_what_it_queued() {
    let yaml = GRACE_POLICY;
    let fleet = common::ci_fleet(3);
    let h = common::start_sim(fleet, Faults::default(), 9).await;
    let db = common::sqlite().await;
    let clock = OffsetClock::new();
    let app = app_for(&h, &db, policies(yaml), Arc::new(clock.clone())).await;
    let first = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(first.in_state("pending").count(), 3);
    // The owner flips the policy to dry_run during the grace period.
    app.set_policies(policies(&format!("{yaml}dry_run: true\n")));
    clock.advance(chrono::Duration::minutes(61));
    let second = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(h.sim.releases().is_empty(), "nothing released");
    assert_eq!(second.in_state("cancelled").count(), 3);
    for r in second.in_state("cancelled") {
        assert!(
            r.last_error.as_deref().unwrap().contains("dry_run"),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn notifications_tell_of_scheduled_released_failed_and_refused() {
    let yaml = r#"
name: a-now
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
  instance_ids: [i-0, i-1, i-2]
release:
  allow_security_locked: true
---
name: b-later
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  instance_ids: [i-3, i-4]
release:
  grace: 1h
---
name: c-too-many
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  instance_ids: [i-5, i-6, i-7]
limits:
  max_releases_per_run: 2
"#;
    let mut fleet = common::ci_fleet(8);
    fleet[1].lock_reasons = vec!["security".into()];
    let h = common::start_sim(fleet, Faults::default(), 12).await;
    common::refuse_every_call_naming(&h, "i-1", 3);
    let db = common::sqlite().await;
    let (url, got) = common::receiver().await;
    let n = common::generic_notifier(url);
    let app = common::Pipeline {
        cfg: fast_workers(),
        extras: Extras {
            notifier: Some(n.clone()),
            ..Extras::default()
        },
        ..common::Pipeline::new(&db.store, common::client(&h), policies(yaml))
    }
    .build();
    app.apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(n.flush(Duration::from_secs(10)).await, "delivered");
    let all = serde_json::to_string(&*got.lock().unwrap()).unwrap();
    for want in [
        "b-later",
        "i-3",
        "c-too-many",
        "i-0",
        "i-1",
        "InstanceLockedForSecurity",
    ] {
        assert!(all.contains(want), "{want} in {all}");
    }
    // One message per run or per batch, never one per instance.
    assert!(got.lock().unwrap().len() <= 4, "{all}");

    // b-later switched to dry_run before its hour is up: its owners, told a time, are told
    // the releases are off (found in a user trial: they were cancelled in silence).
    got.lock().unwrap().clear();
    let dry = yaml.replace("  grace: 1h\n", "  grace: 1h\ndry_run: true\n");
    let app = common::Pipeline {
        cfg: fast_workers(),
        extras: Extras {
            notifier: Some(n.clone()),
            ..Extras::default()
        },
        ..common::Pipeline::new(&db.store, common::client(&h), policies(&dry))
    }
    .build();
    app.apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(n.flush(Duration::from_secs(10)).await, "delivered");
    let events: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .flat_map(|m| m["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["kind"] == "cancelled")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["policy"], "b-later");
    let ids: Vec<&str> = events[0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["i-3", "i-4"], "{events:?}");
    assert!(
        events[0]["instances"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("dry_run"),
        "{events:?}"
    );
}

/// A policy renamed (or removed) while its releases wait out their grace: they are called off
/// at once, their owners told why, and the renamed policy queues them under its own name with
/// its own grace (found in a user trial: they sat queued under a name nothing loaded, the new
/// name could not queue them, and at their time the re-check cancelled them in silence).
#[tokio::test]
async fn a_renamed_policys_waiting_releases_are_called_off_and_queued_under_the_new_name() {
    let yaml = r#"
name: b-later
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  instance_ids: [i-3, i-4]
release:
  grace: 1h
"#;
    let h = common::start_sim(common::ci_fleet(6), Faults::default(), 14).await;
    let db = common::sqlite().await;
    let (url, got) = common::receiver().await;
    let n = common::generic_notifier(url);
    let build = |yaml: &str| {
        common::Pipeline {
            cfg: fast_workers(),
            extras: Extras {
                notifier: Some(n.clone()),
                ..Extras::default()
            },
            ..common::Pipeline::new(&db.store, common::client(&h), policies(yaml))
        }
        .build()
    };
    build(yaml)
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(n.flush(Duration::from_secs(10)).await, "delivered");
    got.lock().unwrap().clear();

    let renamed = yaml.replace("name: b-later", "name: b-renamed");
    let report = build(&renamed)
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(n.flush(Duration::from_secs(10)).await, "delivered");
    assert!(released(&h).is_empty(), "nothing released before its grace");
    let all = db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let state_of = |policy: &str, id: &str| {
        all.iter()
            .filter(|r| r.policy == policy && r.instance_id == id)
            .map(|r| r.state.as_str().to_string())
            .collect::<Vec<_>>()
    };
    for id in ["i-3", "i-4"] {
        assert_eq!(state_of("b-later", id), vec!["cancelled"], "{all:?}");
        assert_eq!(state_of("b-renamed", id), vec!["pending"], "{all:?}");
    }
    let old = all.iter().find(|r| r.policy == "b-later").unwrap();
    let why = old.last_error.clone().unwrap_or_default();
    assert!(why.contains("b-later is no longer loaded"), "{why}");
    // The apply report counts the cancellations.
    assert_eq!(
        report.in_state("cancelled").count(),
        2,
        "{:?}",
        report.releases
    );

    let events: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .flat_map(|m| m["events"].as_array().cloned().unwrap_or_default())
        .collect();
    let of = |kind: &str, policy: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["policy"] == policy)
            .count()
    };
    assert_eq!(of("cancelled", "b-later"), 1, "{events:?}");
    assert_eq!(of("scheduled", "b-renamed"), 1, "{events:?}");
}

/// Releases queued under a grace and now due, in a pipeline whose process compared its policy
/// set (digest "mine") while the replicas agreed.
async fn due_releases_compared_as_mine(
    h: &SimHandle,
    db: &common::TestDb,
    clock: &OffsetClock,
) -> App {
    let app = app_for(h, db, policies(GRACE_POLICY), Arc::new(clock.clone())).await;
    app.apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    app.ctx.policies.set_digest("mine");
    assert!(app.ctx.policies.disagreement().is_none());
    clock.advance(chrono::Duration::minutes(61));
    app
}

/// Replica "joined" says it runs the policy set `digest`, for the next five minutes.
async fn replica_joins(db: &common::TestDb, clock: &OffsetClock, digest: &str) {
    let until = clock.now() + chrono::Duration::minutes(5);
    db.store
        .replica_seen("joined", "n", digest, "other", until, clock.now())
        .await
        .unwrap();
}

/// A replica with another policy set joins while releases are queued: the workers hold at
/// their next claim, from the database, without waiting for this process's next comparison
/// (its beat, up to half a lease later: found reading two replicas' logs, where a stale one
/// went on sending for that long).
#[tokio::test]
async fn workers_hold_at_once_when_a_replica_with_another_policy_set_is_running() {
    let h = common::start_sim(common::ci_fleet(3), Faults::default(), 16).await;
    let db = common::sqlite().await;
    let clock = OffsetClock::new();
    let app = due_releases_compared_as_mine(&h, &db, &clock).await;
    replica_joins(&db, &clock, "theirs-0123456789").await;
    let held = app.workers.drain(CancellationToken::new()).await.unwrap();
    assert!(h.sim.releases().is_empty(), "nothing sent");
    let why = held.stopped.map(|s| s.describe()).unwrap_or_default();
    assert!(
        why.contains("another policy set (theirs-01234) than this one (mine)"),
        "{why}"
    );
    // The joined replica runs the same set now: the releases go.
    replica_joins(&db, &clock, "mine").await;
    let done = app.workers.drain(CancellationToken::new()).await.unwrap();
    assert!(done.stopped.is_none(), "{:?}", done.stopped);
    assert_eq!(released(&h).len(), 3);
}

/// A replica with another policy set joins after a batch was claimed, while its re-check is
/// in flight: the call is not sent. The last word before DeleteInstances reads the database,
/// not only this process's last comparison (the claim's read had found the replicas agreeing,
/// and the batch went out).
#[tokio::test]
async fn a_replica_joining_during_the_re_check_stops_the_call() {
    let h = common::start_sim(common::ci_fleet(3), Faults::default(), 16).await;
    let db = common::sqlite().await;
    let clock = OffsetClock::new();
    let app = due_releases_compared_as_mine(&h, &db, &clock).await;
    // Each answer waits two seconds: the window in which the replica joins.
    h.sim.set_faults(Faults {
        latency: Duration::from_secs(2),
        ..Faults::default()
    });
    let workers = app.workers.clone();
    let drain = tokio::spawn(async move { workers.drain(CancellationToken::new()).await });
    common::wait_for("the batch's re-check", Duration::from_secs(10), || {
        let rechecking = h
            .sim
            .calls()
            .iter()
            .any(|c| c.action == "DescribeInstances" && !c.instance_ids.is_empty());
        async move { rechecking }
    })
    .await;
    replica_joins(&db, &clock, "theirs-0123456789").await;
    let held = drain.await.unwrap().unwrap();
    assert!(h.sim.releases().is_empty(), "nothing sent");
    assert!(
        !h.sim.calls().iter().any(|c| c.action == "DeleteInstances"),
        "no DeleteInstances"
    );
    let why = held.stopped.map(|s| s.describe()).unwrap_or_default();
    assert!(why.contains("another policy set"), "{why}");
}

/// Releases queued while releases are paused: the grace notice says so, with who paused and
/// why (found in a user trial: it gave a release time as if they would go then).
#[tokio::test]
async fn the_grace_notice_of_releases_queued_while_paused_says_they_wait_for_a_resume() {
    let yaml = "name: later\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  tags: {purpose: ci}\nrelease:\n  grace: 1h\n";
    let h = common::start_sim(common::ci_fleet(3), Faults::default(), 15).await;
    let db = common::sqlite().await;
    let (url, got) = common::receiver().await;
    let n = common::generic_notifier(url);
    let app = |extras: Extras| {
        common::Pipeline {
            cfg: fast_workers(),
            extras,
            ..common::Pipeline::new(&db.store, common::client(&h), policies(yaml))
        }
        .build()
    };
    db.store
        .pause("alice", "migration window", Utc::now())
        .await
        .unwrap();
    app(Extras {
        notifier: Some(n.clone()),
        ..Extras::default()
    })
    .apply(None, &Default::default(), CancellationToken::new())
    .await
    .unwrap();
    assert!(n.flush(Duration::from_secs(10)).await, "delivered");
    let messages = got.lock().unwrap().clone();
    let events: Vec<serde_json::Value> = messages
        .iter()
        .flat_map(|m| m["events"].as_array().cloned().unwrap_or_default())
        .collect();
    let scheduled = events
        .iter()
        .find(|e| e["kind"] == "scheduled")
        .unwrap_or_else(|| panic!("a grace notice: {events:?}"));
    let paused = scheduled["paused"].as_str().unwrap_or_default();
    assert!(
        paused.contains("paused by alice") && paused.contains("migration window"),
        "{scheduled}"
    );
    let text = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect::<String>();
    assert!(
        text.contains("Releases are paused by alice")
            && text.contains("these wait until someone resumes"),
        "{text}"
    );
}

#[tokio::test]
async fn outside_the_operating_window_nothing_is_released_and_apply_says_when() {
    let fleet = common::ci_fleet(3);
    let h = common::start_sim(fleet, Faults::default(), 13).await;
    let db = common::sqlite().await;
    let yaml = "name: ci\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  tags: {purpose: ci}\n";
    let now = Utc::now();
    // A one-hour window that opened two hours ago, every day: closed now.
    let start = (now - chrono::Duration::hours(2))
        .format("%H:%M")
        .to_string();
    let end = (now - chrono::Duration::hours(1))
        .format("%H:%M")
        .to_string();
    let closed: ecs_janitor::window::OperatingWindow =
        serde_json::from_value(serde_json::json!({"start": start, "end": end, "timezone": "UTC"}))
            .unwrap();
    let with_window = |w| {
        common::Pipeline {
            cfg: fast_workers(),
            extras: Extras {
                window: Some(w),
                ..Extras::default()
            },
            ..common::Pipeline::new(&db.store, common::client(&h), policies(yaml))
        }
        .build()
    };
    let app = with_window(closed);
    let report = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(h.sim.releases().is_empty());
    assert_eq!(
        report.in_state("pending").count(),
        3,
        "queued, waiting for the window"
    );
    assert!(report
        .render(Utc::now())
        .contains("Outside the operating window"));
    // The same queue inside an open window goes out.
    let open_start = (now - chrono::Duration::hours(1))
        .format("%H:%M")
        .to_string();
    let open_end = (now + chrono::Duration::hours(1))
        .format("%H:%M")
        .to_string();
    let open: ecs_janitor::window::OperatingWindow = serde_json::from_value(
        serde_json::json!({"start": open_start, "end": open_end, "timezone": "UTC"}),
    )
    .unwrap();
    let app = with_window(open);
    app.workers.drain(CancellationToken::new()).await.unwrap();
    assert_eq!(h.sim.releases().len(), 3);
}

/// A policy refused for its blast radius makes `apply` exit 2, the others' releases done (found
/// trying it: plan and apply exited 0 with one line of output, so a cron job never noticed a
/// policy refused every run).
#[tokio::test]
async fn a_policy_refused_for_its_blast_radius_makes_apply_exit_2() {
    let yaml = r#"
name: a-fine
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  instance_ids: [i-0]
---
name: b-too-many
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  instance_ids: [i-1, i-2]
limits:
  max_releases_per_run: 1
"#;
    let h = common::start_sim(common::ci_fleet(3), Faults::default(), 14).await;
    let db = common::sqlite().await;
    let app = common::Pipeline::new(&db.store, common::client(&h), policies(yaml)).build();
    let report = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    let released: Vec<&str> = report
        .in_state(ecs_janitor::store::ReleaseState::Succeeded)
        .map(|r| r.instance_id.as_str())
        .collect();
    assert_eq!(released, ["i-0"]);
    assert_eq!(report.exit_code(), 2);
    assert_eq!(report.detailed_exit_code(), 4);
    assert!(
        report
            .render(Utc::now())
            .contains("Policy b-too-many refused"),
        "{}",
        report.render(Utc::now())
    );
}

/// `apply` from a folder other than the one the running replicas run (an old checkout on a
/// laptop) releases nothing and calls off nothing of theirs while they differ, and says why.
#[tokio::test]
async fn apply_from_other_policy_files_than_the_running_replicas_releases_nothing() {
    let fleet = common::ci_fleet(3);
    let h = common::start_sim(fleet, Faults::default(), 15).await;
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ci.yaml"), CI_POLICY).unwrap();
    let now = Utc::now();
    db.store
        .replica_seen(
            "replica-a",
            "its-process",
            "0123abcd",
            "other",
            now + chrono::Duration::minutes(1),
            now,
        )
        .await
        .unwrap();
    let app = app_for(&h, &db, policies(CI_POLICY), Arc::new(SystemClock)).await;
    let opts = ecs_janitor::app::ApplyOptions {
        policies_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let report = app
        .apply(None, &opts, CancellationToken::new())
        .await
        .unwrap();
    assert!(
        released(&h).is_empty(),
        "nothing released while they differ"
    );
    let note = report.window_note.clone().unwrap_or_default();
    assert!(
        note.contains("Releases wait: the replicas run different policy sets")
            && note.contains("replica-a run [other]"),
        "{note}"
    );
    // Once no replica runs (it stopped), the same apply releases.
    db.store.replica_gone("replica-a").await.unwrap();
    let app = app_for(&h, &db, policies(CI_POLICY), Arc::new(SystemClock)).await;
    app.apply(None, &opts, CancellationToken::new())
        .await
        .unwrap();
    assert!(!released(&h).is_empty());
}
