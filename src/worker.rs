//! Workers carry out queued releases: claim a batch under a lease, re-verify its members against
//! the live inventory right before the first call, send DeleteInstances with the batch's stored
//! ClientToken, and record the outcome, fenced by the lease.
//!
//! Outcomes: success and "gone" complete the batch; a retryable failure (including a lost answer)
//! schedules the same batch — same token, same members — after a backoff; a permanent refusal of
//! several members splits the batch in halves under new tokens (the refused call had no effect)
//! until the offending instance is alone, and that one fails with its code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::ecs::client::{DeleteRequest, DescribeFilter};
use crate::ecs::{account_of, Accounts, EcsError, ErrorClass, Instance};
use crate::plan::{self, EvalContext};
use crate::policy::{Policy, ProtectionConfig};
use crate::store::{BatchMember, ClaimedBatch, MemberOutcome, Store, StoreError};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// One ECS call a worker makes, signed as the batch's account.
#[derive(Debug)]
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
    },
}

#[derive(Debug)]
enum Answer {
    Instances(Vec<Instance>),
    Deleted(crate::ecs::DeleteAnswer),
}

type CallFuture = futures::future::BoxFuture<'static, Result<Answer, BoxError>>;

/// Workers' ECS calls go through this service: a global rate limit and a limit on calls in
/// flight, as tower layers, shared by every worker (and every account) through a buffer.
type CallService = tower::buffer::Buffer<Call, CallFuture>;

fn call_service(accounts: Accounts, per_second: u32, in_flight: usize) -> CallService {
    let inner = ServiceBuilder::new()
        .concurrency_limit(in_flight.max(1))
        .rate_limit(u64::from(per_second.max(1)), Duration::from_secs(1))
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
                    Call::Delete { account, req } => accounts
                        .client(&account)
                        .delete_instances(&req)
                        .await
                        .map(Answer::Deleted)
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

/// The setting that pauses every replica's releases when `true`.
pub const PAUSED: &str = "paused";

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This process's identity in leases.
    pub owner: String,
    pub lease: Duration,
    /// Calls per batch before its members are re-checked and failed.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub max_batch: usize,
    /// DeleteInstances and re-check calls per second, all workers together.
    pub calls_per_second: u32,
    /// Batches in flight at once.
    pub concurrency: usize,
    pub seed: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            owner: format!("{}-{}", hostname(), std::process::id()),
            lease: Duration::from_secs(30),
            max_attempts: 8,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            max_batch: crate::ecs::client::MAX_PAGE,
            calls_per_second: 10,
            concurrency: 4,
            seed: 0x006a_616e_6974_6f72,
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
    /// The lease was lost to another worker; its result stands.
    LeaseLost,
}

/// A worker pool's shared parts. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    pub store: Store,
    /// ECS clients by account.
    pub accounts: Accounts,
    pub policies: Arc<RwLock<Vec<Policy>>>,
    pub protection: ProtectionConfig,
    pub cfg: WorkerConfig,
    pub clock: SharedClock,
    pub metrics: crate::metrics::Metrics,
    /// Releases execute only while this is open (always, when `None`).
    pub window: Option<crate::window::OperatingWindow>,
    pub notifier: Option<crate::notify::Notifier>,
    calls: CallService,
    rng: Arc<Mutex<StdRng>>,
}

impl Workers {
    pub fn new(
        store: Store,
        accounts: Accounts,
        policies: Arc<RwLock<Vec<Policy>>>,
        protection: ProtectionConfig,
        cfg: WorkerConfig,
        clock: SharedClock,
    ) -> Self {
        Workers {
            calls: call_service(accounts.clone(), cfg.calls_per_second, cfg.concurrency),
            metrics: crate::metrics::Metrics::new(),
            window: None,
            notifier: None,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(cfg.seed))),
            store,
            accounts,
            policies,
            protection,
            cfg,
            clock,
        }
    }

    /// Signs each batch's calls as its account, with clients from `accounts`.
    pub fn with_accounts(mut self, accounts: Accounts) -> Self {
        self.calls = call_service(
            accounts.clone(),
            self.cfg.calls_per_second,
            self.cfg.concurrency,
        );
        self.accounts = accounts;
        self
    }

    /// Makes one call through the rate and concurrency limits.
    async fn call(&self, call: Call) -> Result<Answer, EcsError> {
        let action = match call {
            Call::Describe { .. } => "DescribeInstances",
            Call::Delete { .. } => "DeleteInstances",
        };
        let mut svc = self.calls.clone();
        let ready = svc.ready().await.map_err(|e| ecs_error(e, action))?;
        ready.call(call).await.map_err(|e| ecs_error(e, action))
    }

    /// Works the queue until nothing is due (retries waiting out their backoff count as due),
    /// or until `cancel` fires. Runs `concurrency` batches at once.
    pub async fn drain(&self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let mut tasks = Vec::new();
        for _ in 0..self.cfg.concurrency.max(1) {
            let w = self.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move { w.drain_one(cancel).await }));
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
        first_err.map_or(Ok(()), Err)
    }

    /// True while the operating window (if any) is closed.
    pub fn window_closed(&self, now: DateTime<Utc>) -> bool {
        self.window.as_ref().is_some_and(|w| !w.is_open(now))
    }

    async fn drain_one(&self, cancel: CancellationToken) -> Result<(), WorkerError> {
        loop {
            // Outside the operating window a drain ends; what is queued waits for the window.
            if cancel.is_cancelled() || self.window_closed(self.clock.now()) {
                return Ok(());
            }
            if self.process_next().await?.is_some() {
                continue;
            }
            let now = self.clock.now();
            match self.store.next_due(now).await? {
                None => return Ok(()),
                Some(at) => {
                    // Poll at least every 200 ms: another worker may finish what we wait on.
                    let wait = (at - now)
                        .to_std()
                        .unwrap_or_default()
                        .clamp(Duration::from_millis(20), Duration::from_millis(200));
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// The daemon's loop: `concurrency` workers claim and carry out batches until `cancel`
    /// fires, sleeping when nothing is due until `wake` is notified or the next retry is due.
    /// While the `paused` setting is `true`, nothing is claimed. A batch being worked when
    /// `cancel` fires is finished; the caller bounds how long it waits for that.
    pub async fn serve(&self, cancel: CancellationToken, wake: Arc<tokio::sync::Notify>) {
        let mut tasks = Vec::new();
        for _ in 0..self.cfg.concurrency.max(1) {
            let w = self.clone();
            let cancel = cancel.clone();
            let wake = wake.clone();
            tasks.push(tokio::spawn(async move {
                while !cancel.is_cancelled() {
                    let idle = match w.step().await {
                        Ok(true) => Duration::ZERO,
                        Ok(false) => {
                            let now = w.clock.now();
                            match w.store.next_due(now).await {
                                Ok(Some(at)) => (at - now)
                                    .to_std()
                                    .unwrap_or_default()
                                    .clamp(Duration::from_millis(20), Duration::from_secs(1)),
                                Ok(None) => Duration::from_secs(1),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot read the queue");
                                    Duration::from_secs(1)
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "worker step failed; retrying");
                            Duration::from_secs(1)
                        }
                    };
                    if idle.is_zero() {
                        continue;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(idle) => {}
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// One claim-and-work step of the daemon: false when paused or nothing is due.
    pub async fn step(&self) -> Result<bool, WorkerError> {
        if self.window_closed(self.clock.now())
            || self.store.setting(PAUSED).await?.as_deref() == Some("true")
        {
            return Ok(false);
        }
        Ok(self.process_next().await?.is_some())
    }

    /// Claims and carries out one batch; `None` when nothing is due.
    pub async fn process_next(&self) -> Result<Option<BatchResult>, WorkerError> {
        let now = self.clock.now();
        let Some(batch) = self
            .store
            .claim(&self.cfg.owner, now, self.cfg.lease, self.cfg.max_batch)
            .await?
        else {
            return Ok(None);
        };
        let span = tracing::info_span!("batch", id = batch.fence.batch_id, region = %batch.region,
            token = %batch.client_token, members = batch.members.len(), attempts = batch.attempts);
        tracing::Instrument::instrument(self.process(batch), span)
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
            Answer::Deleted(_) => Err(mismatched("DescribeInstances")),
        }
    }

    /// Why `inst` (listed in `account`) may no longer be released under `policy_name`, or
    /// `None` when it still may.
    fn recheck(
        &self,
        account: &str,
        policy_name: &str,
        inst: &Instance,
        observations: &HashMap<String, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let Some(policy) = policies.iter().find(|p| p.name == policy_name) else {
            return Some(format!("policy {policy_name} is no longer loaded"));
        };
        if policy.dry_run {
            return Some(format!(
                "policy {policy_name} is now dry_run: it releases nothing"
            ));
        }
        if account_of(policy) != account {
            return Some(format!(
                "policy {policy_name} now acts on account {:?}, not {account:?}",
                account_of(policy)
            ));
        }
        let ctx = EvalContext {
            observations: observations
                .get(&inst.instance_id)
                .map(|t| (inst.instance_id.clone(), *t))
                .into_iter()
                .collect(),
            queued: HashMap::new(),
            protection: self.protection.clone(),
        };
        let p = plan::evaluate(
            std::slice::from_ref(policy),
            std::slice::from_ref(inst),
            &ctx,
            now,
        );
        let pp = p.policies.first()?;
        if pp
            .releases
            .iter()
            .any(|r| r.instance_id == inst.instance_id)
        {
            return None;
        }
        Some(
            match pp.skips.iter().find(|s| s.instance_id == inst.instance_id) {
                Some(s) => s.detail.clone(),
                None => format!("no longer matches policy {policy_name}"),
            },
        )
    }

    /// Splits members into those that vanished (released) and those still listed.
    async fn vanished(
        &self,
        b: &ClaimedBatch,
        members: &[BatchMember],
    ) -> Result<(Vec<BatchMember>, HashMap<String, Instance>), EcsError> {
        let found = self
            .describe(&b.account, &b.region, instance_ids(members))
            .await?;
        let found: HashMap<String, Instance> = found
            .into_iter()
            .map(|i| (i.instance_id.clone(), i))
            .collect();
        let gone = members
            .iter()
            .filter(|m| !found.contains_key(&m.instance_id))
            .cloned()
            .collect();
        Ok((gone, found))
    }

    async fn process(&self, b: ClaimedBatch) -> Result<BatchResult, WorkerError> {
        let fence = b.fence.clone();
        let mut settled: Vec<(BatchMember, MemberOutcome)> = Vec::new();
        let mut live = b.members.clone();
        if live.is_empty() {
            let ok = self
                .store
                .finish_batch(&fence, "done", None, &[], &[], self.clock.now())
                .await?;
            return Ok(if ok {
                BatchResult::Settled
            } else {
                BatchResult::LeaseLost
            });
        }
        if b.attempts == 0 {
            // Re-verify right before the token is first used.
            let (gone, found) = match self.vanished(&b, &live).await {
                Ok(v) => v,
                Err(e) => return self.retry(&b, &e).await,
            };
            let observations = self.store.observations_of(&instance_ids(&live)).await?;
            let now = self.clock.now();
            for m in &gone {
                settled.push((
                    m.clone(),
                    MemberOutcome::Succeeded {
                        request_id: None,
                        code: Some("Janitor.AlreadyGone".into()),
                        detail: "no longer listed by DescribeInstances before the call".into(),
                    },
                ));
            }
            live.retain(|m| !gone.contains(m));
            let mut keep = Vec::new();
            for m in live {
                match found
                    .get(&m.instance_id)
                    .and_then(|i| self.recheck(&b.account, &m.policy, i, &observations, now))
                {
                    Some(reason) => settled.push((
                        m,
                        MemberOutcome::Cancelled {
                            reason: format!("re-check before release: {reason}"),
                        },
                    )),
                    None => keep.push(m),
                }
            }
            live = keep;
            if live.is_empty() {
                let ok = self
                    .store
                    .finish_batch(&fence, "done", None, &settled, &[], now)
                    .await?;
                return Ok(if ok {
                    BatchResult::Settled
                } else {
                    BatchResult::LeaseLost
                });
            }
        }
        let now = self.clock.now();
        if !self
            .store
            .begin_attempt(&fence, &settled, &b.client_token, now)
            .await?
        {
            return Ok(BatchResult::LeaseLost);
        }
        let req = DeleteRequest {
            region: b.region.clone(),
            instance_ids: live.iter().map(|m| m.instance_id.clone()).collect(),
            force: b.force,
            terminate_subscription: b.terminate_subscription,
            dry_run: false,
            client_token: b.client_token.clone(),
        };
        let result = self.call_with_lease(&b.account, &fence, &req).await;
        let now = self.clock.now();
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
                    .store
                    .finish_batch(&fence, "done", None, &done, &[], now)
                    .await?;
                if ok {
                    self.notify(&b.region, &done, now);
                }
                tracing::info!(batch = fence.batch_id, count = live.len(), request_id = %answer.request_id, "released");
                Ok(if ok {
                    BatchResult::Released {
                        count: live.len(),
                        request_id: answer.request_id,
                    }
                } else {
                    BatchResult::LeaseLost
                })
            }
            Err(e) => match e.class() {
                ErrorClass::Retryable if (b.attempts + 1) < i64::from(self.cfg.max_attempts) => {
                    self.retry(&b, &e).await
                }
                ErrorClass::Retryable | ErrorClass::Gone => {
                    // Exhausted, or some member is unknown: whatever vanished was released
                    // (perhaps by a call whose answer was lost); the rest fail or go on alone.
                    self.settle_after_failure(&b, &live, &e).await
                }
                ErrorClass::Permanent | ErrorClass::DryRunPassed => {
                    if live.len() > 1 {
                        let ids: Vec<i64> = live.iter().map(|m| m.release_id).collect();
                        let (a, c) = ids.split_at(ids.len() / 2);
                        let ok = self
                            .store
                            .finish_batch(
                                &fence,
                                "split",
                                Some(e.code()),
                                &[],
                                &[a.to_vec(), c.to_vec()],
                                now,
                            )
                            .await?;
                        tracing::warn!(
                            batch = fence.batch_id,
                            code = e.code(),
                            "refused; splitting"
                        );
                        Ok(if ok {
                            BatchResult::Split {
                                code: e.code().to_string(),
                            }
                        } else {
                            BatchResult::LeaseLost
                        })
                    } else {
                        self.settle_after_failure(&b, &live, &e).await
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
    ) -> Result<crate::ecs::DeleteAnswer, EcsError> {
        let renew = {
            let store = self.store.clone();
            let fence = fence.clone();
            let lease = self.cfg.lease;
            let clock = self.clock.clone();
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
            })
            .await;
        renew.abort();
        match r? {
            Answer::Deleted(a) => Ok(a),
            Answer::Instances(_) => Err(mismatched("DeleteInstances")),
        }
    }

    async fn retry(&self, b: &ClaimedBatch, e: &EcsError) -> Result<BatchResult, WorkerError> {
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let retries = u32::try_from(b.attempts.max(0)).unwrap_or(u32::MAX);
            self.cfg.backoff.delay(retries, e.retry_after(), &mut *rng)
        };
        let now = self.clock.now();
        let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        let ok = self
            .store
            .retry_later(&b.fence, e.code(), &e.to_string(), at, now)
            .await?;
        tracing::warn!(
            batch = b.fence.batch_id,
            code = e.code(),
            ?delay,
            "will retry with the same token"
        );
        Ok(if ok {
            BatchResult::RetryScheduled {
                code: e.code().to_string(),
                at,
            }
        } else {
            BatchResult::LeaseLost
        })
    }

    /// Ends a batch that cannot succeed as it is: re-checks its members, so those that vanished
    /// count as released, a lone member refused for its state is cancelled when it no longer
    /// qualifies, those still listed (after a `Gone` answer) go on in a new batch, and the rest
    /// fail with the error's code.
    async fn settle_after_failure(
        &self,
        b: &ClaimedBatch,
        live: &[BatchMember],
        e: &EcsError,
    ) -> Result<BatchResult, WorkerError> {
        let (gone, found) = match self.vanished(b, live).await {
            Ok(v) => v,
            // Cannot tell what happened: keep the batch and its token, try again later.
            Err(de) => return self.retry(b, &de).await,
        };
        let now = self.clock.now();
        let observations = self.store.observations_of(&instance_ids(live)).await?;
        let mut settled = Vec::new();
        let mut regroup = Vec::new();
        for m in live {
            if gone.contains(m) {
                settled.push((
                    m.clone(),
                    MemberOutcome::Succeeded {
                        request_id: e.request_id().map(str::to_string),
                        code: Some(e.code().to_string()),
                        detail: "no longer listed by DescribeInstances after the call".into(),
                    },
                ));
            } else if e.class() == ErrorClass::Gone {
                regroup.push(m.release_id);
            } else if e.code().starts_with("IncorrectInstanceStatus") {
                let reason = found
                    .get(&m.instance_id)
                    .and_then(|i| self.recheck(&b.account, &m.policy, i, &observations, now));
                settled.push((
                    m.clone(),
                    match reason {
                        Some(r) => MemberOutcome::Cancelled {
                            reason: format!("refused with {}; re-check: {r}", e.code()),
                        },
                        None => failed(e),
                    },
                ));
            } else {
                settled.push((m.clone(), failed(e)));
            }
        }
        let any_failed = settled
            .iter()
            .any(|(_, o)| matches!(o, MemberOutcome::Failed { .. }));
        let state = if !regroup.is_empty() {
            "split"
        } else if any_failed {
            "failed"
        } else {
            "done"
        };
        let groups: Vec<Vec<i64>> = if regroup.is_empty() {
            vec![]
        } else {
            vec![regroup]
        };
        let ok = self
            .store
            .finish_batch(&b.fence, state, Some(e.code()), &settled, &groups, now)
            .await?;
        if any_failed {
            tracing::error!(batch = b.fence.batch_id, code = e.code(), "release failed");
        }
        if ok {
            self.notify(&b.region, &settled, now);
        }
        Ok(if !ok {
            BatchResult::LeaseLost
        } else if any_failed {
            BatchResult::Failed {
                code: e.code().to_string(),
            }
        } else if state == "split" {
            BatchResult::Split {
                code: e.code().to_string(),
            }
        } else {
            BatchResult::Settled
        })
    }
}

impl Workers {
    /// Tells people what a finished batch did: one Released and one Failed notification per
    /// policy, sent in the background.
    fn notify(&self, region: &str, settled: &[(BatchMember, MemberOutcome)], now: DateTime<Utc>) {
        use crate::notify::{FailedRelease, InstanceRef, Notification, ReleasedInstance};
        let Some(n) = &self.notifier else { return };
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
                    }),
                MemberOutcome::Failed {
                    code,
                    message,
                    request_id,
                } => failed.entry(&m.policy).or_default().push(FailedRelease {
                    instance,
                    code: code.clone(),
                    message: message.clone(),
                    request_id: request_id.clone(),
                    at: now,
                }),
                MemberOutcome::Cancelled { .. } => {}
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

fn failed(e: &EcsError) -> MemberOutcome {
    MemberOutcome::Failed {
        code: e.code().to_string(),
        // The code and RequestId are stored beside it: keep ECS's own words.
        message: match e {
            EcsError::Api { message, .. } if !message.is_empty() => message.clone(),
            other => other.to_string(),
        },
        request_id: e.request_id().map(str::to_string),
    }
}
