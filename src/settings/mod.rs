//! Every setting resolved once, before any command runs: a flag wins over the environment, which
//! wins over the configuration file, which wins over the default. Each value keeps the source it
//! came from and is passed down by value; nothing is written back into the process environment
//! and nothing is kept in a global.

pub mod file;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use file::{locate, ConfigError, ConfigFile};
pub use spec::{Group, Spec, SPECS};

use crate::ecs::{Secret, SignatureVersion};
use crate::notify::WebhookConfig;
use crate::policy::ProtectionConfig;
use crate::window::OperatingWindow;
use crate::worker::WorkerConfig;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    /// The configuration file, at `FILE:LINE:COL`.
    File {
        place: String,
        key: &'static str,
    },
    Default,
    /// No value, and no default.
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag --{flag}"),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File { place, key } => write!(f, "{place} (`{key}`)"),
            Source::Default => f.write_str("default"),
            Source::Unset => f.write_str("unset"),
        }
    }
}

/// One setting as resolved: its text (none when unset) and where it came from.
#[derive(Clone)]
pub struct Resolved {
    pub spec: &'static Spec,
    pub raw: Option<String>,
    pub source: Source,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = match (&self.raw, self.spec.secret) {
            (Some(_), true) => Some("<redacted>"),
            (r, _) => r.as_deref(),
        };
        f.debug_struct("Resolved")
            .field("key", &self.spec.key)
            .field("raw", &raw)
            .field("source", &self.source)
            .finish()
    }
}

/// What settings are resolved from.
pub struct Inputs<'a> {
    /// Flags given on the command line, by setting key.
    pub flags: BTreeMap<&'static str, String>,
    /// The process environment (injected, so tests need not change the real one).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub file: Option<&'a ConfigFile>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How to reach ECS.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    pub endpoint: Option<url::Url>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    pub signature: SignatureVersion,
    pub profile: Option<String>,
    /// `--calls-per-second`: a ceiling for each (account, region, API), if set.
    pub calls_per_second: Option<u32>,
    /// `pricing.file`: the user's price file, when given.
    pub prices_file: Option<PathBuf>,
}

/// Every setting a command uses, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub log_format: LogFormat,
    /// `JANITOR_LOG` / `log`: the log filter, when set.
    pub log: Option<String>,
    pub policies: PathBuf,
    pub database: String,
    pub ecs: EcsSettings,
    pub protection: ProtectionConfig,
    pub workers: WorkerConfig,
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub reload_every: Duration,
    /// `admin_token` (named `admin`) and `admin_tokens`.
    pub admin_tokens: crate::server::AdminTokens,
    /// Account name → aliyun CLI profile (`accounts:` in the file).
    pub accounts: BTreeMap<String, String>,
    /// Where the file names each account (`FILE:LINE:COL` of its key under `accounts:`), for
    /// messages about it.
    pub account_places: BTreeMap<String, String>,
    pub window: Option<OperatingWindow>,
    pub webhooks: Vec<WebhookConfig>,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    /// Each scalar setting of the command's groups as resolved, in table order.
    pub resolved: Vec<Resolved>,
}

impl Settings {
    /// Resolves the settings of `groups` from `inputs`; those of other groups keep their
    /// defaults. Every value that does not parse is a problem naming its source (a secret's
    /// value is never shown); the settings returned then hold the default in its place.
    pub fn resolve(inputs: &Inputs<'_>, groups: &[Group]) -> (Settings, Vec<String>) {
        let mut r = Resolver {
            inputs,
            groups,
            resolved: Vec::new(),
            problems: Vec::new(),
        };
        let log_format = match r.text("log_format").as_deref() {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Pretty,
        };
        let log = r.text("log");
        let policies = PathBuf::from(r.text("policies").unwrap_or_default());
        let database = r.text("database").unwrap_or_default();
        let endpoint = r.parse("ecs.endpoint", |s| {
            url::Url::parse(s).map_err(|e| e.to_string())
        });
        let connect_timeout = r.parse("ecs.connect_timeout", spec::seconds);
        let call_timeout = r.parse("ecs.call_timeout", spec::seconds);
        let signature = r.parse("ecs.signature", |s| s.parse::<SignatureVersion>());
        let profile = r.text("ecs.profile");
        let prices_file = r.text("pricing.file").map(PathBuf::from);
        let protect_tag_key = r.text("protect_tag_key").unwrap_or_default();
        let tag_prefix = r.text("tag_prefix").unwrap_or_default();
        let max_exemption_days = r
            .parse("exemption_max_days", spec::uint)
            .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
            .unwrap_or(90);
        let d = WorkerConfig::default();
        let calls_per_second = r.parse("workers.calls_per_second", spec::uint);
        let concurrency = r.parse("workers.concurrency", spec::uint);
        let max_attempts = r.parse("workers.max_attempts", spec::uint);
        let base = r
            .parse("workers.backoff_base_ms", spec::uint)
            .unwrap_or(1000);
        let cap = r
            .parse("workers.backoff_cap_ms", spec::uint)
            .unwrap_or(300_000);
        let lease = r.parse("workers.lease_secs", spec::uint);
        let quarantine = r.parse("workers.quarantine", spec::duration);
        let replica_id = r.text("replica_id");
        let workers = WorkerConfig {
            owner: replica_id.unwrap_or(d.owner.clone()),
            concurrency: concurrency.map_or(d.concurrency, |v| v.max(1) as usize),
            max_attempts: max_attempts.map_or(d.max_attempts, |v| {
                u32::try_from(v.max(1)).unwrap_or(u32::MAX)
            }),
            backoff: crate::backoff::Backoff::new(
                Duration::from_millis(base),
                Duration::from_millis(cap.max(base)),
            ),
            lease: lease.map_or(d.lease, |v| Duration::from_secs(v.max(3))),
            quarantine: quarantine.unwrap_or(d.quarantine),
            ..d
        };
        let listen = r
            .parse("listen", |s| {
                s.parse::<SocketAddr>().map_err(|e| e.to_string())
            })
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9187)));
        let shutdown_grace =
            Duration::from_secs(r.parse("shutdown_grace_secs", spec::uint).unwrap_or(30));
        let reload_every =
            Duration::from_millis(r.parse("reload_ms", spec::uint).unwrap_or(2000).max(100));
        let admin_tokens = crate::server::AdminTokens::new(
            r.text("admin_token").map(Secret::new),
            r.parse("admin_tokens", crate::server::tokens::parse)
                .unwrap_or_default(),
        );

        // The structured settings live only in the file.
        let file = inputs.file;
        let mut accounts = BTreeMap::new();
        let mut window = None;
        let mut webhooks = Vec::new();
        if let Some(f) = file {
            if groups.contains(&Group::Ecs) {
                match f.accounts() {
                    Ok(a) => accounts = a,
                    Err(e) => r.problems.push(e.to_string()),
                }
            }
            if groups.contains(&Group::Workers) {
                match f.window() {
                    Ok(w) => window = w,
                    Err(es) => r.problems.extend(es.iter().map(|e| e.to_string())),
                }
                match f.webhooks() {
                    Ok(w) => webhooks = w,
                    Err(es) => r.problems.extend(es.iter().map(|e| e.to_string())),
                }
            }
        }
        let account_places = file
            .map(|f| {
                accounts
                    .keys()
                    .map(|name| (name.clone(), f.place(&format!("accounts.{name}:key"))))
                    .collect()
            })
            .unwrap_or_default();
        let settings = Settings {
            log_format,
            log,
            policies,
            database,
            ecs: EcsSettings {
                endpoint,
                connect_timeout: connect_timeout.unwrap_or(Duration::from_secs(5)),
                call_timeout: call_timeout.unwrap_or(Duration::from_secs(30)),
                signature: signature.unwrap_or_default(),
                profile,
                calls_per_second: calls_per_second
                    .map(|v| u32::try_from(v.max(1)).unwrap_or(u32::MAX)),
                prices_file,
            },
            protection: ProtectionConfig {
                protect_tag_key,
                tag_prefix,
                max_exemption_days,
            },
            workers,
            listen,
            shutdown_grace,
            reload_every,
            admin_tokens,
            accounts,
            account_places,
            window,
            webhooks,
            file: file.map(|f| f.path.clone()),
            resolved: r.resolved,
        };
        (settings, r.problems)
    }

    /// The settings of `groups` with nothing given: every default (for tests and the demo).
    pub fn defaults(groups: &[Group]) -> Settings {
        let inputs = Inputs {
            flags: BTreeMap::new(),
            env: &|_| None,
            file: None,
        };
        Settings::resolve(&inputs, groups).0
    }

    /// The resolved setting `key`, if it is one of the command's.
    pub fn get(&self, key: &str) -> Option<&Resolved> {
        self.resolved.iter().find(|r| r.spec.key == key)
    }

    /// Where the setting `key` came from (`default` when it is not one of the command's).
    pub fn source(&self, key: &str) -> Source {
        self.get(key).map_or(Source::Default, |r| r.source.clone())
    }

    /// Every secret this process was given through its settings, to blank out of messages.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .resolved
            .iter()
            .filter(|r| r.spec.secret)
            // An admin token too short to be accepted guards nothing, and blanking it out of
            // the very problem that refuses it garbled the words ("is <redacted>er than 16").
            .filter(|r| {
                r.spec.key != "admin_token"
                    || r.raw.as_deref().is_some_and(|t| {
                        t.trim().chars().count() >= crate::server::tokens::MIN_TOKEN_CHARS
                    })
            })
            .filter_map(|r| r.raw.clone())
            .collect();
        // Each named admin token on its own too, and each part of its entry (a name and a token
        // written the wrong way round must not show either).
        let parts: Vec<String> = self
            .resolved
            .iter()
            .filter(|r| r.spec.key == "admin_tokens")
            .filter_map(|r| r.raw.as_deref())
            .flat_map(|raw| raw.split(','))
            // Split at the first `=`, as the parser does: a token may hold `=` itself.
            .flat_map(|entry| match entry.split_once('=') {
                Some((name, token)) => vec![name, token],
                None => vec![entry],
            })
            .map(|p| p.trim().to_string())
            // Only what could be an accepted token: a shorter part (a name, or a token refused
            // for its length) is no secret, and replacing it garbled the very problem that
            // refused it (`bot=than`: "shorter <redacted> 16 characters").
            .filter(|p| p.chars().count() >= crate::server::tokens::MIN_TOKEN_CHARS)
            .collect();
        out.extend(parts);
        out
    }
}

struct Resolver<'a, 'b> {
    inputs: &'a Inputs<'b>,
    groups: &'a [Group],
    resolved: Vec<Resolved>,
    problems: Vec<String>,
}

impl Resolver<'_, '_> {
    /// The text of `key` by precedence, checked; `None` when unset (or bad: a problem).
    fn text(&mut self, key: &'static str) -> Option<String> {
        let spec = spec::spec(key).unwrap_or_else(|| panic!("no setting {key} in SPECS"));
        if !self.groups.contains(&spec.group) && spec.group != Group::Global {
            return spec.default.map(str::to_string);
        }
        let given = |v: Option<String>| v.filter(|v| !v.is_empty());
        let (raw, source) = if let Some(v) = self.inputs.flags.get(key) {
            (Some(v.clone()), Source::Flag(spec.flag.unwrap_or(key)))
        } else if let Some(v) = given((self.inputs.env)(spec.env)) {
            (Some(v), Source::Env(spec.env))
        } else if let Some((f, v)) = self
            .inputs
            .file
            .and_then(|f| f.values.get(key).map(|v| (f, v.clone())))
        {
            (
                Some(v),
                Source::File {
                    place: f.place(key),
                    key,
                },
            )
        } else if let Some(d) = spec.default {
            (Some(d.to_string()), Source::Default)
        } else {
            (None, Source::Unset)
        };
        let mut value = raw.clone();
        if let Some(text) = &raw {
            if let Err(reason) = (spec.check)(text) {
                let shown = if spec.secret {
                    String::new()
                } else {
                    format!(" {text:?}")
                };
                self.problems.push(format!(
                    "{source}: invalid value{shown} for {}: {reason}",
                    spec.shown()
                ));
                value = spec.default.map(str::to_string);
            }
        }
        self.resolved.push(Resolved { spec, raw, source });
        value
    }

    /// The value of `key` parsed by `parse` (which accepts whatever the spec's check accepts).
    fn parse<T, E: fmt::Display>(
        &mut self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<T> {
        self.text(key).and_then(|t| parse(&t).ok())
    }
}

/// `cmd` with the flags of the settings in `groups`, each checked as its environment and file
/// values are, and its help naming its variable and default.
pub fn with_flags(mut cmd: clap::Command, groups: &[Group]) -> clap::Command {
    for spec in SPECS.iter().filter(|s| groups.contains(&s.group)) {
        let Some(flag) = spec.flag else { continue };
        let check = spec.check;
        let mut help = format!("{} [env: {}]", spec.help, spec.env);
        if let Some(d) = spec.default {
            help.push_str(&format!(" [default: {d}]"));
        }
        cmd = cmd.arg(
            clap::Arg::new(spec.key)
                .long(flag)
                .value_name(spec.value_name)
                .help(help)
                .global(spec.group == Group::Global)
                .value_parser(move |s: &str| check(s).map(|()| s.to_string())),
        );
    }
    cmd
}

/// The settings flags given in `m` (a command's matches), by key.
pub fn flags_in(m: &clap::ArgMatches) -> BTreeMap<&'static str, String> {
    SPECS
        .iter()
        .filter_map(|spec| {
            let v = m.try_get_one::<String>(spec.key).ok().flatten()?;
            Some((spec.key, v.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn resolve(
        flags: &[(&'static str, &str)],
        env: &[(&str, &str)],
        file: &str,
    ) -> (Settings, Vec<String>) {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned();
        let file = ConfigFile::parse(Path::new("janitor.yaml"), file).unwrap();
        let inputs = Inputs {
            flags: flags.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            env: &lookup,
            file: Some(&file),
        };
        Settings::resolve(
            &inputs,
            &[Group::Database, Group::Workers, Group::Daemon, Group::Ecs],
        )
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
        let file = "workers:\n  concurrency: 8\n  calls_per_second: 5\n  max_attempts: 3\n";
        let (s, problems) = resolve(
            &[("workers.concurrency", "2")],
            &[
                ("JANITOR_CONCURRENCY", "6"),
                ("JANITOR_CALLS_PER_SECOND", "7"),
            ],
            file,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.workers.concurrency, 2);
        assert_eq!(s.source("workers.concurrency"), Source::Flag("concurrency"));
        assert_eq!(s.ecs.calls_per_second, Some(7));
        assert_eq!(
            s.source("workers.calls_per_second"),
            Source::Env("JANITOR_CALLS_PER_SECOND")
        );
        assert_eq!(s.workers.max_attempts, 3);
        assert_eq!(
            s.source("workers.max_attempts").to_string(),
            "janitor.yaml:4:17 (`workers.max_attempts`)"
        );
        assert_eq!(s.workers.lease, Duration::from_secs(30));
        assert_eq!(s.source("workers.lease_secs"), Source::Default);
        assert_eq!(s.source("ecs.endpoint"), Source::Unset);
    }

    #[test]
    fn a_bad_value_names_its_source_and_never_shows_a_secret() {
        let (s, problems) = resolve(
            &[],
            &[("JANITOR_LISTEN", "nowhere"), ("JANITOR_ADMIN_TOKEN", "")],
            "workers:\n  concurrency: four\nadmin_token: \" \"\n",
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with(
            "janitor.yaml:2:16 (`workers.concurrency`): invalid value \"four\" for --concurrency"
        ));
        assert!(problems[1].starts_with(
            "environment variable JANITOR_LISTEN: invalid value \"nowhere\" for --listen"
        ));
        assert_eq!(
            problems[2],
            "janitor.yaml:3:14 (`admin_token`): invalid value for `admin_token`: give a value"
        );
        // The default stands in for a bad value, so checks can go on.
        assert_eq!(s.workers.concurrency, 16);
    }

    /// The defaults `--help` and `config show` print are the ones the workers run with (the
    /// batches in flight were raised in one place and not the other).
    #[test]
    fn the_documented_worker_defaults_are_the_workers_own() {
        let d = crate::worker::WorkerConfig::default();
        let default = |key: &str| super::spec::spec(key).and_then(|s| s.default).unwrap();
        assert_eq!(default("workers.concurrency"), d.concurrency.to_string());
        assert_eq!(default("workers.max_attempts"), d.max_attempts.to_string());
        assert_eq!(default("workers.lease_secs"), d.lease.as_secs().to_string());
    }

    /// A zero that would stop all work is refused where it is written (found trying
    /// `workers.concurrency: 0`, `max_attempts: 0` and `lease_secs: 0`: all accepted).
    #[test]
    fn a_zero_that_would_stop_all_work_is_refused() {
        let (_, problems) = resolve(
            &[],
            &[
                ("JANITOR_CALLS_PER_SECOND", "0"),
                ("JANITOR_RELOAD_MS", "0"),
            ],
            "workers:\n  concurrency: 0\n  max_attempts: 0\n  lease_secs: 0\n",
        );
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| p.ends_with("0 would stop all work; give 1 or more")));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("janitor.yaml:2:16 (`workers.concurrency`)")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_example_file_names_every_setting() {
        let example = include_str!("../../docs/janitor.example.yaml");
        for spec in SPECS {
            let leaf = spec.key.rsplit('.').next().unwrap_or(spec.key);
            assert!(
                example.contains(&format!("{leaf}:")),
                "docs/janitor.example.yaml does not show `{}`",
                spec.key
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let (s, _) = resolve(&[], &[("JANITOR_ADMIN_TOKEN", "hunter2-token-0123")], "");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.secrets(), vec!["hunter2-token-0123".to_string()]);
        let (s, _) = resolve(
            &[],
            &[(
                "JANITOR_ADMIN_TOKENS",
                "bot=0123456789abcdef0123,alice=fedcba9876543210fedc",
            )],
            "",
        );
        let secrets = s.secrets();
        for t in ["0123456789abcdef0123", "fedcba9876543210fedc"] {
            assert!(secrets.contains(&t.to_string()), "{t} in {secrets:?}");
        }
        // Written the wrong way round, the token (before `=`) is still a secret.
        let (s, _) = resolve(
            &[],
            &[("JANITOR_ADMIN_TOKENS", "0123456789abcdef0123=bot")],
            "",
        );
        assert!(s.secrets().contains(&"0123456789abcdef0123".to_string()));
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn settings_outside_the_command_keep_their_defaults() {
        let env = |k: &str| (k == "JANITOR_LISTEN").then(|| "bad".to_string());
        let inputs = Inputs {
            flags: BTreeMap::new(),
            env: &env,
            file: None,
        };
        let (s, problems) = Settings::resolve(&inputs, &[Group::Database]);
        assert!(
            problems.is_empty(),
            "plan does not read --listen: {problems:?}"
        );
        assert_eq!(s.listen.port(), 9187);
        assert!(s.get("listen").is_none());
    }

    #[test]
    fn every_flag_is_checked_by_clap_with_the_same_rule() {
        let cmd = with_flags(
            clap::Command::new("t").no_binary_name(true),
            &[Group::Workers],
        );
        let m = cmd
            .clone()
            .try_get_matches_from(["--concurrency", "3"])
            .unwrap();
        assert_eq!(flags_in(&m)["workers.concurrency"], "3");
        let e = cmd
            .try_get_matches_from(["--concurrency", "five"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'five' for '--concurrency"), "{e}");
    }
}
