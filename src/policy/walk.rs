//! Finding the policy files of a folder: every real directory is read once (by its canonical
//! path), and a symbolic link that leads outside the folder, back into a folder already read
//! (a loop), to a file already found, or nowhere, is reported once as a warning and not
//! followed. Links inside the folder to something not otherwise reachable (a folder whose name
//! starts with `.`, say) are followed once.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::Diagnostic;

/// The policy files found under a folder, in path order, and what the walk had to say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyFiles {
    /// `*.yaml` and `*.yml` files, each once, by the path it was reached by (under the folder
    /// as given, not canonicalised, so messages show the paths a user wrote).
    pub files: Vec<PathBuf>,
    /// Links not followed, each once, at the link's own path.
    pub warnings: Vec<Diagnostic>,
    /// Folders that could not be read: the walk is incomplete.
    pub errors: Vec<Diagnostic>,
}

fn diag(file: &Path, message: String, hint: Option<&str>) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        col: 0,
        message,
        hint: hint.map(str::to_string),
    }
}

fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// The policy files under `dir`, recursively, skipping names that start with `.`. Never reads
/// a directory twice, so links into themselves cannot make it loop or repeat files.
pub fn policy_files(dir: &Path) -> PolicyFiles {
    let mut out = PolicyFiles::default();
    let root = match std::fs::canonicalize(dir) {
        Ok(r) => r,
        Err(e) => {
            out.errors.push(diag(
                dir,
                format!("cannot read the policies folder: {e}"),
                None,
            ));
            return out;
        }
    };
    let mut walk = Walk {
        root,
        visited: HashSet::new(),
        found: HashSet::new(),
        links: Vec::new(),
        out,
    };
    // Real entries first, so a file or folder is known by its own path rather than a link's.
    let start = walk.root.clone();
    walk.visited.insert(start.clone());
    walk.read_dir(dir);
    // Then each link, in path order; following one may find more links.
    while !walk.links.is_empty() {
        walk.links.sort();
        let link = walk.links.remove(0);
        walk.follow(&link);
    }
    let mut out = walk.out;
    out.files.sort();
    out.warnings.sort();
    out.warnings.dedup();
    out
}

struct Walk {
    /// The folder's canonical path: links must stay under it.
    root: PathBuf,
    /// Canonical paths of the directories read or queued.
    visited: HashSet<PathBuf>,
    /// Canonical paths of the files found.
    found: HashSet<PathBuf>,
    /// Links met and not yet looked at.
    links: Vec<PathBuf>,
    out: PolicyFiles,
}

impl Walk {
    /// Reads one directory and, depth first, the real directories below it.
    fn read_dir(&mut self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) => {
                    self.out.errors.push(diag(
                        &d,
                        format!("cannot read the policies folder: {e}"),
                        None,
                    ));
                    continue;
                }
            };
            let mut names = BTreeSet::new();
            for entry in entries {
                match entry {
                    Ok(e) => {
                        if !e.file_name().to_string_lossy().starts_with('.') {
                            names.insert(e.path());
                        }
                    }
                    Err(e) => self.out.errors.push(diag(
                        &d,
                        format!("cannot list the policies folder: {e}"),
                        None,
                    )),
                }
            }
            for path in names {
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    self.links.push(path);
                } else if meta.is_dir() {
                    let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                    // A bind mount can show one directory twice even without links.
                    if self.visited.insert(canonical) {
                        stack.push(path);
                    }
                } else if is_policy_file(&path) {
                    self.add_file(path);
                }
            }
        }
    }

    fn add_file(&mut self, path: PathBuf) {
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if self.found.insert(canonical) {
            self.out.files.push(path);
        }
    }

    fn warn(&mut self, link: &Path, message: String, hint: &str) {
        self.out.warnings.push(diag(link, message, Some(hint)));
    }

    /// Looks at one link: follows it once when it leads to something new inside the folder.
    fn follow(&mut self, link: &Path) {
        const HINT: &str = "keep every policy file inside the policies folder, or remove the link";
        let target = match std::fs::canonicalize(link) {
            Ok(t) => t,
            Err(e) => {
                let to = std::fs::read_link(link)
                    .map(|t| format!(" to {}", t.display()))
                    .unwrap_or_default();
                self.warn(
                    link,
                    format!("symbolic link{to} leads nowhere ({e}); not followed"),
                    "remove the link or fix its target",
                );
                return;
            }
        };
        if !target.starts_with(&self.root) {
            let message = format!(
                "symbolic link points outside the policies folder (to {}); not followed",
                target.display()
            );
            self.warn(link, message, HINT);
            return;
        }
        if target.is_dir() {
            if self.visited.contains(&target) {
                let message = format!(
                    "symbolic link leads back to a folder already read ({}): a loop or a second path; not followed",
                    target.display()
                );
                self.warn(link, message, HINT);
                return;
            }
            self.visited.insert(target);
            self.read_dir(link);
        } else if is_policy_file(link) || is_policy_file(&target) {
            if self.found.contains(&target) {
                let message = format!(
                    "symbolic link is a second path to {}, which is read once; not followed",
                    target.display()
                );
                self.warn(link, message, HINT);
                return;
            }
            self.found.insert(target);
            self.out.files.push(link.to_path_buf());
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, name: &str) {
        std::fs::write(
            p,
            format!("name: {name}\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect: {{status: Stopped}}\n"),
        )
        .unwrap();
    }

    #[test]
    fn loops_and_outside_links_are_warned_once_and_every_file_is_found_once() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("far.yaml"), "far");
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("loop/deeper")).unwrap();
        write(&root.join("top.yaml"), "top");
        write(&root.join("loop/a.yaml"), "a");
        write(&root.join("loop/deeper/b.yml"), "b");
        symlink("../loop", root.join("loop/self")).unwrap();
        symlink("..", root.join("loop/up")).unwrap();
        symlink(outside.path(), root.join("elsewhere")).unwrap();
        symlink("top.yaml", root.join("again.yaml")).unwrap();
        symlink("missing", root.join("dangling.yaml")).unwrap();
        std::fs::create_dir(root.join(".shared")).unwrap();
        write(&root.join(".shared/s.yaml"), "s");
        symlink(".shared", root.join("shared")).unwrap();

        let found = policy_files(root);
        let rel = |p: &PathBuf| p.strip_prefix(root).unwrap().display().to_string();
        let files: Vec<String> = found.files.iter().map(rel).collect();
        assert_eq!(
            files,
            [
                "loop/a.yaml",
                "loop/deeper/b.yml",
                "shared/s.yaml",
                "top.yaml"
            ]
        );
        let warned: Vec<String> = found.warnings.iter().map(|w| rel(&w.file)).collect();
        assert_eq!(
            warned,
            [
                "again.yaml",
                "dangling.yaml",
                "elsewhere",
                "loop/self",
                "loop/up"
            ],
            "{:#?}",
            found.warnings
        );
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        let by = |name: &str| {
            found
                .warnings
                .iter()
                .find(|w| w.file.ends_with(name))
                .unwrap()
                .message
                .clone()
        };
        assert!(by("elsewhere").contains("outside the policies folder"));
        assert!(by("self").contains("folder already read"));
        assert!(by("again.yaml").contains("second path"));
        assert!(by("dangling.yaml").contains("leads nowhere"));
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let found = policy_files(Path::new("/nonexistent/policies"));
        assert_eq!(found.errors.len(), 1);
        assert!(found.files.is_empty());
    }
}

/// A digest of the policy set in `dir` as replicas compare it: SHA-256 of each policy file's
/// name relative to `dir` and its contents, in name order (the same files give the same digest
/// wherever the folder is mounted).
pub fn set_digest(dir: &Path) -> String {
    use sha2::Digest;
    let mut files = policy_files(dir).files;
    files.sort();
    let mut h = sha2::Sha256::new();
    for f in &files {
        let name = f
            .strip_prefix(dir)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        let body = std::fs::read(f).unwrap_or_default();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((body.len() as u64).to_le_bytes());
        h.update(&body);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
