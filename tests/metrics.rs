//! Metrics that tell the truth: each advertised series is moved by the code path it describes
//! (a retry, a release's outcome, a call's answer, the queue, the oldest due release), and a
//! deleted policy's series goes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ecs_janitor::backoff::Backoff;
use ecs_janitor::clock::{Clock, OffsetClock};
use ecs_janitor::context::Extras;
use ecs_janitor::metrics::Metrics;
use ecs_janitor::policy;
use ecs_janitor::sim::{self, Faults};
use ecs_janitor::worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

const POLICIES: &str = r#"
name: ci-now
schedule: "0 */5 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  instance_ids: [i-0, i-1, i-2, i-3]
---
name: ci-later
schedule: "0 0 3 * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  instance_ids: [i-4, i-5]
release:
  grace: 2h
"#;

/// The value of the sample `series` (name with labels, as exported), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_series_is_moved_by_what_it_describes() {
    let h = common::start_sim(common::ci_fleet(6), Faults::default(), 21).await;
    // One throttled DeleteInstances (retried with its token), and i-2 refused for good.
    h.sim.script(sim::ScriptStep {
        action: "DeleteInstances".into(),
        answer: sim::Scripted::Error {
            status: 400,
            code: "Throttling.User".into(),
        },
        instance_id: None,
    });
    common::refuse_every_call_naming(&h, "i-2", 3);
    let db = common::sqlite().await;
    let metrics = Metrics::new();
    let client = common::client(&h).with_observer(metrics.call_observer());
    let clock = OffsetClock::new();
    let policies = policy::load_str("p.yaml", POLICIES).unwrap().policies;
    let app = common::Pipeline {
        cfg: WorkerConfig {
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
            ..WorkerConfig::default()
        },
        clock: Arc::new(clock.clone()),
        extras: Extras {
            metrics: metrics.clone(),
            ..Extras::default()
        },
        ..common::Pipeline::new(&db.store, client, policies.clone())
    }
    .build();
    app.apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    let m = metrics.render(&db.store, clock.now()).await.unwrap();
    let at = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("{series} in\n{m}"));

    assert_eq!(
        at("janitor_release_retries_total"),
        1.0,
        "the throttled batch was retried once"
    );
    assert_eq!(
        at(r#"janitor_ecs_calls_total{action="DeleteInstances",code="Throttling.User"}"#),
        1.0
    );
    assert_eq!(
        at(r#"janitor_ecs_calls_total{action="DeleteInstances",code="InstanceLockedForSecurity"}"#),
        3.0
    );
    assert!(at(r#"janitor_ecs_calls_total{action="DescribeInstances",code="OK"}"#) >= 1.0);
    assert_eq!(
        at(r#"janitor_releases{policy="ci-now",state="succeeded"}"#),
        3.0
    );
    assert_eq!(
        at(r#"janitor_releases{policy="ci-now",state="failed"}"#),
        1.0
    );
    assert_eq!(
        at(r#"janitor_releases{policy="ci-later",state="pending"}"#),
        2.0
    );
    assert_eq!(
        at("janitor_queue_depth"),
        2.0,
        "the two waiting out their grace"
    );
    assert_eq!(
        at("janitor_oldest_due_release_age_seconds"),
        0.0,
        "nothing is due while the grace runs"
    );

    // Three hours on, paused: the grace ended an hour ago and nothing is sent.
    db.store
        .pause("test", "metrics", clock.now())
        .await
        .unwrap();
    clock.advance(chrono::Duration::hours(3));
    app.workers.drain(CancellationToken::new()).await.unwrap();
    let m = metrics.render(&db.store, clock.now()).await.unwrap();
    let age = sample(&m, "janitor_oldest_due_release_age_seconds").unwrap();
    assert!(
        (3590.0..3700.0).contains(&age),
        "an hour overdue: {age}\n{m}"
    );
    assert_eq!(sample(&m, "janitor_paused"), Some(1.0));

    // Both policies have a last success; once ci-later is deleted from the folder, its goes.
    let later = r#"janitor_policy_last_success_timestamp_seconds{policy="ci-later"}"#;
    assert!(sample(&m, later).is_some(), "{m}");
    let kept: Vec<_> = policies
        .into_iter()
        .filter(|p| p.name == "ci-now")
        .collect();
    metrics.policies_loaded(&kept, Utc::now());
    let m = metrics.render(&db.store, clock.now()).await.unwrap();
    assert!(sample(&m, later).is_none(), "{m}");
    // When each loaded policy was first loaded, kept across reloads (the alert counts from it
    // for a policy that never succeeded); a policy no longer loaded has none.
    let loaded_at = |m: &str, p: &str| {
        sample(
            m,
            &format!(r#"janitor_policy_loaded_timestamp_seconds{{policy="{p}"}}"#),
        )
    };
    let first = loaded_at(&m, "ci-now").expect("ci-now's load time");
    assert_eq!(loaded_at(&m, "ci-later"), None, "{m}");
    metrics.policies_loaded(&kept, Utc::now() + chrono::Duration::hours(1));
    let m = metrics.render(&db.store, clock.now()).await.unwrap();
    assert_eq!(loaded_at(&m, "ci-now"), Some(first), "a reload keeps it");
    assert!(sample(
        &m,
        r#"janitor_policy_last_success_timestamp_seconds{policy="ci-now"}"#
    )
    .is_some());
}

/// A policy that has never succeeded counts from its first try in the store, not from when
/// this process loaded it: a daemon restarted (a deploy, a crash loop) set the alert's clock
/// back to zero each time, so a policy failing across restarts never fired.
#[tokio::test]
async fn a_policy_that_never_succeeded_counts_from_its_first_try_across_restarts() {
    first_try_counts(common::sqlite().await).await;
    if let Some(db) = common::postgres().await {
        first_try_counts(db).await;
    }
}

async fn first_try_counts(db: common::TestDb) {
    let now = Utc::now();
    let two_days_ago = now - chrono::Duration::days(2);
    let never = policy::load_str(
        "p.yaml",
        "name: never\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  status: Stopped\n",
    )
    .unwrap()
    .policies;
    assert!(db
        .store
        .begin_run(
            "never",
            two_days_ago,
            "replica-a",
            two_days_ago,
            chrono::Duration::seconds(30)
        )
        .await
        .unwrap());
    db.store
        .finish_run(
            &ecs_janitor::store::RunEnd::error("never", two_days_ago),
            two_days_ago,
        )
        .await
        .unwrap();
    // A new process loads the policy now.
    let metrics = Metrics::new();
    metrics.policies_loaded(&never, now);
    let m = metrics.render(&db.store, now).await.unwrap();
    assert_eq!(
        sample(
            &m,
            r#"janitor_policy_loaded_timestamp_seconds{policy="never"}"#
        ),
        Some(two_days_ago.timestamp() as f64),
        "{m}"
    );
    // A policy never tried counts from its load.
    let fresh = policy::load_str(
        "q.yaml",
        "name: fresh\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  status: Stopped\n",
    )
    .unwrap()
    .policies;
    metrics.policies_loaded(&fresh, now);
    let m = metrics.render(&db.store, now).await.unwrap();
    assert_eq!(
        sample(
            &m,
            r#"janitor_policy_loaded_timestamp_seconds{policy="fresh"}"#
        ),
        Some(now.timestamp() as f64),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"janitor_policy_loaded_timestamp_seconds{policy="never"}"#
        ),
        None,
        "no longer loaded: {m}"
    );
}
