//! The check behind the `policy_loader` fuzz target, shared with `tests/fuzz_seeds.rs` so that
//! stable `cargo test` replays every committed seed and crash through the very same code.
//!
//! An input is one or more policy files: its bytes are split at lines reading exactly
//! [`FILE_SEPARATOR`], and the parts are loaded together by `policy::load_bytes`, the path
//! `ecs-janitor validate` takes once it has read the folder's files. Whatever the bytes, loading
//! must not panic, and every problem must point at a file that was given, a line and a column.

use std::path::PathBuf;

use ecs_janitor::policy;

/// A line on its own that starts the next file of a multi-file input.
pub const FILE_SEPARATOR: &[u8] = b"\n#8<\n";

/// At most this many files per input; later separators stay in the last file's text.
const MAX_FILES: usize = 4;

/// The named files an input stands for: `p0.yaml`, `p1.yaml`, ...
pub fn files(data: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < MAX_FILES {
        match find(rest, FILE_SEPARATOR) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
        .into_iter()
        .enumerate()
        .map(|(n, bytes)| (PathBuf::from(format!("p{n}.yaml")), bytes.to_vec()))
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Loads `data` as policy files and checks what a user relies on: a result, never a panic;
/// on failure, at least one problem, each located in a given file at a line and column and
/// printed as `FILE:LINE:COL: message`; on success, policies that keep the loader's promises.
pub fn check(data: &[u8]) {
    let inputs = files(data);
    let names: Vec<PathBuf> = inputs.iter().map(|(p, _)| p.clone()).collect();
    match policy::load_bytes(inputs) {
        Err(diags) => {
            assert!(!diags.is_empty(), "an error without any diagnostic");
            for d in diags.iter() {
                assert!(
                    names.contains(&d.file),
                    "diagnostic for a file that was not given: {d}"
                );
                assert!(
                    d.line >= 1 && d.col >= 1,
                    "diagnostic without a line and column: {d:?}"
                );
                assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
                let prefix = format!("{}:{}:{}: ", d.file.display(), d.line, d.col);
                assert!(
                    d.to_string().starts_with(&prefix),
                    "{d} does not start with {prefix}"
                );
            }
        }
        Ok(set) => {
            for pair in set.policies.windows(2) {
                assert!(
                    pair[0].name < pair[1].name,
                    "policies not sorted by unique name: {} then {}",
                    pair[0].name,
                    pair[1].name
                );
            }
            for p in &set.policies {
                assert!(
                    (1..=63).contains(&p.name.len()),
                    "invalid name {:?}",
                    p.name
                );
                assert!(set.get(&p.name).is_some(), "{} cannot be looked up", p.name);
                assert!(!p.regions.is_empty(), "{} has no region", p.name);
                assert!(!p.select.is_empty(), "{} selects everything", p.name);
                assert!(p.limits.max_releases_per_run >= 1, "{}: limit 0", p.name);
                assert!(names.contains(&p.source.file) && p.source.line >= 1);
                // The validator's cross-key rules: ECS would refuse these releases.
                assert!(!p.select.selects_subscriptions() || p.release.terminate_subscription);
                assert!(
                    !p.select
                        .status
                        .contains(&ecs_janitor::ecs::InstanceStatus::Running)
                        || p.release.force
                );
            }
        }
    }
}
