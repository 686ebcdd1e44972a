//! `run`: the long-running service. A scheduler reconciles each policy on its cron (one run per
//! tick across replicas), workers carry out the queue, policies are reloaded when their files
//! change (an invalid change is refused and the last good set keeps running), and the admin server
//! answers health checks. Shutdown stops claiming and lets in-flight calls finish within a grace
//! period; what is left is recovered by lease expiry.

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

/// This replica's beat with the set it runs; true when the replicas have just come to agree
/// (what a disagreement held back may go on).
async fn beat(app: &App, set: &std::sync::Mutex<crate::replicas::PolicySet>) -> bool {
    let set = set.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let now = app.ctx.clock.now();
    matches!(
        crate::replicas::beat(
            &app.ctx,
            &app.reconciler.owner,
            &set,
            app.reconciler.run_lease,
            now
        )
        .await,
        Some((true, true))
    )
}

/// After a set of policies is loaded, a pass, or the replicas coming to agree: the queued
/// releases of policies not loaded are called off (and their marks taken off the instances),
/// unless the replicas run different sets. A failure is logged; the re-check before
/// each call still cancels them at their time.
async fn end_orphans(app: &App) {
    // Replicas that disagree on the set would call off each other's releases.
    if app.reconciler.force_dry_run || app.ctx.policies.disagreement().is_some() {
        return;
    }
    let now = app.ctx.clock.now();
    match app.reconciler.end_orphans(now).await {
        Ok(ended) if !ended.is_empty() => {
            if let Err(e) = crate::marks::reconcile(
                &app.ctx,
                app.reconciler.mark_holder(),
                now,
                crate::marks::Scope::Removals,
            )
            .await
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
async fn take_over(app: &App, wake: &tokio::sync::Notify, stop: &CancellationToken) {
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
        // This process's own pass, its renewal held up (the SQLite writer busy): not abandoned.
        if stop.is_cancelled() || app.reconciler.running_here(&run.policy, tick) {
            continue;
        }
        let policy = loaded.iter().find(|p| p.name == run.policy);
        match policy {
            Some(p) if !run.superseded => {
                tracing::warn!(policy = %run.policy, %tick, replica = %run.owner, "replica stopped during this tick's pass (its lease ended); reconciling the tick here");
                let pass =
                    app.reconciler
                        .pass(std::slice::from_ref(p), tick, None, app.ctx.clock.now());
                let passed = tokio::select! {
                    r = pass => r,
                    // Left for the next replica; its lease ends unrenewed.
                    _ = stop.cancelled() => return,
                };
                match passed {
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
                // Only while still abandoned, and told once, whichever replica closes it.
                if let Err(e) = app
                    .ctx
                    .store
                    .close_abandoned(&run.policy, tick, &why, now)
                    .await
                {
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

    // Changes are noticed by the digest the replicas compare.
    let mut last_print = crate::policy::set_digest(&cfg.policies_dir);
    // Nothing is released until this replica has compared its set with the others'.
    app.ctx
        .policies
        .set_disagreement(Some(crate::replicas::NOT_YET_COMPARED.into()));
    let running_set = Arc::new(std::sync::Mutex::new(crate::replicas::PolicySet::default()));
    if reload(&app, &cfg.policies_dir, &health) {
        *running_set.lock().unwrap_or_else(|e| e.into_inner()) =
            crate::replicas::PolicySet::of(&cfg.policies_dir, &app.policies());
    }
    // Before any worker claims: a replica started on another checkout holds from the start.
    beat(&app, &running_set).await;
    end_orphans(&app).await;

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
    // Twice a lease, on a task of its own (a slow step never delays the beat): this replica's
    // beat, then the ticks a stopped replica left unfinished.
    let beats = {
        let app = app.clone();
        let set = running_set.clone();
        let wake = wake.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(
                (app.reconciler.run_lease / 2)
                    .to_std()
                    .unwrap_or(Duration::from_secs(15))
                    .max(Duration::from_millis(500)),
            );
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut side: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {}
                }
                let agreed_again = beat(&app, &set).await;
                if side.as_ref().is_none_or(|t| t.is_finished()) {
                    let (app, wake, stop) = (app.clone(), wake.clone(), stop.clone());
                    side = Some(tokio::spawn(async move {
                        if agreed_again {
                            end_orphans(&app).await;
                        }
                        take_over(&app, &wake, &stop).await;
                    }));
                }
            }
            if let Some(t) = side {
                let _ = t.await;
            }
        })
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let print = crate::policy::set_digest(&cfg.policies_dir);
                if print != last_print {
                    last_print = print;
                    if reload(&app, &cfg.policies_dir, &health) {
                        *running_set.lock().unwrap_or_else(|e| e.into_inner()) =
                            crate::replicas::PolicySet::of(&cfg.policies_dir, &app.policies());
                        beat(&app, &running_set).await;
                        changed.notify_one();
                        let app = app.clone();
                        tokio::spawn(async move { end_orphans(&app).await });
                    }
                }
            }
        }
    }
    tracing::info!(grace = ?cfg.shutdown_grace, "shutting down: no new claims; waiting for calls in flight");
    let _ = scheduler.await;
    let _ = beats.await;
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
                    // What a pass begun before a reload queued under a name since dropped.
                    end_orphans(&app).await;
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
