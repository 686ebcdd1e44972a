//! The validator against a corpus of broken policies (tests/policy_corpus): each file states,
//! in `# expect: LINE:COL: message | hint` comments, every diagnostic it must produce, and no
//! other diagnostic may appear. Also: the shipped examples validate, and no input panics.

use std::path::{Path, PathBuf};

use ecs_janitor::policy::{self, Diagnostic};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_corpus")
}

struct Expect {
    line: usize,
    col: usize,
    message: String,
    hint: Option<String>,
}

fn parse_expect(raw: &str, file: &Path) -> Expect {
    let raw = raw.replace("{FILE}", &file.display().to_string());
    let (loc, rest) = raw.split_once(": ").expect("expect line is LINE:COL: text");
    let (line, col) = loc.split_once(':').expect("LINE:COL");
    let (message, hint) = match rest.split_once(" | ") {
        Some((m, h)) => (m.to_string(), Some(h.to_string())),
        None => (rest.to_string(), None),
    };
    Expect {
        line: line.trim().parse().expect("line number"),
        col: col.trim().parse().expect("column number"),
        message,
        hint,
    }
}

fn satisfies(d: &Diagnostic, e: &Expect) -> bool {
    d.line == e.line
        && d.col == e.col
        && d.message.contains(&e.message)
        && e.hint
            .as_ref()
            .is_none_or(|h| d.hint.as_deref().is_some_and(|dh| dh.contains(h.as_str())))
}

#[test]
fn every_corpus_file_reports_exactly_its_expected_problems() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus has gone missing");
    let mut failures = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let expects: Vec<Expect> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|l| parse_expect(l, file))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no # expect: line",
            file.display()
        );
        let diags = match policy::load_bytes(vec![(file.clone(), bytes)]) {
            Ok(_) => {
                failures.push(format!("{}: loaded without any problem", file.display()));
                continue;
            }
            Err(d) => d,
        };
        for e in &expects {
            if !diags.iter().any(|d| satisfies(d, e)) {
                failures.push(format!(
                    "{}: expected {}:{}: {} | {:?}\n  got:\n{}",
                    file.display(),
                    e.line,
                    e.col,
                    e.message,
                    e.hint,
                    diags
                ));
            }
        }
        for d in diags.iter() {
            if !expects.iter().any(|e| satisfies(d, e)) {
                failures.push(format!("{}: unexpected diagnostic: {d}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn duplicate_names_across_files_name_both_places() {
    let dir = corpus_dir().join("dup-names");
    let err = policy::load_dir(&dir).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    let d = &err.0[0];
    assert_eq!(d.file, dir.join("b.yaml"));
    assert_eq!((d.line, d.col), (2, 7));
    let first = format!("{}:1", dir.join("a.yaml").display());
    assert!(d.message.contains(&first), "{}", d.message);
    // The display form is FILE:LINE:COL: message (hint: ...).
    let shown = d.to_string();
    assert!(shown.starts_with(&format!(
        "{}:2:7: policy name `shared`",
        dir.join("b.yaml").display()
    )));
    assert!(shown.ends_with(")") && shown.contains(" (hint: "));
}

#[test]
fn a_file_over_one_mib_is_refused_before_parsing() {
    let mut big = b"name: a\n".to_vec();
    big.resize(policy::MAX_FILE_BYTES + 1, b'#');
    let err = policy::load_bytes(vec![("big.yaml".into(), big)]).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(err.0[0].message.contains("over the 1 MiB limit"), "{err}");
}

#[test]
fn a_missing_folder_is_one_clear_problem() {
    let err = policy::load_dir(Path::new("/nonexistent/policies")).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("/nonexistent/policies: cannot read the policies folder"));
}

#[test]
fn problems_in_several_files_are_all_reported() {
    let err = policy::load_bytes(vec![
        ("one.yaml".into(), b"name: Bad\n".to_vec()),
        ("two.yaml".into(), b"name: ok\nschedul: x\n".to_vec()),
    ])
    .unwrap_err();
    let files: std::collections::BTreeSet<_> = err.iter().map(|d| d.file.clone()).collect();
    assert_eq!(files.len(), 2, "{err}");
}

#[test]
fn shipped_policies_and_the_every_key_example_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = policy::load_dir(&root.join("policies")).unwrap_or_else(|d| panic!("{d}"));
    let names: Vec<_> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert!(
        names.contains(&"release-expired-subscriptions"),
        "{names:?}"
    );
    assert!(names.contains(&"release-stopped-payg-tagged"), "{names:?}");

    // The price file example the configuration example points at loads.
    let prices = root.join("docs/prices.example.yaml");
    ecs_janitor::pricing::PriceFile::load(&prices).unwrap_or_else(|e| panic!("{e}"));

    let every = root.join("docs/every-key.yaml");
    let text = std::fs::read_to_string(&every).unwrap();
    let set = policy::load_str(&every, &text).unwrap_or_else(|d| panic!("{d}"));
    let p = &set.policies[0];
    // Every key is set, so every field differs from its default.
    assert!(p.description.is_some() && p.exclude.is_some() && p.dry_run);
    let s = &p.select;
    assert!(s.charge_type.is_some() && !s.status.is_empty() && !s.tags.is_empty());
    assert!(s.name.is_some() && s.instance_type.is_some() && s.zone.is_some());
    assert!(s.resource_group_id.is_some() && !s.instance_ids.is_empty());
    assert!(s.created_before.is_some() && s.expired.is_some() && s.expired_for.is_some());
    assert!(s.stopped_for.is_some());
    assert!(p.release.force && p.release.terminate_subscription);
    assert_eq!(p.limits.max_releases_per_run, 10);
    // Every key the validator knows appears in the example.
    let schema = policy::json_schema();
    for block in [
        &schema,
        &schema["properties"]["select"],
        &schema["properties"]["release"],
        &schema["properties"]["limits"],
    ] {
        for key in block["properties"].as_object().unwrap().keys() {
            assert!(
                text.contains(&format!("{key}:")),
                "docs/every-key.yaml lacks `{key}`"
            );
        }
    }
}

#[test]
fn server_filters_narrow_describe_instances() {
    let set = policy::load_str(
        "f.yaml",
        "name: a\nschedule: '0 * * * * *'\nregions: [cn-hangzhou]\n\
         select: {status: Stopped, tags: {purpose: ci, team: '*'}, instance_ids: [i-1]}\n",
    )
    .unwrap();
    let f = set.policies[0].select.server_filters();
    assert_eq!(f.status, Some(ecs_janitor::ecs::InstanceStatus::Stopped));
    assert_eq!(f.tags, vec![("purpose".to_string(), "ci".to_string())]);
    assert_eq!(f.instance_ids, ["i-1"]);
    assert_eq!(f.charge_type, None);
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    const PIECES: &[&str] = &[
        "name: a\n",
        "schedule: '0 * * * * *'\n",
        "regions: [cn-hangzhou]\n",
        "select:\n",
        "  status: Stopped\n",
        "  tags: {a: b}\n",
        "---\n",
        "- x\n",
        "&a [1, 2]\n",
        "*a\n",
        "\t",
        ": ",
        "{",
        "}",
        "[",
        "]",
        "'",
        "\"",
        "\n",
        "  ",
        "limits: {max_releases_per_run: -1}\n",
        "release:\n  grace: 1d\n",
        "exclude: ~\n",
        "!!binary x\n",
        "? complex\n",
        "%YAML 1.2\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn yaml_like_input(parts in proptest::collection::vec(0..PIECES.len(), 0..24)) {
            let text: String = parts.iter().map(|i| PIECES[*i]).collect();
            let _ = policy::load_str("fuzz.yaml", &text);
        }

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = policy::load_bytes(vec![("fuzz.yaml".into(), bytes)]);
        }
    }
}
