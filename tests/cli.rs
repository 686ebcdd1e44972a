//! The one-shot commands as a user runs them: `validate`, `schema`, `plan` (text, JSON, saved),
//! `apply --plan`, `queue`, `history`, and the errors a user can cause.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use chrono::Utc;
use ecs_janitor::sim::{self, fleet, Faults, SimHandle};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");

use common::CI_STOPPED as POLICY;

/// Runs the binary off the async runtime, so the in-process simulator keeps serving.
async fn run(h: Option<&SimHandle>, dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .env(
            "JANITOR_DATABASE_URL",
            format!("sqlite://{}", dir.join("j.db").display()),
        )
        .env("JANITOR_POLICIES", dir.join("policies"));
    if let Some(h) = h {
        c.env("JANITOR_ECS_ENDPOINT", h.endpoint().as_str())
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", sim::DEFAULT_ACCESS_KEY_ID)
            .env(
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                sim::DEFAULT_ACCESS_KEY_SECRET,
            );
    }
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Every time in `v` (a key ending in `at`, or named `until`, `not_before`, `next_run`,
/// `scheduled_for`) is RFC 3339 in UTC to the millisecond, the one JSON time format.
fn assert_one_time_format(v: &serde_json::Value, what: &str) {
    fn is_time_key(k: &str) -> bool {
        k == "at"
            || k.ends_with("_at")
            || ["until", "not_before", "next_run", "scheduled_for"].contains(&k)
    }
    fn walk(v: &serde_json::Value, what: &str, seen: &mut usize) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if is_time_key(k) && !x.is_null() {
                        let t = x.as_str().unwrap_or_else(|| panic!("{what}: {k} = {x}"));
                        let ok = t.len() == 24
                            && t.ends_with('Z')
                            && t.as_bytes()[19] == b'.'
                            && chrono::DateTime::parse_from_rfc3339(t).is_ok();
                        assert!(
                            ok,
                            "{what}: {k} = {t} is not RFC 3339 UTC to the millisecond"
                        );
                        *seen += 1;
                    }
                    walk(x, what, seen);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, what, seen)),
            _ => {}
        }
    }
    let mut seen = 0;
    walk(v, what, &mut seen);
    assert!(seen > 0, "{what} has times: {v}");
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ci.yaml"), POLICY).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_problem_with_its_place_and_exit_code() {
    let dir = setup();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_corpus");
    let out = run(
        None,
        dir.path(),
        &["validate", "--policies", corpus.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let located = stdout
        .lines()
        .filter(|l| {
            let mut parts = l.splitn(4, ':');
            let (_file, line, col) = (parts.next(), parts.next(), parts.next());
            line.is_some_and(|x| x.parse::<u32>().is_ok())
                && col.is_some_and(|x| x.parse::<u32>().is_ok())
        })
        .count();
    assert!(
        located >= 20,
        "FILE:LINE:COL lines, got {located}:\n{stdout}"
    );
    assert!(text(&out.stderr).contains("problems found"));

    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let out = run(
        None,
        dir.path(),
        &["validate", "--policies", shipped.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("no problems"));

    // A policy whose schedule's years have passed loads, with a warning: refusing it would
    // stop every policy at the next start.
    let done = dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    std::fs::write(
        done.join("old.yaml"),
        "name: old\nschedule: \"0 0 3 * * * 2020-2021\"\nregions: [cn-hangzhou]\nselect: {status: Stopped}\n",
    )
    .unwrap();
    let out = run(
        None,
        dir.path(),
        &["validate", "--policies", done.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("old.yaml:1:1") && all.contains("policy old: schedule \"0 0 3 * * * 2020-2021\" has no time to come (its years have passed)"),
        "{all}"
    );

    // An empty folder is a problem, not a set of none (found trying it: "0 policies, no
    // problems", and `apply` exited 0 having done nothing).
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for cmd in ["validate", "apply"] {
        let out = run(
            None,
            dir.path(),
            &[cmd, "--policies", empty.to_str().unwrap()],
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            all.contains(&format!("{}: holds no policy", empty.display()))
                && all.contains("ecs-janitor pause"),
            "{cmd}: {all}"
        );
    }

    let out = run(None, dir.path(), &["schema"]).await;
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["select"].is_object(), "{schema}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_then_apply_the_saved_plan_then_inspect_the_queue_and_history() {
    let fleet = fleet::generate(2000, 41, Utc::now());
    let h = common::start_sim(fleet, Faults::default(), 41).await;
    let dir = setup();

    let out = run(Some(&h), dir.path(), &["plan"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan_text = text(&out.stdout);
    let summary = plan_text.lines().last().unwrap().to_string();
    assert!(
        summary.starts_with("Plan: ") && summary.ends_with("policies refused."),
        "{summary}"
    );
    assert!(
        !plan_text.contains("\u{1b}["),
        "no colours when not on a terminal"
    );

    let out = run(
        Some(&h),
        dir.path(),
        &["plan", "--json", "--out", "plan.json"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_one_time_format(&doc, "plan --json");
    let planned: BTreeSet<String> = doc["policies"][0]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["instance_id"].as_str().unwrap().to_string())
        .collect();
    assert!(planned.len() > 5);
    assert!(h.sim.releases().is_empty(), "plan changes nothing");

    // A reviewer trims the saved plan to two instances; apply acts on exactly those.
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("plan.json")).unwrap())
            .unwrap();
    assert_one_time_format(&saved, "plan --out");
    saved["releases"].as_array_mut().unwrap().truncate(2);
    let reviewed: BTreeSet<String> = saved["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["instance_id"].as_str().unwrap().to_string())
        .collect();
    std::fs::write(dir.path().join("plan.json"), saved.to_string()).unwrap();
    let out = run(Some(&h), dir.path(), &["apply", "--plan", "plan.json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Released 2 instances"),
        "{}",
        text(&out.stdout)
    );
    let released: BTreeSet<String> = h
        .sim
        .releases()
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    assert_eq!(released, reviewed);

    let out = run(None, dir.path(), &["queue", "list", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_one_time_format(&rows, "queue list --json");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for key in [
            "instance_id",
            "region",
            "policy",
            "state",
            "attempts",
            "client_token",
            "last_error",
            "request_id",
            "updated_at",
        ] {
            assert!(r.get(key).is_some(), "{key} in {r}");
        }
        assert_eq!(r["state"], "succeeded");
        assert!(r["request_id"].is_string());
    }
    let out = run(None, dir.path(), &["history", "--json"]).await;
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_one_time_format(&events, "history --json");
    let kinds: BTreeSet<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["enqueued", "batched", "call_sent", "succeeded"] {
        assert!(kinds.contains(k), "{k} in {kinds:?}");
    }
    let out = run(Some(&h), dir.path(), &["apply", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_one_time_format(&report, "apply --json");
    let id = rows[0]["id"].as_i64().unwrap().to_string();
    let out = run(None, dir.path(), &["queue", "retry", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("only failed, cancelled or vanished releases can be retried"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_say_what_and_how_to_fix_it() {
    let h = common::start_sim(vec![], Faults::default(), 42).await;
    let dir = setup();
    // An operator's command on a database that is not there: reading the queue says so rather
    // than showing an empty new one; the pause is made but says where, and that it is new.
    let db = dir.path().join("j.db");
    let out = run(None, dir.path(), &["queue", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains(&format!(
            "there is no database at sqlite://{}",
            db.display()
        )) && e.contains("give the same --database (or JANITOR_DATABASE_URL)"),
        "{e}"
    );
    assert!(!db.exists(), "reading the queue made a database");
    let out = run(None, dir.path(), &["pause", "--reason", "incident 42"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains(&format!("Note: there was no database at {}", db.display())),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!("using the database sqlite://{}", db.display())),
        "{}",
        text(&out.stdout)
    );
    let out = run(None, dir.path(), &["pause", "--reason", "second"]).await;
    assert_eq!(out.status.code(), Some(0));
    let o = text(&out.stdout);
    assert!(
        o.starts_with("Already paused by ") && o.contains(": incident 42"),
        "{o}"
    );
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    assert_eq!(
        run(None, dir.path(), &["resume"]).await.status.code(),
        Some(0)
    );

    // A PostgreSQL that refuses the connection is said so (it was "pool timed out" after 10 s).
    let out = run(
        None,
        dir.path(),
        &[
            "queue",
            "list",
            "--database",
            "postgres://postgres@127.0.0.1:1/x",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("cannot open the database at postgres://postgres@127.0.0.1:1/x")
            && e.contains("Connection refused"),
        "{e}"
    );

    let out = run(Some(&h), dir.path(), &["apply", "--policy", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no policy named \"nope\"")
            && text(&out.stderr).contains("ci-stopped")
    );

    // config check (and so run) says up front that the policies' default credentials are
    // missing, rather than `run` starting ready and failing at the first tick.
    let out = run(None, dir.path(), &["config", "check"]).await;
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("credentials: policy ci-stopped (")
            && all.contains("acts with the default credentials, which cannot be used")
            && all.contains("ALIBABA_CLOUD_ACCESS_KEY_ID"),
        "{all}"
    );

    let out = run(None, dir.path(), &["plan"]).await;
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("ALIBABA_CLOUD_ACCESS_KEY_ID") && e.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        "{e}"
    );

    let out = run(None, dir.path(), &["queue", "list", "--state", "done"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr)
        .contains("pending, snapshotting, in_flight, succeeded, failed, cancelled"));

    std::fs::write(
        dir.path().join("policies/bad.yaml"),
        "name: x\nschedule: \"* * * * *\"\n",
    )
    .unwrap();
    let out = run(Some(&h), dir.path(), &["apply"]).await;
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("bad.yaml:2:"),
        "the error names the file and line: {e}"
    );
    assert!(
        h.sim.calls().is_empty(),
        "nothing was called with broken policies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_job_with_nothing_to_configure() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(None, dir.path(), &["demo"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap();
    let n: usize = last
        .strip_prefix("Released ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the demo ends with `Released N instances`: {last}"));
    assert!(n > 0, "{stdout}");
    assert!(stdout.contains("Plan: "), "the plan is shown");
    assert!(
        !dir.path().join("janitor.db").exists(),
        "the demo leaves no database behind"
    );
}

/// `config check` makes nothing: a SQLite file that is not there yet is left for `run` to
/// create (found trying it: the check created it), and a folder that is not there is a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_does_not_create_the_database() {
    let dir = setup();
    let db = dir.path().join("later.db");
    let check = |url: String| {
        let mut c = Command::new(BIN);
        c.args(["config", "check"])
            .current_dir(dir.path())
            .env("JANITOR_DATABASE_URL", url)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test-key-id")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "test-secret-value");
        c
    };
    let mut c = check(format!("sqlite://{}", db.display()));
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(!db.exists(), "config check created {}", db.display());
    let mut c = check(format!(
        "sqlite://{}",
        dir.path().join("nowhere/j.db").display()
    ));
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("does not exist"), "{all}");
}

/// Admin tokens are refused under 16 characters, the one (`JANITOR_ADMIN_TOKEN`) as the named
/// ones, and the refusal reads whole (found trying it: `x` was accepted, and `bot=than` was told
/// "the token (after =) is shorter <redacted> 16 characters").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_admin_tokens_are_refused_in_words_that_read_whole() {
    let dir = setup();
    for (var, value, says) in [
        (
            "JANITOR_ADMIN_TOKEN",
            "x",
            "the token is shorter than 16 characters",
        ),
        (
            "JANITOR_ADMIN_TOKEN",
            "short",
            "the token is shorter than 16 characters",
        ),
        (
            "JANITOR_ADMIN_TOKENS",
            "bot=than",
            "the token (after `=`) is shorter than 16 characters",
        ),
    ] {
        let mut c = Command::new(BIN);
        c.args(["config", "check"])
            .current_dir(dir.path())
            .env_remove("JANITOR_ADMIN_TOKEN")
            .env_remove("JANITOR_ADMIN_TOKENS")
            .env(var, value);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{var}={value}: {all}");
        assert!(
            all.contains(says) && all.contains(var),
            "{var}={value}: {all}"
        );
        let problem = all.lines().find(|l| l.contains("shorter")).unwrap();
        assert!(!problem.contains("<redacted>"), "{var}={value}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_sits_below_the_environment_and_secrets_stay_hidden() {
    let dir = setup();
    std::fs::write(
        dir.path().join("janitor.yaml"),
        "admin_token: hunter2-admin-token\nworkers:\n  concurrency: 8\n  calls_per_second: 5\n\
         window: {days: sat-sun, start: \"10:00\", end: \"17:00\", timezone: Asia/Shanghai}\n\
         webhooks:\n  - {url: \"https://oapi.dingtalk.com/robot/send?access_token=hunter4-hook\", format: dingtalk, name: ops}\n",
    )
    .unwrap();
    let mut c = Command::new(BIN);
    c.args(["config", "check"])
        .current_dir(dir.path())
        .env("JANITOR_CALLS_PER_SECOND", "3")
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test-key-id")
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "hunter3-ecs-secret")
        .env_remove("JANITOR_ADMIN_TOKEN")
        .env_remove("JANITOR_CONCURRENCY");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = |k: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("--concurrency").contains(" 8 ") && line("--concurrency").ends_with("file"),
        "{stdout}"
    );
    assert!(
        line("--calls-per-second").contains(" 3 ")
            && line("--calls-per-second").contains("environment"),
        "{stdout}"
    );
    assert!(line("--max-attempts").ends_with("default"), "{stdout}");
    assert!(
        line("JANITOR_ADMIN_TOKEN").contains("<redacted>"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "the secret is never printed");
    // The window and the webhooks are shown too (a webhook without its URL's token).
    assert!(
        line("window").contains("sat-sun 10:00-17:00 Asia/Shanghai")
            && line("window").ends_with("file"),
        "{stdout}"
    );
    assert!(
        line("webhook 1").contains("ops (") && line("webhook 1").contains("(dingtalk)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("hunter4"),
        "the hook's token is never printed"
    );
    assert!(
        !stdout.contains("hunter3"),
        "the ECS secret is never printed"
    );

    std::fs::write(
        dir.path().join("janitor.yaml"),
        "workers:\n  concurency: 8\n",
    )
    .unwrap();
    let out = run(None, dir.path(), &["validate"]).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad configuration stops before anything runs"
    );
    assert!(
        text(&out.stderr).contains("workers.concurency"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs the binary with `dir` as HOME and no credentials in the environment, against `h`.
async fn run_with_home(h: &SimHandle, dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .env(
            "JANITOR_DATABASE_URL",
            format!("sqlite://{}", dir.join("j.db").display()),
        )
        .env("JANITOR_POLICIES", dir.join("policies"))
        .env("JANITOR_ECS_ENDPOINT", h.endpoint().as_str());
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_profile_signs_when_named_with_profile() {
    let fleet = fleet::generate(500, 43, Utc::now());
    let h = common::start_sim(fleet, Faults::default(), 43).await;
    let dir = setup();
    std::fs::create_dir(dir.path().join(".aliyun")).unwrap();
    let profile = serde_json::json!({
        "current": "other",
        "profiles": [
            {"name": "other", "mode": "AK", "access_key_id": "nobody", "access_key_secret": "x"},
            {"name": "sim", "mode": "AK", "access_key_id": sim::DEFAULT_ACCESS_KEY_ID,
             "access_key_secret": sim::DEFAULT_ACCESS_KEY_SECRET, "region_id": "cn-hangzhou"}
        ]
    });
    std::fs::write(dir.path().join(".aliyun/config.json"), profile.to_string()).unwrap();
    let out = run_with_home(&h, dir.path(), &["plan", "--profile", "sim"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Plan: "));
    // The file's current profile has keys the simulator does not know.
    let out = run_with_home(&h, dir.path(), &["plan"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("InvalidAccessKeyId.NotFound"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_price_file_and_plan_prices_from_it() {
    let dir = setup();
    let bad = dir.path().join("bad-prices.yaml");
    std::fs::write(
        &bad,
        "currency: CNY\nregions:\n  cn-hangzhou:\n    instance_types:\n      g6.large: 10\n",
    )
    .unwrap();
    let out = run(
        None,
        dir.path(),
        &["validate", "--prices", bad.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad-prices.yaml:5:7: \"g6.large\" is not an instance type"),
        "{err}"
    );

    let good = dir.path().join("prices.yaml");
    std::fs::write(
        &good,
        "currency: CNY\nregions:\n  cn-hangzhou:\n    instance_types:\n      ecs.g6.large: 100\n    disks_per_gb:\n      cloud_essd: 0.5\n      cloud_efficiency: 0.25\n",
    )
    .unwrap();
    let out = run(
        None,
        dir.path(),
        &["validate", "--prices", good.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("prices in CNY for 1 region, no problems."));

    let h = common::start_sim(common::ci_fleet(3), Faults::default(), 4).await;
    let out = run(
        Some(&h),
        dir.path(),
        &["plan", "--json", "--prices", good.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let releases = v["policies"][0]["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 3);
    for r in releases {
        assert_eq!(
            r["saving"]["sources"],
            serde_json::json!(["price_file"]),
            "{r}"
        );
    }
    let calls = h.sim.calls();
    assert!(
        !calls.iter().any(|c| c.action == "DescribePrice"),
        "the file priced everything: {calls:?}"
    );
}
