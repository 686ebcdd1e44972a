//! The `ecs-janitor` binary: parse the command line and resolve the settings, set up logging,
//! run, map errors to exit codes.

use std::process::ExitCode;

use ecs_janitor::cli::{self, Command, Refusal};
use ecs_janitor::settings::LogFormat;

/// Colour codes only for a person at a terminal: never in a file, a pipe or a journal, and
/// never when `NO_COLOR` is set (https://no-color.org).
fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn init_logging(format: LogFormat, filter: Option<&str>, default_level: &str) {
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        // PostgreSQL's notices (a migration's "relation _sqlx_migrations already exists,
        // skipping" at every start) are the server's chatter, not the program's.
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(format!(
                "{default_level},sqlx::postgres::notice=warn"
            ))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colours())
        .with_writer(cli::progress::LogWriter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    ecs_janitor::memory::share_pools();
    let args: Vec<String> = std::env::args().collect();
    let env = |var: &str| std::env::var(var).ok();
    let inv = match cli::parse(&args, &env) {
        Ok(inv) => inv,
        Err(Refusal::Usage(e)) => e.exit(),
        Err(Refusal::Config { problems, in_file }) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            let n = ecs_janitor::policy::count(problems.len(), "problem");
            if in_file {
                eprintln!("{n} in the configuration file; nothing was run.");
            } else {
                eprintln!("{n} in the settings; nothing was run.");
            }
            return ExitCode::from(64);
        }
    };
    // One-shot commands print their own report (JANITOR_LOG=info shows their work too); the
    // daemon and the simulator log theirs.
    let quiet = matches!(
        inv.cli.command,
        Command::Demo(_) | Command::Validate(_) | Command::Schema
    );
    init_logging(
        inv.settings.log_format,
        inv.settings.log.as_deref(),
        if quiet { "warn" } else { "info" },
    );
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
    match runtime.block_on(cli::run(inv)) {
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
