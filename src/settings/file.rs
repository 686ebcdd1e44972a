//! The configuration file (`janitor.yaml`, `--config` / `JANITOR_CONFIG`): every setting flags and
//! environment variables give, in one reviewed file, read and checked at its lines. Which value
//! wins is decided in [`super::Settings`]; this module only reads the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::SPECS;
use crate::policy::node::{Node, Pos, Value};

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Other { path: PathBuf, message: String },
}

/// The file, parsed.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// Scalar settings by dotted key (`workers.concurrency`), as text.
    pub values: BTreeMap<String, String>,
    /// Structured settings, kept for the parts that read them.
    pub webhooks: Option<serde_json::Value>,
    pub window: Option<serde_json::Value>,
    pub accounts: Option<serde_json::Value>,
    /// Where each setting's value is written, by dotted key: 1-based line and column.
    pub positions: BTreeMap<String, (usize, usize)>,
}

/// The structured top-level keys, kept whole.
const STRUCTURED: &[&str] = &["webhooks", "window", "accounts"];
/// The top-level keys that hold a mapping of scalar settings.
const SECTIONS: &[&str] = &["ecs", "workers", "pricing"];

/// Keys that no longer exist, and what took their place.
const RETIRED: &[(&str, &str)] = &[(
    "pricing.calls_per_second",
    "price and disk calls are paced per (account, region, API) like every other call; \
     `workers.calls_per_second` caps them. Delete the key",
)];

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A located YAML value as JSON, for the settings read through serde.
fn to_json(n: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &n.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = scalar_text(&k.value).unwrap_or_else(|| k.value.kind());
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

/// A value's kind in words without the value itself, for secrets.
fn kind_only(v: &Value) -> &'static str {
    match v {
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
        Value::Null => "nothing (null)",
        _ => "a single value",
    }
}

impl ConfigFile {
    /// Reads and checks `path`. Unknown keys and non-scalar values where a scalar belongs are
    /// errors that name the key; the first is returned ([`ConfigFile::load_all`] gives all).
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let (file, mut problems) = Self::load_all(path);
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(problems.remove(0))
        }
    }

    /// Reads `path`: what could be read of it, and every problem found, each at its place.
    pub fn load_all(path: &Path) -> (ConfigFile, Vec<ConfigError>) {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_all(path, &text),
            Err(source) => (
                ConfigFile {
                    path: path.to_path_buf(),
                    ..ConfigFile::default()
                },
                vec![ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }],
            ),
        }
    }

    /// Parses the text of a configuration file; the first problem, if any.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let (file, mut problems) = Self::parse_all(path, text);
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(problems.remove(0))
        }
    }

    /// Parses the text of a configuration file: the settings that are valid, and a located
    /// problem for each one that is not. Secret values never appear in a problem.
    pub fn parse_all(path: &Path, text: &str) -> (ConfigFile, Vec<ConfigError>) {
        let mut file = ConfigFile {
            path: path.to_path_buf(),
            ..ConfigFile::default()
        };
        let mut problems = Vec::new();
        let at = |pos: Pos, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message,
        };
        let root: Node = match serde_saphyr::from_str(text) {
            Ok(n) => n,
            Err(e) => {
                // serde-saphyr reports "line N column M" in its message; keep it whole.
                problems.push(ConfigError::Other {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
                return (file, problems);
            }
        };
        let entries = match root.value {
            Value::Map(entries) => entries,
            Value::Null => Vec::new(),
            other => {
                let message = format!(
                    "the configuration must be a mapping of settings, found {}",
                    other.kind()
                );
                problems.push(at(root.pos, message));
                return (file, problems);
            }
        };
        let mut scalars: Vec<(String, Node, Node)> = Vec::new();
        for (key, value) in entries {
            let Some(k) = scalar_text(&key.value) else {
                let message = format!("keys must be strings, found {}", key.value.kind());
                problems.push(at(key.pos, message));
                continue;
            };
            if STRUCTURED.contains(&k.as_str()) {
                file.positions
                    .insert(k.clone(), (value.pos.line, value.pos.col));
                // Where each part is, so a problem in one is said where it is written.
                match &value.value {
                    Value::Map(parts) => {
                        for (pk, pv) in parts {
                            if let Some(name) = scalar_text(&pk.value) {
                                file.positions
                                    .insert(format!("{k}.{name}"), (pv.pos.line, pv.pos.col));
                                file.positions
                                    .insert(format!("{k}.{name}:key"), (pk.pos.line, pk.pos.col));
                            }
                        }
                    }
                    Value::Seq(items) => {
                        for (i, item) in items.iter().enumerate() {
                            file.positions
                                .insert(format!("{k}.{i}"), (item.pos.line, item.pos.col));
                            // And each key of an entry, and its value.
                            let Value::Map(parts) = &item.value else {
                                continue;
                            };
                            for (pk, pv) in parts {
                                if let Some(name) = scalar_text(&pk.value) {
                                    file.positions.insert(
                                        format!("{k}.{i}.{name}"),
                                        (pv.pos.line, pv.pos.col),
                                    );
                                    file.positions.insert(
                                        format!("{k}.{i}.{name}:key"),
                                        (pk.pos.line, pk.pos.col),
                                    );
                                }
                            }
                        }
                    }
                    _ => {}
                }
                let json = Some(to_json(&value));
                match k.as_str() {
                    "webhooks" => file.webhooks = json,
                    "window" => file.window = json,
                    _ => file.accounts = json,
                }
            } else if SECTIONS.contains(&k.as_str()) {
                match value.value {
                    Value::Map(sub) => {
                        for (sk, sv) in sub {
                            let name = scalar_text(&sk.value).unwrap_or_else(|| sk.value.kind());
                            scalars.push((format!("{k}.{name}"), sk, sv));
                        }
                    }
                    Value::Null => {}
                    other => {
                        let message = format!(
                            "`{k}` must be a mapping of settings, found {}",
                            other.kind()
                        );
                        problems.push(at(value.pos, message));
                    }
                }
            } else {
                scalars.push((k, key, value));
            }
        }
        for (k, key, value) in scalars {
            if !SPECS.iter().any(|spec| spec.key == k) {
                let retired = RETIRED.iter().find(|(key, _)| *key == k);
                let message = if let Some((_, instead)) = retired {
                    format!("`{k}` was removed: {instead}")
                } else {
                    match k.split_once('.') {
                        Some((section, _)) => {
                            let valid: Vec<&str> = SPECS
                                .iter()
                                .filter_map(|spec| spec.key.strip_prefix(&format!("{section}.")))
                                .collect();
                            let leaf = &k[section.len() + 1..];
                            format!(
                                "unknown key `{k}`{}; valid keys under `{section}`: {}",
                                did_you_mean(leaf, &valid, &format!("{section}.")),
                                valid.join(", ")
                            )
                        }
                        None => {
                            let valid = top_level_keys();
                            format!(
                                "unknown key `{k}`{}; valid top-level keys: {}",
                                did_you_mean(&k, &valid, ""),
                                valid.join(", ")
                            )
                        }
                    }
                };
                problems.push(at(key.pos, message));
                continue;
            }
            let Some(text) = scalar_text(&value.value) else {
                let found = if super::spec::spec(&k).is_some_and(|spec| spec.secret) {
                    // Never the value: a secret written as a list is still a secret.
                    kind_only(&value.value).to_string()
                } else {
                    value.value.kind()
                };
                let message = format!("`{k}` must be a single value, found {found}");
                problems.push(at(value.pos, message));
                continue;
            };
            file.positions
                .insert(k.clone(), (value.pos.line, value.pos.col));
            file.values.insert(k, text);
        }
        (file, problems)
    }

    /// Where the file sets `key`: `FILE:LINE:COL`, or the file alone when not known.
    pub fn place(&self, key: &str) -> String {
        match self.positions.get(key) {
            Some((line, col)) => format!("{}:{line}:{col}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    fn invalid(&self, key: &str, message: String) -> ConfigError {
        match self.positions.get(key) {
            Some((line, col)) => ConfigError::Invalid {
                path: self.path.clone(),
                line: *line,
                col: *col,
                message,
            },
            None => ConfigError::Other {
                path: self.path.clone(),
                message,
            },
        }
    }

    /// The webhooks the file configures (none when it has no `webhooks:`).
    pub fn webhooks(&self) -> Result<Vec<crate::notify::WebhookConfig>, Vec<ConfigError>> {
        const SHAPE: &str =
            "each webhook is {url: https://..., format: generic|dingtalk|slack, name: optional}";
        let Some(v) = &self.webhooks else {
            return Ok(Vec::new());
        };
        let Some(items) = v.as_array() else {
            return Err(vec![self.invalid(
                "webhooks",
                format!("`webhooks` must be a list ({SHAPE})"),
            )]);
        };
        // Each webhook on its own, so every bad one is reported in one go.
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, item) in items.iter().enumerate() {
            use crate::notify::WebhookFault;
            match crate::notify::parse_webhook(item) {
                Ok(w) => out.push(w),
                Err((fault, e)) => {
                    // Said where the bad key is written, else where the entry starts.
                    let (place, what) = match &fault {
                        WebhookFault::Entry => (format!("webhooks.{i}"), String::new()),
                        WebhookFault::UnknownKey(k) => {
                            (format!("webhooks.{i}.{k}:key"), format!(" `{k}`"))
                        }
                        WebhookFault::Value(k) => (format!("webhooks.{i}.{k}"), format!(" `{k}`")),
                    };
                    let place = if self.positions.contains_key(&place) {
                        place
                    } else {
                        format!("webhooks.{i}")
                    };
                    problems.push(self.invalid(
                        &place,
                        format!("`webhooks` entry {}{what}: {e} ({SHAPE})", i + 1),
                    ))
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Account name → aliyun CLI profile, from `accounts:` (`prod: {profile: janitor-prod}`).
    /// An account not listed signs with the profile of its own name.
    pub fn accounts(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Account {
            profile: String,
        }
        let Some(v) = &self.accounts else {
            return Ok(BTreeMap::new());
        };
        let bad = |message: String| self.invalid("accounts", message);
        let map: BTreeMap<String, Account> = serde_json::from_value(v.clone()).map_err(|e| {
            bad(format!(
                "`accounts`: {e} (each account is `NAME: {{profile: PROFILE}}`, e.g. `prod: {{profile: janitor-prod}}`)"
            ))
        })?;
        let mut out = BTreeMap::new();
        for (name, a) in map {
            if !crate::policy::is_valid_account(&name) {
                return Err(self.invalid(&format!("accounts.{name}:key"), format!(
                    "`accounts`: invalid account name {name:?}: use 1-63 letters, digits, dashes and underscores"
                )));
            }
            if a.profile.trim().is_empty() {
                return Err(self.invalid(
                    &format!("accounts.{name}"),
                    format!("`accounts.{name}.profile` is empty"),
                ));
            }
            out.insert(name, a.profile);
        }
        Ok(out)
    }

    /// The operating window the file configures, if any.
    pub fn window(&self) -> Result<Option<crate::window::OperatingWindow>, Vec<ConfigError>> {
        match &self.window {
            None => Ok(None),
            Some(v) => crate::window::OperatingWindow::from_config(v)
                .map(Some)
                .map_err(|problems| {
                    problems
                        .into_iter()
                        .map(|(field, message)| {
                            let key = field.map_or("window".to_string(), |f| format!("window.{f}"));
                            self.invalid(&key, message)
                        })
                        .collect()
                }),
        }
    }
}

fn top_level_keys() -> Vec<&'static str> {
    let mut keys: BTreeSet<&str> = SPECS
        .iter()
        .map(|spec| spec.key.split('.').next().unwrap_or(spec.key))
        .collect();
    keys.extend(["webhooks", "window", "accounts"]);
    keys.into_iter().collect()
}

/// The configuration file: the one `--config` or `JANITOR_CONFIG` names, else `janitor.yaml`
/// in the working directory when it exists.
pub fn locate(named: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = named.filter(|p| !p.as_os_str().is_empty()) {
        return Some(p.to_path_buf());
    }
    let default = PathBuf::from("janitor.yaml");
    default.exists().then_some(default)
}

/// ` (did you mean `PREFIX.KEY`?)` when one of `valid` is a likely typo of `key`, else nothing.
fn did_you_mean(key: &str, valid: &[&str], prefix: &str) -> String {
    crate::policy::closest(key, valid)
        .map(|c| format!(" (did you mean `{prefix}{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_map_names_to_profiles_and_bad_entries_say_how_to_write_one() {
        let c = ConfigFile::parse(
            Path::new("janitor.yaml"),
            "accounts:\n  prod: {profile: janitor-prod}\n",
        )
        .unwrap();
        assert_eq!(
            c.accounts().unwrap(),
            BTreeMap::from([("prod".to_string(), "janitor-prod".to_string())])
        );
        for bad in [
            "accounts:\n  prod: janitor-prod\n",
            "accounts:\n  prod: {profle: x}\n",
            "accounts:\n  \"bad name\": {profile: x}\n",
            "accounts:\n  prod: {profile: \"\"}\n",
        ] {
            let e = ConfigFile::parse(Path::new("janitor.yaml"), bad)
                .unwrap()
                .accounts()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("janitor.yaml") && e.contains("accounts"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn scalars_flatten_and_unknown_keys_are_named() {
        let c = ConfigFile::parse(
            Path::new("janitor.yaml"),
            "database: postgres://j@db/j\nworkers:\n  concurrency: 8\necs:\n  endpoint: http://127.0.0.1:1/\nwebhooks:\n  - url: https://example.invalid/hook\n    format: slack\n",
        )
        .unwrap();
        assert_eq!(c.values["database"], "postgres://j@db/j");
        assert_eq!(c.values["workers.concurrency"], "8");
        assert!(c.webhooks.is_some());

        let e = ConfigFile::parse(Path::new("j.yaml"), "workers:\n  concurency: 8\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `workers.concurency` (did you mean `workers.concurrency`?)"),
            "{e}"
        );
        let e = ConfigFile::parse(Path::new("j.yaml"), "databse: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("j.yaml") && e.contains("unknown key `databse` (did you mean `database`?)"),
            "{e}"
        );
        let e = ConfigFile::parse(Path::new("j.yaml"), "listen: [a, b]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen` must be a single value"), "{e}");
    }

    /// A bad webhook is said where its bad key is written, not where its entry starts (found
    /// in a user trial: a wrong `format` three lines down was reported at the entry's `url`).
    #[test]
    fn a_bad_webhook_key_is_located_at_the_key() {
        let c = ConfigFile::parse(
            Path::new("j.yaml"),
            "webhooks:\n  - name: team\n    url: https://example.invalid/hook\n    format: slakc\n  - url: ftp://x/y\n    format: slack\n  - url: https://example.invalid/h\n    secret: SECabc\n  - url: https://example.invalid/h\n    fromat: slack\n  - url: https://example.invalid/h\n    name: [a, b]\n  - url: https://example.invalid/h\n    format: dingtalk\n    secret: 12345\n",
        )
        .unwrap();
        let problems: Vec<String> = c
            .webhooks()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(problems.len(), 6, "{problems:?}");
        let want = [
            ("j.yaml:4:13", "`format`"),
            ("j.yaml:5:10", "`url`"),
            ("j.yaml:8:13", "`secret`"),
            ("j.yaml:10:5", "`fromat`"),
            ("j.yaml:12:11", "`name`"),
            ("j.yaml:15:13", "`secret`"),
        ];
        for ((place, key), got) in want.iter().zip(&problems) {
            assert!(got.starts_with(&format!("{place}: ")), "{got}");
            assert!(got.contains(key), "{got}");
            assert!(!got.contains("SECabc") && !got.contains("12345"), "{got}");
        }
    }

    #[test]
    fn a_retired_key_says_what_replaced_it() {
        let e = ConfigFile::parse(Path::new("j.yaml"), "pricing:\n  calls_per_second: 20\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("j.yaml:2:3")
                && e.contains("`pricing.calls_per_second` was removed")
                && e.contains("workers.calls_per_second"),
            "{e}"
        );
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/janitor.example.yaml");
        let c = ConfigFile::load(&path).unwrap();
        assert_eq!(c.values["workers.concurrency"], "16");
        assert_eq!(c.webhooks().unwrap().len(), 3);
        assert!(c.window().unwrap().is_some());
        assert_eq!(c.accounts().unwrap()["prod"], "janitor-prod");
    }
}
