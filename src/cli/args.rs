//! The command line's shape: each subcommand and its own arguments. Settings (flags that also
//! come from the environment or `janitor.yaml`) are not here: `crate::settings` owns them and
//! [`super::command`] adds their flags to the subcommands of [`COMMAND_GROUPS`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::Group;
use crate::sim;

/// Releases unneeded Alibaba Cloud ECS instances from declarative lifecycle policies.
#[derive(Debug, Parser)]
#[command(name = "ecs-janitor", version, about, long_about = None)]
pub struct Cli {
    /// A configuration file (YAML) with any of the settings flags and environment variables
    /// give; flags and environment variables win over it. Default: ./janitor.yaml if present.
    #[arg(long, global = true, env = "JANITOR_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
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
    Run,
    /// Inspect and steer the release queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The kill switch: stop every DeleteInstances, on every replica and command, until resumed.
    Pause(PauseArgs),
    /// Lift the pause.
    Resume {
        /// Why, recorded in the audit log (`history --kind resumed`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Keep an instance out of every policy until a date, recorded with who and why (for
    /// instances nobody can tag; owners can tag `janitor:exempt-until=YYYY-MM-DD` instead).
    Exempt(ExemptArgs),
    /// The audit log: who released what, when, under which policy and RequestId.
    History(HistoryArgs),
    /// Run the ECS simulator: a stateful fake ECS endpoint for trying, testing and benchmarking.
    Simulate(SimulateArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask a running daemon whether it is ready (`GET /readyz` on its --listen address, or
    /// --url): exit 0 when it is, 1 with why when not. For a container's health check: the
    /// image has no curl.
    Ready(ReadyArgs),
}

#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// The readiness endpoint to ask, instead of `http://<--listen>/readyz` (an unspecified
    /// address such as 0.0.0.0 is asked on the loopback).
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub timeout_secs: f64,
}

/// The settings each subcommand reads (by its path), so it gets their flags and nothing else.
pub const COMMAND_GROUPS: &[(&[&str], &[Group])] = &[
    (&["validate"], &[Group::Policies, Group::Pricing]),
    (
        &["plan"],
        &[
            Group::Policies,
            Group::Database,
            Group::Ecs,
            Group::Safety,
            Group::Pricing,
        ],
    ),
    (
        &["apply"],
        &[
            Group::Policies,
            Group::Database,
            Group::Ecs,
            Group::Safety,
            Group::Workers,
            Group::Pricing,
        ],
    ),
    (&["run"], RUN_GROUPS),
    (&["config", "check"], RUN_GROUPS),
    (&["queue", "list"], &[Group::Database]),
    (&["queue", "show"], &[Group::Database]),
    (&["queue", "retry"], &[Group::Database]),
    (&["queue", "cancel"], &[Group::Database]),
    (&["pause"], &[Group::Database]),
    (&["resume"], &[Group::Database]),
    (&["history"], &[Group::Database]),
    (&["ready"], &[Group::Daemon]),
    (
        &["exempt"],
        &[Group::Policies, Group::Database, Group::Ecs, Group::Safety],
    ),
];

/// What `run` reads: everything (and so what `config check` shows).
pub const RUN_GROUPS: &[Group] = &[
    Group::Policies,
    Group::Database,
    Group::Ecs,
    Group::Safety,
    Group::Workers,
    Group::Daemon,
    Group::Pricing,
];

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the settings `run` would use, where each comes from, with secrets redacted.
    Check,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Check these files (or folders) instead of --policies, e.g. the files a pre-commit hook
    /// passes. Policy names must be unique among them.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// text for people; json; github (workflow commands: inline annotations in a pull
    /// request); sarif (SARIF 2.1.0, for code scanning). Exit 0 clean, 1 on any problem.
    #[arg(long, value_enum, default_value_t = crate::policy::report::Format::Text)]
    pub format: crate::policy::report::Format,
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
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Only these policies (repeatable).
    #[arg(long = "policy")]
    pub only: Vec<String>,
    /// Act on exactly the releases of a plan saved with `plan --out`.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Refuse a saved plan older than this (`30m`, `24h`, `2d`).
    #[arg(long, value_parser = crate::settings::spec::duration, default_value = "24h")]
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
    #[arg(long, value_parser = crate::settings::spec::duration, default_value = "30m")]
    pub timeout: chrono::Duration,
    /// Send DeleteInstances with DryRun=true: check permissions and parameters, release nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
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
    },
    /// Show one release.
    Show { id: crate::store::ReleaseId },
    /// Put a failed, cancelled or vanished release back in the queue, lifting its hold or
    /// quarantine; what was left of its grace period stays.
    Retry {
        id: crate::store::ReleaseId,
        /// Why, recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel a pending release, and hold its instance out of the policy until `queue retry`
    /// (or for `--for DURATION`).
    Cancel {
        id: crate::store::ReleaseId,
        /// Why, recorded with the hold and shown in plans.
        #[arg(long, default_value = "no reason given")]
        reason: String,
        /// Hold only this long (`2h`, `7d`); the next pass after it may queue the instance again.
        #[arg(long = "for", value_parser = crate::settings::spec::duration)]
        hold_for: Option<chrono::Duration>,
    },
}

#[derive(Debug, Args)]
pub struct ExemptArgs {
    /// The instance (`i-...`).
    #[arg(required_unless_present = "list")]
    pub instance: Option<String>,
    /// Until when: a date (`2027-01-31`: through that day in every time zone, until 12:00 UTC
    /// the next day) or an RFC 3339 time; at most
    /// `exemption_max_days` ahead.
    #[arg(long, required_unless_present_any = ["list", "remove"])]
    pub until: Option<String>,
    /// Why, recorded in the audit log and shown in plans.
    #[arg(long, required_unless_present = "list")]
    pub reason: Option<String>,
    /// End the instance's exemption now instead.
    #[arg(long, conflicts_with_all = ["until", "list"])]
    pub remove: bool,
    /// List the exemptions in force.
    #[arg(long, conflicts_with_all = ["instance", "until", "reason"])]
    pub list: bool,
    /// Record the exemption without first looking the instance up in the regions the
    /// policies cover (by default an id that none of them lists is refused, as a likely typo).
    #[arg(long, conflicts_with_all = ["list", "remove"])]
    pub unchecked: bool,
    /// With `--list`: JSON, times in RFC 3339.
    #[arg(long, requires = "list")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Why, recorded in the audit log and shown by `apply`, `queue list` and the status page.
    #[arg(long, default_value = "")]
    pub reason: String,
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
    /// A quota: at most N calls of API per minute for each account and region, as ECS
    /// enforces (`DeleteInstances=60/min`); the rest of the minute answers Throttling.User.
    /// Repeatable.
    #[arg(long = "quota", value_name = "API=N/min", value_parser = quota)]
    pub quotas: Vec<(String, u64)>,
}

fn quota(s: &str) -> Result<(String, u64), String> {
    let bad = || format!("{s:?}: give API=N/min, e.g. DeleteInstances=60/min");
    let (api, n) = s.split_once('=').ok_or_else(bad)?;
    let n = n.strip_suffix("/min").ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if api.trim().is_empty() {
        return Err(bad());
    }
    Ok((api.trim().to_string(), n))
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
    /// The path of the subcommand (`["queue", "list"]`).
    pub fn path(&self) -> Vec<&'static str> {
        let top = match self {
            Command::Demo(_) => "demo",
            Command::Validate(_) => "validate",
            Command::Schema => "schema",
            Command::Plan(_) => "plan",
            Command::Apply(_) => "apply",
            Command::Run => "run",
            Command::Queue(_) => "queue",
            Command::Pause(_) => "pause",
            Command::Resume { .. } => "resume",
            Command::History(_) => "history",
            Command::Exempt(_) => "exempt",
            Command::Simulate(_) => "simulate",
            Command::Config(_) => "config",
            Command::Ready(_) => "ready",
        };
        let sub = match self {
            Command::Queue(QueueCommand::List { .. }) => Some("list"),
            Command::Queue(QueueCommand::Show { .. }) => Some("show"),
            Command::Queue(QueueCommand::Retry { .. }) => Some("retry"),
            Command::Queue(QueueCommand::Cancel { .. }) => Some("cancel"),
            Command::Config(ConfigCommand::Check) => Some("check"),
            _ => None,
        };
        std::iter::once(top).chain(sub).collect()
    }

    /// The settings this command reads.
    pub fn groups(&self) -> &'static [Group] {
        let path = self.path();
        COMMAND_GROUPS
            .iter()
            .find(|(p, _)| *p == path.as_slice())
            .map_or(&[], |(_, g)| g)
    }
}
