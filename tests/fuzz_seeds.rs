//! Replays the fuzz targets' committed inputs on the stable toolchain, so `cargo test` keeps
//! them passing without nightly or cargo-fuzz: every seed in `fuzz/corpus/<target>/` and every
//! crash turned regression in `fuzz/regressions/<target>/` goes through the same check the fuzz
//! target runs (the harness files are shared, not copied). See docs/fuzzing.md.

use std::path::{Path, PathBuf};

#[path = "../fuzz/harness/policy_loader.rs"]
mod policy_loader;
#[path = "../fuzz/harness/sim_request.rs"]
mod sim_request;

/// Every file of `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `check` on every input, naming the file that failed.
fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            assert!(outcome.is_ok(), "{} fails its check", file.display());
            n += 1;
        }
    }
    n
}

#[test]
fn policy_loader_seeds_and_regressions() {
    let n = replay("policy_loader", policy_loader::check);
    assert!(n >= 5, "the policy_loader seed corpus has gone missing");
}

#[test]
fn sim_request_seeds_and_regressions() {
    let n = replay("sim_request", |d| {
        sim_request::check(d);
    });
    assert!(n >= 5, "the sim_request seed corpus has gone missing");
}

/// The codes answered to one seed's requests (`OK` for a success, `-` for a lost answer).
fn codes(seed: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/sim_request")
        .join(seed);
    let data = std::fs::read(&path).unwrap();
    sim_request::check(&data)
        .into_iter()
        .map(|a| match a.body {
            None => "-".to_string(),
            Some(_) if a.status.is_success() => "OK".to_string(),
            Some(v) => v["Code"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// The `sign` option must really pass the signature check, or the fuzzer would never get past
/// it: the signed seeds reach the actions and get ECS's answers to them.
#[test]
fn signed_seeds_reach_the_actions() {
    assert_eq!(
        codes("delete-token-replay-and-mismatch.req"),
        ["OK", "OK", "IdempotentParameterMismatch"]
    );
    assert_eq!(
        codes("delete-every-refusal.req"),
        [
            "OK",
            "ChargeTypeViolation",
            "InvalidOperation.DeletionProtection",
            // A security lock does not refuse a release (its disks go with it).
            "OK",
            "IncorrectInstanceStatus.Initializing",
            "DryRunOperation",
        ]
    );
    assert_eq!(
        codes("nonce-replay-unknown-action-region.req"),
        [
            "OK",
            "SignatureNonceUsed",
            "InvalidAction.NotFound",
            "InvalidRegionId.NotFound",
            "MissingParameter",
        ]
    );
}

#[test]
fn unsigned_or_badly_signed_requests_are_refused() {
    assert_eq!(
        codes("auth-failures.req"),
        [
            "SignatureDoesNotMatch",
            "MissingParameter",
            "InvalidTimeStamp.Expired",
            "InvalidTimeStamp.Format",
            "InvalidAccessKeyId.NotFound",
        ]
    );
}

#[test]
fn next_token_pages_through_the_region() {
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/sim_request/describe-next-token-pages.req"),
    )
    .unwrap();
    let answers = sim_request::check(&data);
    let ids = |n: usize| -> Vec<String> {
        answers[n].body.as_ref().unwrap()["Instances"]["Instance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceId"].as_str().unwrap().to_string())
            .collect()
    };
    // Ids in order: i-financial, i-locked, i-pending, i-protected, i-running, ...; the seed asks
    // MaxResults=3, which ECS brings up to its minimum of 10. The seed's NextToken is the hex of
    // "i-running", so its page starts after it.
    let first = ids(0);
    assert_eq!(first.len(), 10, "{first:?}");
    assert_eq!(first[..3], ["i-financial", "i-locked", "i-pending"]);
    let second = ids(1);
    assert_eq!(second[..3], ["i-starting", "i-stopped", "i-stopped2"]);
    assert!(
        second.iter().all(|id| id.as_str() > "i-running"),
        "{second:?}"
    );
}

/// The multi-file split the policy_loader target uses: a `#8<` line starts the next file.
#[test]
fn policy_loader_splits_files_at_scissors_lines() {
    let files = policy_loader::files(b"a: 1\n#8<\nb: 2\n#8<\nc: 3");
    let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(names, ["p0.yaml", "p1.yaml", "p2.yaml"]);
    assert_eq!(files[1].1, b"b: 2");
}
