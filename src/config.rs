//! The configuration file (`janitor.yaml`, `--config` / `JANITOR_CONFIG`): everything flags and
//! environment variables set, in one reviewed file. Precedence is flag > environment > file >
//! default: before the command line is parsed, each setting the file gives is exported as its
//! environment variable unless that variable is already set, so clap's own flag-then-env lookup
//! does the rest. Settings with structure (webhooks, the operating window) are kept as parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The settings the file may hold, by their key and environment variable.
pub const SCALARS: &[(&str, &str)] = &[
    ("policies", "JANITOR_POLICIES"),
    ("database", "JANITOR_DATABASE_URL"),
    ("listen", "JANITOR_LISTEN"),
    ("log_format", "JANITOR_LOG_FORMAT"),
    ("log", "JANITOR_LOG"),
    ("replica_id", "JANITOR_REPLICA_ID"),
    ("protect_tag_key", "JANITOR_PROTECT_TAG"),
    ("shutdown_grace_secs", "JANITOR_SHUTDOWN_GRACE_SECS"),
    ("reload_ms", "JANITOR_RELOAD_MS"),
    ("admin_token", "JANITOR_ADMIN_TOKEN"),
    ("ecs.endpoint", "JANITOR_ECS_ENDPOINT"),
    ("ecs.connect_timeout", "JANITOR_ECS_CONNECT_TIMEOUT"),
    ("ecs.call_timeout", "JANITOR_ECS_TIMEOUT"),
    ("workers.calls_per_second", "JANITOR_CALLS_PER_SECOND"),
    ("workers.concurrency", "JANITOR_CONCURRENCY"),
    ("workers.max_attempts", "JANITOR_MAX_ATTEMPTS"),
    ("workers.backoff_base_ms", "JANITOR_BACKOFF_BASE_MS"),
    ("workers.backoff_cap_ms", "JANITOR_BACKOFF_CAP_MS"),
    ("workers.lease_secs", "JANITOR_LEASE_SECS"),
];

/// Keys whose values are secrets: never printed.
pub const SECRET_KEYS: &[&str] = &["admin_token"];

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
    /// Which environment variables were set from the file (for `config check`).
    pub exported: BTreeSet<String>,
    /// Structured settings, kept for the parts that read them.
    pub webhooks: Option<serde_json::Value>,
    pub window: Option<serde_json::Value>,
    pub accounts: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    policies: Option<serde_json::Value>,
    database: Option<serde_json::Value>,
    listen: Option<serde_json::Value>,
    log_format: Option<serde_json::Value>,
    log: Option<serde_json::Value>,
    replica_id: Option<serde_json::Value>,
    protect_tag_key: Option<serde_json::Value>,
    shutdown_grace_secs: Option<serde_json::Value>,
    reload_ms: Option<serde_json::Value>,
    admin_token: Option<serde_json::Value>,
    ecs: Option<BTreeMap<String, serde_json::Value>>,
    workers: Option<BTreeMap<String, serde_json::Value>>,
    webhooks: Option<serde_json::Value>,
    window: Option<serde_json::Value>,
    accounts: Option<serde_json::Value>,
}

fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl ConfigFile {
    /// Reads and checks `path`. Unknown keys and non-scalar values where a scalar belongs are
    /// errors that name the key.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let raw: Raw = serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde-saphyr reports "line N column M" in its message; keep it whole.
            ConfigError::Other {
                path: path.to_path_buf(),
                message: format!(
                    "{msg} (valid top-level keys: {})",
                    top_level_keys().join(", ")
                ),
            }
        })?;
        let mut flat: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let top = [
            ("policies", raw.policies),
            ("database", raw.database),
            ("listen", raw.listen),
            ("log_format", raw.log_format),
            ("log", raw.log),
            ("replica_id", raw.replica_id),
            ("protect_tag_key", raw.protect_tag_key),
            ("shutdown_grace_secs", raw.shutdown_grace_secs),
            ("reload_ms", raw.reload_ms),
            ("admin_token", raw.admin_token),
        ];
        for (k, v) in top {
            if let Some(v) = v {
                flat.insert(k.to_string(), v);
            }
        }
        for (section, map) in [("ecs", raw.ecs), ("workers", raw.workers)] {
            for (k, v) in map.unwrap_or_default() {
                flat.insert(format!("{section}.{k}"), v);
            }
        }
        let mut values = BTreeMap::new();
        for (k, v) in flat {
            if !SCALARS.iter().any(|(key, _)| *key == k) {
                let section = k.split('.').next().unwrap_or_default();
                let valid: Vec<&str> = SCALARS
                    .iter()
                    .filter_map(|(key, _)| key.strip_prefix(&format!("{section}.")))
                    .collect();
                return Err(ConfigError::Other {
                    path: path.to_path_buf(),
                    message: format!(
                        "unknown key `{k}`; valid keys under `{section}`: {}",
                        valid.join(", ")
                    ),
                });
            }
            let Some(text) = scalar_text(&v) else {
                return Err(ConfigError::Other {
                    path: path.to_path_buf(),
                    message: format!("`{k}` must be a single value, found {v}"),
                });
            };
            values.insert(k, text);
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            values,
            exported: BTreeSet::new(),
            webhooks: raw.webhooks,
            window: raw.window,
            accounts: raw.accounts,
        })
    }

    /// The webhooks the file configures (none when it has no `webhooks:`).
    pub fn webhooks(&self) -> Result<Vec<crate::notify::WebhookConfig>, ConfigError> {
        match &self.webhooks {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConfigError::Other {
                path: self.path.clone(),
                message: format!(
                    "`webhooks`: {e} (each webhook is {{url: https://..., format: generic|dingtalk|slack, name: optional}})"
                ),
            }),
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
        let bad = |message: String| ConfigError::Other {
            path: self.path.clone(),
            message,
        };
        let map: BTreeMap<String, Account> = serde_json::from_value(v.clone()).map_err(|e| {
            bad(format!(
                "`accounts`: {e} (each account is `NAME: {{profile: PROFILE}}`, e.g. `prod: {{profile: janitor-prod}}`)"
            ))
        })?;
        let mut out = BTreeMap::new();
        for (name, a) in map {
            if !crate::policy::is_valid_account(&name) {
                return Err(bad(format!(
                    "`accounts`: invalid account name {name:?}: use 1-63 letters, digits, dashes and underscores"
                )));
            }
            if a.profile.trim().is_empty() {
                return Err(bad(format!("`accounts.{name}.profile` is empty")));
            }
            out.insert(name, a.profile);
        }
        Ok(out)
    }

    /// The operating window the file configures, if any.
    pub fn window(&self) -> Result<Option<crate::window::OperatingWindow>, ConfigError> {
        match &self.window {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ConfigError::Other {
                    path: self.path.clone(),
                    message: format!(
                        "`window`: {e} (e.g. {{days: mon-fri, start: \"22:00\", end: \"06:00\", timezone: \"+08:00\"}})"
                    ),
                }),
        }
    }

    /// Exports each setting as its environment variable unless the variable is already set,
    /// so a flag, then the environment, then the file, then the default wins. Call before
    /// parsing the command line and before any thread starts.
    pub fn export(&mut self) {
        for (key, var) in SCALARS {
            if let Some(v) = self.values.get(*key) {
                if std::env::var_os(var).is_none() {
                    std::env::set_var(var, v);
                    self.exported.insert(var.to_string());
                }
            }
        }
    }
}

static CURRENT: std::sync::OnceLock<Option<ConfigFile>> = std::sync::OnceLock::new();

/// Records the file the process started with (once, in `main`).
pub fn set_current(c: Option<ConfigFile>) {
    let _ = CURRENT.set(c);
}

/// The configuration file the process started with, if any.
pub fn current() -> Option<ConfigFile> {
    CURRENT.get().cloned().flatten()
}

fn top_level_keys() -> Vec<&'static str> {
    let mut keys: BTreeSet<&str> = SCALARS
        .iter()
        .map(|(k, _)| k.split('.').next().unwrap_or(k))
        .collect();
    keys.extend(["webhooks", "window", "accounts"]);
    keys.into_iter().collect()
}

/// Finds the configuration file named by `--config FILE` / `--config=FILE` in `args`, or by
/// `JANITOR_CONFIG`; `janitor.yaml` in the working directory is used when it exists.
pub fn locate(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    if let Some(v) = std::env::var_os("JANITOR_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    let default = PathBuf::from("janitor.yaml");
    default.exists().then_some(default)
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
            e.contains("workers.concurency") && e.contains("concurrency"),
            "{e}"
        );
        let e = ConfigFile::parse(Path::new("j.yaml"), "databse: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("j.yaml") && e.contains("databse"), "{e}");
        let e = ConfigFile::parse(Path::new("j.yaml"), "listen: [a, b]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen` must be a single value"), "{e}");
    }

    #[test]
    fn every_scalar_names_a_variable_the_binary_reads() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
            for a in cmd.get_arguments() {
                if let Some(e) = a.get_env() {
                    out.insert(e.to_string_lossy().to_string());
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, out);
            }
        }
        let mut known = BTreeSet::new();
        walk(&crate::cli::Cli::command(), &mut known);
        known.extend(["JANITOR_ADMIN_TOKEN".to_string(), "JANITOR_LOG".to_string()]);
        for (key, var) in SCALARS {
            assert!(
                known.contains(*var),
                "{key} → {var} is not read by the binary"
            );
        }
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/janitor.example.yaml");
        let c = ConfigFile::load(&path).unwrap();
        assert_eq!(c.values["workers.concurrency"], "4");
        assert_eq!(c.webhooks().unwrap().len(), 3);
        assert!(c.window().unwrap().is_some());
        assert_eq!(c.accounts().unwrap()["prod"], "janitor-prod");
    }

    #[test]
    fn locate_prefers_the_flag() {
        let args: Vec<String> = ["x", "run", "--config", "a.yaml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(locate(&args), Some(PathBuf::from("a.yaml")));
        let args: Vec<String> = ["x", "--config=b.yaml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(locate(&args), Some(PathBuf::from("b.yaml")));
    }
}
