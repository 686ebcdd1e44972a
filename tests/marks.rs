//! Marks on instances (issue 15, part 1), against the simulator: a release queued to wait out
//! its grace tags its instance with `janitor:release-after` and `janitor:policy`, visible in
//! DescribeInstances; a cancel or a release that no longer qualifies removes them; a mark ECS
//! refuses (an instance with 20 tags) is reported and never holds the release back; dry runs
//! write nothing; TagResources goes 50 ids a call. The clock is injected: grace ends when the
//! test says so.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use ecs_janitor::app::App;
use ecs_janitor::clock::{Clock, ManualClock};
use ecs_janitor::ecs::{DescribeFilter, InstanceStatus};
use ecs_janitor::marks::release_after_value;
use ecs_janitor::sim::{Faults, ScriptStep, Scripted, SimHandle};
use ecs_janitor::store::{MarkState, ReleaseFilter, ReleaseState, Store};
use tokio_util::sync::CancellationToken;

/// Stopped CI runners, released two hours after they first match.
const GRACED: &str = r#"
name: ci
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
release:
  grace: 2h
limits:
  max_releases_per_run: 1000
"#;

const RA: &str = "janitor:release-after";
const POL: &str = "janitor:policy";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct Env {
    h: SimHandle,
    app: App,
    clock: ManualClock,
    store: Store,
    _db: common::TestDb,
}

/// The simulator with `fleet`, and the pipeline over `policy` with a clock at [`t0`].
async fn env_with(fleet: Vec<ecs_janitor::ecs::Instance>, policy: &str, dry_run: bool) -> Env {
    let db = common::sqlite().await;
    env_on(db, fleet, policy, dry_run).await
}

async fn env_on(
    db: common::TestDb,
    fleet: Vec<ecs_janitor::ecs::Instance>,
    policy: &str,
    dry_run: bool,
) -> Env {
    let h = common::start_sim(fleet, Faults::default(), 15).await;
    let clock = ManualClock::new(t0());
    let mut p = common::Pipeline::new(&db.store, common::client(&h), common::policies(policy));
    p.clock = Arc::new(clock.clone());
    p.dry_run = dry_run;
    let app = p.build();
    Env {
        h,
        app,
        clock,
        store: db.store.clone(),
        _db: db,
    }
}

impl Env {
    async fn apply(&self) -> ecs_janitor::app::ApplyReport {
        self.app
            .apply(None, &Default::default(), CancellationToken::new())
            .await
            .unwrap()
    }

    /// The tags of `id` as DescribeInstances lists them now.
    async fn listed_tags(&self, id: &str) -> Vec<(String, String)> {
        let listed = common::client(&self.h)
            .describe_instances(
                "cn-hangzhou",
                &DescribeFilter {
                    instance_ids: Some(vec![id.to_string()]),
                    ..DescribeFilter::default()
                },
            )
            .await
            .unwrap();
        listed
            .first()
            .map(|i| {
                i.tags
                    .iter()
                    .filter(|(k, _)| k.starts_with("janitor:"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `ResourceId.N` lists of every call of `action`, in order.
    fn calls(&self, action: &str) -> Vec<Vec<String>> {
        self.h
            .sim
            .calls()
            .into_iter()
            .filter(|c| c.action == action)
            .map(|c| c.instance_ids)
            .collect()
    }

    async fn plan_json(&self) -> serde_json::Value {
        let plan = self
            .app
            .reconciler
            .plan_only(&self.app.policies(), self.clock.now())
            .await
            .unwrap();
        ecs_janitor::plan::render_json(&plan)
    }

    async fn plan_text(&self) -> String {
        let plan = self
            .app
            .reconciler
            .plan_only(&self.app.policies(), self.clock.now())
            .await
            .unwrap();
        ecs_janitor::plan::render_text(&plan, false)
    }
}

fn mark_of<'a>(plan: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    plan["policies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["releases"].as_array().unwrap())
        .find(|r| r["instance_id"] == id)
        .map(|r| &r["mark"])
        .unwrap_or_else(|| panic!("{id} is not planned: {plan}"))
}

fn expected_mark() -> Vec<(String, String)> {
    vec![
        (POL.to_string(), "ci".to_string()),
        (
            RA.to_string(),
            release_after_value(t0() + Duration::hours(2)),
        ),
    ]
}

#[tokio::test]
async fn a_release_in_its_grace_marks_its_instance_visibly() {
    let e = env_with(common::ci_fleet(3), GRACED, false).await;
    e.apply().await;
    assert_eq!(
        release_after_value(t0() + Duration::hours(2)),
        "2026-11-26T14:00:00Z"
    );
    for id in ["i-0", "i-1", "i-2"] {
        assert_eq!(e.listed_tags(id).await, expected_mark(), "{id}");
    }
    // The three share their tags: one call.
    assert_eq!(e.calls("TagResources").len(), 1);
    assert_eq!(mark_of(&e.plan_json().await, "i-1")["state"], "written");
    // Nothing changed: a second pass sends nothing.
    e.apply().await;
    assert_eq!(
        e.calls("TagResources").len(),
        1,
        "an unchanged mark was sent again"
    );
    assert!(e.calls("UntagResources").is_empty());
    // Grace over: released on time, and the mark's record goes with the instance.
    e.clock.advance(Duration::hours(2) + Duration::seconds(1));
    e.apply().await;
    assert_eq!(e.h.sim.releases().len(), 3);
    e.apply().await;
    assert!(
        e.calls("UntagResources").is_empty(),
        "a released instance was untagged"
    );
    assert!(e.store.marks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cancel_and_a_release_that_no_longer_qualifies_remove_the_mark() {
    let e = env_with(common::ci_fleet(3), GRACED, false).await;
    e.apply().await;
    let rows = e
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let r0 = rows.iter().find(|r| r.instance_id == "i-0").unwrap();
    e.store
        .cancel_release(r0.id, "alice", "still debugging", None, e.clock.now())
        .await
        .unwrap();
    // i-1 no longer matches the policy.
    e.h.sim.tag("i-1", "purpose", "web");
    e.clock.advance(Duration::minutes(10));
    e.apply().await;
    assert!(
        e.listed_tags("i-0").await.is_empty(),
        "a cancelled release kept its mark"
    );
    assert!(
        e.listed_tags("i-1").await.is_empty(),
        "a release that no longer qualifies kept its mark"
    );
    assert_eq!(e.listed_tags("i-2").await, expected_mark());
    // Both went in one call (same account, region and keys); their owners' other tags stay.
    assert_eq!(e.calls("UntagResources").len(), 1);
    let listed = e.h.sim.instances();
    let i1 = listed.iter().find(|i| i.instance_id == "i-1").unwrap();
    assert_eq!(i1.tags.get("purpose").map(String::as_str), Some("web"));
    let marks = e.store.marks().await.unwrap();
    assert_eq!(
        marks
            .iter()
            .map(|m| m.instance_id.as_str())
            .collect::<Vec<_>>(),
        ["i-2"]
    );
    // Nothing is released: the held one is held, the other no longer matches.
    e.clock.advance(Duration::hours(3));
    e.apply().await;
    let released: Vec<String> =
        e.h.sim
            .releases()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
    assert_eq!(released, ["i-2"]);
}

/// An instance holding `extra` custom tags besides `purpose=ci`.
fn tagged(id: &str, extra: usize) -> ecs_janitor::ecs::Instance {
    let mut i = common::ci_fleet(1).remove(0);
    i.instance_id = id.to_string();
    for n in 0..extra {
        i.tags.insert(format!("team-{n}"), "x".into());
    }
    // A system tag: listed, never counted.
    i.tags
        .insert("acs:autoscaling:scalingGroupId".into(), "asg-1".into());
    i
}

#[tokio::test]
async fn a_mark_ecs_refuses_is_reported_and_the_release_still_goes_on_time() {
    // i-full holds 20 custom tags; i-room 18, room for both keys.
    let e = env_with(
        vec![tagged("i-full", 19), tagged("i-room", 17)],
        GRACED,
        false,
    )
    .await;
    e.apply().await;
    assert_eq!(e.listed_tags("i-room").await, expected_mark());
    assert!(e.listed_tags("i-full").await.is_empty());
    // The call of both was refused, then each was tried alone.
    let calls = e.calls("TagResources");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0].len(), 2);
    let marks = e.store.marks().await.unwrap();
    let full = marks.iter().find(|m| m.instance_id == "i-full").unwrap();
    assert_eq!(full.state, MarkState::Failed);
    assert_eq!(full.code.as_deref(), Some("QuotaExceed.Tags"));

    // The plan says so, in text and JSON.
    let json = e.plan_json().await;
    let m = mark_of(&json, "i-full");
    assert_eq!(m["state"], "missing", "{m}");
    assert_eq!(m["code"], "QuotaExceed.Tags");
    assert!(m["why"].as_str().unwrap().contains("20 tags"), "{m}");
    assert_eq!(mark_of(&json, "i-room")["state"], "written");
    let text = e.plan_text().await;
    assert!(
        text.contains("i-full in cn-hangzhou: mark missing (QuotaExceed.Tags): the instance already holds 20 tags"),
        "{text}"
    );
    // So does the status page, in the waiting table.
    let page = status_page(&e.app).await;
    let waiting = &page[page.find("id=\"waiting\"").unwrap()..];
    let waiting = &waiting[..waiting.find("</table>").unwrap()];
    assert!(waiting.contains("QuotaExceed.Tags"), "{waiting}");
    assert!(waiting.contains("missing"), "{waiting}");
    assert!(
        waiting.contains("janitor:release-after=2026-11-26T14:00:00Z"),
        "{waiting}"
    );

    // A later pass tries the full one alone again, never again with the other.
    e.clock.advance(Duration::minutes(30));
    e.apply().await;
    let calls = e.calls("TagResources");
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[3], ["i-full"]);

    // Grace over: both released on time, the unmarked one too.
    e.clock.advance(Duration::hours(1) + Duration::minutes(31));
    e.apply().await;
    let mut released: Vec<String> =
        e.h.sim
            .releases()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
    released.sort();
    assert_eq!(released, ["i-full", "i-room"]);
}

#[tokio::test]
async fn a_refused_call_is_repaired_by_the_next_pass() {
    let e = env_with(common::ci_fleet(2), GRACED, false).await;
    // These credentials may not tag, this once: refused as a whole, not split.
    e.h.sim.script(ScriptStep {
        action: "TagResources".into(),
        answer: Scripted::Error {
            status: 403,
            code: "Forbidden.RAM".into(),
        },
        instance_id: None,
    });
    e.apply().await;
    assert_eq!(e.calls("TagResources").len(), 1);
    let json = e.plan_json().await;
    assert_eq!(mark_of(&json, "i-0")["code"], "Forbidden.RAM");
    assert!(mark_of(&json, "i-0")["why"]
        .as_str()
        .unwrap()
        .contains("ecs:TagResources"));
    e.apply().await;
    assert_eq!(e.listed_tags("i-0").await, expected_mark());
    assert_eq!(e.listed_tags("i-1").await, expected_mark());
    assert!(e
        .store
        .marks()
        .await
        .unwrap()
        .iter()
        .all(|m| m.state == MarkState::Written));
}

#[tokio::test]
async fn dry_runs_and_mark_false_write_no_tag() {
    // apply --dry-run.
    let e = env_with(common::ci_fleet(3), GRACED, true).await;
    e.apply().await;
    assert!(e.calls("TagResources").is_empty());
    // A policy's dry_run (nothing queued), `release.mark: false` (queued, unmarked), and no
    // grace (released at once, nothing to announce).
    for (policy, queued, released) in [
        (format!("{GRACED}dry_run: true\n"), 0, 0),
        (
            GRACED.replace("grace: 2h", "grace: 2h\n  mark: false"),
            3,
            0,
        ),
        (GRACED.replace("release:\n  grace: 2h\n", ""), 3, 3),
    ] {
        let e = env_with(common::ci_fleet(3), &policy, false).await;
        e.apply().await;
        let rows = e
            .store
            .list_releases(&ReleaseFilter::default())
            .await
            .unwrap();
        assert_eq!(rows.len(), queued, "{policy}");
        assert_eq!(e.h.sim.releases().len(), released, "{policy}");
        assert!(e.calls("TagResources").is_empty(), "{policy}");
        if released == 0 {
            assert!(mark_of(&e.plan_json().await, "i-0").is_null(), "{policy}");
        }
    }
}

/// Replicas whose passes end together each sent the same TagResources (found in a user trial
/// of two replicas): one reconcile at a time now, under a lease. One that finds it held waits
/// for it, then reads the queue afresh and sends what is left, once.
#[tokio::test]
async fn while_another_replica_reconciles_the_marks_a_pass_waits_and_then_writes_them_once() {
    let e = Arc::new(env_with(common::ci_fleet(3), GRACED, false).await);
    let other = "another-replica";
    let until = e.clock.now() + Duration::seconds(30);
    assert!(e
        .store
        .take_lease("marks", other, until, e.clock.now())
        .await
        .unwrap());
    let pass = tokio::spawn({
        let e = e.clone();
        async move { e.apply().await }
    });
    common::wait_for(
        "the pass's releases queued",
        std::time::Duration::from_secs(10),
        || {
            let store = e.store.clone();
            async move {
                store
                    .list_releases(&ReleaseFilter::default())
                    .await
                    .map(|r| r.len() == 3)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    assert!(!pass.is_finished(), "the pass waits for the lease");
    assert!(
        e.calls("TagResources").is_empty(),
        "nothing sent while another holds it"
    );
    e.store.end_lease("marks", other).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), pass)
        .await
        .expect("the pass ends once the lease is given back")
        .unwrap();
    assert_eq!(e.calls("TagResources").len(), 1, "written once");
    assert_eq!(e.listed_tags("i-0").await, expected_mark());
}

#[tokio::test]
async fn tag_resources_goes_fifty_ids_a_call() {
    let e = env_with(common::ci_fleet(120), GRACED, false).await;
    e.apply().await;
    let mut sizes: Vec<usize> = e.calls("TagResources").iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [20, 50, 50]);
    let tagged =
        e.h.sim
            .instances()
            .into_iter()
            .filter(|i| i.tags.contains_key(RA))
            .count();
    assert_eq!(tagged, 120);
    // Every one cancelled (started, the policy has no `force`): removed 50 a call too.
    e.clock.advance(Duration::minutes(10));
    for i in 0..120 {
        e.h.sim
            .modify(&format!("i-{i}"), |i| i.status = InstanceStatus::Running);
    }
    e.apply().await;
    let mut sizes: Vec<usize> = e.calls("UntagResources").iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [20, 50, 50]);
    let rows = e
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.state == ReleaseState::Cancelled));
}

#[tokio::test]
async fn marks_are_recorded_the_same_on_postgres() {
    let Some(db) = common::postgres().await else {
        return;
    };
    let e = env_on(
        db,
        vec![tagged("i-full", 19), tagged("i-room", 0)],
        GRACED,
        false,
    )
    .await;
    e.apply().await;
    let marks = e.store.marks().await.unwrap();
    let states: Vec<(&str, MarkState)> = marks
        .iter()
        .map(|m| (m.instance_id.as_str(), m.state))
        .collect();
    assert_eq!(
        states,
        [
            ("i-full", MarkState::Failed),
            ("i-room", MarkState::Written)
        ]
    );
    e.h.sim.tag("i-room", "purpose", "web");
    e.clock.advance(Duration::minutes(10));
    e.apply().await;
    let marks = e.store.marks().await.unwrap();
    assert_eq!(marks.len(), 1);
    assert!(e.listed_tags("i-room").await.is_empty());
}

#[test]
fn release_mark_is_validated_like_the_other_release_keys() {
    let load = |yaml: &str| ecs_janitor::policy::load_str("p.yaml", yaml);
    let on = load(GRACED).unwrap();
    assert!(on.policies[0].release.mark, "on by default with a grace");
    let no_grace = GRACED.replace("release:\n  grace: 2h\n", "");
    assert!(!load(&no_grace).unwrap().policies[0].release.mark);
    let off = GRACED.replace("grace: 2h", "grace: 2h\n  mark: false");
    assert!(!load(&off).unwrap().policies[0].release.mark);
    let e = load(&no_grace.replace("limits:", "release:\n  mark: true\nlimits:"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("p.yaml:") && e.contains("`release.mark: true` needs `release.grace`"),
        "{e}"
    );
    let e = load(&GRACED.replace("grace: 2h", "grace: 2h\n  mark: yes-please"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("release.mark"), "{e}");
}

/// The status page's HTML, served by the admin router over the app's context.
async fn status_page(app: &App) -> String {
    use ecs_janitor::server::{self, AdminContext, AdminTokens, Health};
    let router = server::router(AdminContext {
        ctx: app.ctx.clone(),
        health: Arc::new(Health::default()),
        admin_tokens: AdminTokens::new(None, Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    let body = reqwest::get(&base).await.unwrap().text().await.unwrap();
    stop.cancel();
    body
}
