//! Strict on input, as a user meets it through the binary: policy folders with link loops,
//! `validate FILE...`, region ids checked against ECS's list, cron errors in one line with the
//! right bounds, counts in good grammar, colours only on a terminal, and `config check`
//! refusing what `run` refuses, with each problem's source and no secret shown.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");

/// Runs the binary in `dir` with a clean environment for the settings under test.
fn janitor(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("JANITOR_") || k.starts_with("ALIBABA_CLOUD_") || k == "NO_COLOR" {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn policy(name: &str, schedule: &str, regions: &str) -> String {
    format!(
        "name: {name}\nschedule: \"{schedule}\"\nregions: {regions}\nselect: {{status: Stopped}}\n"
    )
}

fn write(path: &Path, body: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, body).unwrap();
}

#[cfg(unix)]
#[test]
fn a_folder_with_links_into_itself_validates_at_once_with_one_warning_per_link() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("policies");
    write(
        &root.join("loop/a.yaml"),
        &policy("a", "0 0 * * * *", "[cn-hangzhou]"),
    );
    write(
        &root.join("b.yaml"),
        &policy("b", "0 0 * * * *", "[cn-shanghai]"),
    );
    symlink("../loop", root.join("loop/self")).unwrap();
    symlink("..", root.join("loop/up")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(
        &outside.path().join("c.yaml"),
        &policy("c", "0 0 * * * *", "[cn-beijing]"),
    );
    symlink(outside.path(), root.join("shared")).unwrap();

    let out = janitor(dir.path(), &["validate", "--policies", "policies"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{stdout}");
    for (link, what) in [
        ("policies/loop/self", "folder already read"),
        ("policies/loop/up", "folder already read"),
        ("policies/shared", "outside the policies folder"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("warning: {link}: ")) && w.contains(what)),
            "{link}: {stdout}"
        );
    }
    assert!(
        stdout.contains("policies: 2 policies, no problems (3 warnings)."),
        "{stdout}"
    );
    assert!(!stdout.contains("already used"), "{stdout}");
}

#[test]
fn validate_checks_the_files_it_is_given_for_pre_commit_hooks() {
    let dir = tempfile::tempdir().unwrap();
    // The folder holds a broken file that the hook did not pass.
    write(&dir.path().join("policies/broken.yaml"), "name: [x]\n");
    write(
        &dir.path().join("changed/one.yaml"),
        &policy("one", "0 0 * * * *", "[cn-hangzhou]"),
    );
    write(
        &dir.path().join("changed/two.yml"),
        &policy("two", "0 0 * * * *", "[cn-hangzhou]"),
    );
    let out = janitor(
        dir.path(),
        &["validate", "changed/one.yaml", "changed/two.yml"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("changed/one.yaml, changed/two.yml: 2 policies, no problems."),
        "{}",
        text(&out.stdout)
    );

    write(
        &dir.path().join("changed/dup.yaml"),
        &policy("one", "0 0 * * * *", "[cn-hangzhou]"),
    );
    let out = janitor(
        dir.path(),
        &[
            "validate",
            "changed/one.yaml",
            "changed/dup.yaml",
            "missing.yaml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "changed/dup.yaml:1:7: policy name `one` is already used at changed/one.yaml:1"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing.yaml: cannot read the file"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("2 problems found."),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_region_typo_is_refused_with_a_suggestion_and_regions_unchecked_accepts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("policies/typo.yaml"),
        &policy("typo", "0 0 * * * *", "[cn-hangzou]"),
    );
    let out = janitor(dir.path(), &["validate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "policies/typo.yaml:3:11: unknown region cn-hangzou (hint: did you mean cn-hangzhou?"
        ),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("1 problem found."),
        "{}",
        text(&out.stderr)
    );

    write(
        &dir.path().join("policies/typo.yaml"),
        &format!(
            "{}regions_unchecked: true\n",
            policy("typo", "0 0 * * * *", "[cn-newregion-1]")
        ),
    );
    let out = janitor(dir.path(), &["validate"], &[]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("policies: 1 policy, no problems."),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn cron_problems_are_one_line_each_with_the_real_bounds() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("policies/a.yaml"),
        &policy("a", "0 61 * * * *", "[cn-hangzhou]"),
    );
    write(
        &dir.path().join("policies/b.yaml"),
        &policy("b", "@every 5m", "[cn-hangzhou]"),
    );
    write(
        &dir.path().join("policies/c.yaml"),
        &policy("c", "0 0 24 * * *", "[cn-hangzhou]"),
    );
    let out = janitor(dir.path(), &["validate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem:\n{stdout}");
    assert!(lines[0].starts_with(
        "policies/a.yaml:2:11: schedule \"0 61 * * * *\": minute 61 is out of range 0-59 (hint: "
    ), "{stdout}");
    assert!(lines[1].starts_with(
        "policies/b.yaml:2:11: schedule \"@every 5m\": @every is not a shorthand ecs-janitor knows (hint: write every 5m as the cron \"0 */5 * * * *\""
    ), "{stdout}");
    assert!(
        lines[2].contains("hour 24 is out of range 0-23"),
        "{stdout}"
    );
    assert!(!stdout.contains("must be less than"), "{stdout}");
    assert!(
        text(&out.stderr).contains("3 problems found."),
        "{}",
        text(&out.stderr)
    );
}

#[cfg(unix)]
#[test]
fn logs_carry_no_colour_codes_off_a_terminal_or_with_no_color() {
    // A link out of the folder makes `plan` log a warning before it needs the network.
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("policies/a.yaml"),
        &policy("a", "0 0 * * * *", "[cn-hangzhou]"),
    );
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("policies/out")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}/");
    let db = format!("sqlite://{}", dir.path().join("j.db").display());
    let base = [
        ("JANITOR_ECS_ENDPOINT", endpoint.as_str()),
        ("JANITOR_DATABASE_URL", db.as_str()),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
    ];
    for extra in [None, Some(("NO_COLOR", "1"))] {
        let mut env = base.to_vec();
        env.extend(extra);
        let out = janitor(dir.path(), &["plan"], &env);
        let stderr = text(&out.stderr);
        assert!(stderr.contains("policies/out"), "{stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "colour codes in a pipe: {stderr:?}"
        );
        // The refused connection names the host and the cause.
        assert!(
            stderr.contains(&format!(
                "cannot connect to 127.0.0.1:{port}: connection refused"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn a_bad_account_in_the_config_file_is_located_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("policies/a.yaml"),
        &policy("a", "0 0 * * * *", "[cn-hangzhou]"),
    );
    let home = dir.path().display().to_string();
    for (accounts, want) in [
        (
            "accounts:\n  prod: {profile: p}\n  stage: {profile: \" \"}\n",
            "janitor.yaml:3:10: `accounts.stage.profile` is empty",
        ),
        (
            "accounts:\n  prod: {profile: p}\n  \"st age\": {profile: q}\n",
            "janitor.yaml:3:3: `accounts`: invalid account name \"st age\"",
        ),
    ] {
        write(&dir.path().join("janitor.yaml"), accounts);
        let out = janitor(dir.path(), &["config", "check"], &[("HOME", home.as_str())]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
}

#[test]
fn config_check_refuses_what_run_refuses_all_at_once_with_sources_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("policies/a.yaml"),
        &policy("a", "0 0 * * * *", "[cn-hangzhou]"),
    );
    write(
        &dir.path().join("janitor.yaml"),
        "admin_token: [hunter2-secret]\n\
         window: {days: mon-fry, start: \"25:00\", end: \"06:00\", timezone: Asia/Shanghia}\n\
         webhooks:\n  - url: https://example.invalid/hook\n    format: teams\n  - url: ftp://example.invalid/hook\n\
         workers:\n  concurrency: four\n  concurency: 3\n\
         accounts:\n  prod: {profile: no-such-profile}\n  stage: {profile: no-such-either}\n",
    );
    let home = dir.path().display().to_string();
    let env = [
        ("HOME", home.as_str()),
        ("JANITOR_CALLS_PER_SECOND", "lots"),
        ("JANITOR_ADMIN_TOKEN", "env-admin-token-1234"),
    ];
    let out = janitor(dir.path(), &["config", "check"], &env);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for want in [
        "janitor.yaml:1:14: `admin_token` must be a single value, found a list",
        // Every problem of the window and of each webhook at once (found trying it: one a
        // section, four rounds of fixes for one file).
        "janitor.yaml:2:16: `window`: operating window `days`: \"fry\" is not a day of the week",
        "janitor.yaml:2:32: `window`: operating window `start`: \"25:00\" is not a time of day",
        "janitor.yaml:2:65: `window`: operating window `timezone`: \"Asia/Shanghia\"",
        "janitor.yaml:5:13: `webhooks` entry 1 `format`: unknown variant `teams`",
        "janitor.yaml:6:10: `webhooks` entry 2 `url`:",
        "janitor.yaml:9:3: unknown key `workers.concurency`",
        "janitor.yaml:8:16 (`workers.concurrency`): invalid value \"four\" for --concurrency",
        "environment variable JANITOR_CALLS_PER_SECOND: invalid value \"lots\" for --calls-per-second",
        "janitor.yaml:11:3: account prod: profile no-such-profile is unusable",
        // Each account at its own line (found trying it: the second was placed on the first's).
        "janitor.yaml:12:3: account stage: profile no-such-either is unusable",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("\n11 problems:\n"), "{stdout}");
    assert!(stderr.contains("11 problems found"), "{stderr}");
    assert!(
        !stdout.contains("flag"),
        "no value here came from a flag: {stdout}"
    );
    for secret in ["hunter2", "env-admin-token-1234"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret}: {stdout}{stderr}"
        );
    }

    // `run` and `apply` name the real source of a bad value too, and exit as for bad settings.
    write(
        &dir.path().join("janitor.yaml"),
        "workers:\n  concurrency: four\n",
    );
    let out = janitor(dir.path(), &["apply"], &[("HOME", home.as_str())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "janitor.yaml:2:16 (`workers.concurrency`): invalid value \"four\" for --concurrency"
        ),
        "{stderr}"
    );
    let out = janitor(
        dir.path(),
        &["apply", "--concurrency", "five"],
        &[("HOME", home.as_str())],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad flag is clap's usage error"
    );
    assert!(
        text(&out.stderr).contains("'five' for '--concurrency"),
        "{}",
        text(&out.stderr)
    );

    // A clean setup passes, with the database reachable and credentials for the policies.
    std::fs::remove_file(dir.path().join("janitor.yaml")).unwrap();
    let db = format!("sqlite://{}", dir.path().join("j.db").display());
    let out = janitor(
        dir.path(),
        &["config", "check"],
        &[
            ("HOME", home.as_str()),
            ("JANITOR_DATABASE_URL", db.as_str()),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test-key-id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "test-secret"),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("No problems"),
        "{}",
        text(&out.stdout)
    );
    let out = janitor(
        dir.path(),
        &["config", "check"],
        &[
            ("HOME", home.as_str()),
            ("JANITOR_DATABASE_URL", "sqlite:///nonexistent/dir/j.db"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .contains("environment variable JANITOR_DATABASE_URL: the SQLite database /nonexistent/dir/j.db cannot be made: its folder /nonexistent/dir does not exist"),
        "{}",
        text(&out.stdout)
    );
}

/// `validate --format` for CI: GitHub annotations at the problem's place, JSON, and SARIF
/// 2.1.0; the exit code says clean (0) or not (1) in every format.
#[test]
fn validate_speaks_the_formats_ci_systems_read() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("policies/bad.yaml");
    write(&bad, &policy("bad", "61 * * * * *", "[cn-hangzhou]"));
    let good = dir.path().join("policies/good.yaml");
    write(&good, &policy("good", "0 0 * * * *", "[cn-hangzhou]"));
    let gh = janitor(
        dir.path(),
        &["validate", "--format", "github", "policies"],
        &[],
    );
    assert_eq!(gh.status.code(), Some(1));
    let out = text(&gh.stdout);
    let line = out.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("::error file=policies/bad.yaml,line=2,col="),
        "{out}"
    );
    assert!(line.contains("61"), "{out}");
    let js = janitor(
        dir.path(),
        &["validate", "--format", "json", "policies"],
        &[],
    );
    assert_eq!(js.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(v["problems"][0]["line"], 2);
    let sarif = janitor(
        dir.path(),
        &["validate", "--format", "sarif", "policies"],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&sarif.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let r = &v["runs"][0]["results"][0];
    assert_eq!(r["level"], "error");
    assert_eq!(
        r["locations"][0]["physicalLocation"]["region"]["startLine"],
        2
    );
    let clean = janitor(
        dir.path(),
        &["validate", "--format", "json", "policies/good.yaml"],
        &[],
    );
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    let v: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(
        (
            v["policies"].as_u64(),
            v["problems"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );
}

/// The pre-commit hook definition runs `validate` on the policy files a commit changes.
#[test]
fn the_pre_commit_hook_runs_validate_on_policy_files() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".pre-commit-hooks.yaml"),
    )
    .unwrap();
    let hooks: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let h = &hooks[0];
    assert_eq!(h["entry"], "ecs-janitor validate");
    assert_eq!(h["pass_filenames"], true);
    assert!(h["files"].as_str().unwrap().contains("ya?ml"));
}
