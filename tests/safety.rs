//! Safety at every call (issue 10): each switch holds at every DeleteInstances, whichever
//! command sends it. Black box: the `ecs-janitor` binary against the in-process simulator,
//! scripted to answer as each rule needs.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use ecs_janitor::sim::{Faults, ScriptStep, Scripted, SimHandle};
use ecs_janitor::store::{ReleaseFilter, ReleaseRow, ReleaseState, Store};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");

/// Stopped pay-as-you-go CI runners, released at once.
const CI: &str = r#"
name: ci
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
"#;

/// The same fleet's other half, under another policy.
const OTHER: &str = r#"
name: other
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: other}
  status: Stopped
"#;

struct Env {
    h: SimHandle,
    dir: tempfile::TempDir,
    url: String,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A simulator with `ci` instances i-0..i-{n-1} (and `other` ones o-0..), the policies given,
/// and a SQLite database in a temporary folder.
async fn env(n: usize, others: usize, policies: &[&str]) -> Env {
    let mut fleet = common::ci_fleet(n);
    for k in 0..others {
        let mut i = common::inst(
            &format!("o-{k}"),
            "cn-hangzhou",
            ecs_janitor::ecs::InstanceStatus::Stopped,
            ecs_janitor::ecs::ChargeType::PostPaid,
        );
        i.tags.insert("purpose".into(), "other".into());
        fleet.push(i);
    }
    let h = common::start_sim(fleet, Faults::default(), 7).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for (k, p) in policies.iter().enumerate() {
        std::fs::write(dir.path().join(format!("policies/p{k}.yaml")), p).unwrap();
    }
    let url = format!("sqlite://{}", dir.path().join("janitor.db").display());
    Env { h, dir, url }
}

impl Env {
    /// Runs the binary to its end (bounded) off the async runtime, so the in-process simulator
    /// keeps answering. Operator actions are recorded as alice.
    async fn run(&self, args: &[&str]) -> Out {
        let child = self.spawn(args);
        let what = args.join(" ");
        tokio::task::spawn_blocking(move || wait_bounded(child, &what))
            .await
            .unwrap()
    }

    /// [`Env::run`] with more environment variables.
    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap();
        let what = args.join(" ");
        tokio::task::spawn_blocking(move || wait_bounded(child, &what))
            .await
            .unwrap()
    }

    /// Starts the binary without waiting for it (for tests that signal it or pull ECS away).
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args).spawn().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .envs(common::janitor_env(&self.h, self.dir.path(), &self.url))
            .env("JANITOR_OPERATOR", "alice")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn store(&self) -> Store {
        Store::connect(&self.url).await.unwrap()
    }

    async fn rows(&self) -> Vec<ReleaseRow> {
        self.store()
            .await
            .list_releases(&ReleaseFilter::default())
            .await
            .unwrap()
    }

    /// DeleteInstances calls sent without DryRun that ECS carried out or refused (a DryRun
    /// call is answered DryRunOperation).
    fn real_deletes(&self) -> Vec<Vec<String>> {
        self.h
            .sim
            .calls()
            .into_iter()
            .filter(|c| c.action == "DeleteInstances" && c.outcome != "DryRunOperation")
            .map(|c| c.instance_ids)
            .collect()
    }

    fn released(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .h
            .sim
            .releases()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        v.sort();
        v
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn wait_bounded(mut child: std::process::Child, what: &str) -> Out {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`ecs-janitor {what}` did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// The pipeline in-process over a two-instance CI fleet, with one reconcile pass done: for the
/// tests that step a worker by hand.
async fn in_process(
    cfg: ecs_janitor::worker::WorkerConfig,
) -> (SimHandle, common::TestDb, ecs_janitor::app::App) {
    in_process_paced(cfg, None).await
}

/// The same, with every call of the client capped at `ceiling` per second and API.
async fn in_process_paced(
    cfg: ecs_janitor::worker::WorkerConfig,
    ceiling: Option<f64>,
) -> (SimHandle, common::TestDb, ecs_janitor::app::App) {
    let h = common::start_sim(common::ci_fleet(2), Faults::default(), 3).await;
    let db = common::sqlite().await;
    let policies = ecs_janitor::policy::load_str("p.yaml", CI)
        .unwrap()
        .policies;
    let client = match ceiling {
        None => common::client(&h),
        Some(c) => common::client_paced(
            &h,
            ecs_janitor::ecs::pace::PaceConfig {
                ceiling: Some(c),
                ..Default::default()
            },
        ),
    };
    let app = common::Pipeline {
        cfg,
        ..common::Pipeline::new(&db.store, client, policies)
    }
    .build();
    let policies = app.policies();
    let now = chrono::Utc::now();
    app.reconciler
        .pass(&policies, now, None, now)
        .await
        .unwrap();
    (h, db, app)
}

fn ids(rows: &[ReleaseRow], state: ReleaseState) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .filter(|r| r.state == state)
        .map(|r| r.instance_id.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_apply_and_dry_run_never_releases_what_an_earlier_pass_queued() {
    let e = env(3, 0, &[CI]).await;
    let p = e.run(&["pause", "--reason", "change freeze"]).await;
    assert_eq!(p.code, 0, "{}", p.all());
    // Paused: apply queues (the plan goes on) but sends nothing, says who and why, exits 3.
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 3, "the documented paused exit code: {}", a.all());
    assert!(a.stdout.contains("paused by alice@"), "{}", a.stdout);
    assert!(a.stdout.contains("change freeze"), "{}", a.stdout);
    assert!(e.real_deletes().is_empty(), "nothing sent while paused");
    assert_eq!(ids(&e.rows().await, ReleaseState::Pending).len(), 3);
    let q = e.run(&["queue", "list"]).await;
    assert!(q.stdout.contains("paused by alice@"), "{}", q.stdout);
    // Resumed, a dry run: due releases queued earlier get DryRun calls only; the queue is
    // left as it was.
    assert_eq!(e.run(&["resume"]).await.code, 0);
    let d = e.run(&["apply", "--dry-run"]).await;
    assert_eq!(d.code, 0, "{}", d.all());
    assert!(
        e.real_deletes().is_empty(),
        "a dry run sent a real DeleteInstances"
    );
    assert!(e.released().is_empty());
    for i in ["i-0", "i-1", "i-2"] {
        assert!(d.stdout.contains(i), "the dry run lists {i}: {}", d.stdout);
    }
    assert!(d.stdout.contains("would release"), "{}", d.stdout);
    assert_eq!(ids(&e.rows().await, ReleaseState::Pending).len(), 3);
    // Then a real apply releases them; the audit log says who paused and resumed.
    let r = e.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(e.released(), vec!["i-0", "i-1", "i-2"]);
    let h = e.run(&["history"]).await;
    assert!(h.stdout.contains("paused") && h.stdout.contains("(cli): change freeze"));
    assert!(h.stdout.contains("resumed"), "{}", h.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_is_carried_out_exactly_and_nothing_else_is_touched() {
    let e = env(3, 2, &[CI, OTHER]).await;
    // Both policies' releases are queued while paused.
    e.run(&["pause"]).await;
    assert_eq!(e.run(&["apply"]).await.code, 3);
    e.run(&["resume"]).await;
    let plan = e.path("ci.json");
    let p = e.run(&["plan", "--policy", "ci", "--out", &plan]).await;
    assert_eq!(p.code, 0, "{}", p.all());
    // Between review and apply, i-1 is protected.
    assert!(e.h.sim.tag("i-1", "janitor:protect", "true"));
    let a = e.run(&["apply", "--plan", &plan, "--policy", "ci"]).await;
    assert_eq!(a.code, 2, "a planned release not carried out: {}", a.all());
    assert_eq!(e.released(), vec!["i-0", "i-2"]);
    assert!(
        a.stdout.contains("Planned but not released"),
        "{}",
        a.stdout
    );
    assert!(a.stdout.contains("i-1"), "{}", a.stdout);
    // The other policy's queued releases are untouched: not sent, not cancelled.
    let rows = e.rows().await;
    assert_eq!(ids(&rows, ReleaseState::Pending), vec!["o-0", "o-1"]);
    assert!(e
        .real_deletes()
        .iter()
        .all(|c| c.iter().all(|i| i.starts_with("i-"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_foreign_or_unloadable_plan_is_refused() {
    let e = env(2, 0, &[CI]).await;
    let plan = e.path("p.json");
    assert_eq!(e.run(&["plan", "--out", &plan]).await.code, 0);
    let text = std::fs::read_to_string(&plan).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let write = |v: &serde_json::Value, name: &str| {
        let p = e.path(name);
        std::fs::write(&p, serde_json::to_string(v).unwrap()).unwrap();
        p
    };
    let mut old = v.clone();
    old["created_at"] = serde_json::json!("2020-01-01T00:00:00Z");
    let a = e.run(&["apply", "--plan", &write(&old, "old.json")]).await;
    assert_eq!(a.code, 1, "{}", a.all());
    assert!(a.stderr.contains("--max-plan-age"), "{}", a.stderr);
    let mut foreign = v.clone();
    foreign["database_id"] = serde_json::json!("another");
    let a = e
        .run(&["apply", "--plan", &write(&foreign, "f.json")])
        .await;
    assert_eq!(a.code, 1);
    assert!(a.stderr.contains("another database"), "{}", a.stderr);
    v["releases"][0]["policy"] = serde_json::json!("gone-policy");
    let a = e.run(&["apply", "--plan", &write(&v, "g.json")]).await;
    assert_eq!(a.code, 1);
    assert!(a.stderr.contains("gone-policy"), "{}", a.stderr);
    assert!(e.real_deletes().is_empty(), "a refused plan sent nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_missing_from_the_recheck_is_vanished_and_queued_again_later() {
    let e = env(1, 0, &[CI]).await;
    e.h.sim.script(ScriptStep {
        action: "DescribeInstances".into(),
        answer: Scripted::EmptyList,
        instance_id: Some("i-0".into()),
    });
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 0, "{}", a.all());
    assert!(a.stdout.contains("Released 0 instances"), "{}", a.stdout);
    assert!(a.stdout.contains("Vanished"), "{}", a.stdout);
    assert_eq!(ids(&e.rows().await, ReleaseState::Vanished), vec!["i-0"]);
    assert!(e.real_deletes().is_empty());
    // It still exists: the next pass lists it, queues it again, and releases it.
    let b = e.run(&["apply"]).await;
    assert_eq!(b.code, 0, "{}", b.all());
    assert_eq!(e.released(), vec!["i-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_cancel_sticks_and_retry_keeps_the_grace() {
    let graced = CI.replace(
        "  status: Stopped\n",
        "  status: Stopped\nrelease:\n  grace: 2h\n",
    );
    let e = env(1, 0, &[&graced]).await;
    assert_eq!(e.run(&["apply"]).await.code, 0);
    let row = e.rows().await.remove(0);
    let not_before = row.not_before;
    let id = row.id.to_string();
    let c = e
        .run(&["queue", "cancel", &id, "--reason", "still debugging"])
        .await;
    assert_eq!(c.code, 0, "{}", c.all());
    // The next passes do not queue it again; the plan says who holds it and why.
    assert_eq!(e.run(&["apply"]).await.code, 0);
    let rows = e.rows().await;
    assert_eq!(rows.len(), 1, "queued again after a cancel: {rows:?}");
    let p = e.run(&["plan"]).await;
    assert!(p.stdout.contains("held by alice@"), "{}", p.stdout);
    assert!(p.stdout.contains("still debugging"), "{}", p.stdout);
    // Retry: pending again, with what was left of its grace.
    assert_eq!(e.run(&["queue", "retry", &id]).await.code, 0);
    let again = e.store().await.release(row.id).await.unwrap();
    assert_eq!(again.state, ReleaseState::Pending);
    assert_eq!(again.not_before, not_before, "retry skipped the grace");
    assert!(e.real_deletes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_is_quarantined_not_retried_every_pass() {
    let e = env(2, 0, &[CI]).await;
    // Refused for good: the batch's call, then i-1's own call after the split.
    for _ in 0..2 {
        e.h.sim.script(ScriptStep {
            action: "DeleteInstances".into(),
            answer: Scripted::Error {
                status: 403,
                code: "DependencyViolation.RouteEntry".into(),
            },
            instance_id: Some("i-1".into()),
        });
    }
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert_eq!(e.released(), vec!["i-0"]);
    let sent_i1 = || {
        e.real_deletes()
            .iter()
            .filter(|c| c.contains(&"i-1".to_string()))
            .count()
    };
    let before = sent_i1();
    for _ in 0..2 {
        assert_eq!(e.run(&["apply"]).await.code, 0);
    }
    assert_eq!(sent_i1(), before, "a quarantined instance was sent again");
    let p = e.run(&["plan"]).await;
    assert!(p.stdout.contains("quarantined"), "{}", p.stdout);
    // `queue retry` ends the quarantine at once.
    let failed = e
        .rows()
        .await
        .into_iter()
        .find(|r| r.state == ReleaseState::Failed)
        .unwrap();
    assert_eq!(
        e.run(&["queue", "retry", &failed.id.to_string()])
            .await
            .code,
        0
    );
    assert_eq!(e.run(&["apply"]).await.code, 0);
    assert_eq!(e.released(), vec!["i-0", "i-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_instance_still_listed_is_neither_sent_nor_queued_again() {
    let e = env(3, 0, &[CI]).await;
    assert_eq!(e.run(&["apply"]).await.code, 0);
    assert_eq!(e.released().len(), 3);
    // ECS still lists them (the simulator's release delay); the next pass leaves them be.
    let calls = e.real_deletes().len();
    let b = e.run(&["apply"]).await;
    assert_eq!(b.code, 0, "{}", b.all());
    assert_eq!(
        e.real_deletes().len(),
        calls,
        "sent again while still listed"
    );
    let p = e.run(&["plan"]).await;
    assert!(p.stdout.contains("released by ecs-janitor"), "{}", p.stdout);
    assert_eq!(e.rows().await.len(), 3, "queued again");
}

/// A first call that certainly had no effect (a gateway's HTML 503), then the instance is
/// protected: the retry re-checks and sends nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_runs_before_every_retry() {
    use ecs_janitor::worker::{BatchResult, WorkerConfig};
    let (h, db, app) = in_process(WorkerConfig {
        backoff: ecs_janitor::backoff::Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ),
        ..WorkerConfig::default()
    })
    .await;
    h.sim.script(ScriptStep {
        action: "DeleteInstances".into(),
        answer: Scripted::Html503,
        instance_id: None,
    });
    let first = app.workers.process_next().await.unwrap();
    assert!(
        matches!(first, Some(BatchResult::RetryScheduled { .. })),
        "{first:?}"
    );
    assert!(h.sim.tag("i-1", "janitor:protect", "true"));
    common::wait_for("the retry", Duration::from_secs(10), || async {
        app.workers.process_next().await.unwrap();
        db.store
            .next_due(chrono::Utc::now(), None)
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let calls: Vec<_> = h
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action == "DeleteInstances")
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].instance_ids, vec!["i-0"], "protected i-1 was sent");
    assert_ne!(
        calls[0].client_token, calls[1].client_token,
        "a changed member set must not reuse the token"
    );
    assert_eq!(
        h.sim
            .releases()
            .iter()
            .map(|r| r.instance_id.as_str())
            .collect::<Vec<_>>(),
        vec!["i-0"]
    );
}

// ---- Bounded under failure (issue 11): every try counts, and apply always ends ----------------

/// A re-check that keeps failing counts as a try each time: the batch ends failed after
/// `--max-attempts`, and nothing is sent for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recheck_that_keeps_failing_ends_the_batch_after_max_attempts() {
    let e = env(1, 0, &[CI]).await;
    for _ in 0..20 {
        e.h.sim.script(ScriptStep {
            action: "DescribeInstances".into(),
            answer: Scripted::Error {
                status: 500,
                code: "InternalError".into(),
            },
            instance_id: Some("i-0".into()),
        });
    }
    let a = e.run(&["apply", "--max-attempts", "3"]).await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert!(
        a.stdout.contains("out of attempts (3 tries)"),
        "{}",
        a.stdout
    );
    assert!(
        e.real_deletes().is_empty(),
        "sent although never re-checked"
    );
    let rechecks =
        e.h.sim
            .calls()
            .iter()
            .filter(|c| c.action == "DescribeInstances" && c.instance_ids == ["i-0"])
            .count();
    // One re-check per try, each a read the client itself retries at most 4 times.
    assert!(
        (3..=12).contains(&rechecks),
        "{rechecks} re-check calls for 3 tries"
    );
}

/// An account-wide refusal (Forbidden.RAM) is not split into more calls: one call, one clear
/// error naming the code, and the release stays queued with its token for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_wide_refusal_stops_the_account_without_splitting() {
    let e = env(8, 0, &[CI]).await;
    for _ in 0..20 {
        e.h.sim.script(ScriptStep {
            action: "DeleteInstances".into(),
            answer: Scripted::Error {
                status: 403,
                code: "Forbidden.RAM".into(),
            },
            instance_id: None,
        });
    }
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert_eq!(e.real_deletes().len(), 1, "split into more calls");
    assert!(a.stdout.contains("Forbidden.RAM"), "{}", a.stdout);
    assert!(a.stdout.contains("the default account"), "{}", a.stdout);
    let rows = e.rows().await;
    assert_eq!(ids(&rows, ReleaseState::InFlight).len(), 8, "{rows:?}");
}

/// `--timeout` bounds the whole run, even while ECS throttles every call: apply stops claiming,
/// exits 2, and lists what was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_ends_at_its_timeout_while_ecs_throttles() {
    let e = env(3, 0, &[CI]).await;
    e.h.sim.set_faults(Faults {
        throttle_rate: 1.0,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let a = e
        .run(&["apply", "--timeout", "2s", "--max-attempts", "1000"])
        .await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "apply ran on past its timeout"
    );
    assert!(a.stderr.contains("--timeout 2s reached"), "{}", a.stderr);
    assert!(
        a.stdout.contains("Stopped before the queue was done"),
        "{}",
        a.stdout
    );
    assert!(e.released().is_empty());
}

/// Throttling does not use up attempts (ECS did nothing): with two attempts a batch, apply
/// rides out many throttled answers and releases everything once the quota lets it (found
/// trying `--quota DeleteInstances=1/min`: batches failed with Throttling.User).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_answers_do_not_use_up_attempts() {
    let e = env(3, 0, &[CI]).await;
    e.h.sim.set_faults(Faults {
        throttle_rate: 1.0,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    });
    let child = e.spawn(&["apply", "--max-attempts", "2"]);
    let sim = e.h.sim.clone();
    common::wait_for("five throttled calls", Duration::from_secs(30), || {
        let n = sim
            .calls()
            .iter()
            .filter(|c| c.action == "DeleteInstances")
            .count();
        async move { n >= 5 }
    })
    .await;
    e.h.sim.set_faults(Faults::default());
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "apply under throttling"))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(e.released(), vec!["i-0", "i-1", "i-2"]);
}

/// One policy's pass does not reset another's `stopped_for` clock: a listing filtered on other
/// tags could not have returned the other policy's instances, so their observations stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_pass_keeps_what_its_listing_could_not_have_seen() {
    let waits = |p: &str| {
        p.replace(
            "  status: Stopped\n",
            "  status: Stopped\n  stopped_for: 1h\n",
        )
    };
    let e = env(2, 2, &[&waits(CI), &waits(OTHER)]).await;
    assert_eq!(e.run(&["apply", "--policy", "ci"]).await.code, 0);
    let p = e.run(&["plan", "--policy", "ci"]).await;
    assert!(p.stdout.contains("first seen stopped at"), "{}", p.stdout);
    assert_eq!(e.run(&["apply", "--policy", "other"]).await.code, 0);
    let p = e.run(&["plan", "--policy", "ci"]).await;
    assert!(
        p.stdout.contains("first seen stopped at") && !p.stdout.contains("not yet seen stopped"),
        "the other policy's pass reset ci's clock: {}",
        p.stdout
    );
    // An instance of ci that starts is cleared by ci's own next pass.
    e.h.sim.modify("i-0", |i| {
        i.status = ecs_janitor::ecs::InstanceStatus::Running
    });
    assert_eq!(e.run(&["apply", "--policy", "ci"]).await.code, 0);
    e.h.sim.modify("i-0", |i| {
        i.status = ecs_janitor::ecs::InstanceStatus::Stopped
    });
    let p = e.run(&["plan", "--policy", "ci", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
    let skips = v.to_string();
    assert!(
        skips.contains("not yet seen stopped"),
        "i-0's stop ended: {skips}"
    );
}

/// Forbidden.RAM on the re-check stops the account's work for the run at once: no
/// DeleteInstances, one clear error, the release still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_on_the_recheck_stops_the_account() {
    let e = env(2, 0, &[CI]).await;
    for id in ["i-0", "i-1"] {
        for _ in 0..5 {
            e.h.sim.script(ScriptStep {
                action: "DescribeInstances".into(),
                answer: Scripted::Error {
                    status: 403,
                    code: "Forbidden.RAM".into(),
                },
                instance_id: Some(id.into()),
            });
        }
    }
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert!(a.stdout.contains("Forbidden.RAM"), "{}", a.stdout);
    assert!(e.real_deletes().is_empty());
    assert_eq!(
        ids(&e.rows().await, ReleaseState::InFlight),
        vec!["i-0", "i-1"]
    );
}

/// SIGTERM ends apply at once while it waits out a long backoff after throttling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interrupts_a_backoff_wait() {
    let e = env(1, 0, &[CI]).await;
    e.h.sim.set_faults(Faults {
        throttle_rate: 1.0,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    });
    let child = e.spawn(&[
        "apply",
        "--backoff-base-ms",
        "60000",
        "--backoff-cap-ms",
        "120000",
    ]);
    let h = e.h.sim.clone();
    common::wait_for("the first, throttled call", Duration::from_secs(30), || {
        let n = h
            .calls()
            .iter()
            .filter(|c| c.action == "DeleteInstances")
            .count();
        async move { n > 0 }
    })
    .await;
    common::sigterm(&child);
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "apply after SIGTERM"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "apply slept out its backoff after SIGTERM"
    );
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout.contains("Stopped before the queue was done"),
        "{}",
        out.stdout
    );
}

/// ECS goes away mid-run (the simulator is shut down): apply still ends, bounded by
/// `--max-attempts`, with what was left failed or waiting, instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_ends_when_ecs_goes_away_mid_run() {
    let many = format!("{CI}limits:\n  max_releases_per_run: 1000\n");
    let e = env(300, 0, &[&many]).await;
    e.h.sim.set_faults(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    });
    let child = e.spawn(&[
        "apply",
        "--max-attempts",
        "3",
        "--calls-per-second",
        "4",
        "--concurrency",
        "1",
    ]);
    let sim = e.h.sim.clone();
    common::wait_for("the first release", Duration::from_secs(30), || {
        let n = sim.releases().len();
        async move { n > 0 }
    })
    .await;
    let Env { h, dir, url } = e;
    h.shutdown().await;
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "apply with ECS gone"))
        .await
        .unwrap();
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("out of attempts"), "{}", out.stdout);
    let store = Store::connect(&url).await.unwrap();
    let open = store
        .list_releases(&ReleaseFilter {
            state: Some("in_flight".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "batches left open: {open:?}");
    drop(dir);
}

/// `history` narrows by policy, instance, kind and time, and its JSON times are RFC 3339.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_and_speaks_rfc3339() {
    let e = env(2, 1, &[CI, OTHER]).await;
    assert_eq!(e.run(&["apply"]).await.code, 0);
    let h = e
        .run(&[
            "history",
            "--json",
            "--kind",
            "succeeded",
            "--instance",
            "i-0",
        ])
        .await;
    assert_eq!(h.code, 0, "{}", h.all());
    let v: Vec<serde_json::Value> = serde_json::from_str(&h.stdout).unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["instance_id"], "i-0");
    let at = v[0]["at"].as_str().expect("`at` is a string");
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    let by_policy = e.run(&["history", "--json", "--policy", "other"]).await;
    let v: Vec<serde_json::Value> = serde_json::from_str(&by_policy.stdout).unwrap();
    assert!(
        !v.is_empty() && v.iter().all(|e| e["policy"] == "other"),
        "{v:?}"
    );
    let recent = e.run(&["history", "--json", "--since", "1h"]).await;
    let v: Vec<serde_json::Value> = serde_json::from_str(&recent.stdout).unwrap();
    assert!(!v.is_empty());
    let future = e
        .run(&["history", "--json", "--since", "2999-01-01T00:00:00Z"])
        .await;
    assert_eq!(future.stdout.trim(), "[]");
    let bad = e.run(&["history", "--since", "yesterday"]).await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("RFC 3339"), "{}", bad.stderr);
    // A filter the log has never recorded is a misspelling until shown otherwise: said, with
    // what the log holds, not answered with an empty list.
    let typo = e.run(&["history", "--kind", "succeded"]).await;
    assert_eq!(typo.code, 1, "{}", typo.all());
    assert!(
        typo.stderr
            .contains("no event is of kind \"succeded\"; did you mean \"succeeded\"?")
            && typo.stderr.contains("the kinds are batched, "),
        "{}",
        typo.stderr
    );
    // A kind that has not happened yet is no mistake: an empty answer.
    let none = e.run(&["history", "--json", "--kind", "vanished"]).await;
    assert_eq!((none.code, none.stdout.trim()), (0, "[]"), "{}", none.all());
    let typo = e.run(&["history", "--policy", "ohter"]).await;
    assert_eq!(typo.code, 0, "{}", typo.all());
    assert!(
        typo.stderr.contains(
            "Note: no event names policy \"ohter\" (did you mean \"other\"?); the log names the policies ci, other."
        ),
        "{}",
        typo.stderr
    );
    // A success shows no error.
    let q = e.run(&["queue", "list", "--json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&q.stdout).unwrap();
    assert!(rows.iter().all(|r| r["last_error"].is_null()), "{rows:?}");
}

/// On a terminal, apply shows the plan and releases only after `yes`, exactly what it showed;
/// `--detailed-exitcode` tells "released something" from "nothing to do".
/// `apply` started on a terminal (util-linux `script`), `answer` typed at its question.
fn apply_on_terminal(e: &Env, answer: &str) -> std::process::Child {
    let mut c = Command::new("script");
    c.args(["-qec", &format!("{BIN} apply"), "/dev/null"])
        .envs(common::janitor_env(&e.h, e.dir.path(), &e.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    child
}

/// On a terminal too, a policy refused for its blast radius fails the run: nothing is asked,
/// and the exit is 2 as without a terminal (it was 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_policy_fails_apply_on_a_terminal_too() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is needed to give apply a terminal");
        return;
    }
    let e = env(
        3,
        0,
        &[&format!("{CI}limits:\n  max_releases_per_run: 1\n")],
    )
    .await;
    let child = apply_on_terminal(&e, "");
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "apply on a terminal"))
        .await
        .unwrap();
    assert!(out.stdout.contains("Nothing to release."), "{}", out.stdout);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(e.real_deletes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_on_a_terminal_asks_first_and_detailed_exit_codes() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is needed to give apply a terminal");
        return;
    }
    let e = env(2, 0, &[CI]).await;
    let on_terminal = |answer: &'static str| apply_on_terminal(&e, answer);
    let child = on_terminal("no\n");
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "apply on a terminal"))
        .await
        .unwrap();
    assert!(
        out.stdout.contains("Only `yes` is accepted"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Apply cancelled"), "{}", out.stdout);
    assert!(e.real_deletes().is_empty(), "released without a yes");
    let child = on_terminal("yes\n");
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "apply on a terminal"))
        .await
        .unwrap();
    assert!(
        out.stdout.contains("Released 2 instances"),
        "{}",
        out.stdout
    );
    // Not a terminal: never asks. Nothing left: 0 with --detailed-exitcode.
    let d = e.run(&["apply", "--detailed-exitcode"]).await;
    assert_eq!(d.code, 0, "{}", d.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detailed_exit_code_two_means_released() {
    let e = env(1, 0, &[CI]).await;
    let d = e.run(&["apply", "--detailed-exitcode"]).await;
    assert_eq!(d.code, 2, "{}", d.all());
    assert_eq!(e.released(), vec!["i-0"]);
}

// ---- For people (issue 17): plans that stay readable at fleet scale -----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_groups_skips_by_reason_and_summarises() {
    let e = env(10, 0, &[CI]).await;
    for k in 2..10 {
        e.h.sim.tag(&format!("i-{k}"), "janitor:protect", "true");
    }
    let full = e.run(&["plan"]).await;
    assert_eq!(full.code, 0, "{}", full.all());
    assert!(
        full.stdout.contains("8 skipped: protected"),
        "{}",
        full.stdout
    );
    assert!(
        full.stdout
            .contains("... and 3 more protected (all in --json)"),
        "{}",
        full.stdout
    );
    let listed = full
        .stdout
        .lines()
        .filter(|l| l.contains("in cn-hangzhou skipped"))
        .count();
    assert_eq!(listed, 5, "five listed, the rest counted: {}", full.stdout);
    let summary = e.run(&["plan", "--summary"]).await;
    assert!(
        summary
            .stdout
            .contains("ci: 2 to release, ≈ ¥881/month saved; skipped: 8 protected"),
        "{}",
        summary.stdout
    );
    let hidden = e.run(&["plan", "--hide-skips"]).await;
    assert!(!hidden.stdout.contains("skipped:"), "{}", hidden.stdout);
    assert!(
        hidden
            .stdout
            .contains("Plan: 2 to release, ≈ ¥881/month saved, 8 skipped"),
        "{}",
        hidden.stdout
    );
    let json = e.run(&["plan", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        v.to_string().matches("\"protected\"").count(),
        8,
        "the JSON keeps every skip"
    );
}

/// A pause made while a DeleteInstances waits for its turn under the pacing still holds: the
/// last check runs once the pacer lets the call through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_during_the_rate_limit_wait_holds() {
    use ecs_janitor::worker::WorkerConfig;
    let (h, db, app) = in_process_paced(WorkerConfig::default(), Some(1.0)).await;
    // ECS has just throttled a DeleteInstances of this region for three seconds.
    app.ctx.accounts.client("").pacer().throttled(
        "cn-hangzhou",
        "DeleteInstances",
        Some(Duration::from_secs(3)),
        chrono::Utc::now(),
    );
    let w = app.workers.clone();
    let step = tokio::spawn(async move { w.process_next().await });
    // The re-check has gone out; the DeleteInstances now waits for the throttle to end.
    let sim = h.sim.clone();
    common::wait_for("the re-check", Duration::from_secs(10), || {
        let n = sim
            .calls()
            .iter()
            .filter(|c| c.action == "DescribeInstances" && !c.instance_ids.is_empty())
            .count();
        async move { n > 0 }
    })
    .await;
    db.store
        .pause("alice", "now", chrono::Utc::now())
        .await
        .unwrap();
    let r = step.await.unwrap().unwrap();
    assert!(
        h.sim.calls().iter().all(|c| c.action != "DeleteInstances"),
        "sent after the pause: {r:?}"
    );
    assert!(
        matches!(r, Some(ecs_janitor::worker::BatchResult::Stopped(_))),
        "{r:?}"
    );
}

/// A batch left open by another run, mixing this run's policy with another's, is outside the
/// scope: `apply --policy` neither claims it nor waits for it until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_apply_does_not_wait_on_a_batch_outside_its_scope() {
    let e = env(2, 2, &[CI, OTHER]).await;
    e.h.sim.set_faults(Faults {
        throttle_rate: 1.0,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    });
    // An unscoped run leaves one open batch holding both policies' releases.
    let first = e
        .run(&["apply", "--timeout", "1s", "--max-attempts", "1000"])
        .await;
    assert_eq!(first.code, 2, "{}", first.all());
    e.h.sim.set_faults(Faults::default());
    let started = std::time::Instant::now();
    let a = e
        .run(&["apply", "--policy", "ci", "--timeout", "20s"])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited on a batch outside its scope: {}",
        a.all()
    );
    assert!(!a.stderr.contains("--timeout 20s reached"), "{}", a.all());
    assert!(
        e.released().is_empty(),
        "a batch outside the scope was sent"
    );
}

/// In `run` (no scope), an account ECS refused as a whole is left alone for a while instead of
/// being sent one refused call after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_leaves_a_refused_account_alone_for_a_while() {
    use ecs_janitor::worker::{BatchResult, WorkerConfig};
    let (h, db, app) = in_process(WorkerConfig {
        backoff: ecs_janitor::backoff::Backoff::new(Duration::ZERO, Duration::from_secs(300)),
        ..WorkerConfig::default()
    })
    .await;
    for _ in 0..5 {
        h.sim.script(ScriptStep {
            action: "DeleteInstances".into(),
            answer: Scripted::Error {
                status: 403,
                code: "Forbidden.RAM".into(),
            },
            instance_id: None,
        });
    }
    let first = app.workers.process_next().await.unwrap();
    assert!(
        matches!(first, Some(BatchResult::RetryScheduled { .. })),
        "{first:?}"
    );
    // The batch is due again at once (no backoff floor here), but its account is left alone.
    assert!(db
        .store
        .next_due(chrono::Utc::now(), None)
        .await
        .unwrap()
        .is_some());
    assert_eq!(app.workers.process_next().await.unwrap(), None);
    let deletes = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == "DeleteInstances")
        .count();
    assert_eq!(deletes, 1);
}

/// ECS lists at most 1,000 instances for a tag-filtered DescribeInstances (the simulator models
/// it): the inventory filters tags itself, so a policy selecting 1,200 tagged instances sees and
/// releases every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_selector_over_a_thousand_instances_misses_none() {
    let many = format!("{CI}limits:\n  max_releases_per_run: 5000\n");
    let e = env(1200, 0, &[&many]).await;
    let a = e
        .run(&["apply", "--calls-per-second", "1000", "--concurrency", "4"])
        .await;
    assert_eq!(a.code, 0, "{}", a.all());
    assert_eq!(
        e.released().len(),
        1200,
        "instances hidden by the 1,000 cap"
    );
}

/// A date `days` from today (UTC), as an owner would write it in a tag.
fn day(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

/// Exemptions (issue 15): an owner's tag and an operator's `exempt` keep instances out of every
/// pass until they end; a malformed or too distant tag protects and the plan says why; an ended
/// one does not protect; `--list`, `--remove`, the limit and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemptions_by_tag_and_by_command_keep_instances_out_until_they_end() {
    let e = env(6, 0, &[CI]).await;
    e.h.sim.tag("i-1", "janitor:exempt-until", &day(10));
    e.h.sim
        .tag("i-1", "janitor:exempt-reason", "quarterly demo");
    e.h.sim.tag("i-2", "janitor:exempt-until", "after the demo");
    e.h.sim.tag("i-3", "janitor:exempt-until", &day(-2));
    e.h.sim.tag("i-5", "janitor:exempt-until", &day(400));

    // The limit holds for the command too, and a reason is required.
    let far = e
        .run(&["exempt", "i-4", "--until", &day(120), "--reason", "x"])
        .await;
    assert_eq!(far.code, 1, "{}", far.all());
    assert!(
        far.stderr.contains("more than 90 days ahead"),
        "{}",
        far.all()
    );
    // (A date ends at noon UTC the next day: the day before yesterday has always ended.)
    let past = e
        .run(&["exempt", "i-4", "--until", &day(-2), "--reason", "x"])
        .await;
    assert!(past.stderr.contains("has passed"), "{}", past.all());
    let no_reason = e.run(&["exempt", "i-4", "--until", &day(5)]).await;
    assert_eq!(no_reason.code, 2, "a usage error: {}", no_reason.all());
    let ok = e
        .run(&[
            "exempt",
            "i-4",
            "--until",
            &day(5),
            "--reason",
            "legal hold",
        ])
        .await;
    assert_eq!(ok.code, 0, "{}", ok.all());
    let list = e.run(&["exempt", "--list"]).await;
    assert!(
        list.stdout.contains("i-4")
            && list.stdout.contains("by alice@")
            && list.stdout.contains("legal hold"),
        "{}",
        list.stdout
    );
    // --json is one array, as queue list's and history's are.
    let list = e.run(&["exempt", "--list", "--json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{}", list.stdout);
    assert_eq!(rows[0]["instance_id"], "i-4");

    let p = e.run(&["plan"]).await;
    let line = |id: &str| {
        p.stdout
            .lines()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("{id} not in the plan:\n{}", p.stdout))
            .to_string()
    };
    assert!(
        line("i-1").contains("exempt until")
            && line("i-1").contains("by tag janitor:exempt-until: quarterly demo"),
        "{}",
        p.stdout
    );
    assert!(
        line("i-2").contains(
            "protected: its exemption tag janitor:exempt-until=\"after the demo\" is unreadable"
        ),
        "{}",
        p.stdout
    );
    assert!(
        line("i-4").contains("by alice@") && line("i-4").contains("legal hold"),
        "{}",
        p.stdout
    );
    assert!(
        line("i-5").contains("more than 90 days ahead"),
        "{}",
        p.stdout
    );
    let json = e.run(&["plan", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let skips = doc["policies"][0]["skips"].as_array().unwrap();
    let code = |id: &str| {
        skips
            .iter()
            .find(|s| s["instance_id"] == id)
            .map(|s| s["reason"]["code"].as_str().unwrap().to_string())
    };
    assert_eq!(code("i-1").as_deref(), Some("exempt"));
    assert_eq!(code("i-2").as_deref(), Some("exemption_invalid"));
    assert_eq!(code("i-4").as_deref(), Some("exempt"));
    assert_eq!(code("i-3"), None, "an ended exemption does not protect");

    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 0, "{}", a.all());
    assert_eq!(e.released(), vec!["i-0", "i-3"]);

    // Removing the operator's exemption makes i-4 eligible again; both are in the audit log.
    let r = e
        .run(&["exempt", "i-4", "--remove", "--reason", "hold lifted"])
        .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(e.run(&["apply"]).await.code, 0);
    assert_eq!(e.released(), vec!["i-0", "i-3", "i-4"]);
    let h = e.run(&["history", "--instance", "i-4"]).await;
    assert!(
        h.stdout.contains("exempted") && h.stdout.contains("legal hold"),
        "{}",
        h.stdout
    );
    assert!(
        h.stdout.contains("exemption_removed") && h.stdout.contains("hold lifted"),
        "{}",
        h.stdout
    );
}

/// `exempt` looks the id up where the policies look: it names the machine it exempts, refuses
/// an id no policy's region lists (a typo would leave the intended machine unprotected; found
/// trying it: `exempt i-44` was recorded without a word while i-4 was released), records it
/// with `--unchecked`, and records it with a note when it cannot ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_names_the_machine_and_refuses_an_id_no_region_lists() {
    let e = env(5, 0, &[CI]).await;
    let typo = e
        .run(&["exempt", "i-44", "--until", &day(5), "--reason", "hold"])
        .await;
    assert_eq!(typo.code, 1, "{}", typo.all());
    assert!(
        typo.stderr
            .contains("i-44 is not listed in any region the policies cover (cn-hangzhou)")
            && typo.stderr.contains("nothing was exempted")
            && typo.stderr.contains("--unchecked"),
        "{}",
        typo.all()
    );
    assert!(e
        .store()
        .await
        .exemptions(chrono::Utc::now())
        .await
        .unwrap()
        .is_empty());

    let ok = e
        .run(&["exempt", "i-4", "--until", &day(5), "--reason", "hold"])
        .await;
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(
        ok.stdout
            .contains("i-4 is \"name-i-4\" in cn-hangzhou: Stopped, PostPaid."),
        "{}",
        ok.stdout
    );

    let anyway = e
        .run(&[
            "exempt",
            "i-44",
            "--until",
            &day(5),
            "--reason",
            "hold",
            "--unchecked",
        ])
        .await;
    assert_eq!(anyway.code, 0, "{}", anyway.all());

    // A policy over a region ECS says does not exist does not turn the check off: nothing can
    // be there (found trying it: every exemption was then recorded unchecked).
    std::fs::write(
        e.dir.path().join("policies/far.yaml"),
        "name: far\nschedule: \"0 0 * * * *\"\nregions: [xx-newregion-1]\nregions_unchecked: true\nselect: {status: Stopped}\n",
    )
    .unwrap();
    let typo = e
        .run(&["exempt", "i-46", "--until", &day(5), "--reason", "hold"])
        .await;
    assert_eq!(typo.code, 1, "{}", typo.all());
    assert!(typo.stderr.contains("i-46 is not listed"), "{}", typo.all());

    // Policies that do not load: nothing to look in, so it is recorded, with a note.
    std::fs::write(e.dir.path().join("policies/broken.yaml"), "name: [").unwrap();
    let noted = e
        .run(&["exempt", "i-45", "--until", &day(5), "--reason", "hold"])
        .await;
    assert_eq!(noted.code, 0, "{}", noted.all());
    assert!(
        noted.stderr.contains("could not check that i-45 exists")
            && noted.stderr.contains("do not load"),
        "{}",
        noted.all()
    );
    let ids: Vec<String> = e
        .store()
        .await
        .exemptions(chrono::Utc::now())
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.instance_id)
        .collect();
    assert_eq!(ids, vec!["i-4", "i-44", "i-45"]);
}

/// A queued release whose instance the pass no longer lists is asked for by id: gone from
/// ECS it is settled as vanished (released by someone else, or, after a call of ours whose
/// answer was lost, probably by that call), and there but no longer matching it is cancelled
/// with its state. Found trying it: a release given up as outcome unknown, retried after its
/// instance was gone, ended "cancelled: released elsewhere, or no longer matches".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_instance_the_pass_no_longer_lists_is_told_gone_from_no_longer_matching() {
    let graced = CI.replace(
        "  status: Stopped\n",
        "  status: Stopped\nrelease:\n  grace: 2h\n",
    );
    let e = env(
        4,
        0,
        &[
            &graced,
            CI.replace("name: ci", "name: now")
                .replace("purpose: ci", "purpose: now")
                .as_str(),
        ],
    )
    .await;
    // i-3 goes through a call whose answers are all lost: given up as outcome unknown.
    e.h.sim.tag("i-3", "purpose", "now");
    e.h.sim.set_faults(Faults {
        drop_after_commit_rate: 1.0,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    });
    let first = e
        .run_with(&["apply"], &[("JANITOR_MAX_ATTEMPTS", "2")])
        .await;
    assert_eq!(e.released(), vec!["i-3"], "{}", first.all());
    e.h.sim.set_faults(Faults::default());
    let rows = e.rows().await;
    let id = |inst: &str| rows.iter().find(|r| r.instance_id == inst).unwrap().id;
    let unknown = e.store().await.release(id("i-3")).await.unwrap();
    assert_eq!(
        (unknown.state, unknown.last_code.as_deref()),
        (ReleaseState::Failed, Some("Janitor.OutcomeUnknown")),
        "{}",
        first.all()
    );
    let retry = e
        .run(&[
            "queue",
            "retry",
            &id("i-3").to_string(),
            "--reason",
            "checked",
        ])
        .await;
    assert_eq!(retry.code, 0, "{}", retry.all());

    // i-0 is released by someone else, i-1 started, while they wait out the grace.
    let client = common::client(&e.h);
    client
        .delete_instances(&ecs_janitor::ecs::client::DeleteRequest {
            region: "cn-hangzhou".into(),
            instance_ids: vec!["i-0".into()],
            force: false,
            terminate_subscription: false,
            client_token: "someone-else-0001".into(),
            dry_run: false,
        })
        .await
        .unwrap();
    e.h.sim.modify("i-1", |i| {
        i.status = ecs_janitor::ecs::InstanceStatus::Running;
    });
    // ECS lists a released instance for a while (the simulator: 3 s); wait until it does not.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let gone = ecs_janitor::ecs::client::DescribeFilter {
        instance_ids: Some(vec!["i-0".into(), "i-3".into()]),
        ..Default::default()
    };
    while !client
        .describe_instances("cn-hangzhou", &gone)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "i-0 and i-3 still listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 0, "{}", a.all());
    let store = e.store().await;
    let r0 = store.release(id("i-0")).await.unwrap();
    assert_eq!(r0.state, ReleaseState::Vanished, "{r0:?}");
    assert!(
        r0.last_error
            .as_deref()
            .is_some_and(|m| m.contains("released by someone else")),
        "{r0:?}"
    );
    let r1 = store.release(id("i-1")).await.unwrap();
    assert_eq!(r1.state, ReleaseState::Cancelled, "{r1:?}");
    assert!(
        r1.last_error
            .as_deref()
            .is_some_and(|m| m.contains("(it is Running)")),
        "{r1:?}"
    );
    let r3 = store.release(id("i-3")).await.unwrap();
    assert_eq!(r3.state, ReleaseState::Vanished, "{r3:?}");
    assert!(
        r3.last_error
            .as_deref()
            .is_some_and(|m| m.contains("probably released it")),
        "{r3:?}"
    );
    assert_eq!(
        store.release(id("i-2")).await.unwrap().state,
        ReleaseState::Pending
    );
    // The run's report says so.
    assert!(
        a.stdout
            .contains("Vanished (no longer listed by ECS; not released by this run)")
            && a.stdout.contains("i-0")
            && a.stdout.contains("i-3"),
        "{}",
        a.stdout
    );
}

/// A region that cannot be listed stops only the policies that cover it, said with the policy
/// and the region (found trying it: one policy over a new region failed the whole tick, and
/// every other policy due then released nothing, under a log line that named no policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_cannot_be_listed_stops_only_its_own_policies() {
    let far = r#"
name: far
schedule: "0 0 * * * *"
regions: [xx-newregion-1]
regions_unchecked: true
select:
  status: Stopped
"#;
    let e = env(3, 0, &[CI, far]).await;
    // plan shows the others and says why far is not planned (it failed as a whole).
    let p = e.run(&["plan"]).await;
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        p.stdout.contains("i-0") && p.stdout.contains("will be released"),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout
            .contains("! not planned: cannot list the instances of xx-newregion-1")
            && p.stdout
                .contains("1 policy not planned (a region could not be listed)"),
        "{}",
        p.stdout
    );
    let sum = e.run(&["plan", "--summary"]).await;
    assert!(
        sum.stdout
            .contains("far: not planned: cannot list the instances of xx-newregion-1"),
        "{}",
        sum.stdout
    );
    let j = e.run(&["plan", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let far_plan = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "far")
        .unwrap();
    assert!(
        far_plan["error"]
            .as_str()
            .is_some_and(|e| e.contains("xx-newregion-1")),
        "{far_plan}"
    );
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert_eq!(e.released(), vec!["i-0", "i-1", "i-2"], "{}", a.all());
    // A policy set aside still owns what it matches first in the regions that were listed: a
    // policy before ci (policies take their turns in name order) over cn-hangzhou and the
    // failing region keeps i-3 from ci.
    let first = r#"
name: a-first
schedule: "0 0 * * * *"
regions: [cn-hangzhou, xx-newregion-1]
regions_unchecked: true
select:
  instance_ids: [i-3]
"#;
    let e2 = env(5, 0, &[first, CI]).await;
    let a2 = e2.run(&["apply"]).await;
    assert_eq!(a2.code, 2, "{}", a2.all());
    assert_eq!(
        e2.released(),
        vec!["i-0", "i-1", "i-2", "i-4"],
        "{}",
        a2.all()
    );
    assert!(
        a2.stdout.contains("Policy a-first did nothing"),
        "{}",
        a2.stdout
    );
    assert!(
        a.stdout
            .contains("Policy far did nothing: cannot list the instances of xx-newregion-1"),
        "{}",
        a.stdout
    );
    let h = e.run(&["history", "--policy", "far"]).await;
    assert!(
        h.stdout.contains("run_failed") && h.stdout.contains("xx-newregion-1"),
        "{}",
        h.all()
    );
}

/// `plan --summary` words a dry-run policy's graced releases as what would happen, not as
/// releases waiting (found trying it: "38 waiting out their grace" while none was queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_summary_says_its_releases_would_wait() {
    let graced = CI.replace(
        "  status: Stopped\n",
        "  status: Stopped\nrelease:\n  grace: 2h\ndry_run: true\n",
    );
    let e = env(3, 0, &[&graced]).await;
    let sum = e.run(&["plan", "--summary"]).await;
    assert_eq!(sum.code, 0, "{}", sum.all());
    assert!(
        sum.stdout.contains("3 would wait out their grace")
            && !sum.stdout.contains("waiting out their grace"),
        "{}",
        sum.stdout
    );
}

/// An exemption written while a release waits out its grace cancels it at once (the command) or
/// at the re-check before the call (the tag): never released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exemption_after_queueing_stops_the_release() {
    let graced = CI.replace(
        "  status: Stopped\n",
        "  status: Stopped\nrelease:\n  grace: 2h\n",
    );
    let e = env(2, 0, &[&graced]).await;
    assert_eq!(e.run(&["apply"]).await.code, 0);
    let rows = e.rows().await;
    assert_eq!(rows.len(), 2);
    let x = e
        .run(&[
            "exempt",
            "i-0",
            "--until",
            &day(3),
            "--reason",
            "owner asked",
        ])
        .await;
    assert_eq!(x.code, 0, "{}", x.all());
    assert!(
        x.stdout.contains("Cancelled its pending release"),
        "{}",
        x.stdout
    );
    let id0 = rows.iter().find(|r| r.instance_id == "i-0").unwrap().id;
    let store = e.store().await;
    assert_eq!(
        store.release(id0).await.unwrap().state,
        ReleaseState::Cancelled
    );
    let h = e
        .run(&["history", "--instance", "i-0", "--kind", "cancelled"])
        .await;
    assert!(
        h.stdout.contains("by alice@") && h.stdout.contains("owner asked"),
        "{}",
        h.stdout
    );
    // The owner of i-1 tags it while it waits: the next pass cancels it as no longer eligible.
    e.h.sim.tag("i-1", "janitor:exempt-until", &day(1));
    assert_eq!(e.run(&["apply"]).await.code, 0);
    let id1 = rows.iter().find(|r| r.instance_id == "i-1").unwrap().id;
    assert_eq!(
        store.release(id1).await.unwrap().state,
        ReleaseState::Cancelled
    );
    let p = e.run(&["plan"]).await;
    assert!(
        p.stdout.contains("by tag janitor:exempt-until"),
        "{}",
        p.stdout
    );
    assert!(e.real_deletes().is_empty(), "{:?}", e.real_deletes());
}

/// `ci` with `release.snapshot` of every disk, kept 7 days.
fn snapshotting() -> String {
    CI.replace(
        "  status: Stopped\n",
        "  status: Stopped\nrelease:\n  snapshot: {retention_days: 7, disks: all}\n",
    )
}

impl Env {
    /// The ids of the disks of `instance` (before any release).
    fn disks_of(&self, instance: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .h
            .sim
            .disks()
            .into_iter()
            .filter(|d| d.instance_id == instance)
            .map(|d| d.disk_id)
            .collect();
        v.sort();
        v
    }

    /// Every snapshot's source disk, sorted.
    fn snapshotted_disks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .h
            .sim
            .snapshots()
            .into_iter()
            .map(|s| s.source_disk_id)
            .collect();
        v.sort();
        v
    }

    /// Each released instance was released only after every snapshot of its disks was
    /// accomplished (a progressing one would have gone with its disk).
    fn assert_released_after_snapshots(&self, disks: &[(String, Vec<String>)]) {
        let snaps = self.h.sim.snapshots();
        for r in self.h.sim.releases() {
            let (_, want) = disks.iter().find(|(i, _)| *i == r.instance_id).unwrap();
            for d in want {
                let s = snaps
                    .iter()
                    .find(|s| &s.source_disk_id == d)
                    .unwrap_or_else(|| {
                        panic!("{} released without a snapshot of {d}", r.instance_id)
                    });
                assert!(
                    s.done_at <= r.at,
                    "{} released while {d}'s snapshot progressed",
                    r.instance_id
                );
                assert!(!s.fails);
                assert_eq!(s.retention_days, Some(7));
                assert_eq!(s.tags.get("janitor:source-instance"), Some(&r.instance_id));
                assert_eq!(s.tags.get("janitor:policy").map(String::as_str), Some("ci"));
            }
        }
    }
}

/// Snapshot before release (issue 15): every disk is snapshotted, with RetentionDays and the
/// source tags, and DeleteInstances waits until each snapshot is accomplished; the stage shows
/// in the queue and the audit log; a dry run takes no snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_accomplished_before_the_release_and_outlive_it() {
    let e = env(2, 0, &[&snapshotting()]).await;
    let disks: Vec<(String, Vec<String>)> = ["i-0", "i-1"]
        .iter()
        .map(|i| (i.to_string(), e.disks_of(i)))
        .collect();
    let dry = e.run(&["apply", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(e.h.sim.snapshots().is_empty(), "a dry run took a snapshot");
    assert!(!e.h.sim.calls().iter().any(|c| c.action == "CreateSnapshot"));

    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 0, "{}", a.all());
    assert_eq!(e.released(), vec!["i-0", "i-1"]);
    let mut all: Vec<String> = disks.iter().flat_map(|(_, d)| d.clone()).collect();
    all.sort();
    assert_eq!(e.snapshotted_disks(), all, "one snapshot per disk, no more");
    e.assert_released_after_snapshots(&disks);
    let h = e.run(&["history", "--kind", "snapshotted"]).await;
    assert_eq!(
        h.stdout.matches("every snapshot accomplished").count(),
        2,
        "{}",
        h.stdout
    );
}

/// A snapshot that fails fails its release, with the code: never released without it; the
/// other instance goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_fails_the_release_and_keeps_the_instance() {
    let e = env(2, 0, &[&snapshotting()]).await;
    let d0 = e.disks_of("i-0");
    e.h.sim.fail_snapshots_of(&d0[0]);
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 2, "{}", a.all());
    assert!(a.stdout.contains("Janitor.SnapshotFailed"), "{}", a.stdout);
    assert_eq!(e.released(), vec!["i-1"]);
    let rows = e.rows().await;
    let r0 = rows.iter().find(|r| r.instance_id == "i-0").unwrap();
    assert_eq!(r0.state, ReleaseState::Failed);
    assert_eq!(r0.last_code.as_deref(), Some("Janitor.SnapshotFailed"));
}

/// Killed (SIGKILL) after CreateSnapshot and before DeleteInstances: the next apply resumes the
/// stage with the stored tokens, so no disk gets a second snapshot, and releases only once every
/// snapshot is accomplished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_create_snapshot_and_delete_instances_resumes_with_the_same_tokens() {
    let e = env(2, 0, &[&snapshotting()]).await;
    let disks: Vec<(String, Vec<String>)> = ["i-0", "i-1"]
        .iter()
        .map(|i| (i.to_string(), e.disks_of(i)))
        .collect();
    let mut child = e.spawn(&["apply"]);
    let h = e.h.sim.clone();
    common::wait_for("a first snapshot", Duration::from_secs(30), || {
        let n = h.snapshots().len();
        async move { n > 0 }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        e.real_deletes().is_empty(),
        "released before its snapshots were accomplished"
    );
    let a = e.run(&["apply"]).await;
    assert_eq!(a.code, 0, "{}", a.all());
    assert_eq!(e.released(), vec!["i-0", "i-1"]);
    let mut all: Vec<String> = disks.iter().flat_map(|(_, d)| d.clone()).collect();
    all.sort();
    assert_eq!(
        e.snapshotted_disks(),
        all,
        "a disk was snapshotted twice after the crash"
    );
    e.assert_released_after_snapshots(&disks);
    // Every CreateSnapshot token named one disk: a resend after the crash reused it.
    let mut by_token: std::collections::HashMap<String, usize> = Default::default();
    for c in
        e.h.sim
            .calls()
            .iter()
            .filter(|c| c.action == "CreateSnapshot")
    {
        *by_token.entry(c.client_token.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(
        by_token.len(),
        all.len(),
        "one token per disk: {by_token:?}"
    );
}

/// A release queued under a snapshotting policy that is then unloaded (or made dry_run) is
/// cancelled before any snapshot is taken, as the re-check before DeleteInstances would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_is_taken_for_a_policy_no_longer_loaded() {
    use ecs_janitor::backoff::Backoff;
    use ecs_janitor::worker::WorkerConfig;
    let h = common::start_sim(common::ci_fleet(2), Faults::default(), 3).await;
    let db = common::sqlite().await;
    let policies = common::policies(&snapshotting());
    let app = common::Pipeline {
        cfg: WorkerConfig {
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(50)),
            ..WorkerConfig::default()
        },
        ..common::Pipeline::new(&db.store, common::client(&h), policies.clone())
    }
    .build();
    let now = chrono::Utc::now();
    app.reconciler
        .pass(&policies, now, None, now)
        .await
        .unwrap();
    assert_eq!(
        db.store.counts().await.unwrap().pending,
        2,
        "queued, not yet snapshotted"
    );
    let mut dry = policies.clone();
    dry[0].dry_run = true;
    app.set_policies(dry);
    app.workers
        .drain(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let rows = db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    assert!(
        rows.iter().all(|r| r.state == ReleaseState::Cancelled),
        "{rows:?}"
    );
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("now dry_run"),
        "{rows:?}"
    );
    assert!(h.sim.snapshots().is_empty());
    assert!(h.sim.releases().is_empty());
}

/// A snapshot deleted after the stage found it accomplished (its RetentionDays ended while the
/// batch waited, or someone deleted it) stops the release right before DeleteInstances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_gone_before_the_call_cancels_the_release() {
    use ecs_janitor::backoff::Backoff;
    use ecs_janitor::sim::{ScriptStep, Scripted};
    use ecs_janitor::worker::WorkerConfig;
    let h = common::start_sim(common::ci_fleet(1), Faults::default(), 5).await;
    let db = common::sqlite().await;
    let policies = common::policies(&snapshotting());
    let app = common::Pipeline {
        cfg: WorkerConfig {
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
            ..WorkerConfig::default()
        },
        ..common::Pipeline::new(&db.store, common::client(&h), policies.clone())
    }
    .build();
    let now = chrono::Utc::now();
    app.reconciler
        .pass(&policies, now, None, now)
        .await
        .unwrap();
    // The stage takes the snapshots; wait until the simulator has accomplished them.
    app.workers.step().await.unwrap();
    assert!(!h.sim.snapshots().is_empty());
    let sim = h.sim.clone();
    common::wait_for(
        "the snapshots accomplished",
        Duration::from_secs(20),
        || {
            let done = sim
                .snapshots()
                .iter()
                .all(|s| s.done_at <= chrono::Utc::now());
            async move { done }
        },
    )
    .await;
    // The stage finds them accomplished and a batch takes the release; its re-check is refused
    // once, so the batch waits, and meanwhile one snapshot is deleted.
    h.sim.script(ScriptStep {
        action: "DescribeInstances".into(),
        answer: Scripted::Error {
            status: 400,
            code: "InvalidParameter".into(),
        },
        instance_id: None,
    });
    app.workers.step().await.unwrap();
    assert!(h.sim.releases().is_empty());
    let first = h.sim.snapshots()[0].snapshot_id.clone();
    assert!(h.sim.delete_snapshot(&first));
    app.workers
        .drain(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(h.sim.releases().is_empty(), "released without its snapshot");
    let rows = db
        .store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    assert_eq!(rows[0].state, ReleaseState::Cancelled, "{rows:?}");
    let why = rows[0].last_error.clone().unwrap_or_default();
    assert!(
        why.contains(&format!("its snapshot {first}")) && why.contains("no longer exists"),
        "{why}"
    );
}

/// `--policy` leaves the other policies out of the pass, not out of the rules: an instance a
/// policy earlier in name order matches stays that policy's, even when it is refused (over its
/// limit) or a dry run, so `apply --policy` of a later one releases none of it, as the full plan
/// says (found trying `apply --policy` beside a broad policy refused for its blast radius).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_named_alone_releases_nothing_an_earlier_policy_owns() {
    let broad = r#"
name: a-broad
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select:
  status: Stopped
limits: {max_releases_per_run: 2}
"#;
    let trial = r#"
name: a-trial
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
dry_run: true
select:
  tags: {purpose: other}
"#;
    let e = env(3, 2, &[broad, trial, CI, OTHER]).await;
    let full = e.run(&["plan"]).await;
    assert!(
        full.stdout.contains("Plan: 0 to release"),
        "{}",
        full.stdout
    );
    for name in ["ci", "other"] {
        let p = e.run(&["plan", "--policy", name]).await;
        assert!(
            p.stdout
                .contains("also matched by a-broad, which comes first"),
            "{}",
            p.stdout
        );
        assert!(p.stdout.contains("Plan: 0 to release"), "{}", p.stdout);
        let a = e.run(&["apply", "--policy", name]).await;
        assert_eq!(a.code, 0, "{}", a.all());
    }
    assert_eq!(
        e.real_deletes(),
        Vec::<Vec<String>>::new(),
        "a policy named alone released what a-broad owns"
    );
    // Without a-broad, the dry-run trial owns the `other` instances: `other` still waits.
    std::fs::remove_file(e.dir.path().join("policies/p0.yaml")).unwrap();
    let a = e.run(&["apply", "--policy", "other"]).await;
    assert_eq!(a.code, 0, "{}", a.all());
    assert_eq!(e.real_deletes(), Vec::<Vec<String>>::new(), "{}", a.all());
    // A policy of an account with no credentials here does not stop another policy named
    // alone: it only owns what it matches, which needs no call.
    std::fs::write(
        e.dir.path().join("policies/p9.yaml"),
        "name: zz-prod\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\naccount: prod\nselect: {tags: {purpose: nothing}}\n",
    )
    .unwrap();
    let a = e.run(&["apply", "--policy", "ci"]).await;
    assert!(a.stdout.contains("Released 3 instances"), "{}", a.all());
}

/// Two applies on one queue each report what their own workers carried out: together, every
/// release once (found trying `apply & apply`: each reported all 271 releases and their
/// savings, twice the truth in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applies_side_by_side_each_report_only_their_own_releases() {
    let many = format!("{CI}limits:\n  max_releases_per_run: 1000\n");
    let mut e = env(0, 0, &[&many]).await;
    // A round trip per call, so that the two runs overlap: both plan, both work the queue.
    let faults = Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    };
    e.h = common::start_sim(common::ci_fleet(150), faults, 7).await;
    let (a, b) = (e.spawn(&["apply"]), e.spawn(&["apply"]));
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            wait_bounded(a, "first apply"),
            wait_bounded(b, "second apply"),
        )
    })
    .await
    .unwrap();
    let released = |o: &Out| -> usize {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix("Released "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        e.real_deletes().concat().len(),
        150,
        "{}\n{}",
        a.all(),
        b.all()
    );
    assert_eq!(
        released(&a) + released(&b),
        150,
        "the two reports:\n{}\n{}",
        a.all(),
        b.all()
    );
}
