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
