//! `apply` as a job: one reconcile pass (or exactly a reviewed plan), then the queue worked
//! until nothing is due, through the same worker loop as `run`, and the report of what it did.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, PolicyReload};
use crate::plan::SavedPlan;
use crate::policy::Policy;
use crate::reconcile::{PassResult, ReconcileError, Reconciler};
use crate::store::{PauseInfo, ReleaseFilter, ReleaseRow, ReleaseState, StoreError};
use crate::worker::{Stop, WorkerConfig, WorkerError, Workers};

/// Why a job stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// The assembled pipeline: a reconciler and workers over one shared [`Context`].
#[derive(Clone)]
pub struct App {
    pub ctx: Context,
    pub reconciler: Reconciler,
    pub workers: Workers,
    reload: Arc<PolicyReload>,
}

impl App {
    /// The pipeline over `ctx`; `reload` is the writer of its policy set. With `dry_run`, every
    /// policy is treated as `dry_run: true` and workers send DryRun calls only.
    pub fn new(ctx: Context, reload: PolicyReload, worker_cfg: WorkerConfig, dry_run: bool) -> App {
        let reconciler = Reconciler {
            ctx: ctx.clone(),
            owner: worker_cfg.owner.clone(),
            force_dry_run: dry_run,
            run_lease: chrono::Duration::from_std(worker_cfg.lease)
                .unwrap_or(chrono::Duration::seconds(30)),
            running: Default::default(),
        };
        let workers = Workers::new(ctx.clone(), worker_cfg);
        App {
            ctx,
            reconciler,
            workers,
            reload: Arc::new(reload),
        }
    }

    /// Replaces the running policy set (the daemon's reload).
    pub fn set_policies(&self, policies: Vec<Policy>) {
        self.reload.replace(policies);
    }

    /// The policies now loaded.
    pub fn policies(&self) -> Vec<Policy> {
        self.ctx.policies.current().to_vec()
    }

    /// One reconcile pass of every loaded policy (or exactly a saved plan), then the queue is
    /// worked until nothing is due, through the same worker loop as `run`. Releases still in
    /// their grace period stay queued. With `opts.narrowed` (`--policy`) or a saved plan, only
    /// this pass's releases are carried out; the rest of the queue is left as it is. A dry run
    /// sends DryRun calls only and leaves the queue as it found it.
    pub async fn apply(
        &self,
        saved: Option<&SavedPlan>,
        opts: &ApplyOptions,
        cancel: CancellationToken,
    ) -> Result<ApplyReport, AppError> {
        let started = self.ctx.clock.now();
        let narrowed = !opts.only.is_empty();
        let policies: Vec<Policy> = self
            .policies()
            .into_iter()
            .filter(|p| !narrowed || opts.only.contains(&p.name))
            .collect();
        if let Some(s) = saved {
            self.check_saved(s, &policies, opts.max_plan_age, started)
                .await?;
        }
        // An apply from a folder other than the running replicas' (an old checkout) releases
        // nothing while they differ, and calls off nothing of theirs.
        let agree = match &opts.policies_dir {
            Some(dir) if !self.reconciler.force_dry_run => {
                let set = crate::replicas::PolicySet::of(dir, &self.policies());
                crate::replicas::compare(&self.ctx, &set, started).await?
            }
            _ => true,
        };
        // A whole-queue run works every queued release: those of a policy no longer loaded
        // (removed or renamed) are called off first, so a renamed policy queues its own.
        if agree && !narrowed && saved.is_none() && !self.reconciler.force_dry_run {
            self.reconciler.end_orphans(started).await?;
        }
        // A signal or the run's deadline interrupts the pass too (its listing's retries and
        // throttling waits); nothing has been queued by then that a later run would not redo.
        let mut pass = tokio::select! {
            r = self.reconciler.pass(&policies, started, saved, started) => r?,
            _ = cancel.cancelled() => {
                // Its runs are closed, not left for a daemon to take over and finish.
                let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
                let _ = self
                    .ctx
                    .store
                    .abandon_runs(&names, started, &self.reconciler.owner, "stopped by a signal or its --timeout during the pass", self.ctx.clock.now())
                    .await;
                return Err(AppError::Other(
                    "stopped before the reconcile pass finished; nothing was released".into(),
                ))
            }
        };
        if !opts.keep_plan {
            for p in &mut pass.plan.policies {
                p.releases = Vec::new();
                p.skips = Vec::new();
            }
            crate::memory::give_back_freed();
        }
        let mut stopped = None;
        let mut accounts_stopped = Vec::new();
        let mut claimed = None;
        if !self.reconciler.force_dry_run {
            // The run's scope: what this pass may carry out. With --policy or a plan, only
            // their releases; otherwise every release queued when the pass ended.
            let mut workers = self.workers.clone();
            let id = crate::store::new_client_token();
            let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
            let pairs: Option<Vec<(String, String)>> = saved.map(|s| {
                s.releases
                    .iter()
                    .map(|r| (r.instance_id.clone(), r.policy.clone()))
                    .collect()
            });
            let scoped = (narrowed || saved.is_some()).then_some(names.as_slice());
            self.ctx
                .store
                .create_scope(&id, scoped, pairs.as_deref())
                .await?;
            workers.scope = Some(id.clone());
            let worked = workers.drain(cancel.clone()).await;
            self.ctx.store.drop_scope(&id).await?;
            let worked = worked?;
            // What the workers settled (released, or cancelled at the re-check) needs its mark
            // no longer.
            if let Err(e) = crate::marks::reconcile(
                &self.ctx,
                self.reconciler.mark_holder(),
                self.ctx.clock.now(),
                crate::marks::Scope::Removals,
            )
            .await
            {
                tracing::warn!(error = %e, "marks were not reconciled; the next pass tries again");
            }
            stopped = worked.stopped;
            accounts_stopped = worked.accounts_stopped;
            // The releases the pass found gone are this run's to report too.
            let mut mine = worked.claimed;
            mine.extend(pass.runs.iter().flat_map(|r| r.vanished.iter().copied()));
            claimed = Some(mine);
        }
        // What the drain freed goes back first: the rows below are decoded on the database
        // driver's thread, whose allocations the freed memory of the others would not serve.
        crate::memory::give_back_freed();
        // Read from the database only what this apply touched: history only grows.
        let mut touched: Vec<ReleaseRow> = self
            .ctx
            .store
            .list_releases(&ReleaseFilter {
                touched_since: Some(started),
                ..ReleaseFilter::default()
            })
            .await?;
        if let Some(claimed) = &claimed {
            // What workers carry out counts for the run whose workers did it: another apply
            // working the same queue meanwhile reports its own (two side by side each reported
            // every release of both).
            touched.retain(|r| {
                !matches!(
                    r.state,
                    ReleaseState::Succeeded | ReleaseState::Failed | ReleaseState::Vanished
                ) || claimed.contains(&r.id)
            });
        }
        if narrowed || saved.is_some() {
            // Only what this run could act on: the pass's policies (and the plan's instances).
            let names: HashSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
            let pairs: Option<HashSet<(&str, &str)>> = saved.map(|s| {
                s.releases
                    .iter()
                    .map(|r| (r.instance_id.as_str(), r.policy.as_str()))
                    .collect()
            });
            touched.retain(|r| {
                names.contains(r.policy.as_str())
                    && pairs
                        .as_ref()
                        .is_none_or(|p| p.contains(&(r.instance_id.as_str(), r.policy.as_str())))
            });
        }
        let now = self.ctx.clock.now();
        let window_note = match (&stopped, &self.ctx.window) {
            (Some(Stop::PolicySetsDiffer(why)), _) => Some(format!("Releases wait: {why}.")),
            (Some(Stop::WindowClosed { .. }), Some(w)) | (None, Some(w)) if !w.is_open(now) => {
                Some(match w.next_open(now) {
                    Some(at) => format!(
                        "Outside the operating window: queued releases wait until it opens at {} UTC.",
                        at.format("%Y-%m-%d %H:%M")
                    ),
                    None => "Outside the operating window, which never opens: nothing is released."
                        .into(),
                })
            }
            _ => None,
        };
        let paused = match stopped {
            Some(Stop::Paused(p)) => Some(p),
            _ => None,
        };
        Ok(ApplyReport {
            pass,
            releases: touched,
            window_note,
            paused,
            dry_run: self.reconciler.force_dry_run,
            accounts_stopped,
            interrupted: cancel.is_cancelled(),
        })
    }

    /// Refuses a saved plan that is too old, from another database, or names a policy that is
    /// not loaded.
    async fn check_saved(
        &self,
        saved: &SavedPlan,
        policies: &[Policy],
        max_age: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let age = now - saved.created_at;
        if age > max_age {
            return Err(AppError::Other(format!(
                "the plan was made at {} ({} ago), older than --max-plan-age {}: the fleet may have changed since it was reviewed; make and review a new plan with `plan --out`",
                saved.created_at.format("%Y-%m-%d %H:%M UTC"),
                human(age.num_seconds()),
                human(max_age.num_seconds())
            )));
        }
        if let Some(id) = &saved.database_id {
            let ours = self.ctx.store.database_id().await?;
            if *id != ours {
                return Err(AppError::Other(format!(
                    "the plan was made against another database (id {id}; this one is {ours}): apply it with the --database it was planned with, or make a new plan here"
                )));
            }
        }
        let loaded: HashSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        let mut missing: Vec<&str> = saved
            .releases
            .iter()
            .map(|r| r.policy.as_str())
            .filter(|p| !loaded.contains(p))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            return Err(AppError::Other(format!(
                "the plan names {} not loaded here: {}; load the policies it was made with (or drop --policy), or make a new plan",
                if missing.len() == 1 {
                    "a policy"
                } else {
                    "policies"
                },
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

/// How `apply` runs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The policies `--policy` names: only they are reconciled and only their releases carried
    /// out (every loaded policy still owns what it matches first). Empty: all of them.
    pub only: Vec<String>,
    /// A saved plan older than this is refused.
    pub max_plan_age: chrono::Duration,
    /// Keep the pass's plan in the report (the demo shows it). `apply` does not: the plan of a
    /// large pass (every release with its reasons and priced lines) would otherwise be held
    /// while the queue is worked, when the report needs only the runs.
    pub keep_plan: bool,
    /// The folder the policies were loaded from: its files are compared with what the running
    /// replicas run, and releases wait while they differ. `None`: not compared.
    pub policies_dir: Option<std::path::PathBuf>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            only: Vec::new(),
            max_plan_age: chrono::Duration::hours(24),
            keep_plan: true,
            policies_dir: None,
        }
    }
}

/// What an `apply` did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub pass: PassResult,
    /// Releases this apply changed, and every release still waiting.
    pub releases: Vec<ReleaseRow>,
    /// Set when the operating window kept releases from going.
    pub window_note: Option<String>,
    /// Set when releases are paused: nothing was sent.
    pub paused: Option<PauseInfo>,
    /// `--dry-run`: only DryRun calls were sent, and the queue was left as it was.
    pub dry_run: bool,
    /// Accounts ECS refused as a whole; their work stopped for this run.
    pub accounts_stopped: Vec<crate::worker::AccountStop>,
    /// A signal or `--timeout` stopped the run before the queue was idle.
    pub interrupted: bool,
}

/// What `rows` save per month, summed per currency (zero when none was priced).
fn sum_savings<'a>(rows: impl Iterator<Item = &'a ReleaseRow>) -> crate::store::SavedTotals {
    crate::store::SavedTotals::of(rows.filter_map(|r| r.saving.as_ref())).unwrap_or_default()
}

/// `apply`'s exit status when releases are paused.
pub const EXIT_PAUSED: u8 = 3;

impl ApplyReport {
    /// The releases in `state` (a [`ReleaseState`] or its name).
    pub fn in_state<S: Copy>(&self, state: S) -> impl Iterator<Item = &ReleaseRow>
    where
        ReleaseState: PartialEq<S>,
    {
        self.releases.iter().filter(move |r| r.state == state)
    }

    /// Exit status: 0 when every due release succeeded; 2 when some failed, a planned release
    /// was not carried out, a policy was refused for its blast radius or could not list a
    /// region, an account was refused as a whole, or the run was stopped early; 3 when paused.
    pub fn exit_code(&self) -> u8 {
        if self.paused.is_some() {
            EXIT_PAUSED
        } else if self.in_state(ReleaseState::Failed).next().is_some()
            || !self.pass.not_carried.is_empty()
            || self
                .pass
                .runs
                .iter()
                .any(|r| r.refused.is_some() || r.error.is_some())
            || !self.accounts_stopped.is_empty()
            || self.interrupted
        {
            2
        } else {
            0
        }
    }

    /// `--detailed-exitcode`: 0 nothing was released, 2 something was, 4 some release failed,
    /// was not carried out, or was left by a stop or a refused account; 3 when paused.
    pub fn detailed_exit_code(&self) -> u8 {
        if self.paused.is_some() {
            EXIT_PAUSED
        } else if self.exit_code() != 0 {
            4
        } else if self.in_state(ReleaseState::Succeeded).next().is_some() {
            2
        } else {
            0
        }
    }

    /// A human summary, one release a line, then totals.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        if let Some(p) = &self.paused {
            out.push_str(&format!(
                "Releases are {}. Nothing was released; queued releases wait. `ecs-janitor resume` lifts the pause.\n",
                p.describe()
            ));
        }
        for (state, title) in [
            (ReleaseState::Succeeded, "Released"),
            (ReleaseState::Failed, "Failed"),
            (ReleaseState::Cancelled, "Cancelled"),
            (
                ReleaseState::Vanished,
                "Vanished (no longer listed by ECS; not released by this run)",
            ),
            (ReleaseState::InFlight, "Still in flight (retrying)"),
            (
                ReleaseState::Snapshotting,
                "Snapshotting (released once every snapshot is accomplished)",
            ),
            (ReleaseState::Pending, "Waiting"),
        ] {
            let rows: Vec<&ReleaseRow> = self.in_state(state).collect();
            if rows.is_empty() {
                continue;
            }
            out.push_str(&format!("{title}:\n"));
            for r in rows {
                let detail = match state {
                    ReleaseState::Succeeded => {
                        format!("RequestId {}", r.request_id.as_deref().unwrap_or("-"))
                    }
                    ReleaseState::Failed => format!(
                        "{}: {}",
                        r.last_code.as_deref().unwrap_or("?"),
                        r.last_error.as_deref().unwrap_or("")
                    ),
                    ReleaseState::Cancelled | ReleaseState::Vanished => {
                        r.last_error.clone().unwrap_or_default()
                    }
                    ReleaseState::Pending if r.not_before > now => format!(
                        "not before {} (in {})",
                        r.not_before.format("%Y-%m-%d %H:%M UTC"),
                        human((r.not_before - now).num_seconds())
                    ),
                    ReleaseState::Pending => "due; not sent".to_string(),
                    ReleaseState::InFlight => format!("attempts {}", r.attempts),
                    ReleaseState::Snapshotting => r
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "snapshots progressing".into()),
                };
                let saves = r
                    .saving
                    .as_ref()
                    .map(|s| format!("; {}", s.words()))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  {:<24} {:<16} {:<32} {detail}{saves}\n",
                    r.instance_id, r.region, r.policy
                ));
            }
        }
        if !self.pass.not_carried.is_empty() {
            out.push_str("Planned but not released:\n");
            for n in &self.pass.not_carried {
                out.push_str(&format!(
                    "  {:<24} {:<16} {:<32} {}\n",
                    n.instance_id, n.region, n.policy, n.why
                ));
            }
        }
        for run in &self.pass.runs {
            if let Some(why) = &run.refused {
                out.push_str(&format!("Policy {} {}\n", run.policy, why));
            }
            if let Some(why) = &run.error {
                out.push_str(&format!("Policy {} did nothing: {}\n", run.policy, why));
            }
            if run.dry_run {
                if !run.dry_run_results.is_empty() {
                    out.push_str(&format!("Dry run of policy {}:\n", run.policy));
                    for d in &run.dry_run_results {
                        out.push_str(&format!(
                            "  {:<24} {:<16} {}\n",
                            d.instance_id, d.region, d.outcome
                        ));
                    }
                }
                out.push_str(&format!(
                    "Policy {} (dry run): {} would be released{}\n",
                    run.policy,
                    run.would_release,
                    if run.dry_run_refusals.is_empty() {
                        String::new()
                    } else {
                        format!("; DryRun refused with {}", run.dry_run_refusals.join(", "))
                    }
                ));
            }
        }
        if self.dry_run {
            out.push_str("Dry run: only DryRun calls were sent; the queue is as it was.\n");
        }
        for a in &self.accounts_stopped {
            out.push_str(&format!("Error: {}.\n", a.describe()));
        }
        if self.interrupted {
            let left = self.in_state(ReleaseState::InFlight).count()
                + self.in_state(ReleaseState::Snapshotting).count()
                + self
                    .in_state(ReleaseState::Pending)
                    .filter(|r| r.not_before <= now)
                    .count();
            out.push_str(&format!(
                "Stopped before the queue was done (a signal or --timeout): {left} due releases left, listed above; `apply` again resumes them with their tokens.\n"
            ));
        }
        if let Some(note) = &self.window_note {
            out.push_str(note);
            out.push('\n');
        }
        let n = self.in_state(ReleaseState::Succeeded).count();
        let released = sum_savings(self.in_state(ReleaseState::Succeeded));
        let (saved, unknown) = (&released.monthly, released.unknown);
        let waiting = sum_savings(self.in_state(ReleaseState::Pending)).monthly;
        let priced = self.releases.iter().any(|r| r.saving.is_some());
        let saved_words = match (priced, saved.is_empty(), unknown) {
            (false, ..) => String::new(),
            (true, true, 0) if n == 0 => String::new(),
            (true, true, u) if u > 0 => ", saving unknown".to_string(),
            (true, _, u) => format!(
                ", ≈ {}/month saved at list prices{}",
                saved.display_whole("CNY"),
                if u > 0 {
                    format!(" ({u} unknown)")
                } else {
                    String::new()
                }
            ),
        };
        // A subscription's release saves no run rate; what it spares is its renewal.
        let saved_words = saved_words + &released.renewal_words();
        let waiting_words = if priced && !waiting.is_empty() {
            format!(
                " (≈ {}/month more once released)",
                waiting.display_whole("CNY")
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{} failed, {} cancelled, {} vanished, {} waiting{waiting_words}.\nReleased {} {}{saved_words}.\n",
            self.in_state(ReleaseState::Failed).count(),
            self.in_state(ReleaseState::Cancelled).count(),
            self.in_state(ReleaseState::Vanished).count(),
            self.in_state(ReleaseState::Pending).count(),
            n,
            if n == 1 { "instance" } else { "instances" },
        ));
        out
    }
}

fn human(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 86_400 {
        format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m", s / 60)
    }
}
