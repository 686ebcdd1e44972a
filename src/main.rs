//! The `ecs-janitor` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use ecs_janitor::cli::{self, Cli, LogFormat};

/// Colour codes only for a person at a terminal: never in a file, a pipe or a journal, and
/// never when `NO_COLOR` is set (https://no-color.org).
fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JANITOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colours())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    // The configuration file feeds the environment before the command line is parsed, so a
    // flag beats the environment, which beats the file, which beats the default.
    let args: Vec<String> = std::env::args().collect();
    // `config check` reports every problem itself, so it carries on past them.
    let checking = args.windows(2).any(|w| w[0] == "config" && w[1] == "check");
    let file = match ecs_janitor::config::locate(&args) {
        None => None,
        Some(path) => {
            let (mut file, problems) = ecs_janitor::config::ConfigFile::load_all(&path);
            if !problems.is_empty() && !checking {
                for p in &problems {
                    eprintln!("error: {p}");
                }
                eprintln!(
                    "{} in the configuration file; nothing was run.",
                    ecs_janitor::policy::count(problems.len(), "problem")
                );
                return ExitCode::from(64);
            }
            file.export();
            Some(file)
        }
    };
    ecs_janitor::config::set_current(file);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => match cli::explain_parse_error(&e, &args) {
            // A bad value from the environment or the file is a configuration problem.
            Some(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(64);
            }
            None => e.exit(),
        },
    };
    // One-shot commands print their own report (JANITOR_LOG=info shows their work too); the
    // daemon and the simulator log theirs.
    let quiet = matches!(
        cli.command,
        cli::Command::Demo(_) | cli::Command::Validate(_) | cli::Command::Schema
    );
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: many messages already name their source.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
