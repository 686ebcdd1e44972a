//! The command line: parse it and resolve the settings once, then hand each subcommand to the
//! file that carries it out. Each command body is wiring: the work is in the library.

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

mod apply;
pub mod args;
mod config_check;
mod control;
mod daemon;
mod plan;
pub mod progress;
mod ready;
mod simulate;
mod validate;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::FromArgMatches;

pub use args::{Cli, Command, ConfigCommand, QueueCommand};

use crate::settings::{self, ConfigFile, Group, Inputs, Settings};

/// The command line with every setting's flag on the subcommands that read it.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = settings::with_flags(Cli::command(), &[Group::Global]);
    for (path, groups) in args::COMMAND_GROUPS {
        cmd = with_flags_at(cmd, path, groups);
    }
    cmd
}

fn with_flags_at(cmd: clap::Command, path: &[&str], groups: &'static [Group]) -> clap::Command {
    match path {
        [] => settings::with_flags(cmd, groups),
        [first, rest @ ..] => {
            let rest: Vec<&str> = rest.to_vec();
            cmd.mut_subcommand(*first, move |sub| with_flags_at(sub, &rest, groups))
        }
    }
}

/// A parsed command line with its settings.
#[derive(Debug)]
pub struct Invocation {
    pub cli: Cli,
    pub settings: Settings,
    /// Problems in the configuration file and the settings; only `config check` gets this far
    /// with any (it reports them all).
    pub problems: Vec<String>,
}

/// Why a command line is not run.
#[derive(Debug)]
pub enum Refusal {
    /// clap's own: a usage error, `--help`, `--version`.
    Usage(clap::Error),
    /// Problems in the configuration file or a setting's value, each with its source.
    Config {
        problems: Vec<String>,
        in_file: bool,
    },
}

/// Parses `args` (with the binary's name first) and resolves the settings from the flags,
/// `env` (the process environment), and the configuration file.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Invocation, Refusal> {
    let matches = command()
        .try_get_matches_from(args)
        .map_err(Refusal::Usage)?;
    let cli = Cli::from_arg_matches(&matches).map_err(Refusal::Usage)?;
    let checking = matches!(cli.command, Command::Config(ConfigCommand::Check));
    let mut file = None;
    let mut problems = Vec::new();
    if let Some(path) = settings::locate(cli.config.as_deref()) {
        let (f, file_problems) = ConfigFile::load_all(&path);
        problems.extend(file_problems.iter().map(|p| p.to_string()));
        file = Some(f);
    }
    if !problems.is_empty() && !checking {
        return Err(Refusal::Config {
            problems,
            in_file: true,
        });
    }
    let mut flags = settings::flags_in(&matches);
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        flags.extend(settings::flags_in(sub));
        leaf = sub;
    }
    let inputs = Inputs {
        flags,
        env,
        file: file.as_ref(),
    };
    let (settings, setting_problems) = Settings::resolve(&inputs, cli.command.groups());
    problems.extend(setting_problems);
    let problems: Vec<String> = problems.iter().map(|p| redact(p, &settings)).collect();
    if !problems.is_empty() && !checking {
        return Err(Refusal::Config {
            problems,
            in_file: false,
        });
    }
    Ok(Invocation {
        cli,
        settings,
        problems,
    })
}

/// Runs the parsed command.
pub async fn run(inv: Invocation) -> anyhow::Result<ExitCode> {
    run_command(inv).await.map_err(explain_database_error)
}

async fn run_command(inv: Invocation) -> anyhow::Result<ExitCode> {
    let Invocation {
        cli,
        settings,
        problems,
    } = inv;
    let s = settings;
    match cli.command {
        Command::Demo(args) => {
            let opts = crate::demo::DemoOptions {
                instances: args.instances,
                seed: args.seed,
                dir: None,
                color: stdout_is_terminal(),
            };
            crate::demo::demo(opts, &mut |t| out!("{t}")).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => Ok(validate::validate(&args, &s)),
        Command::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&crate::policy::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => plan::plan(args, s).await,
        Command::Apply(args) => apply::apply(args, s).await,
        Command::Run => daemon::run_daemon(s).await,
        Command::Queue(cmd) => control::queue(cmd, &s).await,
        Command::History(args) => control::history(args, &s).await,
        Command::Pause(args) => control::pause(&args, &s).await,
        Command::Exempt(args) => control::exempt(&args, &s).await,
        Command::Resume { reason } => control::resume(reason.as_deref(), &s).await,
        Command::Simulate(args) => simulate::simulate(args).await,
        Command::Config(ConfigCommand::Check) => config_check::config_check(&s, problems).await,
        Command::Ready(args) => ready::ready(&args, &s).await,
    }
}

/// A locked or read-only SQLite file, said with its file and the remedy (the store's
/// diagnosis); other errors pass through unchanged.
fn explain_database_error(e: anyhow::Error) -> anyhow::Error {
    match crate::store::SqliteDiagnosis::find(&*e) {
        Some(d) => anyhow::anyhow!("{d}"),
        None => e,
    }
}

fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
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

/// `text` with every secret this process knows (its settings' and the credential variables')
/// and every URL password replaced.
fn redact(text: &str, settings: &Settings) -> String {
    let mut secrets: Vec<String> = [
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_SECURITY_TOKEN",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok())
    .chain(settings.secrets())
    .filter(|s| s.len() >= 4)
    .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in secrets {
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
