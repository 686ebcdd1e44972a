//! Turns the bytes of one policy file into validated [`Policy`] values, recording every problem
//! as a located [`Diagnostic`] instead of stopping at the first.

use std::collections::HashMap;
use std::path::Path;

use super::node::{Node, Pos, Value};
use super::{
    Diagnostic, Duration, Glob, Limits, Policy, ReleaseOptions, Selector, SourceRef, TagMatch,
    LIMITS_KEYS, MAX_FILE_BYTES, RELEASE_KEYS, SELECTOR_KEYS, TOP_KEYS,
};
use crate::ecs::{ChargeType, InstanceStatus};

/// Reads one file's bytes into policies. Problems go to `diags`; the returned names (with the
/// position of each `name:` value) let the caller find duplicates across files.
pub(super) fn load_file(
    file: &Path,
    bytes: &[u8],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Policy>, Vec<(String, Pos)>) {
    let mut v = Validator {
        file,
        diags,
        names: Vec::new(),
    };
    if bytes.len() > MAX_FILE_BYTES {
        v.err(
            Pos { line: 1, col: 1 },
            format!(
                "file is {} bytes, over the 1 MiB limit for a policy file",
                bytes.len()
            ),
            Some("split it into several files".into()),
        );
        return (Vec::new(), Vec::new());
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let pos = pos_of_byte(bytes, e.valid_up_to());
            v.err(
                pos,
                "file is not valid UTF-8".into(),
                Some("save policy files as UTF-8".into()),
            );
            return (Vec::new(), Vec::new());
        }
    };
    if v.check_tabs(text) {
        return (Vec::new(), Vec::new());
    }
    let docs = match parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            v.yaml_error(&e);
            return (Vec::new(), Vec::new());
        }
    };
    let mut policies = Vec::new();
    for doc in &docs {
        if let Some(p) = v.policy(doc) {
            policies.push(p);
        }
    }
    let names = std::mem::take(&mut v.names);
    (policies, names)
}

/// Parser options: strict YAML 1.2 booleans (so `no` stays a string), duplicate keys refused,
/// and small alias budgets, since a policy never needs more than a handful of aliases.
fn parse_documents(text: &str) -> Result<Vec<Node>, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.alias_limits.max_total_replayed_events = 10_000;
    options.alias_limits.max_replay_stack_depth = 8;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 32;
    budget.max_nodes = 100_000;
    budget.max_documents = 1_000;
    options.budget = Some(budget);
    serde_saphyr::from_str_multiple_with_options(text, options)
}

/// The 1-based line and column of byte `offset`, counting characters in the valid prefix.
fn pos_of_byte(bytes: &[u8], offset: usize) -> Pos {
    let prefix = bytes.get(..offset).unwrap_or(bytes);
    let text = String::from_utf8_lossy(prefix);
    let line = text.matches('\n').count() + 1;
    let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Pos { line, col }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest of `candidates` to `word`, if close enough to be a plausible typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase().replace('-', "_");
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// An account, named as the aliyun CLI names profiles.
pub fn is_valid_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// `cn-hangzhou`, `ap-southeast-1`, `us-west-1`: two or more lowercase letters, a dash, then
/// lowercase letters, digits and dashes, not ending in a dash.
fn is_valid_region(s: &str) -> bool {
    let Some((head, tail)) = s.split_once('-') else {
        return false;
    };
    head.len() >= 2
        && head.bytes().all(|c| c.is_ascii_lowercase())
        && !tail.is_empty()
        && !tail.ends_with('-')
        && tail
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

struct Validator<'a> {
    file: &'a Path,
    diags: &'a mut Vec<Diagnostic>,
    names: Vec<(String, Pos)>,
}

/// A block's known keys, looked up by name.
type Fields<'n> = HashMap<&'static str, &'n Node>;

impl Validator<'_> {
    fn err(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message,
            hint,
        });
    }

    /// Reports every line indented with a tab. YAML forbids tabs in indentation, and the
    /// parser's own message ("tabs disallowed within this context") does not say what to do.
    fn check_tabs(&mut self, text: &str) -> bool {
        let mut found = false;
        for (i, line) in text.lines().enumerate() {
            let indent: &str = &line[..line.len() - line.trim_start().len()];
            if let Some(col) = indent.chars().position(|c| c == '\t') {
                found = true;
                self.err(
                    Pos {
                        line: i + 1,
                        col: col + 1,
                    },
                    "tab character in indentation".into(),
                    Some("YAML indents with spaces only; replace the tab with spaces".into()),
                );
            }
        }
        found
    }

    fn yaml_error(&mut self, e: &serde_saphyr::Error) {
        use serde_saphyr::Error as E;
        let pos = e.location().map_or(Pos { line: 1, col: 1 }, |l| Pos {
            line: usize::try_from(l.line()).unwrap_or(0),
            col: usize::try_from(l.column()).unwrap_or(0),
        });
        // Alias and snippet wrappers carry the real cause inside.
        let mut cause = e;
        while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = cause {
            cause = error;
        }
        let (message, hint) = match cause {
            E::DuplicateMappingKey { key, .. } => (
                match key {
                    Some(k) => format!("duplicate key `{k}`"),
                    None => "duplicate key".to_string(),
                },
                Some("a key may appear only once in a mapping; remove or merge one".into()),
            ),
            E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
            | E::Budget { .. } => (
                format!(
                    "document too large once aliases are expanded (alias bomb?): {}",
                    strip_location(&e.to_string())
                ),
                Some("policies need few anchors and aliases; write the values out".into()),
            ),
            _ => (
                format!("YAML syntax error: {}", strip_location(&e.to_string())),
                None,
            ),
        };
        self.err(pos, message, hint);
    }

    fn policy(&mut self, doc: &Node) -> Option<Policy> {
        let errors_before = self.diags.len();
        let Value::Map(_) = &doc.value else {
            self.err(
                doc.pos,
                format!(
                    "a policy must be a mapping of keys, found {}",
                    doc.value.kind()
                ),
                Some("start with `name: my-policy`".into()),
            );
            return None;
        };
        let f = self.fields(doc, TOP_KEYS, "", SELECTOR_KEYS);

        let name = self.required(&f, "name", doc.pos).and_then(|n| {
            let s = self.string(n, "name")?;
            if !is_valid_name(&s) {
                self.err(
                    n.pos,
                    format!("invalid policy name {s:?}"),
                    Some(
                        "use 1-63 lowercase letters, digits and dashes, starting with a letter or digit"
                            .into(),
                    ),
                );
                return None;
            }
            self.names.push((s.clone(), n.pos));
            Some(s)
        });
        let description = f
            .get("description")
            .and_then(|n| self.string(n, "description"));
        let account = f.get("account").map_or(Some(None), |n| {
            let s = self.string(n, "account")?;
            if !is_valid_account(&s) {
                self.err(
                    n.pos,
                    format!("invalid account name {s:?}"),
                    Some("use 1-63 letters, digits, dashes and underscores: the name of an aliyun CLI profile, or of an entry under `accounts:` in janitor.yaml".into()),
                );
                return None;
            }
            Some(Some(s))
        });
        let schedule = self
            .required(&f, "schedule", doc.pos)
            .and_then(|n| self.schedule(n));
        let unchecked = f
            .get("regions_unchecked")
            .map_or(Some(false), |n| self.boolean(n, "regions_unchecked"));
        let regions = self
            .required(&f, "regions", doc.pos)
            .and_then(|n| self.regions(n, unchecked.unwrap_or(false)));

        let select = match f.get("select") {
            None => {
                self.err(
                    doc.pos,
                    "missing required key `select`".into(),
                    Some("a policy must narrow something, e.g. `select: {status: Stopped}`".into()),
                );
                None
            }
            Some(n) => {
                let sel = self.selector(n, "select");
                if let Some(s) = &sel {
                    if s.is_empty() {
                        self.err(
                            n.pos,
                            "`select` is empty: a policy must narrow something".into(),
                            Some(format!("add at least one of: {}", SELECTOR_KEYS.join(", "))),
                        );
                    }
                }
                sel
            }
        };
        let exclude = f
            .get("exclude")
            .and_then(|n| self.selector(n, "exclude"))
            .filter(|s| !s.is_empty());
        let release = f
            .get("release")
            .map_or(Some(ReleaseOptions::default()), |n| self.release(n));
        let limits = f
            .get("limits")
            .map_or(Some(Limits::default()), |n| self.limits(n));
        let dry_run = f
            .get("dry_run")
            .map_or(Some(false), |n| self.boolean(n, "dry_run"));

        // Cross-key rules: ECS refuses these releases, so refuse the policy up front. They read
        // the written keys, not the typed blocks, so a type error elsewhere in `select` or
        // `release` does not hide them; a flag that is itself mistyped is not guessed at.
        if let Some(sel_node) = f.get("select").filter(|n| matches!(n.value, Value::Map(_))) {
            let release_node = f.get("release").copied();
            let flag = |key: &str| match release_node.and_then(|r| map_get(r, key)) {
                None => Some(false),
                Some((_, v)) => match v.value {
                    Value::Bool(b) => Some(b),
                    _ => None,
                },
            };
            if let Some(at) = subscription_key(sel_node) {
                if flag("terminate_subscription") == Some(false) {
                    self.err(
                        at,
                        "this selects subscription (PrePaid) instances, which ECS releases only with TerminateSubscription".into(),
                        Some("add `release: {terminate_subscription: true}`".into()),
                    );
                }
            }
            if let Some(at) = running_item(sel_node) {
                if flag("force") == Some(false) {
                    self.err(
                        at,
                        "`status` includes Running, which ECS releases only with Force".into(),
                        Some(
                            "add `release: {force: true}`, or select Stopped instances only".into(),
                        ),
                    );
                }
            }
        }

        if self.diags.len() != errors_before {
            return None;
        }
        let (schedule, schedule_text) = schedule?;
        Some(Policy {
            name: name?,
            description,
            schedule,
            schedule_text,
            account: account?,
            regions: regions?,
            select: select?,
            exclude,
            release: release?,
            limits: limits?,
            dry_run: dry_run?,
            source: SourceRef {
                file: self.file.to_path_buf(),
                line: doc.pos.line,
            },
        })
    }

    /// The known keys of mapping `node`; unknown and non-string keys are reported, with a
    /// spelling hint, or a hint that the key belongs to another block (`elsewhere`).
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        known: &[&'static str],
        block: &str,
        elsewhere: &[&str],
    ) -> Fields<'n> {
        let mut out = HashMap::new();
        let Value::Map(entries) = &node.value else {
            return out;
        };
        for (key, value) in entries {
            let Value::Str(k) = &key.value else {
                self.err(
                    key.pos,
                    format!("keys must be strings, found {}", key.value.kind()),
                    None,
                );
                continue;
            };
            if let Some(known_key) = known.iter().find(|kk| **kk == k.as_str()) {
                out.insert(*known_key, value);
                continue;
            }
            let where_ = if block.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{block}`")
            };
            let hint = if let Some(c) = closest(k, known) {
                Some(format!("did you mean `{c}`?"))
            } else if elsewhere.contains(&k.as_str()) {
                Some(format!("`{k}` belongs under `select:` or `exclude:`"))
            } else {
                Some(format!("valid keys here: {}", known.join(", ")))
            };
            self.err(key.pos, format!("unknown key `{k}` {where_}"), hint);
        }
        out
    }

    fn required<'n>(&mut self, f: &Fields<'n>, key: &str, doc: Pos) -> Option<&'n Node> {
        let found = f.get(key).copied();
        if found.is_none() {
            self.err(doc, format!("missing required key `{key}`"), None);
        }
        found
    }

    fn type_err(&mut self, n: &Node, path: &str, expected: &str) {
        let hint = match &n.value {
            Value::Bool(_) | Value::Int(_) | Value::Float(_) if expected.contains("string") => {
                Some("quote the value to make it a string".to_string())
            }
            Value::Int(_) if expected.contains("duration") => {
                Some("add a unit: s, m, h, d or w (e.g. 30s)".to_string())
            }
            _ => None,
        };
        self.err(
            n.pos,
            format!("`{path}` must be {expected}, found {}", n.value.kind()),
            hint,
        );
    }

    fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Str(_) => {
                self.err(n.pos, format!("`{path}` must not be empty"), None);
                None
            }
            _ => {
                self.type_err(n, path, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, n: &Node, path: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.type_err(n, path, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, path: &str) -> Option<Duration> {
        match &n.value {
            Value::Str(s) => match Duration::parse(s) {
                Ok(d) => Some(d),
                Err(msg) => {
                    self.err(
                        n.pos,
                        format!("`{path}`: {msg}"),
                        Some("durations look like 30s, 15m, 2h, 7d, 1w or 1d12h".into()),
                    );
                    None
                }
            },
            Value::Int(i) if *i < 0 => {
                self.err(
                    n.pos,
                    format!("`{path}` is negative ({i}); durations are never negative"),
                    None,
                );
                None
            }
            _ => {
                self.type_err(n, path, "a duration such as 30s, 2h or 7d");
                None
            }
        }
    }

    /// A list of non-empty strings.
    fn string_list(&mut self, n: &Node, path: &str) -> Option<Vec<(String, Pos)>> {
        let Value::Seq(items) = &n.value else {
            self.type_err(n, path, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.string(item, path) {
                Some(s) => out.push((s, item.pos)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn schedule(&mut self, n: &Node) -> Option<(cron::Schedule, String)> {
        let text = self.string(n, "schedule")?;
        match super::cron_text::parse(&text) {
            Ok(s) => Some((s, text)),
            Err(p) => {
                self.err(n.pos, p.message, p.hint);
                None
            }
        }
    }

    /// Region ids, each well formed and, unless `unchecked`, one ECS has.
    fn regions(&mut self, n: &Node, unchecked: bool) -> Option<Vec<String>> {
        let items = self.string_list(n, "regions")?;
        if items.is_empty() {
            self.err(
                n.pos,
                "`regions` is empty".into(),
                Some("list at least one region id, e.g. [cn-hangzhou]".into()),
            );
            return None;
        }
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (r, pos) in items {
            if !is_valid_region(&r) {
                ok = false;
                self.err(
                    pos,
                    format!("malformed region id {r:?}"),
                    Some("region ids look like cn-hangzhou, ap-southeast-1 or us-west-1".into()),
                );
            } else if !unchecked && !super::is_known_region(&r) {
                ok = false;
                let hint = match super::closest_region(&r) {
                    Some(c) => format!("did you mean {c}? A region ECS opened after this list: add `regions_unchecked: true`"),
                    None => format!(
                        "ECS regions are {}; a region ECS opened after this list: add `regions_unchecked: true`",
                        super::ECS_REGIONS.join(", ")
                    ),
                };
                self.err(pos, format!("unknown region {r}"), Some(hint));
            } else if out.contains(&r) {
                ok = false;
                self.err(pos, format!("region {r:?} is listed twice"), None);
            } else {
                out.push(r);
            }
        }
        ok.then_some(out)
    }

    fn selector(&mut self, n: &Node, block: &str) -> Option<Selector> {
        if matches!(n.value, Value::Null) {
            return Some(Selector::default());
        }
        if !matches!(n.value, Value::Map(_)) {
            self.type_err(n, block, "a mapping of conditions");
            return None;
        }
        let f = self.fields(n, SELECTOR_KEYS, block, &[]);
        let before = self.diags.len();
        let mut s = Selector::default();
        let p = |k: &str| format!("{block}.{k}");
        if let Some(v) = f.get("charge_type") {
            s.charge_type = self
                .enum_value(v, &p("charge_type"), &["PrePaid", "PostPaid"])
                .and_then(|t| ChargeType::parse(&t));
        }
        if let Some(v) = f.get("status") {
            let names: Vec<&str> = InstanceStatus::ALL.iter().map(|st| st.as_str()).collect();
            let items: Vec<&Node> = match &v.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![*v],
            };
            if items.is_empty() {
                self.err(v.pos, format!("`{}` is an empty list", p("status")), None);
            }
            for item in items {
                if let Some(st) = self
                    .enum_value(item, &p("status"), &names)
                    .and_then(|t| InstanceStatus::parse(&t))
                {
                    if !s.status.contains(&st) {
                        s.status.push(st);
                    }
                }
            }
        }
        if let Some(v) = f.get("tags") {
            match &v.value {
                Value::Map(entries) if !entries.is_empty() => {
                    for (k, val) in entries {
                        let key = self.string(k, &p("tags"));
                        let value = match &val.value {
                            Value::Str(s) => Some(s.clone()),
                            _ => {
                                self.type_err(val, &p("tags"), "string tag values");
                                None
                            }
                        };
                        if let (Some(key), Some(value)) = (key, value) {
                            s.tags.push(TagMatch {
                                key,
                                value: (value != "*").then_some(value),
                            });
                        }
                    }
                }
                Value::Map(_) => self.err(v.pos, format!("`{}` is empty", p("tags")), None),
                _ => self.type_err(v, &p("tags"), "a mapping of tag key to value"),
            }
        }
        for (key, slot) in [
            ("name", &mut s.name),
            ("instance_type", &mut s.instance_type),
        ] {
            if let Some(v) = f.get(key) {
                if let Some(text) = self.string(v, &p(key)) {
                    match Glob::new(&text) {
                        Ok(g) => *slot = Some(g),
                        Err(e) => self.err(
                            v.pos,
                            format!("`{}`: invalid glob {text:?}: {e}", p(key)),
                            Some("globs use * ? [abc] {a,b}; escape a literal with \\".into()),
                        ),
                    }
                }
            }
        }
        if let Some(v) = f.get("zone") {
            s.zone = self.string(v, &p("zone"));
        }
        if let Some(v) = f.get("resource_group_id") {
            s.resource_group_id = self.string(v, &p("resource_group_id"));
        }
        if let Some(v) = f.get("instance_ids") {
            if let Some(ids) = self.string_list(v, &p("instance_ids")) {
                if ids.is_empty() {
                    self.err(
                        v.pos,
                        format!("`{}` is an empty list", p("instance_ids")),
                        None,
                    );
                }
                for (id, _) in ids {
                    if !s.instance_ids.contains(&id) {
                        s.instance_ids.push(id);
                    }
                }
            }
        }
        if let Some(v) = f.get("created_before") {
            s.created_before = self.duration(v, &p("created_before"));
        }
        if let Some(v) = f.get("expired") {
            s.expired = self.boolean(v, &p("expired"));
        }
        if let Some(v) = f.get("expired_for") {
            s.expired_for = self.duration(v, &p("expired_for"));
        }
        if let Some(v) = f.get("stopped_for") {
            s.stopped_for = self.duration(v, &p("stopped_for"));
        }
        (self.diags.len() == before).then_some(s)
    }

    /// One of `allowed`, exactly; a near miss gets a hint.
    fn enum_value(&mut self, n: &Node, path: &str, allowed: &[&str]) -> Option<String> {
        let Value::Str(s) = &n.value else {
            self.type_err(n, path, &format!("one of {}", allowed.join(", ")));
            return None;
        };
        if allowed.contains(&s.as_str()) {
            return Some(s.clone());
        }
        let hint = match closest(s, allowed) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("valid values: {}", allowed.join(", ")),
        };
        self.err(n.pos, format!("`{path}`: unknown value {s:?}"), Some(hint));
        None
    }

    fn release(&mut self, n: &Node) -> Option<ReleaseOptions> {
        if matches!(n.value, Value::Null) {
            return Some(ReleaseOptions::default());
        }
        if !matches!(n.value, Value::Map(_)) {
            self.type_err(n, "release", "a mapping");
            return None;
        }
        let f = self.fields(n, RELEASE_KEYS, "release", &[]);
        let before = self.diags.len();
        let mut r = ReleaseOptions::default();
        if let Some(v) = f.get("force") {
            r.force = self.boolean(v, "release.force").unwrap_or(false);
        }
        if let Some(v) = f.get("terminate_subscription") {
            r.terminate_subscription = self
                .boolean(v, "release.terminate_subscription")
                .unwrap_or(false);
        }
        if let Some(v) = f.get("grace") {
            r.grace = self
                .duration(v, "release.grace")
                .map_or(chrono::Duration::zero(), Duration::to_chrono);
        }
        if let Some(v) = f.get("allow_security_locked") {
            r.allow_security_locked = self
                .boolean(v, "release.allow_security_locked")
                .unwrap_or(false);
        }
        if let Some(v) = f.get("snapshot") {
            r.snapshot = self.snapshot(v);
        }
        // Marks are on by default when a grace is set: there is then something to announce.
        r.mark = r.grace > chrono::Duration::zero();
        if let Some(v) = f.get("mark") {
            let mark = self.boolean(v, "release.mark").unwrap_or(false);
            if mark && r.grace <= chrono::Duration::zero() {
                self.err(
                    v.pos,
                    "`release.mark: true` needs `release.grace`: only a release queued to wait out a grace period is marked".into(),
                    Some("set `release.grace` (e.g. `grace: 24h`), or remove `mark`".into()),
                );
            }
            r.mark = mark;
        }
        (self.diags.len() == before).then_some(r)
    }

    /// `release.snapshot: {retention_days: N, disks: data|all}`.
    fn snapshot(&mut self, n: &Node) -> Option<super::SnapshotOptions> {
        if !matches!(n.value, Value::Map(_)) {
            self.type_err(
                n,
                "release.snapshot",
                "a mapping: {retention_days: 7, disks: data}",
            );
            return None;
        }
        let f = self.fields(n, super::SNAPSHOT_KEYS, "release.snapshot", &[]);
        let Some(days) = f.get("retention_days") else {
            self.err(
                n.pos,
                "`release.snapshot` needs `retention_days`".to_string(),
                Some("snapshots are kept this many days (1 to 65536), then ECS releases them; without it they would bill forever".into()),
            );
            return None;
        };
        let retention_days = match &days.value {
            Value::Int(i) if (1..=65_536).contains(i) => u32::try_from(*i).ok()?,
            Value::Int(i) => {
                self.err(
                    days.pos,
                    format!("`release.snapshot.retention_days` must be 1 to 65536, found {i}"),
                    None,
                );
                return None;
            }
            _ => {
                self.type_err(
                    days,
                    "release.snapshot.retention_days",
                    "a whole number of days",
                );
                return None;
            }
        };
        let disks = match f.get("disks") {
            None => super::SnapshotDisks::Data,
            Some(v) => super::SnapshotDisks::parse(&self.enum_value(
                v,
                "release.snapshot.disks",
                &["data", "all"],
            )?)?,
        };
        Some(super::SnapshotOptions {
            retention_days,
            disks,
        })
    }

    fn limits(&mut self, n: &Node) -> Option<Limits> {
        if matches!(n.value, Value::Null) {
            return Some(Limits::default());
        }
        if !matches!(n.value, Value::Map(_)) {
            self.type_err(n, "limits", "a mapping");
            return None;
        }
        let f = self.fields(n, LIMITS_KEYS, "limits", &[]);
        let before = self.diags.len();
        let mut l = Limits::default();
        if let Some(v) = f.get("max_releases_per_run") {
            match &v.value {
                Value::Int(i) if *i >= 1 => match u32::try_from(*i) {
                    Ok(x) => l.max_releases_per_run = x,
                    Err(_) => self.err(
                        v.pos,
                        format!("`limits.max_releases_per_run` is too large ({i})"),
                        None,
                    ),
                },
                Value::Int(i) => self.err(
                    v.pos,
                    format!("`limits.max_releases_per_run` must be at least 1, found {i}"),
                    Some("to stop a policy releasing anything, set `dry_run: true`".into()),
                ),
                _ => self.type_err(v, "limits.max_releases_per_run", "a whole number"),
            }
        }
        (self.diags.len() == before).then_some(l)
    }
}

/// The key and value of `key` in mapping `node`.
/// Where `select` asks for subscription (PrePaid) instances: `charge_type: PrePaid`,
/// `expired: true` or any `expired_for`.
fn subscription_key(select: &Node) -> Option<Pos> {
    ["charge_type", "expired", "expired_for"]
        .iter()
        .filter_map(|k| map_get(select, k))
        .find(|(k, v)| match (&k.value, &v.value) {
            (Value::Str(key), Value::Str(t)) if key == "charge_type" => t == "PrePaid",
            (Value::Str(key), Value::Bool(b)) if key == "expired" => *b,
            (Value::Str(key), v) => key == "expired_for" && !matches!(v, Value::Null),
            _ => false,
        })
        .map(|(k, _)| k.pos)
}

/// The `Running` item of `select.status` (a single value or a list).
fn running_item(select: &Node) -> Option<Pos> {
    let (_, v) = map_get(select, "status")?;
    let items: Vec<&Node> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![v],
    };
    items
        .into_iter()
        .find(|i| matches!(&i.value, Value::Str(s) if s == "Running"))
        .map(|i| i.pos)
}

fn map_get<'n>(node: &'n Node, key: &str) -> Option<(&'n Node, &'n Node)> {
    let Value::Map(entries) = &node.value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
        .map(|(k, v)| (k, v))
}

/// The parser's message without its trailing " at line L, column C ..." (we print our own).
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos() {
        assert_eq!(closest("chargetype", SELECTOR_KEYS), Some("charge_type"));
        assert_eq!(closest("charge-type", SELECTOR_KEYS), Some("charge_type"));
        assert_eq!(closest("stoped_for", SELECTOR_KEYS), Some("stopped_for"));
        assert_eq!(closest("zzzzzzzz", SELECTOR_KEYS), None);
        assert_eq!(closest("stopped", &["Pending", "Stopped"]), Some("Stopped"));
    }

    #[test]
    fn names_and_regions() {
        for ok in ["a", "stopped-ci-runners", "0abc"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "Abc", "a_b", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        for ok in ["cn-hangzhou", "ap-southeast-1", "us-west-1", "cn-hongkong"] {
            assert!(is_valid_region(ok), "{ok}");
        }
        for bad in [
            "",
            "cn",
            "c-hangzhou",
            "CN-hangzhou",
            "cn-",
            "cn_hangzhou",
            "cn-hz-",
        ] {
            assert!(!is_valid_region(bad), "{bad}");
        }
    }

    #[test]
    fn positions_of_bad_utf8() {
        assert_eq!(pos_of_byte(b"ab\ncd\xff", 5), Pos { line: 2, col: 3 });
    }
}
