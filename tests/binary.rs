//! Black-box tests of the `ecs-janitor` binary against the in-process simulator: crash recovery
//! after SIGKILL, SIGTERM during a drain, the daemon with hot reload, and two daemons sharing one
//! PostgreSQL database.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, fleet, Faults, SimHandle};
use ecs_janitor::store::{ReleaseFilter, Store};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");

const STOPPED_PAYG: &str = r#"
name: stopped-payg
schedule: "* * * * * *"
regions: [cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]
select:
  charge_type: PostPaid
  status: Stopped
limits:
  max_releases_per_run: 100000
"#;

fn expected(fleet: &[Instance], regions: &[&str]) -> BTreeSet<String> {
    fleet
        .iter()
        .filter(|i| {
            regions.contains(&i.region_id.as_str())
                && i.charge_type == ChargeType::PostPaid
                && i.status == InstanceStatus::Stopped
                && i.tags.get("janitor:protect").map(String::as_str) != Some("true")
                && !i.deletion_protection
                && !i.security_locked()
        })
        .map(|i| i.instance_id.clone())
        .collect()
}

const ALL_REGIONS: [&str; 4] = ["cn-hangzhou", "cn-shanghai", "cn-beijing", "ap-southeast-1"];

fn janitor(h: &SimHandle, dir: &Path, db_url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .envs(common::janitor_env(h, dir, db_url))
        .stdin(Stdio::null());
    // Files, not pipes: a child must never block on a full pipe nobody reads yet.
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let out = std::fs::File::create(dir.join(format!("out-{n}.txt"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("err-{n}.txt"))).unwrap();
    c.stdout(out)
        .stderr(err)
        .env("JANITOR_TEST_RUN", n.to_string());
    c
}

static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What a finished child printed.
struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn write_policy(dir: &Path, file: &str, yaml: &str) {
    let p = dir.join("policies");
    std::fs::create_dir_all(&p).unwrap();
    // Write then rename, as git checkouts and config mounts do, so a reader never sees half.
    let tmp = p.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, p.join(file)).unwrap();
}

fn released(h: &SimHandle) -> BTreeSet<String> {
    h.sim
        .releases()
        .into_iter()
        .map(|r| r.instance_id)
        .collect()
}

/// Waits (bounded: a hung child fails the test rather than CI) and reads what it printed.
fn finish(dir: &Path, mut child: Child, what: &str) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish: {}", last_output(dir).1);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = last_output(dir);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The stdout and stderr of the newest child started for the test that owns `dir`.
fn last_output(dir: &Path) -> (String, String) {
    let n = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("out-")?
                .strip_suffix(".txt")?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let read =
        |k: &str| std::fs::read_to_string(dir.join(format!("{k}-{n}.txt"))).unwrap_or_default();
    (read("out"), read("err"))
}

async fn all_succeeded(url: &str, want: usize) {
    let store = Store::connect(url).await.unwrap();
    let rows = store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let ok = rows
        .iter()
        .filter(|r| r.state == "succeeded" && r.request_id.is_some())
        .count();
    assert_eq!(
        ok,
        want,
        "every release is recorded as succeeded with its RequestId: {:?}",
        rows.iter()
            .filter(|r| r.state != "succeeded")
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_with_sigkill_resumes_and_releases_exactly_once() {
    let fleet = fleet::generate(3000, 31, Utc::now());
    let want = expected(&fleet, &ALL_REGIONS);
    let faults = Faults {
        internal_error_rate: 0.2,
        throttle_rate: 0.1,
        drop_after_commit_rate: 0.1,
        latency: Duration::from_millis(5),
        actions: vec!["DeleteInstances".into()],
    };
    let h = common::start_sim(fleet, faults, 31).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), "p.yaml", STOPPED_PAYG);
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    // Kill it several times, each once something more was released.
    for round in 0..3 {
        let before = h.sim.releases().len();
        let child = janitor(&h, dir.path(), &url, &["apply", "--calls-per-second", "8"])
            .spawn()
            .unwrap();
        let total = want.len();
        common::wait_for(
            "a release during this round",
            Duration::from_secs(60),
            || {
                let n = h.sim.releases().len();
                async move { n > before || n == total }
            },
        )
        .await;
        let mut child = child;
        child.kill().unwrap();
        let _ = child.wait();
        if released(&h).len() == want.len() {
            eprintln!("everything released by round {round}");
            break;
        }
    }
    let out = finish(
        dir.path(),
        janitor(&h, dir.path(), &url, &["apply"]).spawn().unwrap(),
        "the last apply",
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(released(&h), want);
    common::assert_tokens_consistent(&h);
    all_succeeded(&url, want.len()).await;
    assert!(out.stdout.contains("failed"), "the summary is printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_leaves_a_consistent_queue() {
    let fleet = fleet::generate(3000, 32, Utc::now());
    let want = expected(&fleet, &ALL_REGIONS);
    let faults = Faults {
        latency: Duration::from_millis(30),
        ..Faults::default()
    };
    let h = common::start_sim(fleet, faults, 32).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), "p.yaml", STOPPED_PAYG);
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let child = janitor(
        &h,
        dir.path(),
        &url,
        &["apply", "--calls-per-second", "2", "--concurrency", "1"],
    )
    .spawn()
    .unwrap();
    common::wait_for("the first release", Duration::from_secs(60), || {
        let n = h.sim.releases().len();
        async move { n > 0 }
    })
    .await;
    common::sigterm(&child);
    let out = finish(dir.path(), child, "apply after SIGTERM");
    // A graceful stop that left work exits 2 and says what is left.
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stdout.contains("Stopped before the queue was done"),
        "{}",
        out.stdout
    );
    let partial = released(&h);
    assert!(partial.len() < want.len(), "it stopped before the end");
    // Consistent: what ECS released is what the queue says succeeded, nothing more.
    let store = Store::connect(&url).await.unwrap();
    let rows = store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let done: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.state == "succeeded")
        .map(|r| r.instance_id.clone())
        .collect();
    assert_eq!(done, partial);
    assert!(rows
        .iter()
        .all(|r| r.state != "in_flight" || r.client_token.is_some()));
    drop(store);
    let out = finish(
        dir.path(),
        janitor(&h, dir.path(), &url, &["apply"]).spawn().unwrap(),
        "apply again",
    );
    assert!(out.status.success());
    assert_eq!(released(&h), want);
    common::assert_tokens_consistent(&h);
}

/// Waits until the store at `url` records `n` succeeded releases: ECS may have released an
/// instance whose answer was lost, and the record follows when the retry (same token) answers.
async fn wait_recorded(url: &str, n: usize) {
    let store = Store::connect(url).await.unwrap();
    common::wait_for("every release recorded", Duration::from_secs(90), || {
        let store = store.clone();
        async move {
            store
                .counts()
                .await
                .map(|c| c.succeeded == n as i64)
                .unwrap_or(false)
        }
    })
    .await;
}

/// Runs `ready` (the container's health check), built by [`janitor`]; its output, once its exit
/// code is checked to be `code`.
fn ready_exits(dir: &Path, mut ready: Command, code: i32, what: &str) -> Output {
    let out = finish(dir, ready.spawn().unwrap(), what);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        out.stdout,
        out.stderr
    );
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the readiness page `ready` reports a refused policy change mentioning `what`,
/// then checks the daemon is still ready on its last good set.
async fn refused_and_still_ready(ready: &str, what: &str) {
    common::wait_for(
        &format!("the refused change ({what}) to be reported"),
        Duration::from_secs(30),
        || async move {
            match reqwest::get(ready).await {
                Ok(r) => r.text().await.unwrap_or_default().contains(what),
                Err(_) => false,
            }
        },
    )
    .await;
    assert_eq!(
        http_status(ready).await,
        Some(200),
        "still ready on the last good set"
    );
}

async fn http_status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reconciles_on_schedule_reloads_policies_and_stops_on_sigterm() {
    let fleet = fleet::generate(2000, 33, Utc::now());
    let want_hz = expected(&fleet, &["cn-hangzhou"]);
    let want_all = expected(&fleet, &ALL_REGIONS);
    let h = common::start_sim(fleet, Faults::default(), 33).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(
        dir.path(),
        "p.yaml",
        &STOPPED_PAYG.replace(
            "[cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]",
            "[cn-hangzhou]",
        ),
    );
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = janitor(
        &h,
        dir.path(),
        &url,
        &["run", "--listen", &listen, "--reload-ms", "200"],
    )
    .spawn()
    .unwrap();
    let ready = format!("http://{listen}/readyz");
    common::wait_for("readiness", Duration::from_secs(30), || {
        let u = ready.clone();
        async move { http_status(&u).await == Some(200) }
    })
    .await;
    assert_eq!(
        http_status(&format!("http://{listen}/healthz")).await,
        Some(200)
    );
    // The container's health check: `ready` asks /readyz on the listen address, a 0.0.0.0
    // one (as the image sets it) on the loopback.
    let any = format!("0.0.0.0:{port}");
    let mut asked = janitor(&h, dir.path(), &url, &["ready"]);
    asked.env("JANITOR_LISTEN", &any);
    let out = ready_exits(dir.path(), asked, 0, "ready");
    assert!(
        out.stdout
            .contains(&format!("ready: http://127.0.0.1:{port}/readyz")),
        "{}",
        out.stdout
    );
    // A second daemon on the same SQLite file is refused, naming the file (it used to run
    // beside the first, logging "database is locked" for as long as both ran).
    let other = format!("127.0.0.1:{}", free_port());
    let second = janitor(&h, dir.path(), &url, &["run", "--listen", &other])
        .spawn()
        .unwrap();
    let out = finish(dir.path(), second, "a second run");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("another `ecs-janitor run` uses the SQLite database sqlite://")
            && out.stderr.contains("PostgreSQL"),
        "{}",
        out.stderr
    );
    common::wait_for(
        "the first policy's releases",
        Duration::from_secs(60),
        || {
            let done = released(&h) == want_hz;
            async move { done }
        },
    )
    .await;
    // An invalid change is refused; the daemon keeps running the last good set.
    write_policy(
        dir.path(),
        "broken.yaml",
        "name: Broken Name\nschedule: nope\n",
    );
    refused_and_still_ready(&ready, "broken.yaml").await;
    // A folder emptied is refused too (a daemon with no policy would stop releasing and show
    // nothing for it); the last good set keeps running.
    for f in std::fs::read_dir(dir.path().join("policies")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    refused_and_still_ready(&ready, "holds no policy").await;
    // A fixed set that covers every region takes effect within seconds.
    write_policy(dir.path(), "p.yaml", STOPPED_PAYG);
    common::wait_for(
        "the reloaded policy's releases",
        Duration::from_secs(60),
        || {
            let done = released(&h) == want_all;
            async move { done }
        },
    )
    .await;
    wait_recorded(&url, want_all.len()).await;
    common::assert_tokens_consistent(&h);
    common::sigterm(&child);
    let out = finish(dir.path(), child, "run after SIGTERM");
    assert!(out.status.success(), "{}", out.stderr);
    all_succeeded(&url, want_all.len()).await;
    // Stopped: not ready, and says why.
    let asked = janitor(&h, dir.path(), &url, &["ready", "--listen", &listen]);
    let out = ready_exits(dir.path(), asked, 1, "ready after the daemon stopped");
    assert!(
        out.stderr
            .contains(&format!("not ready: {ready}: cannot reach it")),
        "{}",
        out.stderr
    );
}

/// A policy renamed while its releases wait out their grace: the daemon calls them off as it
/// loads the new set, and the new name queues them (they sat under the old name until their
/// time, holding their instances, then were cancelled in silence at the re-check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_calls_off_a_renamed_policys_releases_and_queues_them_under_the_new_name() {
    let fleet = fleet::generate(300, 35, Utc::now());
    let want = expected(&fleet, &["cn-hangzhou"]);
    assert!(!want.is_empty());
    let h = common::start_sim(fleet, Faults::default(), 35).await;
    let dir = tempfile::tempdir().unwrap();
    let graced = STOPPED_PAYG
        .replace(
            "[cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]",
            "[cn-hangzhou]",
        )
        .replace("limits:", "release:\n  grace: 6h\nlimits:");
    write_policy(dir.path(), "p.yaml", &graced);
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let listen = format!("127.0.0.1:{}", free_port());
    let child = janitor(
        &h,
        dir.path(),
        &url,
        &["run", "--listen", &listen, "--reload-ms", "200"],
    )
    .spawn()
    .unwrap();
    let store = Store::connect(&url).await.unwrap();
    let queued_under = |policy: &'static str| {
        let store = store.clone();
        async move {
            store
                .list_releases(&ReleaseFilter::default())
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.policy == policy && r.state == "pending")
                .map(|r| r.instance_id)
                .collect::<BTreeSet<String>>()
        }
    };
    common::wait_for("releases queued", Duration::from_secs(60), || {
        let q = queued_under("stopped-payg");
        let want = want.clone();
        async move { q.await == want }
    })
    .await;
    write_policy(
        dir.path(),
        "p.yaml",
        &graced.replace("name: stopped-payg", "name: payg-renamed"),
    );
    common::wait_for("queued under the new name", Duration::from_secs(60), || {
        let q = queued_under("payg-renamed");
        let want = want.clone();
        async move { q.await == want }
    })
    .await;
    assert!(queued_under("stopped-payg").await.is_empty());
    let rows = store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let old: Vec<_> = rows.iter().filter(|r| r.policy == "stopped-payg").collect();
    assert_eq!(old.len(), want.len());
    for r in old {
        assert_eq!(r.state, "cancelled", "{r:?}");
        assert!(
            r.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("stopped-payg is no longer loaded"),
            "{r:?}"
        );
    }
    assert!(released(&h).is_empty(), "nothing released during the grace");
    common::sigterm(&child);
    let out = finish(dir.path(), child, "run after SIGTERM");
    assert!(out.status.success(), "{}", out.stderr);
}

/// A replica that kills `replica-a` in the middle of its first tick's pass (the tick a few
/// seconds from now, one a minute: no later tick comes to supersede it) and returns what it
/// left, with the means to start more replicas on the same database.
struct KilledMidPass {
    h: SimHandle,
    dir: tempfile::TempDir,
    url: String,
    store: Store,
    policy: String,
    left: Vec<ecs_janitor::store::RunRow>,
}

impl KilledMidPass {
    async fn new(seed: u64) -> KilledMidPass {
        let fleet = fleet::generate(200, seed, Utc::now());
        let faults = Faults {
            latency: Duration::from_millis(1500),
            actions: vec!["DescribeInstances".into()],
            ..Faults::default()
        };
        let h = common::start_sim(fleet, faults, seed).await;
        let dir = tempfile::tempdir().unwrap();
        let second = (Utc::now() + chrono::Duration::seconds(4))
            .format("%S")
            .to_string();
        let policy = STOPPED_PAYG
            .replace(
                "[cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]",
                "[cn-hangzhou]",
            )
            .replace("\"* * * * * *\"", &format!("\"{second} * * * * *\""))
            .replace("limits:", "release:\n  grace: 6h\nlimits:");
        write_policy(dir.path(), "p.yaml", &policy);
        let url = format!("sqlite://{}", dir.path().join("j.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut k = KilledMidPass {
            h,
            dir,
            url,
            store,
            policy,
            left: Vec::new(),
        };
        let mut a = k.replica("replica-a");
        common::wait_for("replica-a's pass", Duration::from_secs(90), || {
            let store = k.store.clone();
            async move {
                store
                    .runs(10)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.owner == "replica-a" && r.finished_at.is_none())
            }
        })
        .await;
        a.kill().unwrap();
        a.wait().unwrap();
        k.left = k.runs().await;
        assert_eq!(k.left.len(), 1, "{:?}", k.left);
        assert!(k.left[0].finished_at.is_none(), "{:?}", k.left);
        k
    }

    fn replica(&self, name: &str) -> Child {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "run",
            "--listen",
            &listen,
            "--lease-secs",
            "2",
            "--replica-id",
            name,
        ];
        janitor(&self.h, self.dir.path(), &self.url, &args)
            .spawn()
            .unwrap()
    }

    async fn runs(&self) -> Vec<ecs_janitor::store::RunRow> {
        self.store.runs(10).await.unwrap_or_default()
    }

    /// Waits until the tick replica-a left is finished, by whichever replica.
    async fn wait_closed(&self) -> Vec<ecs_janitor::store::RunRow> {
        common::wait_for("the tick taken over", Duration::from_secs(40), || {
            let store = self.store.clone();
            let tick = self.left[0].scheduled_for;
            async move {
                store
                    .runs(10)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.scheduled_for == tick && r.finished_at.is_some())
            }
        })
        .await;
        self.runs().await
    }

    fn stop(&self, child: Child, what: &str) {
        common::sigterm(&child);
        let out = finish(self.dir.path(), child, what);
        assert!(out.status.success(), "{}", out.stderr);
    }
}

/// A replica killed in the middle of a tick's pass: another takes the tick over once the
/// lease on it ends, and reconciles it (found in a user trial: the tick stayed "running" under
/// the dead replica's name for good, and a daily policy lost its day).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_left_by_a_killed_replica_is_taken_over_and_reconciled() {
    let k = KilledMidPass::new(36).await;
    let b = k.replica("replica-b");
    let done = k.wait_closed().await;
    assert_eq!(
        done.len(),
        1,
        "the same tick, reconciled once more: {done:?}"
    );
    assert_eq!(done[0].owner, "replica-b", "{done:?}");
    assert_eq!(done[0].outcome.map(|o| o.as_str()), Some("ok"), "{done:?}");
    assert!(done[0].planned > 0, "{done:?}");
    k.stop(b, "replica-b after SIGTERM");
}

/// The same, but the policy was renamed before another replica came: the tick is not run
/// under a name nothing loads; it is closed as failed, once, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_left_by_a_killed_replica_of_a_policy_since_renamed_is_closed_saying_why() {
    let k = KilledMidPass::new(38).await;
    let renamed = k
        .policy
        .replace("name: stopped-payg", "name: stopped-payg-2");
    assert_ne!(renamed, k.policy);
    write_policy(k.dir.path(), "p.yaml", &renamed);
    let b = k.replica("replica-b");
    let done = k.wait_closed().await;
    let left = done
        .iter()
        .find(|r| r.scheduled_for == k.left[0].scheduled_for && r.policy == "stopped-payg")
        .unwrap_or_else(|| panic!("{done:?}"));
    assert_eq!(left.outcome.map(|o| o.as_str()), Some("error"), "{done:?}");
    assert_eq!(left.planned, 0, "not run under the old name: {done:?}");
    let told = k
        .store
        .events_where(&ecs_janitor::store::EventFilter {
            kind: Some("run_failed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    let why = told[0].detail.clone();
    assert!(
        why.contains("replica replica-a stopped during this tick's pass")
            && why.contains("the policy is no longer loaded"),
        "{why}"
    );
    k.stop(b, "replica-b after SIGTERM");
}

/// Two replicas on one database with different policy sets (one on an old checkout): neither
/// sends DeleteInstances until they run the same files, and both say why (found in a user
/// trial: nothing noticed, the stale replica kept queueing what the others cancelled, and it
/// could release under a policy deleted on purpose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_running_different_policy_sets_release_nothing_until_they_agree() {
    let Some(db) = common::postgres().await else {
        return;
    };
    let fleet = fleet::generate(300, 37, Utc::now());
    let want = expected(&fleet, &["cn-hangzhou"]);
    assert!(!want.is_empty());
    let h = common::start_sim(fleet, Faults::default(), 37).await;
    let policy = STOPPED_PAYG.replace(
        "[cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]",
        "[cn-hangzhou]",
    );
    let extra = "name: extra\nschedule: \"0 0 3 * * *\"\nregions: [cn-hangzhou]\nselect:\n  tags: {purpose: none}\ndry_run: true\n";
    let store = Store::connect(&db.url).await.unwrap();
    // Paused while both start, so that neither releases before it has seen the other.
    store
        .pause("test", "replicas starting", Utc::now())
        .await
        .unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_policy(a_dir.path(), "p.yaml", &policy);
    write_policy(b_dir.path(), "p.yaml", &policy);
    write_policy(b_dir.path(), "extra.yaml", extra);
    let mut pages = Vec::new();
    let mut children = Vec::new();
    for (dir, name) in [(a_dir.path(), "replica-a"), (b_dir.path(), "replica-b")] {
        let listen = format!("127.0.0.1:{}", free_port());
        pages.push(format!("http://{listen}/"));
        let mut c = janitor(
            &h,
            dir,
            &db.url,
            &[
                "run",
                "--listen",
                &listen,
                "--replica-id",
                name,
                // Counted as running for 60 s from each beat (every 10 s), so that a machine
                // loaded by the whole suite cannot drop a replica from the other's view.
                "--lease-secs",
                "20",
                "--reload-ms",
                "200",
            ],
        );
        c.env("JANITOR_LOG", "info");
        children.push((c.spawn().unwrap(), dir));
    }
    // Both have seen the other (their pages name the other's set) before the pause is lifted:
    // the banner alone also shows while a replica has not yet compared (once, the first
    // replica was resumed so, alone, and released everything before its next beat).
    for page in &pages {
        common::wait_for(
            "the replicas' disagreement",
            Duration::from_secs(60),
            || {
                let page = page.clone();
                async move {
                    match reqwest::get(&page).await {
                        Ok(r) => r
                            .text()
                            .await
                            .unwrap_or_default()
                            .contains("replica-b run [extra, stopped-payg]"),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }
    store
        .resume("test", "both started", Utc::now())
        .await
        .unwrap();
    let said = |dir: &Path, what: &'static str| {
        std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("err-")
                && std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains(what)
        })
    };
    // Each replica's workers hold, saying why, with due releases in the queue.
    for dir in [a_dir.path(), b_dir.path()] {
        common::wait_for("a replica holding", Duration::from_secs(60), || {
            let held = said(dir, "releases wait: the replicas run different policy sets");
            async move { held }
        })
        .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = store.counts().await.unwrap();
        if c.pending > 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = [a_dir.path(), b_dir.path()]
                .iter()
                .map(|d| last_output(d).1)
                .collect();
            panic!(
                "no release queued: {c:?}; released {}; runs {:?}\nA: {}\nB: {}",
                released(&h).len(),
                store.runs(20).await.unwrap(),
                logs[0],
                logs[1]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for page in &pages {
        let body = reqwest::get(page).await.unwrap().text().await.unwrap();
        assert!(body.contains("id=\"policy-sets\""), "{body}");
        assert!(
            body.contains("replica-b run [extra, stopped-payg]"),
            "{body}"
        );
    }
    assert!(
        released(&h).is_empty(),
        "nothing released while they disagree"
    );
    // Once both run the same files, the releases go out.
    write_policy(a_dir.path(), "extra.yaml", extra);
    common::wait_for("the releases", Duration::from_secs(60), || {
        let done = released(&h) == want;
        async move { done }
    })
    .await;
    for (child, dir) in children {
        common::sigterm(&child);
        let out = finish(dir, child, "a replica after SIGTERM");
        assert!(out.status.success(), "{}", out.stderr);
    }
    assert!(said(
        a_dir.path(),
        "the replicas run the same policy set; releases go on"
    ));
}

/// Two daemons given one replica id (a fixed hostname and PID 1 in two containers) would share
/// one row and never be seen to disagree: each tells the other apart and holds, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_given_one_replica_id_hold_and_say_so() {
    let Some(db) = common::postgres().await else {
        return;
    };
    let h = common::start_sim(fleet::generate(50, 38, Utc::now()), Faults::default(), 38).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), "p.yaml", STOPPED_PAYG);
    let store = Store::connect(&db.url).await.unwrap();
    // Paused throughout: this is about what they say, the gate is tested elsewhere.
    store.pause("test", "twins", Utc::now()).await.unwrap();
    let twins: Vec<Child> = (0..2)
        .map(|_| {
            let listen = format!("127.0.0.1:{}", free_port());
            janitor(
                &h,
                dir.path(),
                &db.url,
                &[
                    "run",
                    "--listen",
                    &listen,
                    "--replica-id",
                    "twin",
                    "--lease-secs",
                    "2",
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let said = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("err-"))
            .filter(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("another process runs as replica twin")
            })
            .count()
    };
    common::wait_for("both twins saying so", Duration::from_secs(60), || {
        let n = said();
        async move { n == 2 }
    })
    .await;
    for child in twins {
        common::sigterm(&child);
        let out = finish(dir.path(), child, "a twin after SIGTERM");
        assert!(out.status.success(), "{}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_postgres_without_running_a_tick_or_a_batch_twice() {
    let Some(db) = common::postgres().await else {
        return;
    };
    let fleet = fleet::generate(3000, 34, Utc::now());
    let want = expected(&fleet, &ALL_REGIONS);
    let faults = Faults {
        internal_error_rate: 0.1,
        drop_after_commit_rate: 0.1,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    };
    let h = common::start_sim(fleet, faults, 34).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), "p.yaml", STOPPED_PAYG);
    let mut children = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut c = janitor(
            &h,
            dir.path(),
            &db.url,
            &["run", "--listen", &listen, "--replica-id", name],
        );
        children.push(c.spawn().unwrap());
    }
    common::wait_for("every release", Duration::from_secs(90), || {
        let done = released(&h) == want;
        async move { done }
    })
    .await;
    wait_recorded(&db.url, want.len()).await;
    for c in &children {
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }
    for c in children {
        let out = finish(dir.path(), c, "a replica after SIGTERM");
        assert!(out.status.success(), "{}", out.stderr);
    }
    common::assert_tokens_consistent(&h);
    all_succeeded(&db.url, want.len()).await;
    // Each reconciled tick fetched the inventory once: one first page by number per region per
    // run (a region listed again by cursor, the fleet having moved meanwhile, is the same
    // inventory), so no tick was reconciled by both replicas.
    let runs = db.store.runs(100_000).await.unwrap();
    assert!(!runs.is_empty());
    let first_pages = h
        .sim
        .calls()
        .iter()
        .filter(|c| {
            c.action == "DescribeInstances"
                && c.instance_ids.is_empty()
                && c.page.is_none()
                && !c.by_cursor
        })
        .count();
    assert_eq!(
        first_pages,
        ALL_REGIONS.len() * runs.len(),
        "one inventory per (policy, tick)"
    );
    // Every batch's call history is one worker's: attempts were sent under a held lease.
    let events = db.store.events(1_000_000).await.unwrap();
    let mut sends: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "call_sent") {
        *sends.entry(e.client_token.clone().unwrap()).or_default() += 1;
    }
    let calls = h.sim.calls();
    for (token, n) in sends {
        let seen = calls
            .iter()
            .filter(|c| c.client_token.as_deref() == Some(token.as_str()))
            .count();
        assert_eq!(
            seen, n,
            "token {token}: each recorded send is one call, no unrecorded extra"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_a_full_run() {
    let fleet = fleet::generate(1500, 35, Utc::now());
    let faults = Faults {
        internal_error_rate: 0.2,
        drop_after_commit_rate: 0.2,
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    };
    let h = common::start_sim(fleet, faults, 35).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), "p.yaml", STOPPED_PAYG);
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let token = "StsTokenInTheLogs/Zx+9";
    let admin = "AdminTokenInTheLogs-42";
    let mut logs = String::new();
    // A full apply, then one signed with a wrong secret (the error paths).
    for secret in [sim::DEFAULT_ACCESS_KEY_SECRET, "WrongSecretInTheLogs-7"] {
        let mut c = janitor(&h, dir.path(), &url, &["--log-format", "json", "apply"]);
        c.env("JANITOR_LOG", "trace")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
            .env("ALIBABA_CLOUD_SECURITY_TOKEN", token)
            .env("JANITOR_ADMIN_TOKEN", admin);
        let out = finish(dir.path(), c.spawn().unwrap(), "apply with trace logs");
        logs.push_str(&out.stderr);
        logs.push_str(&out.stdout);
    }
    assert!(logs.len() > 10_000, "the run logged: {} bytes", logs.len());
    assert!(
        logs.contains("SignatureDoesNotMatch"),
        "the wrong secret was refused"
    );
    let encoded = ecs_janitor::ecs::sign::percent_encode(token);
    for s in [
        sim::DEFAULT_ACCESS_KEY_SECRET,
        "WrongSecretInTheLogs-7",
        token,
        &encoded,
        admin,
    ] {
        assert!(!logs.contains(s), "{s} appears in the logs");
    }
}
