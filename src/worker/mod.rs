//! Workers carry out queued releases, in the one loop `apply` and `run` share: claim a batch
//! under a lease, re-check its members against the live inventory right before every call (the
//! first and every retry), ask the pure [`decide`] what to do, send DeleteInstances with the
//! batch's stored ClientToken when it says so, and record the outcome, fenced by the lease.
//!
//! Outcomes: success completes the batch; a retryable failure (including a lost answer)
//! schedules the same batch after a backoff, and the next try re-checks first; a permanent
//! refusal of several members splits the batch in halves under new tokens (the refused call had
//! no effect) until the offending instance is alone, and that one fails with its code and is
//! quarantined. Every try counts, so a batch ends after `max_attempts`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::context::Context;
use crate::ecs::client::{DeleteRequest, DescribeFilter};
use crate::ecs::{Accounts, EcsError, ErrorClass, Instance};
use crate::policy::Policy;
use crate::store::{
    BatchMember, BatchState, ClaimedBatch, MemberOutcome, PauseInfo, ReleaseId, StoreError,
};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

pub mod decide;
mod snapshot;
mod spread;

use decide::{against_policy, decide, gate_stop, give_up};
pub use decide::{Gate, Live, Rules, Stop, Transition};

/// The last check before a DeleteInstances goes out, run once the call limits let it through:
/// true when it may be sent (the lease holds, releases are not paused, the window is open, no
/// member has become exempt, no running replica runs another policy set); it counts the
/// attempt in the same write.
type Admit = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, bool> + Send>;

/// One ECS call a worker makes, signed as the batch's account.
enum Call {
    /// The re-check: DescribeInstances of a batch's instances.
    Describe {
        account: String,
        region: String,
        ids: Vec<String>,
    },
    Delete {
        account: String,
        req: DeleteRequest,
        admit: Admit,
    },
}

#[derive(Debug)]
enum Answer {
    Instances(Vec<Instance>),
    Deleted(crate::ecs::DeleteAnswer),
    /// The last check refused the call: nothing was sent.
    NotAdmitted,
}

type CallFuture = futures::future::BoxFuture<'static, Result<Answer, BoxError>>;

/// Workers' ECS calls go through this service: a global rate limit and a limit on calls in
/// flight, as tower layers, shared by every worker (and every account) through a buffer.
type CallService = tower::buffer::Buffer<Call, CallFuture>;

fn call_service(accounts: Accounts, in_flight: usize) -> CallService {
    let inner = ServiceBuilder::new()
        .concurrency_limit(in_flight.max(1))
        .service_fn(move |call: Call| {
            let accounts = accounts.clone();
            async move {
                match call {
                    Call::Describe {
                        account,
                        region,
                        ids,
                    } => {
                        let f = DescribeFilter {
                            instance_ids: Some(ids),
                            ..DescribeFilter::default()
                        };
                        accounts
                            .client(&account)
                            .describe_instances(&region, &f)
                            .await
                            .map(Answer::Instances)
                            .map_err(BoxError::from)
                    }
                    // The last check runs after the concurrency limit and the client's pacing
                    // have given the call its turn, so a pause made while it waited still holds.
                    Call::Delete {
                        account,
                        req,
                        admit,
                    } => accounts
                        .client(&account)
                        .delete_instances_after(&req, admit)
                        .await
                        .map(|a| a.map_or(Answer::NotAdmitted, Answer::Deleted))
                        .map_err(BoxError::from),
                }
            }
        });
    let boxed: tower::util::BoxService<Call, Answer, BoxError> =
        tower::util::BoxService::new(inner);
    tower::buffer::Buffer::new(boxed, 1024)
}

/// The call service answered a call with the other call's answer (cannot happen by construction).
fn mismatched(action: &'static str) -> EcsError {
    EcsError::Decode {
        action,
        status: 0,
        request_id: String::new(),
        detail: "internal: the call service returned the wrong kind of answer".into(),
    }
}

/// A call not sent because the run is stopping.
fn interrupted(action: &'static str) -> EcsError {
    EcsError::Transport {
        action,
        kind: crate::ecs::error::TransportKind::Connect,
        detail: "not sent: the run is stopping".into(),
    }
}

/// Turns the service's error back into the ECS error it carries.
fn ecs_error(e: BoxError, action: &'static str) -> EcsError {
    match e.downcast::<EcsError>() {
        Ok(e) => *e,
        Err(other) => EcsError::Transport {
            action,
            kind: crate::ecs::error::TransportKind::Connect,
            detail: format!("not sent: {other}"),
        },
    }
}

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This process's identity in leases.
    pub owner: String,
    pub lease: Duration,
    /// Tries per batch (calls, and re-checks that failed) before its members fail.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub max_batch: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
    pub seed: u64,
    /// How long an instance refused for good stays out of its policy's enqueue (doubling with
    /// each repeat).
    pub quarantine: chrono::Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            owner: format!("{}-{}", hostname(), std::process::id()),
            lease: Duration::from_secs(30),
            max_attempts: 8,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            max_batch: crate::ecs::client::MAX_PAGE,
            // Each batch waits out two round trips (its re-check, then DeleteInstances): 16 in
            // flight release a 3,200-instance pass in three rounds of them where 8 took five
            // (BENCHMARKS.md, twelfth round). What ECS itself takes is the pacing's to keep.
            concurrency: 16,
            seed: 0x006a_616e_6974_6f72,
            quarantine: chrono::Duration::hours(24),
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "janitor".to_string())
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What happened to one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchResult {
    Released {
        count: usize,
        request_id: String,
    },
    RetryScheduled {
        code: String,
        at: DateTime<Utc>,
    },
    Split {
        code: String,
    },
    Failed {
        code: String,
    },
    /// Nothing to call: every member was settled by the re-check.
    Settled,
    /// The token was retired and the still-eligible members re-formed under a new one.
    Reformed,
    /// Nothing may be sent now (paused, window closed, dry run); the batch was given back.
    Stopped(Stop),
    /// The lease was lost to another worker; its result stands.
    LeaseLost,
    /// No batch: releases' snapshot stage was advanced (snapshots made or looked at).
    SnapshotStage,
}

/// When a worker loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// `apply`: when nothing in its scope is due (retries waiting out a backoff count as due),
    /// or when a switch stops releases.
    Idle,
    /// `run`: only at shutdown.
    Shutdown,
}

/// How a worker loop ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkReport {
    /// Set when a switch (pause, window, dry run) stopped releases.
    pub stopped: Option<Stop>,
    /// Accounts whose work stopped after an account-wide refusal.
    pub accounts_stopped: Vec<AccountStop>,
    /// The releases whose batches these workers claimed: what this run carried out, apart
    /// from what another process's workers did meanwhile.
    pub claimed: std::collections::HashSet<ReleaseId>,
}

/// An account whose releases stopped for the run: ECS refused it as a whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountStop {
    /// `""`: the default credentials.
    pub account: String,
    pub code: String,
    pub message: String,
    /// Until when this worker pool leaves the account's batches alone (a refusal is usually
    /// fixed by an operator: the daemon tries again after this).
    #[serde(skip)]
    pub until: DateTime<Utc>,
}

impl AccountStop {
    pub fn describe(&self) -> String {
        let who = if self.account.is_empty() {
            "the default account".to_string()
        } else {
            format!("account {:?}", self.account)
        };
        format!(
            "ECS refused {who} with {}: {}; nothing more is sent for it in this run, and its releases stay queued with their tokens",
            self.code, self.message
        )
    }
}

/// A worker pool's shared parts. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    /// The store, the ECS clients, the policies, the clock, the metrics, the window, the
    /// notifier and the protections.
    pub ctx: Context,
    pub cfg: WorkerConfig,
    /// Nothing is sent without DryRun (`apply --dry-run`).
    pub dry_run: bool,
    /// Only this run's releases are claimed (see [`Store::create_scope`]).
    pub scope: Option<String>,
    /// Accounts whose work this run stopped after an account-wide refusal, with the error.
    stopped_accounts: Arc<Mutex<Vec<AccountStop>>>,
    /// The releases whose batches these workers claimed (see [`WorkReport::claimed`]).
    claimed: Arc<Mutex<std::collections::HashSet<ReleaseId>>>,
    /// The (account, region) pairs of the batches this process is working, with how many:
    /// claims prefer others, so every region's pace is used.
    busy: Arc<Mutex<HashMap<(String, String), usize>>>,
    /// Whether claims should still ask to go elsewhere than `busy` (see [`spread::Spread`]).
    spread: Arc<Mutex<spread::Spread>>,
    /// Why releases wait now (the pause, the operating window), as last logged: a daemon says
    /// so once each time it changes, not on every step.
    held: Arc<Mutex<Option<String>>>,
    /// On SQLite, held across a claim and its entry in `busy`, so each claim sees where the
    /// others went (see [`Workers::claim_and_process`]).
    claiming: Arc<tokio::sync::Mutex<()>>,
    /// Ends waits (throttling, the call limits, a re-check's retries) at once.
    cancel: CancellationToken,
    calls: CallService,
    rng: Arc<Mutex<StdRng>>,
}

/// A batch being worked in an (account, region), counted in [`Workers::busy`] until dropped.
struct Busy<'a> {
    map: &'a Mutex<HashMap<(String, String), usize>>,
    key: (String, String),
}

impl<'a> Busy<'a> {
    fn hold(map: &'a Mutex<HashMap<(String, String), usize>>, account: &str, region: &str) -> Self {
        let key = (account.to_string(), region.to_string());
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        Busy { map, key }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Workers {
    pub fn new(ctx: Context, cfg: WorkerConfig) -> Self {
        Workers {
            calls: call_service(ctx.accounts.clone(), cfg.concurrency),
            dry_run: false,
            scope: None,
            stopped_accounts: Arc::default(),
            claimed: Arc::default(),
            busy: Arc::default(),
            spread: Arc::default(),
            held: Arc::default(),
            claiming: Arc::default(),
            cancel: CancellationToken::new(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(cfg.seed))),
            ctx,
            cfg,
        }
    }

    /// Makes one call through the rate and concurrency limits.
    async fn call(&self, call: Call) -> Result<Answer, EcsError> {
        let action = match call {
            Call::Describe { .. } => "DescribeInstances",
            Call::Delete { .. } => "DeleteInstances",
        };
        let interruptible = matches!(call, Call::Describe { .. });
        let mut svc = self.calls.clone();
        // Waiting for the call limits is cut short by a shutdown: nothing was sent.
        let ready = tokio::select! {
            r = svc.ready() => r.map_err(|e| ecs_error(e, action))?,
            _ = self.cancel.cancelled() => return Err(interrupted(action)),
        };
        let fut = ready.call(call);
        if interruptible {
            // A re-check has no effect: its retries and throttling waits end at once.
            tokio::select! {
                r = fut => r.map_err(|e| ecs_error(e, action)),
                _ = self.cancel.cancelled() => Err(interrupted(action)),
            }
        } else {
            // A DeleteInstances in flight is let finish, so its answer is recorded.
            fut.await.map_err(|e| ecs_error(e, action))
        }
    }

    /// Stops `b`'s account for the rest of this run (an account-wide refusal): in a scoped
    /// run its releases leave the scope, and the run reports the account once.
    async fn stop_account(&self, b: &ClaimedBatch, e: &EcsError) -> Result<(), WorkerError> {
        let until = crate::backoff::add_capped(self.ctx.clock.now(), self.cfg.backoff.cap);
        let first = {
            let mut stopped = self
                .stopped_accounts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match stopped.iter_mut().find(|s| s.account == b.account) {
                Some(s) => {
                    s.until = until;
                    false
                }
                None => {
                    stopped.push(AccountStop {
                        account: b.account.clone(),
                        code: e.code().to_string(),
                        message: match e {
                            EcsError::Api { message, .. } => message.clone(),
                            other => other.to_string(),
                        },
                        until,
                    });
                    true
                }
            }
        };
        if let Some(scope) = &self.scope {
            self.ctx.store.shrink_scope(scope, &b.account).await?;
        }
        if first {
            tracing::error!(account = %b.account, code = e.code(), "ECS refused the account as a whole; its work stops for this run");
        }
        Ok(())
    }

    /// `apply`'s loop: works the queue (this run's scope) until nothing is due, a switch stops
    /// releases, or `cancel` fires.
    pub async fn drain(&self, cancel: CancellationToken) -> Result<WorkReport, WorkerError> {
        self.work(cancel, Until::Idle, None).await
    }

    /// The daemon's loop: works the queue until `cancel` fires, sleeping when nothing is due
    /// until `wake` is notified or the next retry is due. A batch being worked when `cancel`
    /// fires is finished; the caller bounds how long it waits for that.
    pub async fn serve(&self, cancel: CancellationToken, wake: Arc<tokio::sync::Notify>) {
        if let Err(e) = self.work(cancel, Until::Shutdown, Some(wake)).await {
            tracing::error!(error = %e, "workers stopped");
        }
    }

    /// The one worker loop of `apply` and `run`: `concurrency` workers claim and carry out
    /// batches; they differ only in when they stop.
    pub async fn work(
        &self,
        cancel: CancellationToken,
        until: Until,
        wake: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<WorkReport, WorkerError> {
        let stopped: Arc<Mutex<Option<Stop>>> = Arc::default();
        // A worker that settles a batch wakes the others that wait: the queue may have changed
        // (the last batch done, so `apply` can end at once; or its members' instances free).
        let peers: Arc<tokio::sync::Notify> = Arc::default();
        let mut tasks = Vec::new();
        let mut this = self.clone();
        this.cancel = cancel.clone();
        for _ in 0..self.cfg.concurrency.max(1) {
            let w = this.clone();
            let cancel = cancel.clone();
            let wake = wake.clone();
            let stopped = stopped.clone();
            let peers = peers.clone();
            tasks.push(tokio::spawn(async move {
                w.work_one(cancel, until, wake, peers, stopped).await
            }));
        }
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(join) => tracing::error!(error = %join, "worker task ended abnormally"),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let stopped = stopped.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let accounts_stopped = self
            .stopped_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let claimed = self
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(WorkReport {
            stopped,
            accounts_stopped,
            claimed,
        })
    }

    async fn work_one(
        &self,
        cancel: CancellationToken,
        until: Until,
        wake: Option<Arc<tokio::sync::Notify>>,
        peers: Arc<tokio::sync::Notify>,
        stopped: Arc<Mutex<Option<Stop>>>,
    ) -> Result<(), WorkerError> {
        let idle_cap = match until {
            Until::Idle => Duration::from_millis(200),
            Until::Shutdown => Duration::from_secs(1),
        };
        while !cancel.is_cancelled() {
            // Listening before the step: a peer that settles a batch meanwhile still wakes us.
            let peer_done = peers.notified();
            tokio::pin!(peer_done);
            peer_done.as_mut().enable();
            let idle = match self.step_inner().await {
                Ok(Some(BatchResult::Stopped(why))) => {
                    if until == Until::Idle {
                        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        return Ok(());
                    }
                    self.note_held(Some(why.describe()));
                    idle_cap
                }
                Ok(Some(_)) => {
                    self.note_held(None);
                    peers.notify_waiters();
                    Duration::ZERO
                }
                Ok(None) => {
                    let now = self.ctx.clock.now();
                    match self.ctx.store.next_due(now, self.scope.as_deref()).await {
                        Ok(None) if until == Until::Idle => return Ok(()),
                        Ok(None) => idle_cap,
                        // Due, yet nothing could be claimed (another worker took it, or its
                        // account is left alone for now): do not spin.
                        Ok(Some(at)) if at <= now => idle_cap,
                        Ok(Some(at)) => (at - now)
                            .to_std()
                            .unwrap_or_default()
                            .clamp(Duration::from_millis(20), idle_cap),
                        Err(e) if until == Until::Idle => return Err(e.into()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the queue");
                            idle_cap
                        }
                    }
                }
                Err(e) if until == Until::Idle => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "worker step failed; retrying");
                    Duration::from_secs(1)
                }
            };
            if idle.is_zero() {
                continue;
            }
            let notified = async {
                match &wake {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = notified => {}
                _ = &mut peer_done => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
        Ok(())
    }

    /// One claim-and-work step: false when a switch stops releases or nothing is due.
    pub async fn step(&self) -> Result<bool, WorkerError> {
        Ok(matches!(
            self.step_inner().await?,
            Some(r) if !matches!(r, BatchResult::Stopped(_))
        ))
    }

    /// Logs why releases wait, once each time it changes (`None`: they go out again).
    fn note_held(&self, why: Option<String>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if *held == why {
            return;
        }
        match &why {
            Some(w) => tracing::info!("releases wait: {w}"),
            None => tracing::info!("releases go out again"),
        }
        *held = why;
    }

    /// The switches as they are right now, read from the database (the pause) and the clock.
    async fn switches(&self) -> Result<Option<PauseInfo>, WorkerError> {
        Ok(self.ctx.store.pause_state().await?)
    }

    fn gate<'a>(&'a self, paused: Option<&'a PauseInfo>) -> Gate<'a> {
        self.gate_with(paused, None)
    }

    /// The gate, with why the replicas' policy sets differ as the database says right now
    /// (`differ`), beside what this process last compared.
    fn gate_with<'a>(&'a self, paused: Option<&'a PauseInfo>, differ: Option<String>) -> Gate<'a> {
        Gate {
            paused,
            policy_sets_differ: self.ctx.policies.disagreement().or(differ.map(Arc::from)),
            window: self.ctx.window.as_ref(),
            dry_run: self.dry_run,
            max_tries: i64::from(self.cfg.max_attempts.max(1)),
        }
    }

    /// What the database says before a claim, and why releases wait when a running replica
    /// runs another policy set: one that joined since this process last compared (its beat
    /// comes every half lease) shows here at once.
    async fn read_switches(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(crate::store::BeforeClaim, Option<String>), WorkerError> {
        let before = self.ctx.store.before_claim(now).await?;
        let differ = self
            .ctx
            .policies
            .digest()
            .and_then(|own| crate::replicas::another_set(&own, &before.live_policy_sets));
        Ok((before, differ))
    }

    /// Checks the switches, then claims and carries out one batch; `None` when nothing is due.
    async fn step_inner(&self) -> Result<Option<BatchResult>, WorkerError> {
        // Before claiming, so that a paused or closed queue is left exactly as it is.
        let now = self.ctx.clock.now();
        let (before, differ) = self.read_switches(now).await?;
        let paused = before.paused;
        if let Some((why, _)) = gate_stop(&self.gate_with(paused.as_ref(), differ), now) {
            return Ok(Some(BatchResult::Stopped(why)));
        }
        // The snapshot stage never holds the batches back: it runs on every step where a
        // release waits for its snapshots, and the claim on every step.
        let staged = before.snapshots_waiting && self.snapshot_step().await?;
        match self.claim_and_process(paused).await? {
            None if staged => Ok(Some(BatchResult::SnapshotStage)),
            other => Ok(other),
        }
    }

    /// Claims and carries out one batch; `None` when nothing is due.
    pub async fn process_next(&self) -> Result<Option<BatchResult>, WorkerError> {
        let paused = self.switches().await?;
        self.claim_and_process(paused).await
    }

    /// Notes releases these workers took (a batch's members, or releases of the snapshot
    /// stage): this run's work, for its report.
    fn note_claimed(&self, ids: impl IntoIterator<Item = ReleaseId>) {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids);
    }

    /// Claims and carries out one batch, with the pause as it was read just before the claim;
    /// `None` when nothing is due.
    async fn claim_and_process(
        &self,
        paused: Option<PauseInfo>,
    ) -> Result<Option<BatchResult>, WorkerError> {
        let now = self.ctx.clock.now();
        // Accounts ECS just refused as a whole are left alone for a while (in `run`; `apply`
        // also takes them out of its scope).
        let skip: Vec<String> = self
            .stopped_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.until > now)
            .map(|s| s.account.clone())
            .collect();
        // Each claim prefers an (account, region) where none of this process's batches is. On
        // SQLite claims queue at its one writer anyway, so they go one at a time, each seeing
        // where the others went. On PostgreSQL they run side by side (one at a time cost its
        // drain 3-8%, BENCHMARKS.md): two at the same moment may take the same (account,
        // region), which its pacing absorbs.
        let claiming = if self.ctx.store.writes_one_at_a_time() {
            Some(self.claiming.lock().await)
        } else {
            None
        };
        let busy: Vec<(String, String)> = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let busy = self
            .spread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .avoid(busy, now);
        let Some(batch) = self
            .ctx
            .store
            .claim_spread(
                &self.cfg.owner,
                now,
                self.cfg.lease,
                self.cfg.max_batch,
                self.scope.as_deref(),
                &skip,
                &busy,
            )
            .await?
        else {
            return Ok(None);
        };
        self.spread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claimed(&busy, &batch.account, &batch.region, now);
        let _busy = Busy::hold(&self.busy, &batch.account, &batch.region);
        drop(claiming);
        self.note_claimed(batch.members.iter().map(|m| m.release_id));
        let span = tracing::info_span!("batch", id = %batch.fence.batch_id, region = %batch.region,
            token = %batch.client_token, members = batch.members.len(), attempts = batch.attempts);
        tracing::Instrument::instrument(self.process(batch, paused), span)
            .await
            .map(Some)
    }

    async fn describe(
        &self,
        account: &str,
        region: &str,
        ids: Vec<String>,
    ) -> Result<Vec<Instance>, EcsError> {
        match self
            .call(Call::Describe {
                account: account.to_string(),
                region: region.to_string(),
                ids,
            })
            .await?
        {
            Answer::Instances(v) => Ok(v),
            Answer::Deleted(_) | Answer::NotAdmitted => Err(mismatched("DescribeInstances")),
        }
    }

    fn policies_now(&self) -> std::sync::Arc<Vec<Policy>> {
        self.ctx.policies.current()
    }

    /// The members DescribeInstances lists now, by instance id.
    async fn listed(
        &self,
        b: &ClaimedBatch,
        members: &[BatchMember],
    ) -> Result<HashMap<String, Instance>, EcsError> {
        let found = self
            .describe(&b.account, &b.region, instance_ids(members))
            .await?;
        Ok(found
            .into_iter()
            .map(|i| (i.instance_id.clone(), i))
            .collect())
    }

    /// Gives the result of a fenced write: `LeaseLost` when it was refused.
    fn fenced(ok: bool, r: BatchResult) -> BatchResult {
        if ok {
            r
        } else {
            BatchResult::LeaseLost
        }
    }

    /// Carries out a claimed batch; `paused` is the pause as read just before the claim (read
    /// again after the re-check, and held by the write that counts the attempt).
    async fn process(
        &self,
        b: ClaimedBatch,
        paused: Option<PauseInfo>,
    ) -> Result<BatchResult, WorkerError> {
        let fence = b.fence.clone();
        if b.members.is_empty() {
            let ok = self
                .ctx
                .store
                .finish_batch(
                    &fence,
                    BatchState::Done,
                    None,
                    &[],
                    &[],
                    self.ctx.clock.now(),
                )
                .await?;
            return Ok(Self::fenced(ok, BatchResult::Settled));
        }
        // The re-check, before every call: live state, then the one decision.
        if let Some((why, at)) = gate_stop(&self.gate(paused.as_ref()), self.ctx.clock.now()) {
            let ok = self
                .ctx
                .store
                .postpone(&fence, at, self.ctx.clock.now())
                .await?;
            return Ok(Self::fenced(ok, BatchResult::Stopped(why)));
        }
        // Out of tries ends the batch before another re-check: a re-check that keeps failing
        // must not keep it open.
        let gate = self.gate(paused.as_ref());
        if b.tries >= gate.max_tries {
            return self
                .apply_transition(&b, give_up(&b), self.ctx.clock.now())
                .await;
        }
        let found = match self.listed(&b, &b.members).await {
            Ok(v) => v,
            Err(_) if self.cancel.is_cancelled() => {
                // Stopping: give the batch back as it was, without counting a try.
                let now = self.ctx.clock.now();
                let ok = self.ctx.store.postpone(&fence, now, now).await?;
                return Ok(Self::fenced(ok, BatchResult::LeaseLost));
            }
            Err(e) if e.account_wide() => {
                let r = self.retry(&b, &e, true).await?;
                self.stop_account(&b, &e).await?;
                return Ok(r);
            }
            Err(e) => return self.retry(&b, &e, true).await,
        };
        // Snapshots accomplished at the stage must still exist now (RetentionDays, or someone
        // deleting one, may have ended them while the batch waited).
        let snapshots_gone = match self.snapshots_gone(&b).await? {
            Ok(v) => v,
            Err(e) => return self.retry(&b, &e, true).await,
        };
        let ids = instance_ids(&b.members);
        // The pause and the exemptions are read again: the re-check may have taken a while.
        // One statement: observations, releases done, the pause and the exemptions.
        let read = self
            .ctx
            .store
            .recheck_reads(&ids, self.ctx.clock.now())
            .await?;
        let policies = self.policies_now();
        let now = self.ctx.clock.now();
        let t = decide(
            &b,
            &Live {
                found: &found,
                observations: &read.observations,
                released: &read.released,
                exemptions: &read.exemptions,
                snapshots_gone: &snapshots_gone,
            },
            &Rules {
                policies: &policies,
                protection: &self.ctx.protection,
            },
            &self.gate(read.paused.as_ref()),
            now,
        );
        self.apply_transition(&b, t, now).await
    }

    /// Carries out one transition of the decision: the store applies it in one fenced write,
    /// and `Send` sends the call.
    async fn apply_transition(
        &self,
        b: &ClaimedBatch,
        t: Transition,
        now: DateTime<Utc>,
    ) -> Result<BatchResult, WorkerError> {
        let fence = b.fence.clone();
        match t {
            Transition::Wait { until, why } => {
                let ok = self.ctx.store.postpone(&fence, until, now).await?;
                Ok(Self::fenced(ok, BatchResult::Stopped(why)))
            }
            Transition::GiveUp { settle } => {
                let code = settle
                    .first()
                    .and_then(|(_, o)| match o {
                        MemberOutcome::Failed { code, .. } => Some(code.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let ok = self
                    .ctx
                    .store
                    .finish_batch(&fence, BatchState::Failed, Some(&code), &settle, &[], now)
                    .await?;
                tracing::error!(batch = %fence.batch_id, code = %code, tries = b.tries, "out of attempts");
                if ok {
                    self.notify(&b.region, &settle, now).await;
                }
                Ok(Self::fenced(ok, BatchResult::Failed { code }))
            }
            Transition::Done { settle } => {
                let ok = self
                    .ctx
                    .store
                    .finish_batch(&fence, BatchState::Done, None, &settle, &[], now)
                    .await?;
                Ok(Self::fenced(ok, BatchResult::Settled))
            }
            Transition::Reform { settle, keep } => {
                let ok = self
                    .ctx
                    .store
                    .finish_batch(
                        &fence,
                        BatchState::Split,
                        Some("Janitor.MembersChanged"),
                        &settle,
                        &[keep],
                        now,
                    )
                    .await?;
                tracing::info!(
                    batch = %fence.batch_id,
                    "members changed after the token was used: token retired, the rest re-formed"
                );
                Ok(Self::fenced(ok, BatchResult::Reformed))
            }
            Transition::Send { settle, send } => self.send(b, settle, send).await,
        }
    }

    /// Sends DeleteInstances with the batch's token for exactly `send`, and records the answer.
    async fn send(
        &self,
        b: &ClaimedBatch,
        settle: Vec<(BatchMember, MemberOutcome)>,
        live: Vec<BatchMember>,
    ) -> Result<BatchResult, WorkerError> {
        let fence = b.fence.clone();
        let req = DeleteRequest {
            region: b.region.clone(),
            instance_ids: live.iter().map(|m| m.instance_id.clone()).collect(),
            force: b.force,
            terminate_subscription: b.terminate_subscription,
            dry_run: false,
            client_token: b.client_token.clone(),
        };
        let admit: Admit = {
            let store = self.ctx.store.clone();
            let fence = fence.clone();
            let token = b.client_token.clone();
            let lease = self.cfg.lease;
            let clock = self.ctx.clock.clone();
            let window = self.ctx.window.clone();
            let policies = self.ctx.policies.clone();
            Box::new(move || {
                Box::pin(async move {
                    let now = clock.now();
                    if window.as_ref().is_some_and(|w| !w.is_open(now)) {
                        return false;
                    }
                    // Replicas that came to disagree while this call waited for its turn: as
                    // this process last compared, and as the database says now.
                    if policies.disagreement().is_some() {
                        return false;
                    }
                    let own = policies.digest();
                    match store
                        .begin_attempt_for(
                            &fence,
                            &settle,
                            &token,
                            Some(lease),
                            own.as_deref(),
                            now,
                        )
                        .await
                    {
                        Ok(ok) => ok,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot record the attempt; not sending");
                            false
                        }
                    }
                })
            })
        };
        let result = self.call_with_lease(&b.account, &fence, &req, admit).await;
        let now = self.ctx.clock.now();
        let result = match result {
            Ok(Some(a)) => Ok(a),
            Ok(None) => {
                // Refused at the last check: the lease was lost, or a pause, the window, an
                // exemption or a replica with another policy set stopped the call while it
                // waited. Nothing was sent; give the batch back as it is, saying why.
                let ok = self.ctx.store.postpone(&fence, now, now).await?;
                let (before, differ) = self.read_switches(now).await?;
                return Ok(
                    match gate_stop(&self.gate_with(before.paused.as_ref(), differ), now)
                        .filter(|_| ok)
                    {
                        Some((why, _)) => BatchResult::Stopped(why),
                        None => BatchResult::LeaseLost,
                    },
                );
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(answer) => {
                let done: Vec<_> = live
                    .iter()
                    .map(|m| {
                        (
                            m.clone(),
                            MemberOutcome::Succeeded {
                                request_id: Some(answer.request_id.clone()),
                                code: None,
                                detail: "released".into(),
                            },
                        )
                    })
                    .collect();
                let ok = self
                    .ctx
                    .store
                    .finish_batch(&fence, BatchState::Done, None, &done, &[], now)
                    .await?;
                if ok {
                    self.notify(&b.region, &done, now).await;
                }
                tracing::info!(batch = %fence.batch_id, count = live.len(), request_id = %answer.request_id, "released");
                Ok(Self::fenced(
                    ok,
                    BatchResult::Released {
                        count: live.len(),
                        request_id: answer.request_id,
                    },
                ))
            }
            Err(e) => match e.class() {
                // Same token, same members, after a backoff; the next try re-checks first and
                // ends the batch when the tries run out.
                ErrorClass::Retryable => self.retry(b, &e, false).await,
                // The account cannot release anything (permissions, keys, clock): splitting
                // would only cost more refused calls. The batch waits with its token; the run
                // stops this account's work.
                ErrorClass::Permanent if e.account_wide() => {
                    let r = self.retry(b, &e, false).await?;
                    self.stop_account(b, &e).await?;
                    Ok(r)
                }
                ErrorClass::Gone => self.settle_after_failure(b, &live, &e).await,
                ErrorClass::Permanent | ErrorClass::DryRunPassed => {
                    if live.len() > 1 {
                        let ids: Vec<ReleaseId> = live.iter().map(|m| m.release_id).collect();
                        let (a, c) = ids.split_at(ids.len() / 2);
                        let ok = self
                            .ctx
                            .store
                            .finish_batch(
                                &fence,
                                BatchState::Split,
                                Some(e.code()),
                                &[],
                                &[a.to_vec(), c.to_vec()],
                                now,
                            )
                            .await?;
                        tracing::warn!(
                            batch = %fence.batch_id,
                            code = e.code(),
                            "refused; splitting"
                        );
                        Ok(Self::fenced(
                            ok,
                            BatchResult::Split {
                                code: e.code().to_string(),
                            },
                        ))
                    } else {
                        self.settle_after_failure(b, &live, &e).await
                    }
                }
            },
        }
    }

    /// Sends the call while renewing the lease, so a long call keeps its batch.
    async fn call_with_lease(
        &self,
        account: &str,
        fence: &crate::store::Fence,
        req: &DeleteRequest,
        admit: Admit,
    ) -> Result<Option<crate::ecs::DeleteAnswer>, EcsError> {
        let renew = {
            let store = self.ctx.store.clone();
            let fence = fence.clone();
            let lease = self.cfg.lease;
            let clock = self.ctx.clock.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match store.renew_lease(&fence, clock.now(), lease).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => tracing::warn!(error = %e, "cannot renew a lease"),
                    }
                }
            })
        };
        let r = self
            .call(Call::Delete {
                account: account.to_string(),
                req: req.clone(),
                admit,
            })
            .await;
        renew.abort();
        match r? {
            Answer::Deleted(a) => Ok(Some(a)),
            Answer::NotAdmitted => Ok(None),
            Answer::Instances(_) => Err(mismatched("DeleteInstances")),
        }
    }

    /// Schedules another try of the same batch after a backoff that grows with every try.
    /// `recheck_failed`: the re-check failed before any call (it counts as a try too).
    async fn retry(
        &self,
        b: &ClaimedBatch,
        e: &EcsError,
        recheck_failed: bool,
    ) -> Result<BatchResult, WorkerError> {
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            // Calls made, not tries counted: a throttled answer gives its try back, yet the
            // wait after it must still grow.
            let retries = u32::try_from(b.tries.max(b.attempts).max(0)).unwrap_or(u32::MAX);
            self.cfg.backoff.delay(retries, e.retry_after(), &mut *rng)
        };
        let now = self.ctx.clock.now();
        let at = crate::backoff::add_capped(now, delay);
        let how = crate::store::RetryHow {
            recheck_failed,
            uncertain: !recheck_failed && decide::outcome_unknown(e.code()),
            throttled: e.is_throttling(),
        };
        let ok = self
            .ctx
            .store
            .retry_later_as(&b.fence, e.code(), &e.to_string(), at, how, now)
            .await?;
        if ok {
            self.ctx.metrics.retry_scheduled();
        }
        tracing::warn!(
            batch = %b.fence.batch_id,
            code = e.code(),
            recheck_failed,
            attempts = b.attempts,
            throttled = how.throttled,
            ?delay,
            "will retry with the same token"
        );
        Ok(Self::fenced(
            ok,
            BatchResult::RetryScheduled {
                code: e.code().to_string(),
                at,
            },
        ))
    }

    /// Ends a batch refused for good, or answered NotFound: re-checks its members, so those no
    /// longer listed after our call's NotFound count as released by it, a lone member refused
    /// for its state is cancelled when it no longer qualifies, those still listed (after a
    /// NotFound) go on in a new batch, and the rest fail with the error's code and are
    /// quarantined.
    async fn settle_after_failure(
        &self,
        b: &ClaimedBatch,
        live: &[BatchMember],
        e: &EcsError,
    ) -> Result<BatchResult, WorkerError> {
        let found = match self.listed(b, live).await {
            Ok(v) => v,
            // Cannot tell what happened: keep the batch and its token, try again later.
            Err(de) => return self.retry(b, &de, true).await,
        };
        let now = self.ctx.clock.now();
        let observations = self.ctx.store.observations_of(&instance_ids(live)).await?;
        let policies = self.policies_now();
        let no_released = HashMap::new();
        let exemptions = self.ctx.store.exemption_map(now).await?;
        let no_gone = HashMap::new();
        let view = Live {
            found: &found,
            observations: &observations,
            released: &no_released,
            exemptions: &exemptions,
            snapshots_gone: &no_gone,
        };
        let rules = Rules {
            policies: &policies,
            protection: &self.ctx.protection,
        };
        let mut settled = Vec::new();
        let mut regroup = Vec::new();
        for m in live {
            let listed = found.get(&m.instance_id);
            if listed.is_none() && e.class() == ErrorClass::Gone {
                settled.push((
                    m.clone(),
                    MemberOutcome::Succeeded {
                        request_id: e.request_id().map(str::to_string),
                        code: Some(e.code().to_string()),
                        detail:
                            "our call was answered NotFound and the instance is no longer listed"
                                .into(),
                    },
                ));
            } else if listed.is_none() {
                settled.push((
                    m.clone(),
                    MemberOutcome::Vanished {
                        detail: format!("refused with {}, and no longer listed", e.code()),
                    },
                ));
            } else if e.class() == ErrorClass::Gone {
                regroup.push(m.release_id);
            } else if e.code().starts_with("IncorrectInstanceStatus") {
                let reason = listed.and_then(|i| {
                    policies
                        .iter()
                        .find(|p| p.name == m.policy)
                        .and_then(|p| against_policy(b, p, i, &view, &rules, now))
                });
                settled.push((
                    m.clone(),
                    match reason {
                        Some(r) => MemberOutcome::Cancelled {
                            reason: format!("refused with {}; re-check: {r}", e.code()),
                        },
                        None => failed(e, Some(self.cfg.quarantine)),
                    },
                ));
            } else {
                settled.push((m.clone(), failed(e, Some(self.cfg.quarantine))));
            }
        }
        // Still listed after our call was answered NotFound: the halves go on under new tokens,
        // and a lone one fails (quarantined), so ECS listing an instance it calls unknown cannot
        // keep us calling.
        let regroup_groups: Vec<Vec<ReleaseId>> = match regroup.len() {
            0 => vec![],
            1 => {
                if let Some(m) = live.iter().find(|m| m.release_id == regroup[0]) {
                    settled.push((
                        m.clone(),
                        MemberOutcome::Failed {
                            code: e.code().to_string(),
                            message: "ECS answered NotFound for this instance but still lists it"
                                .into(),
                            request_id: e.request_id().map(str::to_string),
                            quarantine: Some(self.cfg.quarantine),
                        },
                    ));
                }
                vec![]
            }
            n => {
                let (a, c) = regroup.split_at(n / 2);
                vec![a.to_vec(), c.to_vec()]
            }
        };
        let regroup: Vec<ReleaseId> = regroup_groups.concat();
        let any_failed = settled
            .iter()
            .any(|(_, o)| matches!(o, MemberOutcome::Failed { .. }));
        let state = if !regroup.is_empty() {
            BatchState::Split
        } else if any_failed {
            BatchState::Failed
        } else {
            BatchState::Done
        };
        let groups = regroup_groups;
        let ok = self
            .ctx
            .store
            .finish_batch(&b.fence, state, Some(e.code()), &settled, &groups, now)
            .await?;
        if any_failed {
            tracing::error!(batch = %b.fence.batch_id, code = e.code(), "release failed");
        }
        if ok {
            self.notify(&b.region, &settled, now).await;
        }
        Ok(Self::fenced(
            ok,
            if any_failed {
                BatchResult::Failed {
                    code: e.code().to_string(),
                }
            } else if state == BatchState::Split {
                BatchResult::Split {
                    code: e.code().to_string(),
                }
            } else {
                BatchResult::Settled
            },
        ))
    }
}

impl Workers {
    /// Tells people what a finished batch did: one Released notification per policy, each
    /// release with the saving it was queued with, and one Failed, sent in the background.
    async fn notify(
        &self,
        region: &str,
        settled: &[(BatchMember, MemberOutcome)],
        now: DateTime<Utc>,
    ) {
        use crate::notify::{FailedRelease, InstanceRef, Notification, ReleasedInstance};
        let Some(n) = &self.ctx.notifier else { return };
        let done: Vec<crate::store::ReleaseId> = settled
            .iter()
            .filter(|(_, o)| matches!(o, MemberOutcome::Succeeded { .. }))
            .map(|(m, _)| m.release_id)
            .collect();
        // The figures are news, not the record: a failed read sends the notice without them.
        let mut savings = match self.ctx.store.savings_of(&done).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the releases' savings for the notification; sending it without them");
                Default::default()
            }
        };
        let mut released: std::collections::BTreeMap<&str, Vec<ReleasedInstance>> =
            Default::default();
        let mut failed: std::collections::BTreeMap<&str, Vec<FailedRelease>> = Default::default();
        for (m, o) in settled {
            let instance = InstanceRef {
                instance_id: m.instance_id.clone(),
                instance_name: m.instance_name.clone(),
                region: region.to_string(),
            };
            match o {
                MemberOutcome::Succeeded { request_id, .. } => released
                    .entry(&m.policy)
                    .or_default()
                    .push(ReleasedInstance {
                        instance,
                        request_id: request_id.clone(),
                        at: now,
                        saving: savings.remove(&m.release_id),
                    }),
                MemberOutcome::Failed {
                    code,
                    message,
                    request_id,
                    ..
                } => failed.entry(&m.policy).or_default().push(FailedRelease {
                    instance,
                    code: code.clone(),
                    message: message.clone(),
                    request_id: request_id.clone(),
                    at: now,
                }),
                MemberOutcome::Cancelled { .. } | MemberOutcome::Vanished { .. } => {}
            }
        }
        let mut batch: Vec<Notification> = released
            .into_iter()
            .map(|(p, releases)| Notification::Released {
                policy: p.to_string(),
                releases,
            })
            .collect();
        batch.extend(
            failed
                .into_iter()
                .map(|(p, releases)| Notification::Failed {
                    policy: p.to_string(),
                    releases,
                }),
        );
        if !batch.is_empty() {
            n.send_batch(batch);
        }
    }
}

fn instance_ids(members: &[BatchMember]) -> Vec<String> {
    members.iter().map(|m| m.instance_id.clone()).collect()
}

fn failed(e: &EcsError, quarantine: Option<chrono::Duration>) -> MemberOutcome {
    MemberOutcome::Failed {
        quarantine,
        code: e.code().to_string(),
        // The code and RequestId are stored beside it: keep ECS's own words.
        message: match e {
            EcsError::Api { message, .. } if !message.is_empty() => message.clone(),
            other => other.to_string(),
        },
        request_id: e.request_id().map(str::to_string),
    }
}
