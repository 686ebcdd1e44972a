//! The command line: clap definitions, and for each subcommand a call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use std::io::IsTerminal;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::clock::{SharedClock, SystemClock};
use crate::ecs::client::{ClientConfig, EcsClient};
use crate::ecs::credentials::SharedProvider;
use crate::plan::SavedPlan;
use crate::policy::{Policy, ProtectionConfig};
use crate::reconcile::Reconciler;
use crate::sim::{self, Faults, SimConfig, Simulator};
use crate::store::{ReleaseFilter, Store};
use crate::worker::WorkerConfig;

/// Writes to stdout; a closed pipe (`ecs-janitor queue list | head`) ends output quietly
/// instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// Releases unneeded Alibaba Cloud ECS instances from declarative lifecycle policies.
#[derive(Debug, Parser)]
#[command(name = "ecs-janitor", version, about, long_about = None)]
pub struct Cli {
    /// A configuration file (YAML) with any of the settings flags and environment variables
    /// give; flags and environment variables win over it. Default: ./janitor.yaml if present.
    #[arg(long, global = true, env = "JANITOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "JANITOR_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole job against the built-in simulator, with nothing to configure.
    Demo(DemoArgs),
    /// Check the policy files; every problem as FILE:LINE:COL. Needs no credentials or network.
    Validate(ValidateArgs),
    /// Print a JSON Schema of the policy format (for yaml-language-server).
    Schema,
    /// Show which instances would be released and why. Changes nothing.
    Plan(PlanArgs),
    /// One reconcile pass, then work the queue until nothing is due.
    Apply(ApplyArgs),
    /// The daemon: reconcile each policy on its schedule and carry out the queue.
    Run(RunArgs),
    /// Inspect and steer the release queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The kill switch: stop every DeleteInstances, on every replica and command, until resumed.
    Pause(PauseArgs),
    /// Lift the pause.
    Resume(ResumeArgs),
    /// The audit log: who released what, when, under which policy and RequestId.
    History(HistoryArgs),
    /// Run the ECS simulator: a stateful fake ECS endpoint for trying, testing and benchmarking.
    Simulate(SimulateArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the settings `run` would use, where each comes from, with secrets redacted.
    Check,
}

#[derive(Debug, Clone, Args)]
pub struct PoliciesArgs {
    /// The folder of policy files (*.yaml, *.yml).
    #[arg(long, env = "JANITOR_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub policies: PoliciesArgs,
    /// Check these files (or folders) instead of --policies, e.g. the files a pre-commit hook
    /// passes. Policy names must be unique among them.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// text for people; json; github (workflow commands: inline annotations in a pull
    /// request); sarif (SARIF 2.1.0, for code scanning). Exit 0 clean, 1 on any problem.
    #[arg(long, value_enum, default_value_t = crate::policy::report::Format::Text)]
    pub format: crate::policy::report::Format,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long = "database",
        env = "JANITOR_DATABASE_URL",
        default_value = "sqlite://janitor.db"
    )]
    pub url: String,
}

#[derive(Debug, Clone, Args)]
pub struct SafetyArgs {
    /// The tag key that protects an instance when set to "true".
    #[arg(long, env = "JANITOR_PROTECT_TAG", default_value = "janitor:protect")]
    pub protect_tag_key: String,
}

impl SafetyArgs {
    fn protection(&self) -> ProtectionConfig {
        ProtectionConfig {
            protect_tag_key: self.protect_tag_key.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Instances in the simulated fleet.
    #[arg(long, default_value_t = 500)]
    pub instances: usize,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub policies: PoliciesArgs,
    /// Only these policies (repeatable).
    #[arg(long = "policy")]
    pub only: Vec<String>,
    /// Print the plan as JSON (see docs/policies.md for the format).
    #[arg(long)]
    pub json: bool,
    /// One line per policy: how many to release, how many wait, skips counted by reason.
    #[arg(long)]
    pub summary: bool,
    /// Leave out the skipped instances (their count stays in the last line).
    #[arg(long)]
    pub hide_skips: bool,
    /// Save the plan, for `apply --plan FILE` to act on exactly this set.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub ecs: EcsArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub safety: SafetyArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub policies: PoliciesArgs,
    /// Only these policies (repeatable).
    #[arg(long = "policy")]
    pub only: Vec<String>,
    /// Act on exactly the releases of a plan saved with `plan --out`.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Refuse a saved plan older than this (`30m`, `24h`, `2d`).
    #[arg(long, value_parser = duration_arg, default_value = "24h")]
    pub max_plan_age: chrono::Duration,
    /// On a terminal, release without showing the plan and asking for `yes` first (apply never
    /// asks when stdin or stdout is not a terminal).
    #[arg(long)]
    pub auto_approve: bool,
    /// Exit codes as Terraform's `-detailed-exitcode`: 0 nothing was released, 2 something was
    /// released, 1 an error, 4 some release failed or was not carried out, 3 paused.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Bound the whole run: when it expires, no new batch is claimed, calls in flight end, and
    /// apply exits 2 listing what was left (`apply` again resumes it).
    #[arg(long, value_parser = duration_arg, default_value = "30m")]
    pub timeout: chrono::Duration,
    /// Send DeleteInstances with DryRun=true: check permissions and parameters, release nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ecs: EcsArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub safety: SafetyArgs,
    #[command(flatten)]
    pub workers: WorkerArgs,
}

/// How releases are carried out.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// DeleteInstances and re-check calls per second, all workers together.
    #[arg(long, env = "JANITOR_CALLS_PER_SECOND", default_value_t = 10)]
    pub calls_per_second: u32,
    /// Batches in flight at once.
    #[arg(long, env = "JANITOR_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Tries per batch (calls, and re-checks that failed) before its members fail.
    #[arg(long, env = "JANITOR_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// Ceiling of the first retry delay, in milliseconds (doubles each retry; full jitter).
    #[arg(long, env = "JANITOR_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub backoff_base_ms: u64,
    /// Largest retry delay, in milliseconds.
    #[arg(long, env = "JANITOR_BACKOFF_CAP_MS", default_value_t = 300_000)]
    pub backoff_cap_ms: u64,
    /// Seconds a claimed batch stays leased without renewal.
    #[arg(long, env = "JANITOR_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,
    /// This replica's name in leases and runs (default: host name and process id).
    #[arg(long, env = "JANITOR_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long an instance refused for good (e.g. DependencyViolation.RouteEntry) stays out
    /// of its policy before it is tried again; doubles with each repeat (`queue retry` ends it).
    #[arg(long, env = "JANITOR_QUARANTINE", value_parser = duration_arg, default_value = "24h")]
    pub quarantine: chrono::Duration,
}

impl WorkerArgs {
    fn config(&self) -> WorkerConfig {
        let d = WorkerConfig::default();
        WorkerConfig {
            owner: self.replica_id.clone().unwrap_or(d.owner),
            calls_per_second: self.calls_per_second.max(1),
            concurrency: self.concurrency.max(1),
            max_attempts: self.max_attempts.max(1),
            backoff: crate::backoff::Backoff::new(
                Duration::from_millis(self.backoff_base_ms),
                Duration::from_millis(self.backoff_cap_ms.max(self.backoff_base_ms)),
            ),
            lease: Duration::from_secs(self.lease_secs.max(3)),
            quarantine: self.quarantine,
            ..d
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policies: PoliciesArgs,
    #[command(flatten)]
    pub ecs: EcsArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub safety: SafetyArgs,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Address of the admin server (health, readiness).
    #[arg(long, env = "JANITOR_LISTEN", default_value = "127.0.0.1:9187")]
    pub listen: SocketAddr,
    /// Seconds in-flight calls may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "JANITOR_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Milliseconds between checks of the policy files for changes.
    #[arg(long, env = "JANITOR_RELOAD_MS", default_value_t = 2000)]
    pub reload_ms: u64,
    /// Bearer token for the mutating admin endpoints (retry, cancel, pause, resume); without
    /// it they answer 403. Read from the environment only, so it never shows in `ps`.
    #[arg(skip = std::env::var("JANITOR_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()).map(crate::ecs::Secret::new))]
    pub admin_token: Option<crate::ecs::Secret>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List releases, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one release.
    Show {
        id: crate::store::ReleaseId,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Put a failed, cancelled or vanished release back in the queue, lifting its hold or
    /// quarantine; what was left of its grace period stays.
    Retry {
        id: crate::store::ReleaseId,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Cancel a pending release, and hold its instance out of the policy until `queue retry`
    /// (or for `--for DURATION`).
    Cancel {
        id: crate::store::ReleaseId,
        /// Why, recorded with the hold and shown in plans.
        #[arg(long, default_value = "no reason given")]
        reason: String,
        /// Hold only this long (`2h`, `7d`); the next pass after it may queue the instance again.
        #[arg(long = "for", value_parser = duration_arg)]
        hold_for: Option<chrono::Duration>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Why, recorded in the audit log and shown by `apply`, `queue list` and the status page.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

/// A duration flag: `30s`, `15m`, `2h`, `7d`, `1w`, or combinations.
fn duration_arg(s: &str) -> Result<chrono::Duration, String> {
    crate::policy::Duration::parse(s).map(|d| d.to_chrono())
}

/// `--since`: a duration back from now (`2h`, `7d`) or an RFC 3339 time.
fn since_arg(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    crate::policy::Duration::parse(s)
        .map(|d| chrono::Utc::now() - d.to_chrono())
        .map_err(|e| format!("{e}; or give an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"))
}

/// Who runs this command, for the audit log: `$JANITOR_OPERATOR`, else `$USER`, at the host.
fn operator() -> String {
    let who = std::env::var("JANITOR_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "someone".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{who}@{h} (cli)"),
        None => format!("{who} (cli)"),
    }
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// JSON, one object per event, times in RFC 3339 (UTC, milliseconds).
    #[arg(long)]
    pub json: bool,
    /// How many events, newest first.
    #[arg(long, default_value_t = 200)]
    pub limit: i64,
    /// Only this policy's events.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only this instance's events.
    #[arg(long)]
    pub instance: Option<String>,
    /// Only events of this kind (enqueued, batched, call_sent, succeeded, failed, cancelled,
    /// vanished, paused, resumed, retried, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events this recent (`2h`, `7d`) or since this RFC 3339 time.
    #[arg(long, value_parser = since_arg)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub db: DbArgs,
}

/// How to reach ECS.
#[derive(Debug, Clone, Args)]
pub struct EcsArgs {
    /// Replace https://ecs.<region>.aliyuncs.com/ for every region (http allowed, e.g. the simulator).
    #[arg(long, env = "JANITOR_ECS_ENDPOINT")]
    pub endpoint: Option<url::Url>,
    /// Seconds to wait for a connection to ECS.
    #[arg(long, env = "JANITOR_ECS_CONNECT_TIMEOUT", default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Seconds one ECS call may take in all.
    #[arg(long, env = "JANITOR_ECS_TIMEOUT", default_value_t = 30.0)]
    pub call_timeout: f64,
    /// The request signature: v1 (RPC HMAC-SHA1) or v3 (ACS3-HMAC-SHA256, what today's
    /// official SDKs send).
    #[arg(long, env = "JANITOR_SIGNATURE", default_value = "v1")]
    pub signature: crate::ecs::SignatureVersion,
    /// The aliyun CLI profile (~/.aliyun/config.json) to sign with; it wins over the
    /// ALIBABA_CLOUD_ACCESS_KEY_* variables. Without it: those variables, then the file's
    /// current profile, then the ECS RAM role when ALIBABA_CLOUD_ECS_METADATA names one.
    #[arg(long, env = "ALIBABA_CLOUD_PROFILE")]
    pub profile: Option<String>,
}

impl EcsArgs {
    /// The client these flags describe, with credentials looked up in the order of Alibaba's
    /// SDKs (see `--profile`).
    pub fn client(&self) -> anyhow::Result<EcsClient> {
        let creds = crate::ecs::credentials::default_chain(crate::ecs::credentials::ChainOptions {
            profile: self.profile.clone(),
            ..Default::default()
        });
        self.client_with(creds)
    }

    /// Clients by account for `policies`: the default client for policies without `account:`,
    /// and for each named account the profile it maps to (janitor.yaml `accounts:`, else the
    /// profile of the same name). Fails, naming the policy, when a named account's profile
    /// cannot be used.
    pub fn accounts(
        &self,
        default: EcsClient,
        policies: &[crate::policy::Policy],
    ) -> anyhow::Result<crate::ecs::Accounts> {
        let map = match crate::config::current() {
            Some(file) => file.accounts()?,
            None => Default::default(),
        };
        let accounts = crate::ecs::Accounts::from_profiles(default, map);
        accounts.check(crate::policy::account_uses(policies))?;
        Ok(accounts)
    }

    pub fn client_with(&self, creds: SharedProvider) -> anyhow::Result<EcsClient> {
        let secs = |what: &str, v: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{what} must be a positive number of seconds, got {v}"))
        };
        let cfg = ClientConfig {
            endpoint: self.endpoint.clone(),
            connect_timeout: secs("connect-timeout", self.connect_timeout)?,
            timeout: secs("call-timeout", self.call_timeout)?,
            signature: self.signature,
            ..ClientConfig::default()
        };
        EcsClient::new(cfg, creds).context("cannot build the HTTP client")
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Generate a fleet of this many instances (ignored with --fleet).
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Seed of the generated fleet and of fault injection.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load the fleet from a JSON array of instances in DescribeInstances' shape.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// The AccessKey id the simulator accepts.
    #[arg(long, default_value = sim::DEFAULT_ACCESS_KEY_ID)]
    pub access_key_id: String,
    /// The AccessKey secret the simulator accepts.
    #[arg(long, default_value = sim::DEFAULT_ACCESS_KEY_SECRET, hide_default_value = true)]
    pub access_key_secret: String,
    /// Probability of answering 500 InternalError without doing anything.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub internal_error_rate: f64,
    /// Probability of answering 400 Throttling without doing anything.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub throttle_rate: f64,
    /// Probability that a DeleteInstances is carried out but its answer is lost.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub drop_after_commit_rate: f64,
    /// Milliseconds added before every answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Milliseconds DescribeInstances still lists an instance after it was released (ECS
    /// releases asynchronously).
    #[arg(long, default_value_t = 3000)]
    pub release_delay_ms: u64,
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; give a probability from 0 to 1"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not a probability; give a number from 0 to 1"
        ))
    }
}

impl Command {
    /// The database the command uses, if it uses one.
    fn database_url(&self) -> Option<&str> {
        let db = match self {
            Command::Plan(a) => &a.db,
            Command::Apply(a) => &a.db,
            Command::Run(a) => &a.db,
            Command::History(a) => &a.db,
            Command::Pause(a) => &a.db,
            Command::Resume(a) => &a.db,
            Command::Queue(
                QueueCommand::List { db, .. }
                | QueueCommand::Show { db, .. }
                | QueueCommand::Retry { db, .. }
                | QueueCommand::Cancel { db, .. },
            ) => db,
            _ => return None,
        };
        Some(&db.url)
    }
}

/// SQLite's words for a file that is locked or read-only ("database is locked", "attempt to
/// write a readonly database") name neither the file nor a remedy: say both. Other errors pass
/// through unchanged.
fn explain_database_error(url: Option<&str>, e: anyhow::Error) -> anyhow::Error {
    let Some(url) = url.filter(|u| u.starts_with("sqlite:")) else {
        return e;
    };
    let found = e
        .chain()
        .find_map(|c| match c.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(d)) => Some((
                // The primary result code: extended codes keep it in the low byte.
                d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff,
                d.message().to_string(),
            )),
            _ => None,
        });
    let Some((code, said)) = found else {
        return e;
    };
    let opts = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url);
    let file = opts
        .as_ref()
        .map(|o| o.get_filename().display().to_string())
        .unwrap_or_else(|_| url.to_string());
    let opened_read_only =
        url::Url::parse(url).is_ok_and(|u| u.query_pairs().any(|(k, v)| k == "mode" && v == "ro"));
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_READONLY: i32 = 8;
    match code {
        SQLITE_BUSY | SQLITE_LOCKED => anyhow::anyhow!(
            "the SQLite database {file} is locked: another connection holds its write lock and \
             kept it for as long as this command waited (SQLite: {said}). Usually that is another \
             ecs-janitor (apply or run) using the same file, or a tool with a transaction open on \
             it: let it finish or stop it, then run this again; nothing stored was lost. Replicas \
             that run at the same time need PostgreSQL."
        ),
        SQLITE_READONLY if opened_read_only => anyhow::anyhow!(
            "the SQLite database {file} is opened read-only by the database URL (mode=ro) \
             (SQLite: {said}): remove mode=ro to make it writable; nothing stored was lost."
        ),
        SQLITE_READONLY => anyhow::anyhow!(
            "the SQLite database {file} is read-only for this process (SQLite: {said}). Make it \
             writable: check the owner and permissions of the file and its directory, its \
             immutable attribute (lsattr; chattr -i), and whether it is on a read-only mount; or \
             point --database (JANITOR_DATABASE_URL) at a writable file. Nothing stored was lost."
        ),
        _ => e,
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let db_url = cli.command.database_url().map(str::to_string);
    run_command(cli)
        .await
        .map_err(|e| explain_database_error(db_url.as_deref(), e))
}

async fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Validate(args) => Ok(validate(&args)),
        Command::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&crate::policy::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => plan(args).await,
        Command::Apply(args) => apply(args).await,
        Command::Run(args) => run_daemon(args).await,
        Command::Queue(cmd) => queue(cmd).await,
        Command::History(args) => history(args).await,
        Command::Pause(args) => {
            let store = Store::connect(&args.db.url).await?;
            store
                .pause(&operator(), &args.reason, chrono::Utc::now())
                .await?;
            outln!(
                "Releases are paused on every replica and command. `ecs-janitor resume` lifts it."
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume(args) => {
            let store = Store::connect(&args.db.url).await?;
            store.resume(&operator(), chrono::Utc::now()).await?;
            outln!("Releases are resumed.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate(args).await,
        Command::Config(ConfigCommand::Check) => config_check().await,
    }
}

/// Where a setting read through environment variable `var` came from: the configuration file
/// (at its line and column) when the file exported it, else the environment.
fn setting_source(var: &str) -> String {
    // A flag wins over both; clap's value_source says so too, but preflight has no matches.
    let long = Cli::command_env_long(var);
    if let Some(long) = long {
        let flag = format!("--{long}");
        if std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
            return format!("flag {flag}");
        }
    }
    match crate::config::current() {
        Some(f) if f.exported.contains(var) => {
            let key = crate::config::ConfigFile::key_of(var).unwrap_or(var);
            format!("{} (`{key}`)", f.place(key))
        }
        _ => format!("environment variable {var}"),
    }
}

impl Cli {
    /// The long flag of the argument read from environment variable `var`, if any.
    fn command_env_long(var: &str) -> Option<String> {
        use clap::CommandFactory;
        fn find(cmd: &clap::Command, var: &str) -> Option<String> {
            cmd.get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == var))
                .and_then(|a| a.get_long().map(str::to_string))
                .or_else(|| cmd.get_subcommands().find_map(|s| find(s, var)))
        }
        find(&Cli::command(), var)
    }
}

/// Every secret value this process knows, longest first, to blank them out of any message.
fn known_secrets() -> Vec<String> {
    let mut secrets: Vec<String> = [
        "JANITOR_ADMIN_TOKEN",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_SECURITY_TOKEN",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok())
    .collect();
    if let Some(f) = crate::config::current() {
        for key in crate::config::SECRET_KEYS {
            secrets.extend(f.values.get(*key).cloned());
        }
    }
    secrets.retain(|s| s.len() >= 4);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `text` with every known secret and every URL password replaced.
fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for s in known_secrets() {
        out = out.replace(&s, "<redacted>");
    }
    out.split(' ')
        .map(|w| {
            if w.contains("://") && w.contains('@') {
                crate::store::redact_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// For a command line clap refused because of a value that came from the environment or the
/// configuration file, the message clap would give names a flag the user never typed
/// (`invalid value 'four' for '--concurrency'`): say where the value really came from instead.
/// `None` when the value was given as a flag, or the error is not about a value.
pub fn explain_parse_error(e: &clap::Error, args: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg
        .split_whitespace()
        .next()?
        .strip_prefix("--")?
        .to_string();
    let typed = args
        .iter()
        .any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if typed {
        return None;
    }
    fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().to_string())
            .or_else(|| cmd.get_subcommands().find_map(|s| env_of(s, long)))
    }
    let var = env_of(&Cli::command(), &long)?;
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => std::env::var(&var).unwrap_or_default(),
    };
    let reason = match (std::error::Error::source(e), e.get(ContextKind::ValidValue)) {
        (Some(r), _) => r.to_string(),
        (None, Some(ContextValue::Strings(valid))) => format!("use one of {}", valid.join(", ")),
        _ => "not a valid value".to_string(),
    };
    Some(redact(&format!(
        "{}: invalid value {value:?} for --{long}: {reason}",
        setting_source(&var)
    )))
}

/// The structured settings of the configuration file `run` reads: the operating window, the
/// webhooks, and the accounts (each profile must be usable).
fn file_setting_problems() -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(file) = crate::config::current() {
        if let Err(e) = file.window() {
            problems.push(e.to_string());
        }
        if let Err(e) = file.webhooks() {
            problems.push(e.to_string());
        }
        match file.accounts() {
            Err(e) => problems.push(e.to_string()),
            Ok(map) => {
                for (account, profile) in map {
                    if let Err(e) = crate::ecs::accounts::profile_credentials(&profile) {
                        problems.push(format!(
                            "{}: account {account}: profile {profile} is unusable: {e}",
                            file.place("accounts")
                        ));
                    }
                }
            }
        }
    }
    problems.iter().map(|p| redact(p)).collect()
}

/// Everything `run` checks before it starts, each problem once with where it comes from:
/// the policies, the ECS client settings, the accounts, the operating window, the webhooks and
/// the database. `config check` reports these; `run` refuses to start on any.
pub async fn preflight(args: &RunArgs) -> Vec<String> {
    let mut problems = Vec::new();
    let policies = match crate::policy::load_dir(&args.policies.policies) {
        Ok(set) => set.policies,
        Err(diags) => {
            problems.extend(diags.iter().map(|d| d.to_string()));
            Vec::new()
        }
    };
    match args.ecs.client() {
        Ok(client) => {
            if let Err(e) = args.ecs.accounts(client, &policies) {
                problems.push(format!("accounts: {e:#}"));
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    problems.extend(file_setting_problems());
    let url = &args.db.url;
    let db_source = setting_source("JANITOR_DATABASE_URL");
    match tokio::time::timeout(Duration::from_secs(15), Store::connect(url)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!(
            "{db_source}: cannot use the database {}: {e:#}",
            crate::store::redact_url(url)
        )),
        Err(_) => problems.push(format!(
            "{db_source}: the database {} did not answer within 15 s",
            crate::store::redact_url(url)
        )),
    }
    problems.iter().map(|p| redact(p)).collect()
}

/// The settings `run` would use: for each, its value and whether it came from the environment,
/// the configuration file or the default (secrets show only whether they are set), then every
/// problem `run` would refuse to start on, each with its source. Exit 1 on any problem.
async fn config_check() -> anyhow::Result<ExitCode> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let file = crate::config::current();
    let mut problems: Vec<String> = Vec::new();
    // The file as written, every problem in it (main carried on past them for this command).
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = crate::config::locate(&args) {
        let (_, file_problems) = crate::config::ConfigFile::load_all(&path);
        problems.extend(file_problems.iter().map(|p| redact(&p.to_string())));
    }
    let cmd = Cli::command();
    let run_cmd = cmd
        .find_subcommand("run")
        .ok_or_else(|| anyhow::anyhow!("internal: no run command"))?;
    // Each value on its own, so one bad value does not hide the others.
    for arg in run_cmd.get_arguments() {
        let Some(var) = arg.get_env().map(|e| e.to_string_lossy().to_string()) else {
            continue;
        };
        if std::env::var_os(&var).is_none_or(|v| v.is_empty()) {
            continue;
        }
        // clap reads the variable itself, as it does for `run`.
        let alone = clap::Command::new("run")
            .no_binary_name(true)
            .arg(arg.clone().required(false))
            .try_get_matches_from(Vec::<String>::new());
        if let Err(e) = alone {
            problems.push(explain_parse_error(&e, &[]).unwrap_or_else(|| {
                let first = e.to_string();
                redact(&format!(
                    "{}: {}",
                    setting_source(&var),
                    first
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                ))
            }));
        }
    }
    let run = Cli::command()
        .try_get_matches_from(["ecs-janitor", "run"])
        .ok()
        .and_then(|m| m.subcommand_matches("run").cloned());
    match &file {
        Some(f) => outln!("configuration file: {}", f.path.display()),
        None => outln!("configuration file: none (--config, JANITOR_CONFIG or ./janitor.yaml)"),
    }
    outln!("{:<32} {:<48} SOURCE", "SETTING", "VALUE");
    for arg in run_cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(env) = arg.get_env().map(|e| e.to_string_lossy().to_string()) else {
            continue;
        };
        let raw = std::env::var(&env).ok().filter(|v| !v.is_empty());
        let (value, source) = match (&run, &raw) {
            (Some(run), _) => {
                let value: Vec<String> = run
                    .get_raw(id)
                    .map(|vs| vs.map(|v| v.to_string_lossy().to_string()).collect())
                    .unwrap_or_default();
                let source = match run.value_source(id) {
                    Some(ValueSource::EnvVariable)
                        if file.as_ref().is_some_and(|f| f.exported.contains(&env)) =>
                    {
                        "file".to_string()
                    }
                    Some(ValueSource::EnvVariable) => format!("environment ({env})"),
                    Some(ValueSource::DefaultValue) => "default".to_string(),
                    Some(ValueSource::CommandLine) => "flag".to_string(),
                    _ => "unset".to_string(),
                };
                (value.join(","), source)
            }
            // Some value is invalid (listed below): show what is set, as set.
            (None, Some(v)) => (v.clone(), "see the problems below".to_string()),
            (None, None) => (String::new(), "default".to_string()),
        };
        let shown = if value.is_empty() {
            "-".to_string()
        } else {
            redact(&crate::store::redact_url(&value))
        };
        outln!(
            "{:<32} {:<48} {}",
            format!("--{}", arg.get_long().unwrap_or(id)),
            shown,
            source
        );
    }
    for (var, secret) in [
        ("JANITOR_ADMIN_TOKEN", true),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", false),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", true),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", true),
    ] {
        let v = std::env::var(var).ok().filter(|v| !v.is_empty());
        let shown = match (&v, secret) {
            (None, _) => "not set".to_string(),
            (Some(_), true) => "<redacted>".to_string(),
            (Some(v), false) => v.clone(),
        };
        let source = match (&v, &file) {
            (None, _) => "",
            (Some(_), Some(f)) if f.exported.contains(var) => "file",
            (Some(_), _) => "environment",
        };
        outln!("{:<32} {:<48} {}", var, shown, source);
    }
    // Accounts the file maps, and whether each one's profile can sign (no secret is shown).
    let accounts = file
        .as_ref()
        .and_then(|f| f.accounts().ok())
        .unwrap_or_default();
    for (account, profile) in accounts {
        let status = match crate::ecs::accounts::profile_credentials(&profile) {
            Ok((source, _)) => source,
            Err(e) => redact(&format!("UNUSABLE: {e}")),
        };
        outln!(
            "{:<32} {:<48} {}",
            format!("account {account}"),
            format!("profile {profile}"),
            status
        );
    }
    // What `run` itself checks, once every value parses.
    match run.as_ref().map(RunArgs::from_arg_matches) {
        Some(Ok(args)) => problems.extend(preflight(&args).await),
        Some(Err(e)) => problems.push(redact(&e.to_string())),
        // Some value does not parse: still check what does not depend on the values.
        None => problems.extend(file_setting_problems()),
    }
    problems.dedup();
    if problems.is_empty() {
        outln!("No problems: `run` would start with these settings.");
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    outln!("{}:", crate::policy::count(problems.len(), "problem"));
    for p in &problems {
        outln!("{p}");
    }
    eprintln!(
        "{} found; `run` would refuse to start.",
        crate::policy::count(problems.len(), "problem")
    );
    Ok(ExitCode::from(1))
}

fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::app::DemoOptions {
        instances: args.instances,
        seed: args.seed,
        dir: None,
        color: stdout_is_terminal(),
    };
    crate::app::demo(opts, &mut |s| out!("{s}")).await?;
    Ok(ExitCode::SUCCESS)
}

fn validate(args: &ValidateArgs) -> ExitCode {
    let (paths, what) = if args.files.is_empty() {
        let dir = &args.policies.policies;
        (vec![dir.clone()], dir.display().to_string())
    } else {
        let shown: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
        (args.files.clone(), shown.join(", "))
    };
    let loaded = crate::policy::load_paths(&paths);
    if args.format != crate::policy::report::Format::Text {
        use crate::policy::report::{self, Findings, Format};
        let (problems, policies): (Vec<crate::policy::Diagnostic>, usize) = match &loaded.result {
            Ok(set) => (Vec::new(), set.policies.len()),
            Err(d) => (d.0.clone(), 0),
        };
        let warnings: Vec<crate::policy::Diagnostic> = loaded.warnings.0.clone();
        let f = Findings {
            problems: &problems,
            warnings: &warnings,
            policies,
        };
        match args.format {
            Format::Json => outln!("{:#}", report::json(&f)),
            Format::Sarif => outln!("{:#}", report::sarif(&f)),
            Format::Github | Format::Text => out!("{}", report::github(&f)),
        }
        return if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    for w in loaded.warnings.iter() {
        outln!("warning: {w}");
    }
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        n => format!(" ({})", crate::policy::count(n, "warning")),
    };
    match loaded.result {
        Ok(set) => {
            outln!(
                "{what}: {}, no problems{warnings}.",
                crate::policy::count(set.policies.len(), "policy")
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            outln!("{diags}");
            eprintln!(
                "{} found{warnings}.",
                crate::policy::count(diags.len(), "problem")
            );
            ExitCode::from(1)
        }
    }
}

/// Loads the policies, keeping only `only` when given; unknown names are an error.
fn load_policies(dir: &std::path::Path, only: &[String]) -> anyhow::Result<Vec<Policy>> {
    let set = crate::policy::load_dir(dir)
        .map_err(|d| anyhow::anyhow!("the policies in {} have problems:\n{d}", dir.display()))?;
    for name in only {
        if set.get(name).is_none() {
            let known: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "no policy named {name:?} in {}; known: {}",
                dir.display(),
                known.join(", ")
            );
        }
    }
    Ok(set
        .policies
        .into_iter()
        .filter(|p| only.is_empty() || only.contains(&p.name))
        .collect())
}

async fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let policies = load_policies(&args.policies.policies, &args.only)?;
    let store = Store::connect(&args.db.url).await?;
    let client = args.ecs.client()?;
    let accounts = args.ecs.accounts(client, &policies)?;
    let rec = Reconciler {
        store,
        accounts,
        protection: args.safety.protection(),
        owner: "plan".into(),
        force_dry_run: true,
        notifier: None,
    };
    let plan = rec.plan_only(&policies, chrono::Utc::now()).await?;
    if let Some(path) = &args.out {
        let mut saved = SavedPlan::from_plan(&plan);
        saved.database_id = Some(rec.store.database_id().await?);
        saved.save(path)?;
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&crate::plan::render_json(&plan))?
        );
    } else {
        out!(
            "{}",
            crate::plan::render_text_with(
                &plan,
                &crate::plan::TextOptions {
                    color: stdout_is_terminal(),
                    summary: args.summary,
                    hide_skips: args.hide_skips,
                }
            )
        );
        if let Some(path) = &args.out {
            outln!(
                "Saved to {}; `ecs-janitor apply --plan {}` acts on exactly this set.",
                path.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let policies = load_policies(&args.policies.policies, &args.only)?;
    let mut saved = match &args.plan {
        Some(p) => Some(SavedPlan::load(p)?),
        None => None,
    };
    let ask = saved.is_none()
        && !args.auto_approve
        && !args.dry_run
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let store = Store::connect(&args.db.url).await?;
    let client = args.ecs.client()?;
    let accounts = args.ecs.accounts(client.clone(), &policies)?;
    let worker_cfg = args.workers.config();
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::new(
        store,
        client,
        policies,
        args.safety.protection(),
        worker_cfg,
        clock,
        args.dry_run,
    )
    .with_accounts(accounts);
    let app = with_file_settings(app)?;
    if ask {
        // Show the plan, and act on exactly what was approved (as `apply --plan` would).
        let now = chrono::Utc::now();
        let loaded = app
            .workers
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let plan = app.reconciler.plan_only(&loaded, now).await?;
        out!("{}", crate::plan::render_text(&plan, true));
        let mut reviewed = SavedPlan::from_plan(&plan);
        if reviewed.releases.is_empty() {
            outln!("Nothing to release.");
            return Ok(ExitCode::SUCCESS);
        }
        reviewed.database_id = Some(app.store.database_id().await?);
        outln!(
            "\nRelease the {} {} above? This destroys their data for good. Only `yes` is accepted.",
            reviewed.releases.len(),
            if reviewed.releases.len() == 1 {
                "instance"
            } else {
                "instances"
            }
        );
        out!("  Enter a value: ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            outln!("Apply cancelled; nothing was released.");
            return Ok(ExitCode::FAILURE);
        }
        saved = Some(reviewed);
    }
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let limit = args.timeout.to_std().unwrap_or_default();
    tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        eprintln!(
            "--timeout {} reached: no new batches are claimed; calls in flight finish.",
            crate::policy::Duration::from_secs(limit.as_secs())
        );
        c.cancel();
    });
    let c = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("Stopping: no new batches are claimed; calls in flight finish. Run apply again to resume.");
        c.cancel();
        wait_for_signal().await;
        eprintln!(
            "second signal: exiting now; apply again resumes the stored batches with their tokens"
        );
        std::process::exit(130);
    });
    let progress =
        (!args.json && std::io::stderr().is_terminal()).then(|| spawn_progress(app.store.clone()));
    let opts = crate::app::ApplyOptions {
        narrowed: !args.only.is_empty(),
        max_plan_age: args.max_plan_age,
    };
    let report = app.apply(saved.as_ref(), &opts, cancel).await;
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let report = report?;
    // Let notifications about this run go out before the process ends.
    if let Some(n) = &app.workers.notifier {
        n.flush(Duration::from_secs(15)).await;
    }
    if args.json {
        let v = serde_json::json!({
            "runs": report.pass.runs,
            "releases": report.releases,
            "not_carried": report.pass.not_carried,
            "paused": report.paused,
            "dry_run": report.dry_run,
            "accounts_stopped": report.accounts_stopped,
            "interrupted": report.interrupted,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", report.render(chrono::Utc::now()));
    }
    Ok(ExitCode::from(if args.detailed_exitcode {
        report.detailed_exit_code()
    } else {
        report.exit_code()
    }))
}

/// A progress bar on the terminal while `apply` works the queue: releases settled since it
/// started, out of those settled plus those still queued.
fn spawn_progress(store: Store) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} settled {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let task = tokio::spawn(async move {
        let settled = |c: &crate::store::StateCounts| c.succeeded + c.failed + c.cancelled;
        let Ok(start) = store.counts().await else {
            return;
        };
        loop {
            if let Ok(c) = store.counts().await {
                let done = (settled(&c) - settled(&start)).max(0) as u64;
                b.set_length(done + (c.pending + c.in_flight) as u64);
                b.set_position(done);
                b.set_message(format!("({} in flight, {} queued)", c.in_flight, c.pending));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

/// The webhooks and operating window of the configuration file, attached to `app`.
fn with_file_settings(app: App) -> anyhow::Result<App> {
    let Some(file) = crate::config::current() else {
        return Ok(app);
    };
    let window = file.window()?;
    let hooks = file.webhooks()?;
    let app = app.with_window(window);
    if hooks.is_empty() {
        return Ok(app);
    }
    let n = crate::notify::Notifier::start(hooks, crate::notify::NotifierOptions::default())?;
    Ok(app.with_notifier(n))
}

async fn run_daemon(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Fail before binding anything on any problem `config check` would report, all at once.
    let problems = preflight(&args).await;
    if !problems.is_empty() {
        anyhow::bail!(
            "{} in the settings, so `run` does not start:\n{}",
            crate::policy::count(problems.len(), "problem"),
            problems.join("\n")
        );
    }
    let policies = load_policies(&args.policies.policies, &[])?;
    let store = Store::connect(&args.db.url).await?;
    // A daemon only reads until work arrives: prove now that the database takes writes (not a
    // read-only file or replica), rather than at the first release.
    store
        .set_setting("last_started_at", &chrono::Utc::now().to_rfc3339())
        .await?;
    let metrics = crate::metrics::Metrics::new();
    let client = args.ecs.client()?.with_observer(metrics.call_observer());
    let accounts = args.ecs.accounts(client.clone(), &policies)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::new(
        store,
        client,
        policies,
        args.safety.protection(),
        args.workers.config(),
        clock,
        false,
    )
    .with_accounts(accounts)
    .with_metrics(metrics);
    let app = with_file_settings(app)?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down (a second signal exits at once)");
        s.cancel();
        wait_for_signal().await;
        eprintln!(
            "second signal: exiting now; unfinished batches resume after their leases expire"
        );
        std::process::exit(130);
    });
    let cfg = crate::daemon::DaemonConfig {
        policies_dir: args.policies.policies.clone(),
        reload_every: Duration::from_millis(args.reload_ms.max(100)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        listen: args.listen,
        admin_token: args.admin_token.clone(),
    };
    crate::daemon::run(app, cfg, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn queue(cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now();
    match cmd {
        QueueCommand::List {
            state,
            policy,
            json,
            db,
        } => {
            if let Some(s) = &state {
                s.parse::<crate::store::ReleaseState>()
                    .map_err(|e| anyhow::anyhow!("--state: {e}"))?;
            }
            let store = Store::connect(&db.url).await?;
            if let (Some(p), false) = (store.pause_state().await?, json) {
                outln!(
                    "Releases are {}; nothing is sent until `ecs-janitor resume`.",
                    p.describe()
                );
            }
            let rows = store
                .list_releases(&ReleaseFilter {
                    state,
                    policy,
                    limit: None,
                    ..ReleaseFilter::default()
                })
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                outln!(
                    "{:>6} {:<24} {:<16} {:<10} {:>3} {:<28} LAST",
                    "ID",
                    "INSTANCE",
                    "REGION",
                    "STATE",
                    "TRY",
                    "POLICY"
                );
                for r in rows {
                    outln!(
                        "{:>6} {:<24} {:<16} {:<10} {:>3} {:<28} {}",
                        r.id,
                        r.instance_id,
                        r.region,
                        r.state,
                        r.attempts,
                        r.policy,
                        r.last_code.or(r.last_error).unwrap_or_default()
                    );
                }
            }
        }
        QueueCommand::Show { id, db } => {
            let store = Store::connect(&db.url).await?;
            outln!(
                "{}",
                serde_json::to_string_pretty(&store.release(id).await?)?
            );
        }
        QueueCommand::Retry { id, db } => {
            let store = Store::connect(&db.url).await?;
            store.retry_release(id, &operator(), now).await?;
            outln!("Release {id} is pending again; the next apply or the daemon sends it.");
        }
        QueueCommand::Cancel {
            id,
            reason,
            hold_for,
            db,
        } => {
            let store = Store::connect(&db.url).await?;
            let until = hold_for.map(|d| now + d);
            store
                .cancel_release(id, &operator(), &reason, until, now)
                .await?;
            match until {
                Some(t) => outln!(
                    "Release {id} is cancelled; its instance is held out of the policy until {}.",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => outln!(
                    "Release {id} is cancelled; its instance is held out of the policy until `queue retry {id}`."
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&args.db.url).await?;
    let events = store
        .events_where(&crate::store::EventFilter {
            policy: args.policy.clone(),
            instance_id: args.instance.clone(),
            kind: args.kind.clone(),
            since: args.since,
            limit: Some(args.limit),
        })
        .await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&events)?);
    } else {
        for e in events {
            outln!(
                "{} {:<16} {:<24} {:<28} {:<28} {} {}",
                e.at.format("%Y-%m-%dT%H:%M:%SZ"),
                e.kind,
                e.instance_id.unwrap_or_default(),
                e.policy.unwrap_or_default(),
                e.code.unwrap_or_default(),
                e.request_id
                    .map(|r| format!("RequestId {r}"))
                    .unwrap_or_default(),
                e.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let fleet = match &args.fleet {
        Some(path) => sim::fleet::load_file(path)?,
        None => sim::fleet::generate(args.instances, args.seed, chrono::Utc::now()),
    };
    let n = fleet.len();
    let cfg = SimConfig {
        access_key_id: args.access_key_id.clone(),
        access_key_secret: args.access_key_secret,
        faults: Faults {
            internal_error_rate: args.internal_error_rate,
            throttle_rate: args.throttle_rate,
            drop_after_commit_rate: args.drop_after_commit_rate,
            latency: Duration::from_millis(args.latency_ms),
            actions: Vec::new(),
        },
        seed: args.seed,
        release_delay: Duration::from_millis(args.release_delay_ms),
        ..SimConfig::default()
    };
    let handle = Simulator::new(cfg, fleet)
        .serve(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    outln!(
        "ECS simulator serving {n} instances at {} (AccessKeyId {}). State: {}__sim/state. Ctrl-C stops it.",
        handle.endpoint(),
        args.access_key_id,
        handle.endpoint()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
