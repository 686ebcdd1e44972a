//! The table of every scalar setting, each written once: its key in `janitor.yaml`, its
//! environment variable, its flag, its default, its help, and how its text is checked.

/// Which commands read a setting: a command takes the groups it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Every command (`--log-format`, `JANITOR_LOG`).
    Global,
    Policies,
    Database,
    Ecs,
    /// Protections (the protect tag).
    Safety,
    /// How plans are priced (the price file, the pace of price calls).
    Pricing,
    /// How releases are carried out.
    Workers,
    /// Only `run`.
    Daemon,
}

/// One setting.
#[derive(Debug)]
pub struct Spec {
    /// Dotted key in the configuration file (`workers.concurrency`).
    pub key: &'static str,
    pub env: &'static str,
    /// The long flag, when it has one (a secret has none, so it never shows in `ps`).
    pub flag: Option<&'static str>,
    pub value_name: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
    pub group: Group,
    /// Never printed.
    pub secret: bool,
    /// Whether a text is a valid value; the reason when not. The same check serves clap (a bad
    /// flag is a usage error) and the environment and file (a configuration error).
    pub check: fn(&str) -> Result<(), String>,
}

impl Spec {
    /// How the setting is named in messages: its flag, else its key.
    pub fn shown(&self) -> String {
        match self.flag {
            Some(f) => format!("--{f}"),
            None => format!("`{}`", self.key),
        }
    }
}

/// A whole number.
pub(super) fn uint(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "give a whole number, e.g. 4".to_string())
}

/// A positive number of seconds.
pub(super) fn seconds(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "give a positive number of seconds, e.g. 30".to_string())
}

/// A duration: `30s`, `15m`, `2h`, `7d`, `1w`, or combinations.
pub fn duration(s: &str) -> Result<chrono::Duration, String> {
    crate::policy::Duration::parse(s).map(|d| d.to_chrono())
}

fn any(_: &str) -> Result<(), String> {
    Ok(())
}

fn not_empty(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("give a value".into())
    } else {
        Ok(())
    }
}

/// A tag key prefix ECS accepts, leaving room for the longest suffix (`exempt-reason`).
fn check_tag_prefix(s: &str) -> Result<(), String> {
    crate::policy::ProtectionConfig::check_prefix(s)
}

/// Days from 1 to 36,500 (a hundred years; more only overflows dates).
fn check_positive(s: &str) -> Result<(), String> {
    match uint(s)? {
        0 => Err("give at least 1".into()),
        d if d > 36_500 => Err("give at most 36500 (a hundred years)".into()),
        _ => Ok(()),
    }
}

/// The one admin token: as long as each named one must be (a guessable token guards nothing).
fn check_admin_token(s: &str) -> Result<(), String> {
    not_empty(s)?;
    if s.trim().chars().count() < crate::server::tokens::MIN_TOKEN_CHARS {
        return Err(format!(
            "the token is shorter than {} characters; use e.g. `openssl rand -hex 32`",
            crate::server::tokens::MIN_TOKEN_CHARS
        ));
    }
    Ok(())
}

fn check_admin_tokens(s: &str) -> Result<(), String> {
    crate::server::tokens::parse(s).map(drop)
}

fn check_uint(s: &str) -> Result<(), String> {
    uint(s).map(drop)
}

fn check_u32(s: &str) -> Result<(), String> {
    let v = uint(s)?;
    u32::try_from(v)
        .map(drop)
        .map_err(|_| format!("{v} is too large"))
}

/// A whole number from 1 (a count or a time that 0 would turn into a run that never moves).
fn check_positive_u32(s: &str) -> Result<(), String> {
    check_u32(s)?;
    if uint(s)? == 0 {
        return Err("0 would stop all work; give 1 or more".into());
    }
    Ok(())
}

fn check_seconds(s: &str) -> Result<(), String> {
    seconds(s).map(drop)
}

fn check_duration(s: &str) -> Result<(), String> {
    duration(s).map(drop)
}

fn check_url(s: &str) -> Result<(), String> {
    url::Url::parse(s)
        .map(drop)
        .map_err(|e| format!("{e}; give a URL, e.g. http://127.0.0.1:18080/"))
}

fn check_addr(s: &str) -> Result<(), String> {
    s.parse::<std::net::SocketAddr>()
        .map(drop)
        .map_err(|e| format!("{e}; give an address and port, e.g. 127.0.0.1:9187"))
}

fn check_signature(s: &str) -> Result<(), String> {
    s.parse::<crate::ecs::SignatureVersion>().map(drop)
}

fn check_log_format(s: &str) -> Result<(), String> {
    match s {
        "pretty" | "json" => Ok(()),
        _ => Err("use one of pretty, json".into()),
    }
}

/// Every scalar setting.
pub const SPECS: &[Spec] = &[
    Spec {
        key: "log_format",
        env: "JANITOR_LOG_FORMAT",
        flag: Some("log-format"),
        value_name: "pretty|json",
        default: Some("pretty"),
        help: "Log output format.",
        group: Group::Global,
        secret: false,
        check: check_log_format,
    },
    Spec {
        key: "log",
        env: "JANITOR_LOG",
        flag: None,
        value_name: "FILTER",
        default: None,
        help: "Which log lines to show, e.g. info,ecs_janitor=debug.",
        group: Group::Global,
        secret: false,
        check: any,
    },
    Spec {
        key: "policies",
        env: "JANITOR_POLICIES",
        flag: Some("policies"),
        value_name: "DIR",
        default: Some("policies"),
        help: "The folder of policy files (*.yaml, *.yml).",
        group: Group::Policies,
        secret: false,
        check: not_empty,
    },
    Spec {
        key: "database",
        env: "JANITOR_DATABASE_URL",
        flag: Some("database"),
        value_name: "URL",
        default: Some("sqlite://janitor.db"),
        help: "sqlite://PATH (created if missing) or postgres://USER@HOST/DB.",
        group: Group::Database,
        secret: false,
        check: not_empty,
    },
    Spec {
        key: "ecs.endpoint",
        env: "JANITOR_ECS_ENDPOINT",
        flag: Some("endpoint"),
        value_name: "URL",
        default: None,
        help: "Replace https://ecs.<region>.aliyuncs.com/ for every region (http allowed, e.g. the simulator).",
        group: Group::Ecs,
        secret: false,
        check: check_url,
    },
    Spec {
        key: "ecs.connect_timeout",
        env: "JANITOR_ECS_CONNECT_TIMEOUT",
        flag: Some("connect-timeout"),
        value_name: "SECS",
        default: Some("5"),
        help: "Seconds to wait for a connection to ECS.",
        group: Group::Ecs,
        secret: false,
        check: check_seconds,
    },
    Spec {
        key: "ecs.call_timeout",
        env: "JANITOR_ECS_TIMEOUT",
        flag: Some("call-timeout"),
        value_name: "SECS",
        default: Some("30"),
        help: "Seconds one ECS call may take in all.",
        group: Group::Ecs,
        secret: false,
        check: check_seconds,
    },
    Spec {
        key: "ecs.signature",
        env: "JANITOR_SIGNATURE",
        flag: Some("signature"),
        value_name: "v1|v3",
        default: Some("v1"),
        help: "The request signature: v1 (RPC HMAC-SHA1) or v3 (ACS3-HMAC-SHA256, what today's official SDKs send).",
        group: Group::Ecs,
        secret: false,
        check: check_signature,
    },
    Spec {
        key: "ecs.profile",
        env: "ALIBABA_CLOUD_PROFILE",
        flag: Some("profile"),
        value_name: "NAME",
        default: None,
        help: "The aliyun CLI profile (~/.aliyun/config.json) to sign with; it wins over the \
               ALIBABA_CLOUD_ACCESS_KEY_* variables. Without it: those variables, then the file's \
               current profile, then the ECS RAM role when ALIBABA_CLOUD_ECS_METADATA names one.",
        group: Group::Ecs,
        secret: false,
        check: not_empty,
    },
    Spec {
        key: "pricing.file",
        env: "JANITOR_PRICES",
        flag: Some("prices"),
        value_name: "FILE",
        default: None,
        help: "A price file (prices.yaml: per region, a month of each instance type and a GiB-month \
               of each disk category) for negotiated prices or accounts that may not call \
               DescribePrice. Its prices win over ECS's list prices; `validate` checks it.",
        group: Group::Pricing,
        secret: false,
        check: not_empty,
    },
    Spec {
        key: "protect_tag_key",
        env: "JANITOR_PROTECT_TAG",
        flag: Some("protect-tag-key"),
        value_name: "KEY",
        default: Some("janitor:protect"),
        help: "The tag key that protects an instance when set to \"true\".",
        group: Group::Safety,
        secret: false,
        check: not_empty,
    },
    Spec {
        key: "tag_prefix",
        env: "JANITOR_TAG_PREFIX",
        flag: Some("tag-prefix"),
        value_name: "PREFIX",
        default: Some("janitor:"),
        help: "The prefix of the tags ecs-janitor reads and writes: PREFIXexempt-until and \
               PREFIXexempt-reason (an owner's exemption), PREFIXrelease-after and PREFIXpolicy \
               (the mark of a queued release).",
        group: Group::Safety,
        secret: false,
        check: check_tag_prefix,
    },
    Spec {
        key: "exemption_max_days",
        env: "JANITOR_EXEMPTION_MAX_DAYS",
        flag: Some("exemption-max-days"),
        value_name: "DAYS",
        default: Some("90"),
        help: "How far ahead an exemption may reach, by tag or by `exempt`; a tag beyond it \
               protects the instance but is reported as invalid, so \"forever\" is a decision.",
        group: Group::Safety,
        secret: false,
        check: check_positive,
    },
    Spec {
        key: "workers.calls_per_second",
        env: "JANITOR_CALLS_PER_SECOND",
        flag: Some("calls-per-second"),
        value_name: "N",
        default: None,
        help: "Calls per second for each (account, region, API): keys start at N, never \
               exceed it and space their calls evenly. Without it each starts at 50 per second \
               with a second's burst, halves when ECS throttles, waits out what ECS said, and \
               grows back.",
        group: Group::Ecs,
        secret: false,
        check: check_positive_u32,
    },
    Spec {
        key: "workers.concurrency",
        env: "JANITOR_CONCURRENCY",
        flag: Some("concurrency"),
        value_name: "N",
        default: Some("16"),
        help: "Batches in flight at once, over all accounts and regions; claims prefer a \
               region no batch in flight is in, so each region's pace is used.",
        group: Group::Workers,
        secret: false,
        check: check_positive_u32,
    },
    Spec {
        key: "workers.max_attempts",
        env: "JANITOR_MAX_ATTEMPTS",
        flag: Some("max-attempts"),
        value_name: "N",
        default: Some("8"),
        help: "Tries per batch (calls, and re-checks that failed; a throttled answer does not count during the batch's first hour) before its members fail.",
        group: Group::Workers,
        secret: false,
        check: check_positive_u32,
    },
    Spec {
        key: "workers.backoff_base_ms",
        env: "JANITOR_BACKOFF_BASE_MS",
        flag: Some("backoff-base-ms"),
        value_name: "MS",
        default: Some("1000"),
        help: "Ceiling of the first retry delay, in milliseconds (doubles each retry; full jitter).",
        group: Group::Workers,
        secret: false,
        check: check_uint,
    },
    Spec {
        key: "workers.backoff_cap_ms",
        env: "JANITOR_BACKOFF_CAP_MS",
        flag: Some("backoff-cap-ms"),
        value_name: "MS",
        default: Some("300000"),
        help: "Largest retry delay, in milliseconds.",
        group: Group::Workers,
        secret: false,
        check: check_uint,
    },
    Spec {
        key: "workers.lease_secs",
        env: "JANITOR_LEASE_SECS",
        flag: Some("lease-secs"),
        value_name: "SECS",
        default: Some("30"),
        help: "Seconds a claimed batch, or a policy tick being reconciled, stays leased without renewal.",
        group: Group::Workers,
        secret: false,
        check: check_positive_u32,
    },
    Spec {
        key: "workers.quarantine",
        env: "JANITOR_QUARANTINE",
        flag: Some("quarantine"),
        value_name: "DURATION",
        default: Some("24h"),
        help: "How long an instance refused for good (e.g. DependencyViolation.RouteEntry) stays \
               out of its policy before it is tried again; doubles with each repeat (`queue retry` ends it).",
        group: Group::Workers,
        secret: false,
        check: check_duration,
    },
    Spec {
        key: "replica_id",
        env: "JANITOR_REPLICA_ID",
        flag: Some("replica-id"),
        value_name: "NAME",
        default: None,
        help: "This replica's name in leases and runs (default: host name and process id).",
        group: Group::Workers,
        secret: false,
        check: not_empty,
    },
    Spec {
        key: "listen",
        env: "JANITOR_LISTEN",
        flag: Some("listen"),
        value_name: "ADDR",
        default: Some("127.0.0.1:9187"),
        help: "Address of the admin server (health, metrics, API, status page).",
        group: Group::Daemon,
        secret: false,
        check: check_addr,
    },
    Spec {
        key: "shutdown_grace_secs",
        env: "JANITOR_SHUTDOWN_GRACE_SECS",
        flag: Some("shutdown-grace-secs"),
        value_name: "SECS",
        default: Some("30"),
        help: "Seconds in-flight calls may take to finish after SIGTERM or SIGINT.",
        group: Group::Daemon,
        secret: false,
        check: check_uint,
    },
    Spec {
        key: "reload_ms",
        env: "JANITOR_RELOAD_MS",
        flag: Some("reload-ms"),
        value_name: "MS",
        default: Some("2000"),
        help: "Milliseconds between checks of the policy files for changes.",
        group: Group::Daemon,
        secret: false,
        check: check_positive_u32,
    },
    Spec {
        key: "admin_token",
        env: "JANITOR_ADMIN_TOKEN",
        flag: None,
        value_name: "TOKEN",
        default: None,
        help: "Bearer token for the mutating admin endpoints (retry, cancel, pause, resume), \
               16 characters or more; without it they answer 403.",
        group: Group::Daemon,
        secret: true,
        check: check_admin_token,
    },
    Spec {
        key: "admin_tokens",
        env: "JANITOR_ADMIN_TOKENS",
        flag: None,
        value_name: "NAME=TOKEN,...",
        default: None,
        help: "More admin tokens, each with a name the audit log records for what its caller \
               does: `deploy-bot=<token>,alice=<token>` (tokens of 16 characters or more).",
        group: Group::Daemon,
        secret: true,
        check: check_admin_tokens,
    },
];

/// The setting with dotted key `key`.
pub fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}
