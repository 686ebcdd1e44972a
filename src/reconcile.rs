//! One reconcile pass: claim each policy's tick, fetch the inventory, record observations, plan,
//! then queue new releases and cancel pending ones that no longer qualify, recording the run.
//! Level-triggered: every pass recomputes from the current state, so repeating one is safe.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::ecs::client::DeleteRequest;
use crate::ecs::ErrorClass;
use crate::inventory::ListedByRegion;
use crate::inventory::{self, Inventory, InventoryError};
use crate::plan::{self, EvalContext, Plan, QueuedInfo, SavedPlan};
use crate::policy::{account_of, Policy};
use crate::store::{NewEvent, NewRelease, ReleaseState, RunEnd, RunStatus, StoreError};

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the inventory: {0}")]
    Inventory(#[source] InventoryError),
}

/// What a pass needs.
#[derive(Clone, Debug)]
pub struct Reconciler {
    /// The store, the ECS clients, the protections and the notifier.
    pub ctx: crate::context::Context,
    /// Who runs the pass (a replica id), recorded with each run.
    pub owner: String,
    /// Treat every policy as `dry_run: true`.
    pub force_dry_run: bool,
    /// How long a replica holds a tick without renewing it (the workers' lease): a pass renews
    /// its runs' leases as it goes, and a tick left by a stopped replica is taken over after.
    pub run_lease: chrono::Duration,
    /// The ticks this process is reconciling now (policy, tick).
    pub running: std::sync::Arc<std::sync::Mutex<HashSet<Tick>>>,
}

/// What one policy's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunOutcome {
    pub policy: String,
    /// False when another replica already reconciled this tick.
    pub ran: bool,
    pub planned: usize,
    pub enqueued: usize,
    pub cancelled: usize,
    pub refused: Option<String>,
    pub dry_run: bool,
    /// Dry run: how many releases ECS's DryRun check accepted, and the codes of those it refused.
    pub would_release: usize,
    pub dry_run_refusals: Vec<String>,
    /// Dry run: each instance checked, with what ECS's DryRun answered.
    pub dry_run_results: Vec<DryRunResult>,
    /// Queued releases this pass found gone from ECS (settled as vanished).
    pub vanished: Vec<crate::store::ReleaseId>,
    /// Why the policy did nothing this tick (a region of it could not be listed).
    pub error: Option<String>,
}

/// One instance of a dry run, and what ECS's DryRun check said of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DryRunResult {
    pub instance_id: String,
    pub region: String,
    /// `would release`, or the code DryRun refused with.
    pub outcome: String,
}

/// A pass's plan and what each policy's run did.
#[derive(Debug, Clone)]
pub struct PassResult {
    /// The pass's plan. Its savings keep their totals, sources and unknowns, not their lines
    /// per resource (`plan_only` keeps those, for review).
    pub plan: Plan,
    pub runs: Vec<RunOutcome>,
    /// With a saved plan: its releases that this pass did not queue, each with why.
    pub not_carried: Vec<NotCarried>,
}

/// A release of a saved plan that will not be carried out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotCarried {
    pub instance_id: String,
    pub region: String,
    pub policy: String,
    pub why: String,
}

/// A policy's tick: (policy, scheduled time).
pub type Tick = (String, DateTime<Utc>);

/// The ticks a pass of this process holds, listed in [`Reconciler::running`] until it ends
/// (or is dropped).
struct Running<'a> {
    set: &'a std::sync::Mutex<HashSet<Tick>>,
    ticks: Vec<Tick>,
}

impl<'a> Running<'a> {
    fn of(r: &'a Reconciler, policies: &[Policy], tick: DateTime<Utc>) -> Running<'a> {
        let ticks: Vec<Tick> = policies.iter().map(|p| (p.name.clone(), tick)).collect();
        r.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ticks.iter().cloned());
        Running {
            set: &r.running,
            ticks,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        for t in &self.ticks {
            set.remove(t);
        }
    }
}

impl Reconciler {
    /// Whether this process is reconciling `policy`'s tick `tick` now.
    pub fn running_here(&self, policy: &str, tick: DateTime<Utc>) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(policy.to_string(), tick))
    }

    /// Calls off the queued releases of policies no longer loaded (removed, or renamed), each
    /// with why, and tells the owners of those announced as scheduled. Nothing would release
    /// them (the re-check at their time cancels them), yet they would sit in the queue and on
    /// the status page until then, and hold their instances: a renamed policy could not queue
    /// them under its new name. Run when a policy set is loaded, and by a whole-queue `apply`.
    /// Releases already batched or taking snapshots are left to the workers' checks.
    pub async fn end_orphans(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::store::ReleaseId>, ReconcileError> {
        let loaded: Vec<String> = self
            .ctx
            .policies
            .current()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        // Read in the database: the queue may hold a whole fleet, of loaded policies.
        let orphans = self.ctx.store.pending_outside(&loaded).await?;
        if orphans.is_empty() {
            return Ok(Vec::new());
        }
        let cancels: Vec<(crate::store::ReleaseId, String)> = orphans
            .iter()
            .map(|r| {
                let why = format!(
                    "policy {} is no longer loaded (removed, or renamed): nothing releases under its name; a loaded policy that selects the instance queues it anew, with its own grace",
                    r.policy
                );
                (r.id, why)
            })
            .collect();
        let ended = self.ctx.store.cancel_pending(&cancels, now).await?;
        let cancelled: HashSet<crate::store::ReleaseId> = ended.iter().copied().collect();
        let mut told: std::collections::BTreeMap<&str, Vec<crate::notify::CancelledRelease>> =
            Default::default();
        for (r, (_, why)) in orphans.iter().zip(&cancels) {
            if r.not_before > now && cancelled.contains(&r.id) {
                told.entry(&r.policy)
                    .or_default()
                    .push(crate::notify::CancelledRelease {
                        instance: crate::notify::InstanceRef {
                            instance_id: r.instance_id.clone(),
                            instance_name: r.instance_name.clone(),
                            region: r.region.clone(),
                        },
                        reason: why.clone(),
                    });
            }
        }
        let mut by_policy: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in orphans.iter().filter(|r| cancelled.contains(&r.id)) {
            *by_policy.entry(&r.policy).or_default() += 1;
        }
        if !by_policy.is_empty() {
            tracing::info!(cancelled = ended.len(), policies = ?by_policy, "called off the queued releases of policies no longer loaded");
        }
        if let Some(n) = &self.ctx.notifier {
            let notes: Vec<crate::notify::Notification> = told
                .into_iter()
                .map(|(policy, mut releases)| {
                    releases.sort_by(|a, b| a.instance.instance_id.cmp(&b.instance.instance_id));
                    crate::notify::Notification::Cancelled {
                        policy: policy.to_string(),
                        releases,
                    }
                })
                .collect();
            if !notes.is_empty() {
                n.send_batch(notes);
            }
        }
        Ok(ended)
    }

    /// Renews this replica's lease on the runs of `policies` for the tick `scheduled_for`, a
    /// third of a lease apart, for as long as it is polled. A failed renewal is logged: if the
    /// database stays away past the lease, another replica takes the tick over, and a pass run
    /// twice is safe (every pass recomputes from the current state).
    async fn hold_runs(
        &self,
        policies: &[Policy],
        scheduled_for: DateTime<Utc>,
    ) -> std::convert::Infallible {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        let every = (self.run_lease / 3)
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(10))
            .max(std::time::Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let now = self.ctx.clock.now();
            if let Err(e) = self
                .ctx
                .store
                .renew_runs(&names, scheduled_for, &self.owner, now, self.run_lease)
                .await
            {
                tracing::warn!(error = %e, "cannot renew the lease on this tick's runs; another replica may take the tick over");
            }
        }
    }

    /// Reconciles `policies` for the tick `scheduled_for` (for `apply`, the pass's own time).
    /// With `saved`, only releases in that reviewed plan are queued, and nothing is cancelled.
    pub async fn pass(
        &self,
        policies: &[Policy],
        scheduled_for: DateTime<Utc>,
        saved: Option<&SavedPlan>,
        now: DateTime<Utc>,
    ) -> Result<PassResult, ReconcileError> {
        let mut mine = Vec::new();
        let mut runs = Vec::new();
        for p in policies {
            if self
                .ctx
                .store
                .begin_run(&p.name, scheduled_for, &self.owner, now, self.run_lease)
                .await?
            {
                mine.push(p.clone());
            } else {
                runs.push(RunOutcome {
                    policy: p.name.clone(),
                    ..RunOutcome::default()
                });
            }
        }
        let span = tracing::info_span!("run", tick = %scheduled_for, owner = %self.owner,
            policies = ?mine.iter().map(|p| p.name.as_str()).collect::<Vec<_>>());
        let _running = Running::of(self, &mine, scheduled_for);
        let reconcile =
            tracing::Instrument::instrument(self.reconcile(&mine, scheduled_for, saved, now), span);
        // The runs' leases are renewed while the pass goes on, however long its listing takes.
        let result = tokio::select! {
            r = reconcile => r,
            never = self.hold_runs(&mine, scheduled_for) => match never {},
        };
        match result {
            Ok((mut plan, mut done)) => {
                self.mark(&mut plan, now).await;
                runs.append(&mut done);
                runs.sort_by(|a, b| a.policy.cmp(&b.policy));
                let mut not_carried = saved.map(|s| not_carried(s, &plan)).unwrap_or_default();
                // A policy set aside for a region it could not list is why, not "gone".
                for nc in &mut not_carried {
                    if let Some(e) = runs
                        .iter()
                        .find(|r| r.policy == nc.policy)
                        .and_then(|r| r.error.as_ref())
                    {
                        nc.why = format!("policy {} did nothing: {e}", nc.policy);
                    }
                }
                Ok(PassResult {
                    plan,
                    runs,
                    not_carried,
                })
            }
            Err(e) => {
                for p in &mine {
                    let _ = self
                        .ctx
                        .store
                        .finish_run(&RunEnd::error(&p.name, scheduled_for), now)
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Plans without changing anything (used by `plan`): observations are read, not recorded,
    /// so an instance stopped since the last pass shows as "stopped since unknown".
    pub async fn plan_only(
        &self,
        policies: &[Policy],
        now: DateTime<Utc>,
    ) -> Result<Plan, ReconcileError> {
        let (mut inv, ctx, mut failed) = self.observe(policies, now, false).await?;
        // As a pass does: a policy with a region that could not be listed is shown with why,
        // and the others are planned (one bad region failed the whole plan). When no policy
        // can be planned (the credentials, say), that is the plan's error.
        if !failed.is_empty() && set_aside(policies, &failed).0.is_empty() {
            return Err(ReconcileError::Inventory(failed.remove(0)));
        }
        let (acting, unlisted) = set_aside(policies, &failed);
        let policies = &acting[..];
        let sizes = inv.listed();
        let loaded = self.ctx.policies.current();
        let mut plan = evaluate(policies, &loaded, &mut inv, &ctx, now);
        drop(inv);
        for (p, why) in unlisted {
            plan.policies.push(plan::PolicyPlan {
                policy: p.name.clone(),
                account: p.account.clone(),
                dry_run: p.dry_run,
                releases: Vec::new(),
                skips: Vec::new(),
                refused: None,
                error: Some(why.to_string()),
            });
        }
        self.price(&mut plan, &sizes, |_| true, true, now).await;
        let recorded = self.ctx.store.marks().await?;
        crate::marks::annotate(
            &mut plan,
            &recorded,
            &self.ctx.policies.current(),
            &self.ctx.protection,
            self.force_dry_run,
        );
        Ok(plan)
    }

    /// This process as the one reconciling marks, under its run lease.
    pub fn mark_holder(&self) -> crate::marks::Holder<'_> {
        crate::marks::Holder {
            owner: &self.owner,
            lease: self.run_lease,
        }
    }

    /// Brings the marks on instances to what the queue now wants (never in a forced dry run),
    /// then notes each pending release's mark in `plan`. A failure is logged, never returned:
    /// marks never hold a release back.
    async fn mark(&self, plan: &mut Plan, now: DateTime<Utc>) {
        if self.force_dry_run {
            return;
        }
        let done = async {
            crate::marks::reconcile(&self.ctx, self.mark_holder(), now, crate::marks::Scope::All)
                .await?;
            self.ctx.store.marks().await
        };
        match done.await {
            Ok(recorded) => crate::marks::annotate(
                plan,
                &recorded,
                &self.ctx.policies.current(),
                &self.ctx.protection,
                false,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "marks were not reconciled; the next pass tries again")
            }
        }
    }

    /// Prices the plan's releases that `wanted` picks (never fails: an unknown price shows as
    /// unknown), with the prices this process already has. `sizes` holds what each
    /// (account, region) listed, so the inventory itself need not be kept while pricing;
    /// `lines`: keep each saving's lines (a plan to review), or only its totals (a pass).
    pub async fn price(
        &self,
        plan: &mut Plan,
        sizes: &ListedByRegion,
        wanted: impl Fn(&plan::PlannedRelease) -> bool,
        lines: bool,
        now: DateTime<Utc>,
    ) -> crate::pricing::PricingReport {
        let pricer = crate::pricing::Pricer {
            accounts: &self.ctx.accounts,
            config: &self.ctx.prices,
            cache: &self.ctx.price_cache,
            lines,
        };
        pricer.price_plan(plan, sizes, wanted, now).await
    }

    /// Fetches the inventory and builds the evaluation context; with `record`, first notes
    /// which instances are Stopped now (for `stopped_for`).
    async fn observe(
        &self,
        policies: &[Policy],
        now: DateTime<Utc>,
        record: bool,
    ) -> Result<(Inventory, EvalContext, Vec<InventoryError>), ReconcileError> {
        // The queue is read before the inventory: a release that finishes while the inventory
        // is fetched still counts as queued, so its instance (listed, but gone by now) is not
        // queued a second time.
        let queued = self
            .ctx
            .store
            .active_releases()
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.instance_id,
                    QueuedInfo {
                        policy: r.policy,
                        not_before: r.not_before,
                    },
                )
            })
            .collect();
        let (inv, failed) = inventory::fetch_each(&self.ctx.accounts, policies).await;
        for l in inv.listings().iter().filter(|_| record) {
            let seen = crate::store::Seen::of(&l.filter, &l.listed);
            self.ctx
                .store
                .observe(&l.account, &l.region, &seen, now)
                .await?;
        }
        let holds = self
            .ctx
            .store
            .holds(now)
            .await?
            .into_iter()
            .map(|h| ((h.instance_id.clone(), h.policy.clone()), h.describe()))
            .collect();
        let ctx = EvalContext {
            observations: self.ctx.store.observations().await?,
            queued,
            protection: self.ctx.protection.clone(),
            holds,
            released: self
                .ctx
                .store
                .released_since(now - chrono::Duration::days(1))
                .await?,
            exemptions: self.ctx.store.exemption_map(now).await?,
        };
        Ok((inv, ctx, failed))
    }

    async fn reconcile(
        &self,
        policies: &[Policy],
        scheduled_for: DateTime<Utc>,
        saved: Option<&SavedPlan>,
        now: DateTime<Utc>,
    ) -> Result<(Plan, Vec<RunOutcome>), ReconcileError> {
        if policies.is_empty() {
            return Ok((
                Plan {
                    generated_at: now,
                    policies: Vec::new(),
                },
                Vec::new(),
            ));
        }
        let (mut inv, ctx, failed) = self.observe(policies, now, true).await?;
        // A policy with a region that could not be listed sits this tick out, said with why;
        // the others go on (one bad region stopped every policy of the tick). It still owns
        // what it matches in the listed regions: the evaluation weighs every loaded policy.
        let (acting, unlisted) = set_aside(policies, &failed);
        let policies = &acting[..];
        let sizes = inv.listed();
        // The instances are let go region by region as they are planned; what is kept of the
        // inventory is each query's ids.
        let loaded = self.ctx.policies.current();
        let mut plan = evaluate(policies, &loaded, &mut inv, &ctx, now);
        // Only what this pass queues needs a figure: a release already queued keeps the one it
        // was queued with, and a dry run or a release outside a saved plan is not queued.
        let queues: HashSet<&str> = policies
            .iter()
            .filter(|p| !p.dry_run && !self.force_dry_run)
            .map(|p| p.name.as_str())
            .collect();
        let scope: Option<HashSet<(&str, &str)>> = saved.map(|s| {
            s.releases
                .iter()
                .map(|r| (r.instance_id.as_str(), r.policy.as_str()))
                .collect()
        });
        let needs_figure = |r: &plan::PlannedRelease| {
            queues.contains(r.policy.as_str())
                && !ctx.queued.contains_key(&r.instance_id)
                && scope
                    .as_ref()
                    .is_none_or(|s| s.contains(&(r.instance_id.as_str(), r.policy.as_str())))
        };
        let active = self.ctx.store.active_releases().await?;
        // Of the queued instances, those the inventory listed (for cancellation reasons).
        let listed: HashSet<String> = {
            let all: HashSet<&str> = inv
                .listings()
                .iter()
                .flat_map(|l| l.listed.iter().map(|(id, _)| id.as_str()))
                .collect();
            // What tag exemptions kept out, for the status page (the tags stay the truth).
            let seen = crate::store::SeenExemption::of_plan(&plan, now);
            self.ctx
                .store
                .record_seen_exemptions(&seen, |id| all.contains(id))
                .await?;
            active
                .iter()
                .filter(|r| all.contains(r.instance_id.as_str()))
                .map(|r| r.instance_id.clone())
                .collect()
        };
        drop(inv);
        crate::memory::give_back_freed();
        // A pass queues each saving's totals: its lines (each priced resource) are for reviewing
        // a plan (`plan_only`), and over a whole fleet they would be the bulk of it.
        self.price(&mut plan, &sizes, needs_figure, false, now)
            .await;
        // The disks pricing read go back before the queue is written.
        crate::memory::give_back_freed();
        let reviewed: Option<HashMap<&str, (&str, bool, bool)>> = saved.map(|s| {
            s.releases
                .iter()
                .map(|r| {
                    (
                        r.instance_id.as_str(),
                        (r.policy.as_str(), r.force, r.terminate_subscription),
                    )
                })
                .collect()
        });
        let mut runs = Vec::new();
        let mut notes: Vec<crate::notify::Notification> = Vec::new();
        for pp in &plan.policies {
            let Some(policy) = policies.iter().find(|p| p.name == pp.policy) else {
                continue;
            };
            let dry_run = policy.dry_run || self.force_dry_run;
            let mut run = RunOutcome {
                policy: pp.policy.clone(),
                ran: true,
                planned: pp.releases.len(),
                dry_run,
                ..RunOutcome::default()
            };
            if let Some(r) = &pp.refused {
                run.refused = Some(r.message());
                notes.push(crate::notify::Notification::Refused {
                    policy: pp.policy.clone(),
                    count: r.count,
                    limit: r.limit,
                });
                self.ctx
                    .store
                    .record_event(
                        NewEvent {
                            kind: "refused",
                            policy: Some(pp.policy.clone()),
                            detail: r.message(),
                            ..NewEvent::default()
                        },
                        now,
                    )
                    .await?;
            } else {
                let wanted: Vec<&plan::PlannedRelease> = pp
                    .releases
                    .iter()
                    .filter(|r| match &reviewed {
                        None => true,
                        Some(set) => set.get(r.instance_id.as_str()).is_some_and(|(p, f, t)| {
                            *p == r.policy && *f == r.force && *t == r.terminate_subscription
                        }),
                    })
                    .collect();
                if dry_run {
                    self.dry_run(account_of(policy), &wanted, &mut run, now)
                        .await?;
                } else {
                    // Each release is made as it is inserted, with the figure it was planned
                    // with: a pass that queues a whole fleet holds no second copy of its plan.
                    let created = self
                        .ctx
                        .store
                        .enqueue_from(
                            &wanted,
                            |r| {
                                (!ctx.queued.contains_key(&r.instance_id)).then(|| NewRelease {
                                    instance_id: r.instance_id.clone(),
                                    instance_name: r.instance_name.clone(),
                                    account: account_of(policy).to_string(),
                                    region: r.region.clone(),
                                    policy: r.policy.clone(),
                                    force: r.force,
                                    terminate_subscription: r.terminate_subscription,
                                    not_before: r.not_before,
                                    reasons: r.reasons.join("; "),
                                    snapshot: policy.release.snapshot,
                                    saving: r.saving.as_deref().map(stored_saving),
                                })
                            },
                            now,
                        )
                        .await?;
                    run.enqueued = created.len();
                    // Grace starts for what was queued to wait: say which and when they go.
                    let created: HashSet<&str> = created.iter().map(|(_, i)| i.as_str()).collect();
                    let waiting: Vec<&&plan::PlannedRelease> = wanted
                        .iter()
                        .filter(|r| created.contains(r.instance_id.as_str()) && r.not_before > now)
                        .collect();
                    if let Some(at) = waiting.iter().map(|r| r.not_before).min() {
                        let priced: Vec<&plan::Saving> =
                            waiting.iter().filter_map(|r| r.saving.as_deref()).collect();
                        let saving = (!priced.is_empty()).then(|| {
                            let mut monthly = crate::money::Totals::new();
                            let mut unknown = 0;
                            for s in &priced {
                                match &s.monthly {
                                    Some(m) => monthly.add(m),
                                    None => unknown += 1,
                                }
                            }
                            crate::notify::ScheduledSaving {
                                monthly,
                                unknown,
                                within: at - now,
                            }
                        });
                        // Said in the notice: people told "released at 10:00" while the
                        // releases are paused would otherwise expect them to go.
                        let paused = match self.ctx.store.pause_state().await {
                            Ok(p) => p.map(|p| p.describe()),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read whether releases are paused, for the notice");
                                None
                            }
                        };
                        notes.push(crate::notify::Notification::Scheduled {
                            saving,
                            paused,
                            policy: pp.policy.clone(),
                            releases: waiting
                                .iter()
                                .map(|r| crate::notify::InstanceRef {
                                    instance_id: r.instance_id.clone(),
                                    instance_name: r.instance_name.clone(),
                                    region: r.region.clone(),
                                })
                                .collect(),
                            at,
                        });
                    }
                }
                if saved.is_none() && !self.force_dry_run {
                    let (cancelled, vanished) = self
                        .end_unplanned(pp, policy, &active, &listed, &mut notes, now)
                        .await?;
                    run.cancelled = cancelled;
                    run.vanished = vanished;
                }
            }
            let outcome = if run.refused.is_some() {
                RunStatus::Refused
            } else if dry_run {
                RunStatus::DryRun
            } else {
                RunStatus::Ok
            };
            self.ctx
                .store
                .finish_run(
                    &RunEnd {
                        policy: &run.policy,
                        scheduled_for,
                        outcome,
                        planned: run.planned as i64,
                        enqueued: run.enqueued as i64,
                        cancelled: run.cancelled as i64,
                        refused: i64::from(run.refused.is_some()),
                    },
                    now,
                )
                .await?;
            runs.push(run);
        }
        for (p, why) in unlisted {
            // Said after "Policy X did nothing:" (apply) or with policy=X (the daemon's log).
            let error = why.to_string();
            self.ctx
                .store
                .record_event(
                    NewEvent {
                        kind: "run_failed",
                        policy: Some(p.name.clone()),
                        detail: format!("{error}; the policy did nothing this tick"),
                        ..NewEvent::default()
                    },
                    now,
                )
                .await?;
            self.ctx
                .store
                .finish_run(&RunEnd::error(&p.name, scheduled_for), now)
                .await?;
            runs.push(RunOutcome {
                policy: p.name.clone(),
                ran: true,
                error: Some(error),
                ..RunOutcome::default()
            });
        }
        if let (Some(n), false) = (&self.ctx.notifier, notes.is_empty()) {
            n.send_batch(notes);
        }
        Ok((plan, runs))
    }

    /// Ends `policy`'s queued releases that its plan `pp` no longer carries: cancelled, with
    /// why (a policy switched to dry_run releases nothing, including what it queued before), or
    /// vanished when ECS no longer has the instance. Those announced as scheduled are told off
    /// in `notes`. Returns how many were cancelled and which vanished.
    async fn end_unplanned(
        &self,
        pp: &plan::PolicyPlan,
        policy: &Policy,
        active: &[crate::store::ReleaseRow],
        listed: &HashSet<String>,
        notes: &mut Vec<crate::notify::Notification>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<crate::store::ReleaseId>), ReconcileError> {
        let planned: HashSet<&str> = if policy.dry_run {
            HashSet::new()
        } else {
            pp.releases.iter().map(|r| r.instance_id.as_str()).collect()
        };
        let skipped: HashMap<&str, &plan::Skip> = pp
            .skips
            .iter()
            .map(|s| (s.instance_id.as_str(), s))
            .collect();
        let ending: Vec<&crate::store::ReleaseRow> = active
            .iter()
            .filter(|r| {
                r.policy == pp.policy
                    && matches!(r.state, ReleaseState::Pending | ReleaseState::Snapshotting)
            })
            .filter(|r| !planned.contains(r.instance_id.as_str()))
            .collect();
        // What the pass's filtered listing left out is asked for by id: gone from ECS, or there
        // but no longer matching, are different endings.
        let unlisted: Vec<&crate::store::ReleaseRow> = ending
            .iter()
            .copied()
            .filter(|r| !listed.contains(&r.instance_id))
            .filter(|r| !skipped.contains_key(r.instance_id.as_str()))
            .collect();
        let found = if policy.dry_run || unlisted.is_empty() {
            HashMap::new()
        } else {
            self.look_up(&unlisted).await
        };
        let mut cancels = Vec::new();
        let mut gone = Vec::new();
        for r in &ending {
            let why = match skipped.get(r.instance_id.as_str()) {
                _ if policy.dry_run => "the policy is now dry_run: it releases nothing".to_string(),
                Some(s) => format!("no longer qualifies: {}", s.detail),
                None if !listed.contains(&r.instance_id) => match found.get(&r.instance_id) {
                    Some(None) => {
                        gone.push((r.id, gone_detail(r)));
                        continue;
                    }
                    Some(Some(status)) => format!(
                        "the instance no longer matches the policy's filters (it is {status})"
                    ),
                    None => "the instance is no longer listed by DescribeInstances (released elsewhere, or no longer matches the policy's filters)".to_string(),
                },
                None => "the instance no longer matches the policy".to_string(),
            };
            cancels.push((r.id, why));
        }
        let cancelled: HashSet<crate::store::ReleaseId> = self
            .ctx
            .store
            .cancel_pending(&cancels, now)
            .await?
            .into_iter()
            .collect();
        let vanished = if gone.is_empty() {
            Vec::new()
        } else {
            self.ctx.store.vanish_pending(&gone, now).await?
        };
        // Those announced as scheduled (still waiting out their grace) are told off too:
        // owners were told a time, and nothing would say it passed by.
        let why_of: HashMap<crate::store::ReleaseId, &String> =
            cancels.iter().map(|(id, why)| (*id, why)).collect();
        let mut told: Vec<crate::notify::CancelledRelease> = ending
            .iter()
            .filter(|r| r.not_before > now && cancelled.contains(&r.id))
            .filter_map(|r| Some((r, *why_of.get(&r.id)?)))
            .map(|(r, why)| crate::notify::CancelledRelease {
                instance: crate::notify::InstanceRef {
                    instance_id: r.instance_id.clone(),
                    instance_name: r.instance_name.clone(),
                    region: r.region.clone(),
                },
                reason: why.clone(),
            })
            .collect();
        told.sort_by(|a, b| a.instance.instance_id.cmp(&b.instance.instance_id));
        if !told.is_empty() {
            notes.push(crate::notify::Notification::Cancelled {
                policy: pp.policy.clone(),
                releases: told,
            });
        }
        Ok((cancelled.len(), vanished))
    }

    /// Each of `releases` asked for by id, (account, region) by (account, region):
    /// `Some(status)` when ECS lists it, `None` when it lists nothing for the id. An id whose
    /// region could not be asked is left out (the caller keeps its vaguer reason).
    async fn look_up(
        &self,
        releases: &[&crate::store::ReleaseRow],
    ) -> HashMap<String, Option<String>> {
        let mut by_region: std::collections::BTreeMap<(&str, &str), Vec<String>> =
            Default::default();
        for r in releases {
            by_region
                .entry((r.account.as_str(), r.region.as_str()))
                .or_default()
                .push(r.instance_id.clone());
        }
        let mut out = HashMap::new();
        for ((account, region), ids) in by_region {
            let client = self.ctx.accounts.client(account);
            let filter = crate::ecs::client::DescribeFilter {
                instance_ids: Some(ids.clone()),
                ..Default::default()
            };
            match client.describe_instances(region, &filter).await {
                Ok(listed) => {
                    let status: HashMap<&str, &str> = listed
                        .iter()
                        .map(|i| (i.instance_id.as_str(), i.status.as_str()))
                        .collect();
                    for id in ids {
                        let s = status.get(id.as_str()).map(|s| s.to_string());
                        out.insert(id, s);
                    }
                }
                Err(e) => {
                    tracing::warn!(region, error = %e, "cannot ask for queued instances the pass no longer lists; they are cancelled with a vaguer reason");
                }
            }
        }
        out
    }

    /// Sends DeleteInstances with DryRun=true, signed as `account`, for the due releases, in
    /// batches of up to 100 of one region and one set of flags, and records each instance as
    /// "would release".
    async fn dry_run(
        &self,
        account: &str,
        wanted: &[&plan::PlannedRelease],
        run: &mut RunOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), ReconcileError> {
        let mut groups: HashMap<(String, bool, bool), Vec<&plan::PlannedRelease>> = HashMap::new();
        for r in wanted.iter().filter(|r| !r.is_pending(now)) {
            groups
                .entry((r.region.clone(), r.force, r.terminate_subscription))
                .or_default()
                .push(r);
        }
        let mut keys: Vec<_> = groups.keys().cloned().collect();
        keys.sort();
        for key in keys {
            for chunk in groups[&key].chunks(crate::ecs::client::MAX_PAGE) {
                let token = crate::store::new_client_token();
                let req = DeleteRequest {
                    region: key.0.clone(),
                    instance_ids: chunk.iter().map(|r| r.instance_id.clone()).collect(),
                    force: key.1,
                    terminate_subscription: key.2,
                    dry_run: true,
                    client_token: token.clone(),
                };
                let client = self.ctx.accounts.client(account);
                let (kind, code, request_id) = match client.delete_instances(&req).await {
                    Err(e) if e.class() == ErrorClass::DryRunPassed => {
                        run.would_release += chunk.len();
                        (
                            "would_release",
                            e.code().to_string(),
                            e.request_id().map(str::to_string),
                        )
                    }
                    Err(e) => {
                        run.dry_run_refusals.push(e.code().to_string());
                        (
                            "dry_run_refused",
                            e.code().to_string(),
                            e.request_id().map(str::to_string),
                        )
                    }
                    Ok(a) => {
                        // ECS ignored DryRun: nothing to undo, but say so loudly.
                        tracing::error!(request_id = %a.request_id, "DryRun call was answered as a real release");
                        ("dry_run_released", "OK".to_string(), Some(a.request_id))
                    }
                };
                for r in chunk {
                    run.dry_run_results.push(DryRunResult {
                        instance_id: r.instance_id.clone(),
                        region: r.region.clone(),
                        outcome: if kind == "would_release" {
                            "would release".to_string()
                        } else {
                            code.clone()
                        },
                    });
                    self.ctx
                        .store
                        .record_event(
                            NewEvent {
                                kind,
                                policy: Some(r.policy.clone()),
                                instance_id: Some(r.instance_id.clone()),
                                code: Some(code.clone()),
                                request_id: request_id.clone(),
                                client_token: Some(token.clone()),
                                detail: r.reasons.join("; "),
                                ..NewEvent::default()
                            },
                            now,
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// Plans each account's policies against that account's instances only (instance ids are unique
/// across accounts, but a policy must never select another account's machine), in policy order.
/// Takes the instances out of `inv` and lets each (account, region) go once it is planned.
/// `loaded` is every policy loaded: those outside `policies` still own what they match first.
fn evaluate(
    policies: &[Policy],
    loaded: &[Policy],
    inv: &mut Inventory,
    ctx: &EvalContext,
    now: DateTime<Utc>,
) -> Plan {
    let mut by_account: Vec<&str> = policies.iter().map(account_of).collect();
    by_account.sort_unstable();
    by_account.dedup();
    let mut regions = inv.take_regions();
    let mut out = Plan {
        generated_at: now,
        policies: Vec::new(),
    };
    let several = by_account.len() > 1;
    for account in by_account {
        let mine: Vec<Policy> = policies
            .iter()
            .filter(|p| account_of(p) == account)
            .cloned()
            .collect();
        // The loaded policies outside this pass still own what they match first.
        let others = loaded.iter().filter(|p| account_of(p) == account);
        let mut e = plan::Evaluation::among(&mine, others, now);
        let keys: Vec<(String, String)> = regions
            .keys()
            .filter(|(a, _)| a == account)
            .cloned()
            .collect();
        for key in keys {
            if let Some(instances) = regions.remove(&key) {
                e.add(&instances, ctx);
                drop(instances);
                crate::memory::give_back_freed();
            }
        }
        out.policies.extend(e.finish().policies);
    }
    if !several {
        // One account: the policies stay in name order, as the planner gives them.
        return out;
    }
    let order: HashMap<&str, usize> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    out.policies
        .sort_by_key(|pp| order.get(pp.policy.as_str()).copied().unwrap_or(usize::MAX));
    out
}

/// What the store keeps of a release's saving.
/// `policies` split into those whose every (account, region) was listed and those set aside,
/// each with the first failure among its regions.
fn set_aside<'a>(
    policies: &'a [Policy],
    failed: &'a [InventoryError],
) -> (Vec<Policy>, Vec<(&'a Policy, &'a InventoryError)>) {
    let mut acting = Vec::new();
    let mut aside = Vec::new();
    for p in policies {
        match failed
            .iter()
            .find(|f| f.account == account_of(p) && p.regions.contains(&f.region))
        {
            Some(f) => aside.push((p, f)),
            None => acting.push(p.clone()),
        }
    }
    (acting, aside)
}

/// Why a queued release whose instance ECS no longer has is settled as vanished; when an
/// earlier call of ours for it ended without an answer, that call probably released it.
fn gone_detail(r: &crate::store::ReleaseRow) -> String {
    if r.last_code.as_deref() == Some("Janitor.OutcomeUnknown") {
        "gone from ECS (DescribeInstances lists nothing for its id) after an earlier call of ours whose answer was lost: that call probably released it; not counted as saved".to_string()
    } else {
        "gone from ECS (DescribeInstances lists nothing for its id): released by someone else, or no longer visible to these credentials; not released by ecs-janitor".to_string()
    }
}

fn stored_saving(s: &plan::Saving) -> crate::store::ReleaseSaving {
    crate::store::ReleaseSaving {
        basis: s.basis.code().to_string(),
        monthly: s.monthly.clone(),
        renewal_avoided: s.renewal_avoided.clone(),
    }
}

/// The releases of `saved` that the fresh `plan` no longer makes, each with why: protected
/// since, no longer matching, gone, flags changed, or left running.
fn not_carried(saved: &SavedPlan, plan: &Plan) -> Vec<NotCarried> {
    let mut planned: HashMap<(&str, &str), &plan::PlannedRelease> = HashMap::new();
    let mut skipped: HashMap<(&str, &str), &plan::Skip> = HashMap::new();
    let mut refused: HashMap<&str, String> = HashMap::new();
    for pp in &plan.policies {
        if let Some(r) = &pp.refused {
            refused.insert(pp.policy.as_str(), r.message());
        }
        for r in &pp.releases {
            planned.insert((r.instance_id.as_str(), r.policy.as_str()), r);
        }
        for sk in &pp.skips {
            skipped.insert((sk.instance_id.as_str(), sk.policy.as_str()), sk);
        }
    }
    let mut out = Vec::new();
    for r in &saved.releases {
        let key = (r.instance_id.as_str(), r.policy.as_str());
        let why = match (planned.get(&key), skipped.get(&key)) {
            (Some(p), _)
                if p.force != r.force || p.terminate_subscription != r.terminate_subscription =>
            {
                format!(
                    "the policy's release flags changed since the plan (force={} terminate_subscription={} now); make a new plan",
                    p.force, p.terminate_subscription
                )
            }
            (Some(_), _) if refused.contains_key(r.policy.as_str()) => {
                format!("policy {} {}", r.policy, refused[r.policy.as_str()])
            }
            (Some(_), _) => continue,
            (None, Some(sk)) => format!("no longer qualifies: {}", sk.detail),
            (None, None) => {
                "no longer listed by DescribeInstances (gone), or no longer selected by the policy"
                    .to_string()
            }
        };
        out.push(NotCarried {
            instance_id: r.instance_id.clone(),
            region: r.region.clone(),
            policy: r.policy.clone(),
            why,
        });
    }
    out
}
