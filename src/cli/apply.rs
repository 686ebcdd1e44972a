//! `apply`: one reconcile pass (after a `yes` on a terminal), then the queue worked until
//! nothing is due; the report, and Terraform-style exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::args::ApplyArgs;
use crate::app::App;
use crate::clock::{SharedClock, SystemClock};
use crate::plan::SavedPlan;
use crate::settings::Settings;

pub(super) async fn apply(args: ApplyArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let policies = super::plan::load_policies(&settings.policies, &args.only)?;
    let mut saved = match &args.plan {
        Some(p) => Some(SavedPlan::load(p)?),
        None => None,
    };
    let ask = saved.is_none()
        && !args.auto_approve
        && !args.dry_run
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let clock: SharedClock = Arc::new(SystemClock);
    let (ctx, reload) =
        crate::assemble::context(&settings, policies, &args.only, clock, Default::default())
            .await?;
    let app = App::new(ctx, reload, settings.workers.clone(), args.dry_run);
    if ask {
        match approve(&app, &args.only).await? {
            Approval::Yes(reviewed) => saved = Some(reviewed),
            // A policy refused for its blast radius fails the run, as without the question.
            Approval::Nothing { refused } => {
                return Ok(ExitCode::from(match (refused, args.detailed_exitcode) {
                    (false, _) => 0,
                    (true, false) => 2,
                    (true, true) => 4,
                }))
            }
            Approval::No => return Ok(ExitCode::FAILURE),
        }
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
    crate::signals::cancel_on_signal(
        cancel.clone(),
        "Stopping: no new batches are claimed; calls in flight finish. Run apply again to resume.",
        "second signal: exiting now; apply again resumes the stored batches with their tokens",
    );
    let progress = (!args.json && std::io::stderr().is_terminal())
        .then(|| super::progress::spawn(app.ctx.store.clone(), app.ctx.metrics.clone()));
    let opts = crate::app::ApplyOptions {
        only: args.only.clone(),
        max_plan_age: args.max_plan_age,
        keep_plan: false,
        policies_dir: Some(settings.policies.clone()),
    };
    let report = app.apply(saved.as_ref(), &opts, cancel).await;
    if let Some(p) = progress {
        p.finish();
    }
    let report = report?;
    // Let notifications about this run go out before the process ends.
    if let Some(n) = &app.ctx.notifier {
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

enum Approval {
    /// The plan shown, to act on exactly (as `apply --plan` would).
    Yes(SavedPlan),
    No,
    /// Nothing to release, so nothing was asked; `refused` when a policy was refused.
    Nothing {
        refused: bool,
    },
}

/// Shows the plan and asks for `yes`.
async fn approve(app: &App, only: &[String]) -> anyhow::Result<Approval> {
    let policies = super::plan::named(&app.policies(), only);
    let plan = app
        .reconciler
        .plan_only(&policies, chrono::Utc::now())
        .await?;
    out!("{}", crate::plan::render_text(&plan, true));
    let mut reviewed = SavedPlan::from_plan(&plan);
    if reviewed.releases.is_empty() {
        outln!("Nothing to release.");
        let s = plan.summary();
        return Ok(Approval::Nothing {
            refused: s.policies_refused + s.policies_failed > 0,
        });
    }
    reviewed.database_id = Some(app.ctx.store.database_id().await?);
    let n = reviewed.releases.len();
    outln!(
        "\nRelease the {n} {} above? This destroys their data for good. Only `yes` is accepted.",
        if n == 1 { "instance" } else { "instances" }
    );
    out!("  Enter a value: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        outln!("Apply cancelled; nothing was released.");
        return Ok(Approval::No);
    }
    Ok(Approval::Yes(reviewed))
}
