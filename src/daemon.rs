//! `run`: the long-running service. A scheduler reconciles each policy on its cron (one run per
//! tick across replicas), workers carry out the queue, policies are reloaded when their files
//! change (an invalid change is refused and the last good set keeps running), and the admin server
//! answers health checks. Shutdown stops claiming and lets in-flight calls finish within a grace
//! period; what is left is recovered by lease expiry.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppError};
use crate::policy::Policy;
use crate::schedule;
use crate::server::{self, Health};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub policies_dir: PathBuf,
    /// How often the policy files are checked for changes.
    pub reload_every: Duration,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    pub listen: SocketAddr,
    /// The admin tokens: any enables the mutating admin endpoints.
    pub admin_tokens: crate::server::AdminTokens,
}

/// A fingerprint of every policy file's name and content, to notice changes. The folder is
/// walked as `validate` walks it: each real directory once, links into loops not followed.
fn fingerprint(dir: &Path) -> u64 {
    let mut files = crate::policy::policy_files(dir).files;
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// Loads the policies; on failure logs every problem and keeps the current set.
fn reload(app: &App, dir: &Path, health: &Health) -> bool {
    // A policy naming an account without usable credentials is refused like a broken file.
    let loaded = crate::policy::load_dir(dir)
        .map_err(|d| d.to_string())
        .and_then(|set| {
            app.ctx
                .accounts
                .check(crate::policy::account_uses(&set.policies))
                .map(|()| set)
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok(set) => {
            let names: Vec<String> = set.policies.iter().map(|p| p.name.clone()).collect();
            app.ctx
                .metrics
                .policies_loaded(&set.policies, app.ctx.clock.now());
            app.set_policies(set.policies);
            health.policies_loaded.store(true, Ordering::SeqCst);
            *health
                .last_load_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(dir = %dir.display(), policies = ?names, "policies loaded");
            true
        }
        Err(d) => {
            app.ctx.metrics.policy_load_failed();
            if let Some(n) = &app.ctx.notifier {
                n.send_batch(vec![crate::notify::Notification::PolicyLoadFailed {
                    problems: d.clone(),
                }]);
            }
            tracing::error!(dir = %dir.display(), "policy change refused; the last good set keeps running:\n{d}");
            *health
                .last_load_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(d);
            false
        }
    }
}

/// The policy set this replica runs, as it tells the others.
#[derive(Debug, Default)]
struct SetInfo {
    /// SHA-256 of the set's files: their names relative to the folder, and their contents.
    digest: String,
    /// The set's policy names, for people.
    names: String,
}

impl SetInfo {
    /// The set just loaded from `dir`.
    fn of(app: &App, dir: &Path) -> SetInfo {
        use sha2::Digest;
        let mut files = crate::policy::policy_files(dir).files;
        files.sort();
        let mut h = sha2::Sha256::new();
        for f in &files {
            let name = f
                .strip_prefix(dir)
                .unwrap_or(f)
                .to_string_lossy()
                .into_owned();
            let body = std::fs::read(f).unwrap_or_default();
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((body.len() as u64).to_le_bytes());
            h.update(&body);
        }
        let digest = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let names: Vec<String> = app.policies().iter().map(|p| p.name.clone()).collect();
        SetInfo {
            digest,
            names: names.join(", "),
        }
    }
}

/// Tells the other replicas which policy set this one runs, and sees which they run: while the
/// live ones (seen within three leases) disagree, this replica sends no DeleteInstances. A
/// database that does not answer leaves the last look standing.
async fn tell_replicas(app: &App, set: &SetInfo) {
    let now = app.ctx.clock.now();
    let store = &app.ctx.store;
    let seen = async {
        store
            .replica_seen(&app.reconciler.owner, &set.digest, &set.names, now)
            .await?;
        store
            .live_replicas(now - app.reconciler.run_lease * 3)
            .await
    };
    let live = match seen.await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "cannot compare this replica's policy set with the others'");
            return;
        }
    };
    let why = crate::store::disagreement(&live);
    if app.ctx.policies.set_disagreement(why.clone()) {
        match why {
            Some(why) => tracing::warn!("{why}"),
            None => tracing::info!("the replicas run the same policy set again; releases go on"),
        }
    }
}

/// After a set of policies is loaded: the queued releases of those no longer in it are called
/// off (and their marks taken off the instances). A failure is logged; the re-check before
/// each call still cancels them at their time.
async fn end_orphans(app: &App) {
    if app.reconciler.force_dry_run {
        return;
    }
    let now = app.ctx.clock.now();
    match app.reconciler.end_orphans(now).await {
        Ok(ended) if !ended.is_empty() => {
            if let Err(e) =
                crate::marks::reconcile(&app.ctx, now, crate::marks::Scope::Removals).await
            {
                tracing::warn!(error = %e, "marks were not reconciled; the next pass tries again");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot call off the releases of policies no longer loaded; the re-check cancels each at its time")
        }
    }
}

/// Reconciles the ticks a stopped replica left unfinished (killed mid-pass: its lease on the
/// tick ended unrenewed), each here, unless a later tick of the policy has begun since or the
/// policy is no longer loaded: then the tick is closed as failed, with why. Before, such a tick
/// stayed "running" and was never reconciled: a daily policy lost its day.
async fn take_over(app: &App, wake: &tokio::sync::Notify) {
    let now = app.ctx.clock.now();
    let abandoned = match app.ctx.store.abandoned_runs(now).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for ticks a stopped replica left unfinished");
            return;
        }
    };
    let loaded = app.policies();
    for run in abandoned {
        let tick = run.scheduled_for;
        let policy = loaded.iter().find(|p| p.name == run.policy);
        match policy {
            Some(p) if !run.superseded => {
                tracing::warn!(policy = %run.policy, %tick, replica = %run.owner, "replica stopped during this tick's pass (its lease ended); reconciling the tick here");
                match app
                    .reconciler
                    .pass(std::slice::from_ref(p), tick, None, app.ctx.clock.now())
                    .await
                {
                    Ok(r) => {
                        for run in r.runs.iter().filter(|r| r.ran) {
                            tracing::info!(policy = %run.policy, %tick, planned = run.planned, enqueued = run.enqueued, cancelled = run.cancelled, error = ?run.error, "reconciled a tick taken over");
                        }
                        wake.notify_waiters();
                    }
                    Err(e) => {
                        tracing::error!(policy = %run.policy, error = %e, "the tick taken over failed; it is taken over again once its lease ends")
                    }
                }
            }
            _ => {
                let why = format!(
                    "replica {} stopped during this tick's pass (its lease ended); {}",
                    run.owner,
                    if run.superseded {
                        "a later tick has run since"
                    } else {
                        "the policy is no longer loaded"
                    }
                );
                let closed = app
                    .ctx
                    .store
                    .finish_run(&crate::store::RunEnd::error(&run.policy, tick), now)
                    .await;
                let event = crate::store::NewEvent {
                    kind: "run_failed",
                    policy: Some(run.policy.clone()),
                    detail: why,
                    ..Default::default()
                };
                if let Err(e) = match closed {
                    Ok(()) => app.ctx.store.record_event(event, now).await,
                    Err(e) => Err(e),
                } {
                    tracing::warn!(policy = %run.policy, error = %e, "cannot close a tick a stopped replica left unfinished");
                }
            }
        }
    }
}

/// Runs until `shutdown` fires. The admin server is bound before anything else runs, so a
/// port in use fails fast.
pub async fn run(app: App, cfg: DaemonConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let health = Arc::new(Health::default());
    app.ctx
        .metrics
        .observe(app.ctx.window.clone(), app.ctx.notifier.clone());
    if cfg.admin_tokens.is_empty() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "the admin server listens beyond this machine without JANITOR_ADMIN_TOKEN: its pages and metrics are readable by anyone who reaches it (mutating endpoints stay disabled)");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AppError::Other(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let admin_addr = listener
        .local_addr()
        .map_err(|e| AppError::Other(e.to_string()))?;
    tracing::info!(%admin_addr, "admin server listening");
    let server = {
        let router = server::router(server::AdminContext {
            ctx: app.ctx.clone(),
            health: health.clone(),
            admin_tokens: cfg.admin_tokens.clone(),
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        })
    };

    let mut last_print = fingerprint(&cfg.policies_dir);
    let mut running_set = SetInfo::default();
    if reload(&app, &cfg.policies_dir, &health) {
        running_set = SetInfo::of(&app, &cfg.policies_dir);
        end_orphans(&app).await;
    }
    // Before any worker claims: a replica started on another checkout holds from the start.
    tell_replicas(&app, &running_set).await;

    let wake = Arc::new(tokio::sync::Notify::new());
    let changed = Arc::new(tokio::sync::Notify::new());
    // Workers stop claiming on `stop_claiming`; in-flight batches finish.
    let stop_claiming = shutdown.child_token();
    let workers = {
        let w = app.workers.clone();
        let c = stop_claiming.clone();
        let wake = wake.clone();
        tokio::spawn(async move { w.serve(c, wake).await })
    };

    let scheduler = {
        let app = app.clone();
        let stop = shutdown.clone();
        let wake = wake.clone();
        let changed = changed.clone();
        tokio::spawn(async move { scheduler(app, stop, wake, changed).await })
    };

    let mut ticker = tokio::time::interval(cfg.reload_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ticks a stopped replica left unfinished are looked for twice a lease.
    let mut orphaned_ticks = tokio::time::interval(
        (app.reconciler.run_lease / 2)
            .to_std()
            .unwrap_or(Duration::from_secs(15))
            .max(Duration::from_millis(500)),
    );
    orphaned_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut taking_over: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = orphaned_ticks.tick() => {
                tell_replicas(&app, &running_set).await;
                if taking_over.as_ref().is_none_or(|t| t.is_finished()) {
                    let app = app.clone();
                    let wake = wake.clone();
                    taking_over = Some(tokio::spawn(async move { take_over(&app, &wake).await }));
                }
            }
            _ = ticker.tick() => {
                let print = fingerprint(&cfg.policies_dir);
                if print != last_print {
                    last_print = print;
                    if reload(&app, &cfg.policies_dir, &health) {
                        running_set = SetInfo::of(&app, &cfg.policies_dir);
                        tell_replicas(&app, &running_set).await;
                        changed.notify_one();
                        end_orphans(&app).await;
                    }
                }
            }
        }
    }
    tracing::info!(grace = ?cfg.shutdown_grace, "shutting down: no new claims; waiting for calls in flight");
    let _ = scheduler.await;
    if let Some(t) = taking_over {
        let _ = t.await;
    }
    if tokio::time::timeout(cfg.shutdown_grace, workers)
        .await
        .is_err()
    {
        tracing::warn!("calls still in flight after the grace period; their leases will expire and another run resumes them");
    }
    let _ = server.await;
    // Stopped cleanly: the others need not wait for this replica to age out.
    if let Err(e) = app.ctx.store.replica_gone(&app.reconciler.owner).await {
        tracing::warn!(error = %e, "cannot tell the other replicas this one stopped; they wait until it ages out");
    }
    if let Some(n) = &app.ctx.notifier {
        if !n.flush(Duration::from_secs(5)).await {
            // Not stored anywhere else: say so rather than exit in silence.
            tracing::warn!(
                undelivered = n.stats().pending,
                "exiting with notifications not yet delivered (their webhooks did not answer); \
                 they are lost. `ecs-janitor history` has every release they told of"
            );
        }
    }
    Ok(())
}

async fn scheduler(
    app: App,
    stop: CancellationToken,
    wake: Arc<tokio::sync::Notify>,
    changed: Arc<tokio::sync::Notify>,
) {
    let current = || app.policies();
    let tick = |at: DateTime<Utc>, due: Vec<Policy>| {
        let app = app.clone();
        let wake = wake.clone();
        async move {
            let names: Vec<&str> = due.iter().map(|p| p.name.as_str()).collect();
            let span = tracing::info_span!("tick", at = %at, policies = ?names);
            let pass = app.reconciler.pass(&due, at, None, app.ctx.clock.now());
            match tracing::Instrument::instrument(pass, span).await {
                Ok(r) => {
                    for run in r.runs {
                        if !run.ran {
                            tracing::debug!(policy = %run.policy, "tick already reconciled by another replica");
                        } else if let Some(why) = run.error {
                            tracing::error!(policy = %run.policy, "{why}; the policy did nothing this tick, the next tries again");
                        } else if let Some(why) = run.refused {
                            tracing::warn!(policy = %run.policy, "{why}");
                        } else {
                            tracing::info!(policy = %run.policy, planned = run.planned, enqueued = run.enqueued, cancelled = run.cancelled, "reconciled");
                        }
                    }
                    wake.notify_waiters();
                }
                Err(e) => {
                    tracing::error!(error = %e, "reconcile failed; the next tick tries again")
                }
            }
        }
    };
    tick_loop(current, app.ctx.clock.clone(), stop, changed, tick).await;
}

/// Calls `tick(at, due)` at each scheduled time of the policies `current` returns, with the
/// policies due then, one tick after the other, until `stop`. A notification on `changed` (a
/// reload) recomputes the next tick from the new set.
async fn tick_loop<F, Fut>(
    current: impl Fn() -> Vec<Policy>,
    clock: crate::clock::SharedClock,
    stop: CancellationToken,
    changed: Arc<tokio::sync::Notify>,
    mut tick: F,
) where
    F: FnMut(DateTime<Utc>, Vec<Policy>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let policies = current();
        let now = clock.now();
        let Some((at, names)) = schedule::next_group(&policies, now) else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => continue,
            }
        };
        let wait = (at - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let due: Vec<Policy> = policies
            .into_iter()
            .filter(|p| names.contains(&p.name))
            .collect();
        tick(at, due).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::TokioClock;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// An hour of the scheduler in paused tokio time: every tick at its cron time, policies
    /// due together in one tick, and a reload taking effect at once.
    #[tokio::test(start_paused = true)]
    async fn ticks_come_at_their_cron_times_and_follow_a_reload() {
        let set = crate::policy::load_str(
            "p.yaml",
            "name: five\nschedule: \"0 */5 * * * *\"\nregions: [cn-hangzhou]\nselect: {status: Stopped}\n---\n\
             name: hourly\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect: {status: Stopped}\n",
        )
        .unwrap()
        .policies;
        let policies = Arc::new(Mutex::new(set.clone()));
        type Ticks = Vec<(DateTime<Utc>, Vec<String>)>;
        let seen: Arc<Mutex<Ticks>> = Arc::default();
        let clock: crate::clock::SharedClock =
            Arc::new(TokioClock::starting_at(at("2026-12-01T10:02:30Z")));
        let stop = CancellationToken::new();
        let changed = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (policies, seen, clock, stop, changed) = (
                policies.clone(),
                seen.clone(),
                clock.clone(),
                stop.clone(),
                changed.clone(),
            );
            tokio::spawn(async move {
                let current = move || policies.lock().unwrap().clone();
                let tick = move |at: DateTime<Utc>, due: Vec<Policy>| {
                    seen.lock()
                        .unwrap()
                        .push((at, due.into_iter().map(|p| p.name).collect()));
                    async {}
                };
                tick_loop(current, clock, stop, changed, tick).await
            })
        };
        // Half an hour: the five-minute policy ticks six times (10:05 .. 10:30).
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        let ticks: Vec<_> = seen.lock().unwrap().clone();
        let want: Vec<_> = (1..=6)
            .map(|k| {
                let t = at("2026-12-01T10:00:00Z") + chrono::Duration::minutes(5 * k);
                (t, vec!["five".to_string()])
            })
            .collect();
        assert_eq!(ticks, want);
        // The five-minute policy is deleted: from now on only the hourly one ticks, at 11:00.
        *policies.lock().unwrap() = set.into_iter().filter(|p| p.name == "hourly").collect();
        changed.notify_one();
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        stop.cancel();
        task.await.unwrap();
        let ticks: Vec<_> = seen.lock().unwrap()[6..].to_vec();
        assert_eq!(
            ticks,
            vec![(at("2026-12-01T11:00:00Z"), vec!["hourly".to_string()])]
        );
    }
}
