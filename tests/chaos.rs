//! Chaos tests of the `ecs-janitor` binary against a faulty in-process simulator:
//!
//! - `apply` killed with SIGKILL again and again, at moments read off the store and the
//!   simulator, while ECS answers errors, throttles and loses answers; then run to completion
//!   (SQLite, and PostgreSQL when `JANITOR_TEST_POSTGRES_URL` is set);
//! - three `run` replicas sharing one PostgreSQL database, one killed while it holds a lease;
//! - the PostgreSQL connection cut and restored under a running daemon (through a TCP proxy in
//!   the test, so the shared server is never restarted);
//! - a SQLite file locked by another connection, and one made read-only (`chattr +i`, which
//!   binds root too) or opened with `?mode=ro`.
//!
//! Every random choice comes from a seed that the test prints; set `JANITOR_CHAOS_SEED` to
//! replay a failure or to explore another seed. Children write to files, never to pipes, and are
//! killed if the test ends first.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{fleet, Faults, SimHandle};
use ecs_janitor::store::{ReleaseFilter, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::ConnectOptions;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");

/// The regions the chaos policy covers (the generated fleet also has ap-southeast-1).
const REGIONS: [&str; 3] = ["cn-hangzhou", "cn-shanghai", "cn-beijing"];

/// `apply` ignores the schedule; the daemons reconcile every second.
const DAILY: &str = "0 0 3 * * *";
const EVERY_SECOND: &str = "* * * * * *";

fn chaos_policy(schedule: &str) -> String {
    format!(
        r#"name: chaos-stopped-payg
schedule: "{schedule}"
regions: [cn-hangzhou, cn-shanghai, cn-beijing]
select:
  charge_type: PostPaid
  status: Stopped
exclude:
  tags: {{keep: "true"}}
limits:
  max_releases_per_run: 100000
"#
    )
}

/// The seed for a test: `JANITOR_CHAOS_SEED` when set, else the test's own. Printed, so a
/// failure can be replayed.
fn seed(test: &str, default: u64) -> u64 {
    let s = std::env::var("JANITOR_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    eprintln!("{test}: seed {s} (replay with JANITOR_CHAOS_SEED={s})");
    s
}

// ---- the fleet and what should happen to it ------------------------------------------------

/// What the chaos policy's conditions select, read off the instance itself (not the planner).
fn selected(i: &Instance) -> bool {
    REGIONS.contains(&i.region_id.as_str())
        && i.charge_type == ChargeType::PostPaid
        && i.status == InstanceStatus::Stopped
        && i.tags.get("keep").map(String::as_str) != Some("true")
}

/// The protections no policy overrides (the chaos policy does not allow security-locked ones).
fn protected(i: &Instance) -> bool {
    i.tags.get("janitor:protect").map(String::as_str) == Some("true")
        || i.deletion_protection
        || i.lock_reasons.iter().any(|r| r == "security")
}

/// A generated fleet where, on top of the generator's own few, three in every ten instances the
/// policy selects are protected: one by the tag, one by deletion protection, one by a security
/// lock.
fn chaos_fleet(n: usize, seed: u64) -> Vec<Instance> {
    let mut fleet = fleet::generate(n, seed, Utc::now());
    for (k, i) in fleet.iter_mut().filter(|i| selected(i)).enumerate() {
        match k % 10 {
            0 => {
                i.tags.insert("janitor:protect".into(), "true".into());
            }
            3 => i.deletion_protection = true,
            6 => i.lock_reasons.push("security".into()),
            _ => {}
        }
    }
    fleet
}

/// The instances the policy must release.
fn expected(fleet: &[Instance]) -> BTreeSet<String> {
    fleet
        .iter()
        .filter(|i| selected(i) && !protected(i))
        .map(|i| i.instance_id.clone())
        .collect()
}

/// Instances the policy selects but that are protected: never to be sent to DeleteInstances.
fn guarded(fleet: &[Instance]) -> BTreeSet<String> {
    fleet
        .iter()
        .filter(|i| selected(i) && protected(i))
        .map(|i| i.instance_id.clone())
        .collect()
}

fn released(h: &SimHandle) -> BTreeSet<String> {
    h.sim
        .releases()
        .into_iter()
        .map(|r| r.instance_id)
        .collect()
}

/// How many DeleteInstances calls took effect (one per released batch).
fn commits(h: &SimHandle) -> usize {
    let tokens: BTreeSet<Option<String>> = h
        .sim
        .releases()
        .into_iter()
        .map(|r| r.client_token)
        .collect();
    tokens.len()
}

fn write_policy(dir: &Path, yaml: &str) {
    let p = dir.join("policies");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("p.yaml"), yaml).unwrap();
}

// ---- children -------------------------------------------------------------------------------

/// A child `ecs-janitor` writing to `<dir>/<name>.out` and `.err`; killed if dropped first.
struct Janitor {
    child: Child,
    name: String,
    err: PathBuf,
}

/// Starts `ecs-janitor ARGS` against the simulator and the database, with short backoffs and
/// leases; `env` adds or overrides variables.
fn janitor(
    h: &SimHandle,
    dir: &Path,
    db_url: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Janitor {
    let mut c = Command::new(BIN);
    c.args(args)
        .envs(common::janitor_env(h, dir, db_url))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = dir.join(format!("{name}.out"));
    let err = dir.join(format!("{name}.err"));
    c.stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    Janitor {
        child: c.spawn().unwrap(),
        name: name.to_string(),
        err,
    }
}

impl Janitor {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.err.with_extension("out")).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    async fn sigkill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends `kill -SIG` (TERM, STOP, CONT).
    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Waits for it to exit, at most `within`.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(st) => st.unwrap(),
            Err(_) => panic!(
                "{} did not exit within {within:?}; stderr:\n{}",
                self.name,
                tail(&self.stderr())
            ),
        }
    }

    /// Polls `cond` until it holds (true) or the child exits first (false); panics at the
    /// deadline.
    async fn until<F, Fut>(&mut self, what: &str, deadline: Duration, mut cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if cond().await {
                return true;
            }
            if self.exited().is_some() {
                return false;
            }
            if tokio::time::Instant::now() > end {
                panic!(
                    "{}: timed out waiting for {what}; stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[start..]
}

/// A one-shot run that ended by itself: 0, or, only for ECS reads that kept failing (the
/// simulator injects errors into DescribeInstances too), 1 when the queue could not be read
/// back or 2 when a policy's region could not be listed (it sat the pass out); never a panic
/// or a failed release.
fn assert_clean_exit(j: &Janitor, st: ExitStatus) {
    let err = j.stderr();
    assert!(
        !err.contains("panicked"),
        "{} panicked:\n{}",
        j.name,
        tail(&err)
    );
    match st.code() {
        Some(0) => {}
        Some(1) if err.contains("cannot read the inventory") => {}
        Some(2)
            if j.stdout()
                .contains("did nothing: cannot list the instances")
                && !j.stdout().contains("\nFailed:") => {}
        _ => panic!("{} exited with {st}:\n{}", j.name, tail(&err)),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status and body of a GET, or None when nothing answers.
async fn http_get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

// ---- reading the store while children write it ---------------------------------------------

/// Reads the queue's tables directly, as an operator's SQL would, while children write them.
enum Probe {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Probe {
    async fn connect(url: &str) -> Probe {
        if url.starts_with("sqlite:") {
            let o = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap()
                .busy_timeout(Duration::from_secs(10));
            let p = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(o)
                .await
                .unwrap();
            Probe::Sqlite(p)
        } else {
            let p = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .unwrap();
            Probe::Pg(p)
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match self {
            Probe::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Probe::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    async fn runs(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM policy_runs").await
    }

    async fn calls_sent(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM events WHERE kind = 'call_sent'")
            .await
    }

    async fn succeeded(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM releases WHERE state = 'succeeded'")
            .await
    }

    /// Open batches whose lease `owner` holds (`live`: a lease not yet expired), as (id, claims).
    async fn leases(&self, owner: &str, live: bool) -> Vec<(i64, i64)> {
        let now = if live {
            Utc::now().timestamp_millis()
        } else {
            0
        };
        let sql = "SELECT id, claims FROM batches
                   WHERE state = 'open' AND lease_owner = $1 AND lease_expires_at > $2
                   ORDER BY id";
        match self {
            Probe::Sqlite(p) => sqlx::query_as(sql)
                .bind(owner)
                .bind(now)
                .fetch_all(p)
                .await
                .unwrap(),
            Probe::Pg(p) => sqlx::query_as(sql)
                .bind(owner)
                .bind(now)
                .fetch_all(p)
                .await
                .unwrap(),
        }
    }

    /// The releases by state and the batches not done, for a failure message.
    async fn describe(&self) -> String {
        let states = "SELECT state || ': ' || COUNT(*) FROM releases GROUP BY state";
        let batches = "SELECT 'batch ' || id || ' ' || state || ' attempts ' || attempts
                       || ' claims ' || claims || ' owner ' || COALESCE(lease_owner, '-')
                       || ' lease until ' || COALESCE(lease_expires_at, 0)
                       || ' next attempt ' || next_attempt_at || ' code '
                       || COALESCE(last_code, '-')
                       FROM batches WHERE state <> 'done' ORDER BY id";
        let twice = "SELECT 'instance ' || instance_id || ': ' || STRING_AGG(id || ' ' || state
                       || ' batch ' || COALESCE(batch_id, 0) || ' ' || COALESCE(last_code, '-')
                       || ' ' || COALESCE(request_id, '-'), '; ')
                     FROM releases GROUP BY instance_id HAVING COUNT(*) > 1 LIMIT 20";
        let twice = match self {
            Probe::Sqlite(_) => twice.replace("STRING_AGG", "GROUP_CONCAT"),
            Probe::Pg(_) => twice.to_string(),
        };
        let mut out: Vec<String> = Vec::new();
        for sql in [states, batches, twice.as_str()] {
            let lines: Vec<String> = match self {
                Probe::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
                Probe::Pg(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
            };
            out.extend(lines);
        }
        out.push(format!("now {}", Utc::now().timestamp_millis()));
        out.join("\n")
    }

    /// A batch's state and claim count.
    async fn batch(&self, id: i64) -> (String, i64) {
        let sql = "SELECT state, claims FROM batches WHERE id = $1";
        match self {
            Probe::Sqlite(p) => sqlx::query_as(sql).bind(id).fetch_one(p).await.unwrap(),
            Probe::Pg(p) => sqlx::query_as(sql).bind(id).fetch_one(p).await.unwrap(),
        }
    }
}

/// Waits until ECS has released as many instances as `want` holds, then checks they are the ones.
async fn wait_released(h: &SimHandle, want: &BTreeSet<String>) {
    common::wait_for("every release", Duration::from_secs(90), || {
        let done = h.sim.releases().len() >= want.len();
        async move { done }
    })
    .await;
    let got = released(h);
    let extra: Vec<_> = got.difference(want).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "ECS released {} unexpected instances {extra:?} and not {missing:?}",
        extra.len()
    );
}

/// Waits until the store records `n` succeeded releases: ECS may have carried out a release
/// whose answer was lost, and the record follows when the retry (same token) answers. At the
/// deadline, panics with the queue's state and what the `running` children logged.
async fn wait_recorded(probe: &Probe, n: usize, running: &[&Janitor]) {
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    while probe.succeeded().await != n as i64 {
        if tokio::time::Instant::now() > end {
            let logs: Vec<String> = running
                .iter()
                .map(|j| format!("--- {}:\n{}", j.name, tail(&j.stderr())))
                .collect();
            panic!(
                "timed out waiting for {n} releases recorded as succeeded:\n{}\n{}",
                probe.describe().await,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a user relies on after any amount of chaos: ECS released exactly `want`, each instance
/// once, every retry kept its token and members, no protected instance was ever sent, and the
/// store records every release as succeeded with the RequestId of the call that released it.
async fn assert_exactly_once(
    h: &SimHandle,
    db_url: &str,
    want: &BTreeSet<String>,
    guard: &BTreeSet<String>,
) {
    let recs = h.sim.releases();
    assert_eq!(released(h), *want, "ECS released exactly the expected set");
    assert_eq!(recs.len(), want.len(), "an instance was released twice");
    common::assert_tokens_consistent(h);
    let calls = h.sim.calls();
    let deletes: Vec<_> = calls
        .iter()
        .filter(|c| c.action == "DeleteInstances")
        .collect();
    for (k, c) in deletes.iter().enumerate() {
        for id in &c.instance_ids {
            assert!(
                !guard.contains(id),
                "protected {id} was sent to DeleteInstances"
            );
        }
        if c.outcome == "Dropped" {
            assert!(
                deletes[k + 1..]
                    .iter()
                    .any(|d| d.client_token == c.client_token),
                "the lost answer of {:?} was never retried with its token",
                c.client_token
            );
        }
    }
    let remaining: BTreeSet<String> = h
        .sim
        .instances()
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert!(guard.is_subset(&remaining), "a protected instance is gone");
    // One effective DeleteInstances per token: a batch is never carried out twice.
    let mut commits: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for r in &recs {
        commits
            .entry(r.client_token.as_deref().unwrap_or_default())
            .or_default()
            .insert(r.request_id.as_str());
    }
    for (token, ids) in &commits {
        assert_eq!(
            ids.len(),
            1,
            "token {token} released in several calls: {ids:?}"
        );
    }
    let store = Store::connect(db_url).await.unwrap();
    let rows = store
        .list_releases(&ReleaseFilter::default())
        .await
        .unwrap();
    let by_instance: HashMap<&str, &str> = recs
        .iter()
        .map(|r| (r.instance_id.as_str(), r.request_id.as_str()))
        .collect();
    assert_eq!(rows.len(), want.len(), "one release row per instance");
    for r in &rows {
        assert_eq!(r.state, "succeeded", "{r:?}");
        assert_eq!(
            r.request_id.as_deref(),
            by_instance.get(r.instance_id.as_str()).copied(),
            "the recorded RequestId is the one ECS released {} with",
            r.instance_id
        );
    }
}

// ---- 1. apply killed again and again ---------------------------------------------------------

/// Where in its work a killed `apply` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Within 2 s of starting: connecting, migrating, in the pass, or early in the drain.
    Starting,
    /// Once its pass has begun a policy run: fetching the inventory, planning, queueing.
    Reconciling,
    /// Once it holds the lease of a batch: re-checking, or waiting for the rate limiter.
    BatchClaimed,
    /// Once it has recorded its n-th DeleteInstances attempt: the call may be in flight.
    CallSent,
    /// Once ECS has carried out its n-th DeleteInstances: the answer may not be recorded yet.
    Released,
}

const KILLS: usize = 12;

async fn apply_under_chaos(db_url: &str, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // About 1600 releases: some 20 batches of at most 100, so that kills find work to interrupt.
    let fleet = chaos_fleet(12_000, seed);
    let want = expected(&fleet);
    let guard = guarded(&fleet);
    assert!(
        want.len() > 1500 && guard.len() > 150,
        "the fleet has work and protections"
    );
    let faults = Faults {
        internal_error_rate: 0.2,
        throttle_rate: 0.1,
        // Often enough that some answer is lost even when the kills all land before the first
        // release and one round does the whole job (about 20 calls: at 0.1, one run in eight
        // lost none and failed the check below).
        drop_after_commit_rate: 0.3,
        latency: Duration::from_millis(10),
        // Every action: the inventory and the re-checks meet errors too.
        actions: vec![],
    };
    let h = common::start_sim(fleet, faults, seed).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), &chaos_policy(DAILY));
    let probe = Probe::connect(db_url).await;
    let flags = ["--concurrency", "2", "--calls-per-second", "20"];
    let mut kills: Vec<String> = Vec::new();
    // Kills after ECS carried out a release that the store had not recorded: answers lost by
    // the crash, on top of those the simulator drops.
    let mut lost_by_kill = 0;
    let mut round = 0;
    while kills.len() < KILLS {
        round += 1;
        assert!(
            round <= 3 * KILLS,
            "only {} kills in {round} rounds",
            kills.len()
        );
        // Decided before the round starts, so the seed alone fixes the sequence.
        let all = [
            Moment::Starting,
            Moment::Reconciling,
            Moment::BatchClaimed,
            Moment::CallSent,
            Moment::Released,
        ];
        let mut moment = all[rng.gen_range(0..all.len())];
        let delay = Duration::from_millis(match moment {
            Moment::Starting => rng.gen_range(0..2000),
            Moment::Reconciling => rng.gen_range(0..150),
            Moment::BatchClaimed => rng.gen_range(0..40),
            Moment::CallSent => rng.gen_range(0..60),
            Moment::Released => rng.gen_range(0..10),
        });
        // How far into its work a CallSent or Released kill comes.
        let nth = rng.gen_range(1..=6);
        let work_left = h.sim.releases().len() < want.len();
        if !work_left && !matches!(moment, Moment::Starting | Moment::Reconciling) {
            moment = Moment::Reconciling;
        }
        let (runs0, sent0, rel0) = (probe.runs().await, probe.calls_sent().await, commits(&h));
        let name = format!("apply-{round}");
        let mut args = vec!["apply", "--replica-id", &name];
        args.extend(flags);
        let mut j = janitor(&h, dir.path(), db_url, &name, &args, &[]);
        let deadline = Duration::from_secs(60);
        let p = &probe;
        let reached = match moment {
            Moment::Starting => true,
            Moment::Reconciling => {
                j.until("a policy run", deadline, || async move {
                    p.runs().await > runs0
                })
                .await
            }
            Moment::BatchClaimed => {
                let owner = name.clone();
                j.until("a claimed batch", deadline, || {
                    let owner = owner.clone();
                    async move { !p.leases(&owner, true).await.is_empty() }
                })
                .await
            }
            Moment::CallSent => {
                j.until("recorded calls", deadline, || async move {
                    p.calls_sent().await >= sent0 + nth
                })
                .await
            }
            Moment::Released => {
                let h = &h;
                j.until("releases", deadline, || async move {
                    commits(h) >= rel0 + nth as usize
                })
                .await
            }
        };
        if reached {
            tokio::time::sleep(delay).await;
        }
        match j.exited() {
            Some(st) => {
                assert_clean_exit(&j, st);
                eprintln!("round {round}: {moment:?}: exited by itself ({st})");
            }
            None => {
                j.sigkill().await;
                let (ecs, rec) = (h.sim.releases().len(), probe.succeeded().await);
                if ecs as i64 > rec {
                    lost_by_kill += 1;
                }
                let note = format!(
                    "round {round}: SIGKILL {moment:?} (n={nth}) after {delay:?}; ECS released {ecs}, store succeeded {rec}"
                );
                eprintln!("{note}");
                kills.push(note);
            }
        }
    }
    // Then runs to completion (a run whose inventory read kept failing exits 1: run again).
    let mut done = false;
    for attempt in 1..=5 {
        let name = format!("final-{attempt}");
        let mut args = vec!["apply", "--replica-id", &name];
        args.extend(flags);
        let mut j = janitor(&h, dir.path(), db_url, &name, &args, &[]);
        let st = j.exit(Duration::from_secs(120)).await;
        assert_clean_exit(&j, st);
        if st.success() {
            assert!(j.stdout().contains("0 failed"), "{}", j.stdout());
            done = true;
            break;
        }
    }
    assert!(done, "apply never completed");
    assert!(kills.len() >= 10);
    // The chaos happened: errors and throttling (DescribeInstances gets plenty of both), and
    // lost answers, dropped by ECS or cut by a kill.
    let calls = h.sim.calls();
    for code in ["InternalError", "Throttling"] {
        assert!(
            calls.iter().any(|c| c.outcome == code),
            "no call was answered {code}"
        );
    }
    let deletes: Vec<_> = calls
        .iter()
        .filter(|c| c.action == "DeleteInstances")
        .collect();
    let dropped = deletes.iter().filter(|c| c.outcome == "Dropped").count();
    assert!(dropped + lost_by_kill > 0, "no answer was lost");
    assert_exactly_once(&h, db_url, &want, &guard).await;
    eprintln!(
        "{} kills in {round} rounds ({lost_by_kill} with releases not yet recorded); {} \
         DeleteInstances calls ({dropped} answers dropped) for {} releases",
        kills.len(),
        deletes.len(),
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_at_random_moments_under_ecs_faults_releases_exactly_once_sqlite() {
    let seed = seed("chaos sqlite", 0x5eed_0001);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    // Created (and migrated) before the first child, so the probe can read it from the start.
    drop(Store::connect(&url).await.unwrap());
    apply_under_chaos(&url, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_at_random_moments_under_ecs_faults_releases_exactly_once_postgres() {
    let Some(db) = common::postgres().await else {
        return;
    };
    let seed = seed("chaos postgres", 0x5eed_0002);
    apply_under_chaos(&db.url, seed).await;
}

// ---- 2. replicas ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_postgres_and_finish_the_batches_of_one_killed_holding_a_lease() {
    let Some(db) = common::postgres().await else {
        eprintln!("replica suite skipped: it needs PostgreSQL (JANITOR_TEST_POSTGRES_URL)");
        return;
    };
    let seed = seed("replicas", 0x5eed_0003);
    // About 1400 releases: some 15 batches, enough for three replicas at 4 calls a second each.
    let fleet = chaos_fleet(10_000, seed);
    let want = expected(&fleet);
    let guard = guarded(&fleet);
    // Error faults on DeleteInstances only, so each inventory's first page is exactly one call
    // and the count of first pages tells how many times a tick was reconciled.
    let faults = Faults {
        internal_error_rate: 0.2,
        throttle_rate: 0.1,
        drop_after_commit_rate: 0.1,
        latency: Duration::from_millis(10),
        actions: vec!["DeleteInstances".into()],
    };
    let h = common::start_sim(fleet, faults, seed).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), &chaos_policy(EVERY_SECOND));
    let probe = Probe::connect(&db.url).await;
    let start = |name: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "run",
            "--listen",
            &listen,
            "--replica-id",
            name,
            "--calls-per-second",
            "4",
        ];
        janitor(&h, dir.path(), &db.url, name, &args, &[])
    };
    // The victim starts first so that it surely owns work; the others join while it holds it.
    let mut victim = start("replica-c");
    let p = &probe;
    assert!(
        victim
            .until(
                "replica-c to hold a lease",
                Duration::from_secs(60),
                || async move { !p.leases("replica-c", true).await.is_empty() }
            )
            .await,
        "replica-c exited: {}",
        victim.stderr()
    );
    let mut others = vec![start("replica-a"), start("replica-b")];
    // Mid-run: the others are at work and ECS has carried out a batch.
    let sim = &h.sim;
    common::wait_for(
        "replica-a and replica-b at work, and a batch released",
        Duration::from_secs(60),
        || async move {
            let others_at_work = p
                .count(
                    "SELECT COUNT(DISTINCT owner) FROM policy_runs
                     WHERE owner IN ('replica-a', 'replica-b')",
                )
                .await
                > 0
                || !p.leases("replica-a", true).await.is_empty()
                || !p.leases("replica-b", true).await.is_empty();
            others_at_work && !sim.releases().is_empty()
        },
    )
    .await;
    // Killed while it holds a lease: frozen (SIGSTOP) once it is seen holding one, so that what
    // it holds can be read before it dies; thawed and watched again if it let go just before.
    let mut orphaned = Vec::new();
    for _ in 0..20 {
        let holding = victim
            .until(
                "replica-c to hold a lease",
                Duration::from_secs(60),
                || async move { !p.leases("replica-c", true).await.is_empty() },
            )
            .await;
        assert!(holding, "replica-c exited: {}", victim.stderr());
        victim.signal("STOP");
        orphaned = probe.leases("replica-c", true).await;
        if !orphaned.is_empty() {
            break;
        }
        victim.signal("CONT");
    }
    assert!(
        !orphaned.is_empty(),
        "replica-c was never frozen holding a lease"
    );
    victim.sigkill().await;
    eprintln!(
        "replica-c killed holding batches {orphaned:?} (id, claims); ECS released {} of {}",
        h.sim.releases().len(),
        want.len()
    );

    wait_released(&h, &want).await;
    wait_recorded(&probe, want.len(), &[&victim, &others[0], &others[1]]).await;
    for (id, claims) in &orphaned {
        let (state, now_claims) = probe.batch(*id).await;
        assert!(
            state == "done" || state == "split",
            "batch {id} of the killed replica ended {state}"
        );
        assert!(
            now_claims > *claims,
            "batch {id} was claimed again after its lease expired"
        );
    }
    for j in &others {
        j.sigterm();
    }
    for j in &mut others {
        let st = j.exit(Duration::from_secs(60)).await;
        assert!(
            st.success(),
            "{} after SIGTERM: {st}\n{}",
            j.name,
            j.stderr()
        );
        assert!(!j.stderr().contains("panicked"));
    }
    assert_exactly_once(&h, &db.url, &want, &guard).await;

    // Each tick was reconciled once: one inventory (a first page by number per region) per run;
    // a region listed again by cursor because the fleet moved meanwhile is the same inventory.
    // Runs are all finished, except perhaps one the killed replica was in the middle of: left
    // unfinished until its lease ends, then closed as failed (a later tick has run since), its
    // inventory perhaps never asked for.
    let runs = db.store.runs(1_000_000).await.unwrap();
    let unfinished: Vec<_> = runs
        .iter()
        .filter(|r| {
            r.finished_at.is_none()
                || (r.owner == "replica-c"
                    && r.outcome == Some(ecs_janitor::store::RunStatus::Error))
        })
        .collect();
    assert!(
        unfinished.len() <= 1 && unfinished.iter().all(|r| r.owner == "replica-c"),
        "only the killed replica leaves a run unfinished: {unfinished:?}"
    );
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
    let finished = runs.len() - unfinished.len();
    assert!(
        (REGIONS.len() * finished..=REGIONS.len() * runs.len()).contains(&first_pages),
        "{first_pages} inventories' first pages for {} runs ({finished} finished): one inventory per (policy, tick)",
        runs.len()
    );
    let owners: BTreeSet<&str> = runs.iter().map(|r| r.owner.as_str()).collect();
    eprintln!("{} ticks reconciled, by {owners:?}", runs.len());

    // Every DeleteInstances was preceded by a recorded attempt under a held lease: no token has
    // more calls than recorded sends (the killed replica may have recorded one it never sent).
    let events = db.store.events(1_000_000).await.unwrap();
    let mut sends: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "call_sent") {
        *sends.entry(e.client_token.clone().unwrap()).or_default() += 1;
    }
    let calls = h.sim.calls();
    for c in calls.iter().filter(|c| c.action == "DeleteInstances") {
        let token = c.client_token.clone().unwrap();
        let seen = calls
            .iter()
            .filter(|d| d.client_token.as_ref() == Some(&token))
            .count();
        let recorded = sends.get(&token).copied().unwrap_or(0);
        assert!(
            seen <= recorded,
            "token {token}: {seen} calls but {recorded} recorded attempts"
        );
    }
}

// ---- 3. the database goes away and comes back -----------------------------------------------

/// A TCP proxy in front of PostgreSQL whose link can be cut: `cut` closes every proxied
/// connection and refuses new ones (accepted, then closed before PostgreSQL's handshake);
/// `restore` lets them through again.
struct DbProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Connections refused while cut.
    refused: Arc<AtomicUsize>,
    /// Cancelled to cut the connections proxied so far.
    links: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    async fn start(upstream: SocketAddr) -> DbProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let links = Arc::new(Mutex::new(CancellationToken::new()));
        let task = {
            let (up, refused, links) = (up.clone(), refused.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    // The token first, then the switch: `cut` turns the switch off before it
                    // cancels, so a connection either sees the switch off or a cancelled token.
                    let link = links.lock().unwrap().clone();
                    if !up.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = link.cancelled() => {}
                        }
                    });
                }
            })
        };
        DbProxy {
            addr,
            up,
            refused,
            links,
            task,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let old = std::mem::take(&mut *self.links.lock().unwrap());
        old.cancel();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.links.lock().unwrap().cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_survives_a_postgres_outage_and_finishes_the_work() {
    let Some(db) = common::postgres().await else {
        return;
    };
    let seed = seed("outage", 0x5eed_0004);
    let fleet = chaos_fleet(4000, seed);
    let want = expected(&fleet);
    let guard = guarded(&fleet);
    let faults = Faults {
        internal_error_rate: 0.1,
        drop_after_commit_rate: 0.1,
        latency: Duration::from_millis(20),
        actions: vec!["DeleteInstances".into()],
        ..Faults::default()
    };
    let h = common::start_sim(fleet, faults, seed).await;
    let upstream = {
        let u = url::Url::parse(&db.url).unwrap();
        let hostport = format!(
            "{}:{}",
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(5432)
        );
        tokio::net::lookup_host(hostport)
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = DbProxy::start(upstream).await;
    let proxied = {
        let mut u = url::Url::parse(&db.url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(proxy.addr.port())).unwrap();
        u.to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), &chaos_policy(EVERY_SECOND));
    let listen = format!("127.0.0.1:{}", free_port());
    let ready = format!("http://{listen}/readyz");
    let args = [
        "run",
        "--listen",
        &listen,
        "--replica-id",
        "outage",
        "--concurrency",
        "2",
        "--calls-per-second",
        "4",
    ];
    let mut d = janitor(&h, dir.path(), &proxied, "daemon", &args, &[]);
    let probe = Probe::connect(&db.url).await;
    let p = &probe;
    assert!(
        d.until(
            "the first recorded release",
            Duration::from_secs(60),
            || async move { p.succeeded().await > 0 }
        )
        .await,
        "the daemon exited: {}",
        d.stderr()
    );

    proxy.cut();
    let cut_at = Utc::now();
    let r = &ready;
    let readyz_down = d
        .until(
            "/readyz to answer 503 naming the database",
            Duration::from_secs(30),
            || async move {
                matches!(http_get(r).await, Some((503, body)) if body.contains("database"))
            },
        )
        .await;
    assert!(readyz_down, "the daemon exited: {}", d.stderr());
    let (code, body) = http_get(&ready).await.unwrap();
    eprintln!("during the outage /readyz answered {code}: {body}");
    assert_eq!(
        http_get(&format!("http://{listen}/healthz"))
            .await
            .map(|r| r.0),
        Some(200),
        "alive while the database is away"
    );
    // The outage lasts a seeded 4 to 10 s, and at least until the daemon has been refused new
    // connections and both of its loops (the scheduler and the workers) have met the error.
    // Readiness says 503, naming the database, every time it is asked meanwhile.
    let hold = Duration::from_millis(StdRng::seed_from_u64(seed).gen_range(4000..10_000));
    let refused = &proxy.refused;
    let err = d.err.clone();
    let answers = AtomicUsize::new(0);
    let answers = &answers;
    let met = d
        .until(
            "the scheduler and the workers to meet the outage",
            Duration::from_secs(60),
            || {
                let log = std::fs::read_to_string(&err).unwrap_or_default();
                let n = refused.load(Ordering::SeqCst);
                let long_enough = (Utc::now() - cut_at).to_std().unwrap_or_default() >= hold;
                async move {
                    let answer = http_get(r).await;
                    assert!(
                        matches!(&answer, Some((503, body)) if body.contains("database")),
                        "/readyz during the outage: {answer:?}"
                    );
                    answers.fetch_add(1, Ordering::SeqCst);
                    long_enough
                        && n >= 3
                        && log.contains("reconcile failed")
                        && (log.contains("worker step failed")
                            || log.contains("cannot read the queue"))
                }
            },
        )
        .await;
    assert!(met, "the daemon exited during the outage: {}", d.stderr());
    let left = want.len() - h.sim.releases().len();
    proxy.restore();
    let restored_at = Utc::now();
    eprintln!(
        "outage of {} ms ({} readiness answers, all 503; {} connections refused); {left} \
         releases left when the database came back",
        (restored_at - cut_at).num_milliseconds(),
        answers.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert!(left > 0, "work was left for after the outage");
    assert!(
        d.until(
            "/readyz to answer 200 again",
            Duration::from_secs(30),
            || async move { matches!(http_get(r).await, Some((200, _))) }
        )
        .await,
        "the daemon exited: {}",
        d.stderr()
    );
    wait_released(&h, &want).await;
    wait_recorded(&probe, want.len(), &[&d]).await;
    // The scheduler went on after the outage: a tick after it was reconciled.
    let store = &db.store;
    common::wait_for(
        "a tick reconciled after the outage",
        Duration::from_secs(30),
        || async move {
            store.runs(10).await.unwrap().iter().any(|r| {
                r.scheduled_for.timestamp_millis() > restored_at.timestamp_millis()
                    && r.outcome.map(|o| o.as_str()) == Some("ok")
            })
        },
    )
    .await;
    d.sigterm();
    let st = d.exit(Duration::from_secs(60)).await;
    assert!(st.success(), "exit after SIGTERM: {st}\n{}", d.stderr());
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
    assert_exactly_once(&h, &db.url, &want, &guard).await;
}

// ---- 3b. SQLite files that cannot be written ------------------------------------------------

const CI_POLICY: &str = r#"
name: stopped-ci
schedule: "0 0 3 * * *"
regions: [cn-hangzhou]
select:
  status: Stopped
  tags: {purpose: ci}
limits:
  max_releases_per_run: 100000
"#;

/// A release row as (id, instance, state, RequestId).
type ReleaseLine = (i64, String, String, Option<String>);

/// Every release row, and the number of events and runs.
type Stored = (Vec<ReleaseLine>, i64, i64);

/// What is stored, read on a connection of its own that is closed before returning.
async fn stored(path: &Path) -> Stored {
    use sqlx::Connection;
    let mut c = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let rows =
        sqlx::query_as("SELECT id, instance_id, state, request_id FROM releases ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let events = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let runs = sqlx::query_scalar("SELECT COUNT(*) FROM policy_runs")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    (rows, events, runs)
}

/// A first apply releases 120 CI runners; then 30 more appear. Returns the simulator, the temp
/// dir, the database file and its URL.
async fn released_once() -> (SimHandle, tempfile::TempDir, PathBuf, String) {
    let h = common::start_sim(common::ci_fleet(120), Faults::default(), 7).await;
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), CI_POLICY);
    let path = dir.path().join("j.db");
    let url = format!("sqlite://{}", path.display());
    let mut j = janitor(&h, dir.path(), &url, "first", &["apply"], &[]);
    let st = j.exit(Duration::from_secs(60)).await;
    assert!(st.success(), "{}", j.stderr());
    assert_eq!(h.sim.releases().len(), 120);
    for mut i in common::ci_fleet(150).into_iter().skip(120) {
        i.instance_id = format!("i-new-{}", i.instance_id);
        h.sim.upsert(i);
    }
    (h, dir, path, url)
}

fn deletes(h: &SimHandle) -> usize {
    h.sim
        .calls()
        .iter()
        .filter(|c| c.action == "DeleteInstances")
        .count()
}

/// After the failure: nothing was sent and nothing stored changed; once the file can be written
/// again a rerun releases the newcomers and the earlier rows are intact.
async fn rerun_completes(h: &SimHandle, dir: &Path, path: &Path, url: &str, before: &Stored) {
    let after_failure = stored(path).await;
    assert_eq!(
        &after_failure, before,
        "the failed run changed nothing stored"
    );
    let mut j = janitor(h, dir, url, "rerun", &["apply"], &[]);
    let st = j.exit(Duration::from_secs(60)).await;
    assert!(st.success(), "{}", j.stderr());
    assert_eq!(h.sim.releases().len(), 150);
    common::assert_tokens_consistent(h);
    let (rows, _, _) = stored(path).await;
    assert_eq!(rows.len(), 150);
    assert_eq!(&rows[..120], &before.0[..], "the earlier rows are intact");
    assert!(rows.iter().all(|r| r.2 == "succeeded" && r.3.is_some()));
}

/// A failed one-shot run: non-zero, no panic, and an error that names the file.
fn assert_explained_failure(j: &Janitor, st: ExitStatus, path: &Path) -> String {
    let err = j.stderr();
    assert!(!st.success(), "{} should fail: {err}", j.name);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"))
        .to_string();
    assert!(
        last.contains(&path.display().to_string()),
        "the error names the file: {last}"
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_is_named_with_what_to_do_and_loses_nothing() {
    use sqlx::Connection;
    let (h, dir, path, url) = released_once().await;
    let before = stored(&path).await;
    // Another connection holds the write lock (in WAL mode EXCLUSIVE takes the write lock and
    // leaves reads alone).
    let mut holder = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let sent = deletes(&h);
    let mut j = janitor(&h, dir.path(), &url, "locked", &["apply"], &[]);
    // It waits out SQLite's busy timeout (10 s) before it gives up.
    let st = j.exit(Duration::from_secs(60)).await;
    let msg = assert_explained_failure(&j, st, &path);
    eprintln!("{msg}");
    assert!(msg.contains("locked"), "{msg}");
    assert!(msg.contains("another"), "says who holds it: {msg}");
    assert!(msg.contains("run this again"), "says what to do: {msg}");
    assert_eq!(deletes(&h), sent, "nothing was sent to ECS");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    rerun_completes(&h, dir.path(), &path, &url, &before).await;
}

/// Makes a file immutable (`chattr +i`: even root cannot write it) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_file_is_named_with_what_to_do_and_loses_nothing() {
    let (h, dir, path, url) = released_once().await;
    let before = stored(&path).await;
    let sent = deletes(&h);
    // Tests run as root, for whom file modes change nothing: the immutable attribute is refused
    // to root too, as a read-only file is to anyone else. It needs chattr and a file system that
    // has the attribute (ext4, xfs, btrfs) and CAP_LINUX_IMMUTABLE; without them that case is
    // skipped with a note, and only the read-only URL below is tried.
    match Immutable::set(&path) {
        Some(immutable) => {
            let mut j = janitor(&h, dir.path(), &url, "immutable", &["apply"], &[]);
            let st = j.exit(Duration::from_secs(60)).await;
            let msg = assert_explained_failure(&j, st, &path);
            eprintln!("{msg}");
            assert!(msg.contains("read-only"), "{msg}");
            assert!(msg.contains("writable"), "says what to do: {msg}");
            assert!(
                msg.contains("chattr -i"),
                "names the attribute to check: {msg}"
            );
            drop(immutable);
        }
        None => eprintln!("chattr +i is not available here: only ?mode=ro is tried"),
    }
    // A URL that asks SQLite to open the file read-only gets its own remedy.
    let ro_url = format!("{url}?mode=ro");
    let mut j = janitor(&h, dir.path(), &ro_url, "mode-ro", &["apply"], &[]);
    let st = j.exit(Duration::from_secs(60)).await;
    let msg = assert_explained_failure(&j, st, &path);
    eprintln!("{msg}");
    assert!(
        msg.contains("read-only") && msg.contains("mode=ro"),
        "{msg}"
    );
    assert!(msg.contains("writable"), "says what to do: {msg}");
    // The daemon, which only reads until work arrives, refuses to start on it too.
    let mut j = janitor(
        &h,
        dir.path(),
        &ro_url,
        "run-mode-ro",
        &["run", "--listen", "127.0.0.1:0"],
        &[],
    );
    let st = j.exit(Duration::from_secs(60)).await;
    let msg = assert_explained_failure(&j, st, &path);
    assert!(msg.contains("mode=ro"), "{msg}");
    assert_eq!(deletes(&h), sent, "nothing was sent to ECS");
    rerun_completes(&h, dir.path(), &path, &url, &before).await;
}
