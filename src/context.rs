//! The long-lived parts every job shares, built once: the store, the ECS clients by account, the
//! policy set (behind a watch channel, so a reload reaches every reader), the clock, the metrics,
//! the notifier, the operating window, the protections, how plans are priced and the prices
//! already answered. The reconciler, the workers and the admin server each take a [`Context`];
//! nothing is patched into them afterwards.

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::ecs::Accounts;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::{Policy, ProtectionConfig};
use crate::pricing::{PriceCache, PriceConfig};
use crate::store::Store;
use crate::window::OperatingWindow;

/// The policy set now running. Readers see a reload at their next read.
#[derive(Clone, Debug)]
pub struct Policies(
    watch::Receiver<Arc<Vec<Policy>>>,
    /// Set while the running replicas disagree on the policy set: why releases wait.
    Arc<std::sync::RwLock<Option<Arc<str>>>>,
    /// The digest of this process's set as the replicas compare it, once it has compared
    /// (workers check it against the live replicas' before each claim, and the write that
    /// records each call before it is sent checks it again).
    Arc<std::sync::RwLock<Option<Arc<str>>>>,
);

/// The one writer of a [`Policies`]: the daemon's reload (and tests).
#[derive(Debug)]
pub struct PolicyReload(watch::Sender<Arc<Vec<Policy>>>);

impl Policies {
    /// A policy set and its writer.
    pub fn new(policies: Vec<Policy>) -> (Policies, PolicyReload) {
        let (tx, rx) = watch::channel(Arc::new(policies));
        (
            Policies(rx, Arc::default(), Arc::default()),
            PolicyReload(tx),
        )
    }

    /// The policies now loaded.
    pub fn current(&self) -> Arc<Vec<Policy>> {
        self.0.borrow().clone()
    }

    /// Why releases wait because the running replicas run different policy sets, if they do.
    pub fn disagreement(&self) -> Option<Arc<str>> {
        self.1.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The digest of this process's policy set as the replicas compare it, once it compared.
    pub fn digest(&self) -> Option<Arc<str>> {
        self.2.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the digest of this process's policy set ([`crate::replicas::PolicySet`]).
    pub fn set_digest(&self, digest: &str) {
        *self.2.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(digest));
    }

    /// Records whether the running replicas disagree (the daemon, from the database); returns
    /// whether that changed.
    pub fn set_disagreement(&self, why: Option<String>) -> bool {
        let mut d = self.1.write().unwrap_or_else(|e| e.into_inner());
        let changed = d.as_deref() != why.as_deref();
        *d = why.map(Arc::from);
        changed
    }
}

impl PolicyReload {
    /// Replaces the running set.
    pub fn replace(&self, policies: Vec<Policy>) {
        self.0.send_replace(Arc::new(policies));
    }
}

/// What the stages share.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    /// ECS clients by account.
    pub accounts: Accounts,
    pub policies: Policies,
    pub clock: SharedClock,
    pub metrics: Metrics,
    /// Where notifications go, when webhooks are configured.
    pub notifier: Option<Notifier>,
    /// Releases execute only inside this window (always, when `None`).
    pub window: Option<OperatingWindow>,
    pub protection: ProtectionConfig,
    /// How plans are priced (the price file).
    pub prices: PriceConfig,
    /// The list prices ECS answered this process, kept between passes for six hours
    /// ([`crate::pricing::cache`]); clones share it.
    pub price_cache: PriceCache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("store", &self.store)
            .field("accounts", &self.accounts)
            .field("now", &self.clock.now())
            .field("window", &self.window.is_some())
            .field("notifier", &self.notifier.is_some())
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}

/// The parts of a [`Context`] that have defaults (no notifier, no window, fresh metrics, the
/// default protect tag).
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub metrics: Metrics,
    pub notifier: Option<Notifier>,
    pub window: Option<OperatingWindow>,
    pub protection: ProtectionConfig,
    pub prices: PriceConfig,
}

impl Context {
    /// A context of these parts; its policy set's writer is returned beside it.
    pub fn new(
        store: Store,
        accounts: Accounts,
        policies: Vec<Policy>,
        clock: SharedClock,
        extras: Extras,
    ) -> (Context, PolicyReload) {
        let (policies, reload) = Policies::new(policies);
        let ctx = Context {
            store,
            accounts,
            policies,
            clock,
            metrics: extras.metrics,
            notifier: extras.notifier,
            window: extras.window,
            protection: extras.protection,
            prices: extras.prices,
            price_cache: PriceCache::default(),
        };
        (ctx, reload)
    }
}
