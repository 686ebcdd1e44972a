//! `plan`: which instances would be released and why; changes nothing.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::args::PlanArgs;
use crate::clock::{SharedClock, SystemClock};
use crate::plan::SavedPlan;
use crate::policy::Policy;
use crate::reconcile::Reconciler;
use crate::settings::Settings;

pub(super) async fn plan(args: PlanArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let loaded = load_policies(&settings.policies, &args.only)?;
    let policies = named(&loaded, &args.only);
    let clock: SharedClock = Arc::new(SystemClock);
    // Every policy is loaded: those `--policy` leaves out still own what they match first.
    let (ctx, _reload) =
        crate::assemble::context(&settings, loaded, &args.only, clock, Default::default()).await?;
    let rec = Reconciler {
        ctx,
        owner: "plan".into(),
        force_dry_run: true,
        // plan records no run.
        run_lease: chrono::Duration::zero(),
        running: Default::default(),
    };
    let plan = rec.plan_only(&policies, chrono::Utc::now()).await?;
    if let Some(path) = &args.out {
        let mut saved = SavedPlan::from_plan(&plan);
        saved.database_id = Some(rec.ctx.store.database_id().await?);
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
                    color: super::stdout_is_terminal(),
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
    if plan.summary().policies_failed > 0 {
        // Shown above with why; the plan is incomplete, so not a success.
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads every policy, checking that each name of `only` (`--policy`) is one of them.
pub(super) fn load_policies(dir: &Path, only: &[String]) -> anyhow::Result<Vec<Policy>> {
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
    Ok(set.policies)
}

/// The policies of `loaded` that `only` names, or all of them when it names none.
pub(super) fn named(loaded: &[Policy], only: &[String]) -> Vec<Policy> {
    loaded
        .iter()
        .filter(|p| only.is_empty() || only.contains(&p.name))
        .cloned()
        .collect()
}
