//! The policy language: YAML lifecycle policies turned into validated [`Policy`] values, with
//! every problem in every file reported at its line and column.
//!
//! Loading runs in three steps: read the file (size, UTF-8 and tab checks), parse each YAML
//! document into a located tree ([`node`]), then validate that tree by hand ([`validate`]) so a
//! single pass can report every unknown key, wrong type and broken rule rather than stopping at
//! the first. The format is documented in `docs/policies.md`; [`json_schema`] describes it for
//! editors.

mod cron_text;
mod diag;
mod duration;
pub mod node;
mod regions;
pub mod report;
mod schema;
mod validate;
mod walk;

pub use diag::{count, Diagnostic, Diagnostics};
pub use duration::Duration;
pub use regions::{closest_region, is_known_region, ECS_REGIONS};
pub use schema::json_schema;
pub use validate::is_valid_account;
pub(crate) use validate::{closest, edit_distance};
pub use walk::{policy_files, set_digest, PolicyFiles};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::ecs::{AccountUse, ChargeType, InstanceStatus, DEFAULT_ACCOUNT};

/// Policy files larger than this are refused before parsing: a policy is a few dozen lines.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// The default `limits.max_releases_per_run`.
pub const DEFAULT_MAX_RELEASES_PER_RUN: u32 = 50;

/// Every valid policy, sorted by name (names are unique).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

impl PolicySet {
    /// The policy called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.policies.get(i))
    }
}

/// Where a policy was written: its file and the line its document starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub file: PathBuf,
    pub line: usize,
}

/// One validated lifecycle policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub description: Option<String>,
    /// The parsed schedule (UTC); its text is in [`Policy::schedule_text`].
    pub schedule: cron::Schedule,
    pub schedule_text: String,
    /// The account whose instances the policy acts on (`account:`), signed for with the aliyun
    /// CLI profile it maps to; `None` is the default credentials.
    pub account: Option<String>,
    /// Region ids, in the order written, without duplicates.
    pub regions: Vec<String>,
    /// Every condition must hold for an instance to be selected.
    pub select: Selector,
    /// Any one condition holding excludes an instance. `None` when absent or empty.
    pub exclude: Option<Selector>,
    pub release: ReleaseOptions,
    pub limits: Limits,
    pub dry_run: bool,
    pub source: SourceRef,
}

/// The account a policy acts on, as stored with its releases (`""` for the default).
pub fn account_of(p: &Policy) -> &str {
    p.account.as_deref().unwrap_or(DEFAULT_ACCOUNT)
}

/// Each policy that names an account, as [`crate::ecs::Accounts::check`] takes it.
pub fn account_uses(policies: &[Policy]) -> impl Iterator<Item = AccountUse<'_>> {
    policies.iter().filter_map(|p| {
        Some(AccountUse {
            policy: &p.name,
            file: &p.source.file,
            line: p.source.line,
            account: p.account.as_deref()?,
        })
    })
}

/// The `release:` block: how DeleteInstances is called, and the extra safety gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseOptions {
    /// DeleteInstances `Force`: release instances that are not Stopped.
    pub force: bool,
    /// DeleteInstances `TerminateSubscription`: release subscription (PrePaid) instances.
    pub terminate_subscription: bool,
    /// Wait this long after the first match before releasing.
    pub grace: chrono::Duration,
    /// Release instances holding a `security` operation lock (their disks go with them).
    pub allow_security_locked: bool,
    /// Snapshot the instance's disks before releasing it (`release.snapshot`).
    pub snapshot: Option<SnapshotOptions>,
    /// Tag each instance queued to wait out `grace` with when it goes and which policy queued
    /// it (`release.mark`; on by default when a grace is set).
    pub mark: bool,
}

impl Default for ReleaseOptions {
    fn default() -> Self {
        ReleaseOptions {
            force: false,
            terminate_subscription: false,
            grace: chrono::Duration::zero(),
            allow_security_locked: false,
            mark: false,
            snapshot: None,
        }
    }
}

/// `release.snapshot`: which disks to snapshot before DeleteInstances, and for how long ECS
/// keeps the snapshots (`RetentionDays`, after which ECS releases them itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// 1–65536.
    pub retention_days: u32,
    pub disks: SnapshotDisks,
}

/// Which of an instance's disks are snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotDisks {
    /// Its data disks only.
    Data,
    /// Its system disk and its data disks.
    All,
}

impl SnapshotDisks {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotDisks::Data => "data",
            SnapshotDisks::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<SnapshotDisks> {
        match s {
            "data" => Some(SnapshotDisks::Data),
            "all" => Some(SnapshotDisks::All),
            _ => None,
        }
    }
}

/// The `limits:` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Blast radius: a run that would release more than this is refused as a whole. Always >= 1.
    pub max_releases_per_run: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_releases_per_run: DEFAULT_MAX_RELEASES_PER_RUN,
        }
    }
}

/// A compiled glob with the text it came from.
#[derive(Debug, Clone)]
pub struct Glob {
    pub text: String,
    matcher: globset::GlobMatcher,
}

impl Glob {
    /// Compiles `text`; the error explains what is wrong with the pattern.
    pub fn new(text: &str) -> Result<Glob, String> {
        // `*` must cross `/` and `.`: names and types are not paths.
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| e.kind().to_string())?;
        Ok(Glob {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// One `tags` pair: a key and the value it must have, or `None` for `"*"` (the key is present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMatch {
    pub key: String,
    pub value: Option<String>,
}

/// The conditions of a `select:` or `exclude:` block. Absent conditions are `None`/empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    pub charge_type: Option<ChargeType>,
    /// Any of these states; empty means "any state" (Unknown states never match).
    pub status: Vec<InstanceStatus>,
    pub tags: Vec<TagMatch>,
    pub name: Option<Glob>,
    pub instance_type: Option<Glob>,
    pub zone: Option<String>,
    pub resource_group_id: Option<String>,
    pub instance_ids: Vec<String>,
    pub created_before: Option<Duration>,
    pub expired: Option<bool>,
    pub expired_for: Option<Duration>,
    pub stopped_for: Option<Duration>,
}

impl Selector {
    /// True when no condition is given.
    pub fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    /// True when this selection (as a `select:` block) can only match subscription instances,
    /// which ECS releases only with `TerminateSubscription`.
    pub fn selects_subscriptions(&self) -> bool {
        self.charge_type == Some(ChargeType::PrePaid)
            || self.expired == Some(true)
            || self.expired_for.is_some()
    }

    /// The `DescribeInstances` filters this selection implies, so inventory can ask ECS for
    /// less. Only meaningful for a `select:` block; every instance returned must still be
    /// evaluated, since the filters are a narrowing, not the whole selection.
    pub fn server_filters(&self) -> ServerFilters {
        let mut tags: Vec<(String, String)> = self
            .tags
            .iter()
            .filter_map(|t| t.value.as_ref().map(|v| (t.key.clone(), v.clone())))
            .collect();
        tags.sort();
        ServerFilters {
            status: match self.status.as_slice() {
                [only] => Some(*only),
                _ => None,
            },
            charge_type: self.charge_type.or(
                if self.expired == Some(true) || self.expired_for.is_some() {
                    Some(ChargeType::PrePaid)
                } else {
                    None
                },
            ),
            tags,
            instance_ids: self.instance_ids.clone(),
            zone_id: self.zone.clone(),
            resource_group_id: self.resource_group_id.clone(),
        }
    }
}

/// Server-side `DescribeInstances` filters implied by a selection. Every field is optional;
/// `tags` are exact key=value pairs (a `"*"` value is not a server filter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFilters {
    pub status: Option<InstanceStatus>,
    /// `InstanceChargeType`.
    pub charge_type: Option<ChargeType>,
    pub tags: Vec<(String, String)>,
    /// `InstanceIds` (ECS accepts up to 100 per call; the caller chunks).
    pub instance_ids: Vec<String>,
    pub zone_id: Option<String>,
    pub resource_group_id: Option<String>,
}

/// Protections that apply to every policy, set by the operator rather than policy authors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionConfig {
    /// An instance with this tag set to `true` is never released.
    pub protect_tag_key: String,
    /// The prefix of the tags ecs-janitor reads (exemptions) and writes (marks).
    pub tag_prefix: String,
    /// How far ahead an exemption may reach.
    pub max_exemption_days: u32,
}

impl ProtectionConfig {
    /// The tag value that protects: `true` (exactly, as ECS stores tag values as text).
    pub const PROTECT_VALUE: &'static str = "true";

    /// `janitor:exempt-until`: an owner's exemption, a date (`2027-01-31`, through that day in
    /// every time zone) or an RFC 3339 instant.
    pub fn exempt_until_key(&self) -> String {
        format!("{}exempt-until", self.tag_prefix)
    }

    /// `janitor:exempt-reason`: why, shown in plans beside the exemption.
    pub fn exempt_reason_key(&self) -> String {
        format!("{}exempt-reason", self.tag_prefix)
    }

    /// `janitor:release-after`: the mark of a queued release, when it is due (RFC 3339 UTC).
    pub fn release_after_key(&self) -> String {
        format!("{}release-after", self.tag_prefix)
    }

    /// `janitor:policy`: the mark of a queued release, the policy that queued it.
    pub fn policy_key(&self) -> String {
        format!("{}policy", self.tag_prefix)
    }

    /// The longest exemption allowed.
    pub fn max_exemption(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.max_exemption_days))
    }

    /// Whether ECS would take keys with this prefix (1–128 characters, not starting with
    /// `acs:` or `aliyun`, no `http://`/`https://`), with room for the longest suffix.
    pub fn check_prefix(prefix: &str) -> Result<(), String> {
        let lower = prefix.to_ascii_lowercase();
        if prefix.trim().is_empty() {
            return Err("give a prefix, e.g. `janitor:`".into());
        }
        if lower.starts_with("acs:") || lower.starts_with("aliyun") {
            return Err("ECS reserves tag keys starting with `acs:` or `aliyun`".into());
        }
        if lower.contains("http://") || lower.contains("https://") {
            return Err("ECS refuses tag keys containing `http://` or `https://`".into());
        }
        if prefix.chars().count() + "exempt-reason".len() > 128 {
            return Err("too long: a tag key is at most 128 characters".into());
        }
        Ok(())
    }
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        ProtectionConfig {
            protect_tag_key: "janitor:protect".to_string(),
            tag_prefix: "janitor:".to_string(),
            max_exemption_days: 90,
        }
    }
}

/// Loads every `*.yaml`/`*.yml` file under `dir` (recursively, in path order, skipping names
/// starting with `.`; see [`policy_files`] for links). Returns every policy, or every problem
/// in every file. Links the walk did not follow are logged as warnings; [`load_paths`] returns
/// them instead.
pub fn load_dir(dir: &Path) -> Result<PolicySet, Diagnostics> {
    let loaded = load_paths(&[dir.to_path_buf()]);
    for w in loaded.warnings.iter() {
        tracing::warn!("{w}");
    }
    loaded.result
}

/// What [`load_paths`] found: the policies or every problem, and the warnings either way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub result: Result<PolicySet, Diagnostics>,
    /// Links not followed (outside the folder, loops, second paths), each once.
    pub warnings: Diagnostics,
}

/// Loads policies from folders (walked as [`load_dir`] does) and single files (read whatever
/// their extension, for pre-commit hooks that pass the files they changed). Names must be
/// unique across everything given.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    let mut warnings = Vec::new();
    for path in paths {
        // A path that is not there is named as what it looks like: a file when it ends in
        // .yaml or .yml, else a folder.
        let looks_like_file = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if path.is_dir() || (!path.exists() && !looks_like_file) {
            let found = policy_files(path);
            files.extend(found.files);
            diags.extend(found.errors);
            warnings.extend(found.warnings);
        } else {
            files.push(path.clone());
        }
    }
    // The same file named twice (a.yaml and ./a.yaml) is read once.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    let mut inputs = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read(&file) {
            Ok(bytes) => inputs.push((file, bytes)),
            Err(e) => diags.push(file_diag(&file, format!("cannot read the file: {e}"))),
        }
    }
    warnings.sort();
    warnings.dedup();
    let mut result = load_inputs(inputs, diags);
    // No policy at all is a mistake (an empty or wrong folder), never a set to run: a daemon
    // that ran it would release nothing, with nothing to show that it had stopped.
    if matches!(&result, Ok(set) if set.policies.is_empty()) {
        result = Err(Diagnostics(
            paths
                .iter()
                .map(|p| Diagnostic {
                    hint: Some(
                        "write a policy in a .yaml or .yml file there (docs/policies.md; \
                         `ecs-janitor schema` for editors), or point --policies (JANITOR_POLICIES) \
                         at the folder that holds them; to stop releasing for a while, use \
                         `ecs-janitor pause`"
                            .into(),
                    ),
                    ..file_diag(p, "holds no policy".into())
                })
                .collect(),
        ));
    }
    // A policy whose schedule's years have passed loads, and says so: it will not run again.
    if let Ok(set) = &result {
        for p in &set.policies {
            if let Some(message) = cron_text::ran_its_course(&p.schedule, &p.schedule_text) {
                warnings.push(Diagnostic {
                    line: p.source.line,
                    col: 1,
                    ..file_diag(&p.source.file, format!("policy {}: {message}", p.name))
                });
            }
        }
    }
    Loaded {
        result,
        warnings: Diagnostics(warnings),
    }
}

/// Loads policies from one text, reporting problems against `name_for_errors`. For tests and
/// for callers that already hold the text.
pub fn load_str(name_for_errors: impl Into<PathBuf>, text: &str) -> Result<PolicySet, Diagnostics> {
    load_inputs(
        vec![(name_for_errors.into(), text.as_bytes().to_vec())],
        Vec::new(),
    )
}

/// Loads policies from several named byte buffers, as if each were a file.
pub fn load_bytes(inputs: Vec<(PathBuf, Vec<u8>)>) -> Result<PolicySet, Diagnostics> {
    load_inputs(inputs, Vec::new())
}

fn load_inputs(
    inputs: Vec<(PathBuf, Vec<u8>)>,
    mut diags: Vec<Diagnostic>,
) -> Result<PolicySet, Diagnostics> {
    let mut policies: Vec<Policy> = Vec::new();
    // Name -> (file, line) of its first definition, to name both places on a duplicate.
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for (file, bytes) in inputs {
        let (found, name_positions) = validate::load_file(&file, &bytes, &mut diags);
        for (name, pos) in name_positions {
            match seen.get(&name) {
                Some((first_file, first_line)) => diags.push(Diagnostic {
                    file: file.clone(),
                    line: pos.line,
                    col: pos.col,
                    message: format!(
                        "policy name `{name}` is already used at {}:{first_line}",
                        first_file.display()
                    ),
                    hint: Some("policy names must be unique across all files; rename one".into()),
                }),
                None => {
                    seen.insert(name, (file.clone(), pos.line));
                }
            }
        }
        policies.extend(found);
    }
    if !diags.is_empty() {
        diags.sort();
        diags.dedup();
        return Err(Diagnostics(diags));
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PolicySet { policies })
}

fn file_diag(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        col: 0,
        message,
        hint: None,
    }
}

/// The keys each block accepts, in the order the reference documents them.
pub(crate) const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "account",
    "schedule",
    "regions",
    "regions_unchecked",
    "select",
    "exclude",
    "release",
    "limits",
    "dry_run",
];
pub(crate) const SELECTOR_KEYS: &[&str] = &[
    "charge_type",
    "status",
    "tags",
    "name",
    "instance_type",
    "zone",
    "resource_group_id",
    "instance_ids",
    "created_before",
    "expired",
    "expired_for",
    "stopped_for",
];
pub(crate) const RELEASE_KEYS: &[&str] = &[
    "force",
    "terminate_subscription",
    "grace",
    "allow_security_locked",
    "snapshot",
    "mark",
];
pub(crate) const SNAPSHOT_KEYS: &[&str] = &["retention_days", "disks"];
pub(crate) const LIMITS_KEYS: &[&str] = &["max_releases_per_run"];
