//! The long-lived parts every job shares, built once: the store, the ECS clients by account, the
//! policy set (behind a watch channel, so a reload reaches every reader), the clock, the metrics,
//! the notifier, the operating window and the protections. The reconciler, the workers and the
//! admin server each take a [`Context`]; nothing is patched into them afterwards.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::ecs::client::{ClientConfig, EcsClient};
use crate::ecs::Accounts;
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifierOptions};
use crate::policy::{Policy, ProtectionConfig};
use crate::settings::{EcsSettings, Settings};
use crate::store::Store;
use crate::window::OperatingWindow;

/// The policy set now running. Readers see a reload at their next read.
#[derive(Clone, Debug)]
pub struct Policies(watch::Receiver<Arc<Vec<Policy>>>);

/// The one writer of a [`Policies`]: the daemon's reload (and tests).
#[derive(Debug)]
pub struct PolicyReload(watch::Sender<Arc<Vec<Policy>>>);

impl Policies {
    /// A policy set and its writer.
    pub fn new(policies: Vec<Policy>) -> (Policies, PolicyReload) {
        let (tx, rx) = watch::channel(Arc::new(policies));
        (Policies(rx), PolicyReload(tx))
    }

    /// The policies now loaded.
    pub fn current(&self) -> Arc<Vec<Policy>> {
        self.0.borrow().clone()
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
        };
        (ctx, reload)
    }

    /// The context a command runs with, from its settings: the database connected, the ECS
    /// clients of every account `policies` name (each checked), the notifier started when
    /// webhooks are configured, calls counted in `metrics`.
    pub async fn from_settings(
        settings: &Settings,
        policies: Vec<Policy>,
        clock: SharedClock,
        metrics: Metrics,
    ) -> anyhow::Result<(Context, PolicyReload)> {
        let store = Store::connect(&settings.database).await?;
        let client = ecs_client(&settings.ecs)?.with_observer(metrics.call_observer());
        let accounts = accounts(settings, client, &policies)?;
        let notifier = if settings.webhooks.is_empty() {
            None
        } else {
            Some(Notifier::start(
                settings.webhooks.clone(),
                NotifierOptions::default(),
            )?)
        };
        let extras = Extras {
            metrics,
            notifier,
            window: settings.window.clone(),
            protection: settings.protection.clone(),
        };
        Ok(Context::new(store, accounts, policies, clock, extras))
    }
}

/// The default ECS client of these settings, with credentials looked up in the order of
/// Alibaba's SDKs (see `--profile`).
pub fn ecs_client(s: &EcsSettings) -> anyhow::Result<EcsClient> {
    let creds = crate::ecs::credentials::default_chain(crate::ecs::credentials::ChainOptions {
        profile: s.profile.clone(),
        ..Default::default()
    });
    let cfg = ClientConfig {
        endpoint: s.endpoint.clone(),
        connect_timeout: s.connect_timeout,
        timeout: s.call_timeout,
        signature: s.signature,
        ..ClientConfig::default()
    };
    EcsClient::new(cfg, creds).context("cannot build the HTTP client")
}

/// Clients by account for `policies`: `default` for policies without `account:`, and for each
/// named account the profile it maps to (`accounts:` in janitor.yaml, else the profile of the
/// same name). Fails, naming the policy, when a named account's profile cannot be used.
pub fn accounts(
    settings: &Settings,
    default: EcsClient,
    policies: &[Policy],
) -> anyhow::Result<Accounts> {
    let accounts = Accounts::from_profiles(default, settings.accounts.clone());
    accounts.check(policies)?;
    Ok(accounts)
}
