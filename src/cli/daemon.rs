//! `run`: refuse to start on any problem `config check` would report, then hand the daemon its
//! context and settings.

use std::process::ExitCode;
use std::sync::Arc;

use super::config_check::preflight;
use crate::app::App;
use crate::clock::{SharedClock, SystemClock};
use crate::settings::Settings;

pub(super) async fn run_daemon(settings: Settings) -> anyhow::Result<ExitCode> {
    // Before anything touches the database (the checks below migrate it), and held until the
    // daemon ends (the process's exit lets it go, however it ends).
    let _lock =
        crate::store::Store::lock_for_daemon(&settings.database).map_err(anyhow::Error::msg)?;
    // Fail before binding anything on any problem `config check` would report, all at once.
    let problems = preflight(&settings).await;
    if !problems.is_empty() {
        anyhow::bail!(
            "{} in the settings, so `run` does not start:\n{}",
            crate::policy::count(problems.len(), "problem"),
            problems.join("\n")
        );
    }
    let policies = super::plan::load_policies(&settings.policies, &[])?;
    let clock: SharedClock = Arc::new(SystemClock);
    let metrics = crate::metrics::Metrics::new();
    let (ctx, reload) = crate::assemble::context(&settings, policies, &[], clock, metrics).await?;
    // A daemon only reads until work arrives: prove now that the database takes writes (not a
    // read-only file or replica), rather than at the first release.
    ctx.store
        .set_setting("last_started_at", &chrono::Utc::now().to_rfc3339())
        .await?;
    let app = App::new(ctx, reload, settings.workers.clone(), false);
    let shutdown = tokio_util::sync::CancellationToken::new();
    crate::signals::cancel_on_signal(
        shutdown.clone(),
        "signal received: shutting down (a second signal exits at once)",
        "second signal: exiting now; unfinished batches resume after their leases expire",
    );
    let cfg = crate::daemon::DaemonConfig {
        policies_dir: settings.policies.clone(),
        reload_every: settings.reload_every,
        shutdown_grace: settings.shutdown_grace,
        listen: settings.listen,
        admin_tokens: settings.admin_tokens.clone(),
    };
    crate::daemon::run(app, cfg, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
