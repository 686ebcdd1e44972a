//! Builds what a command runs with from its settings: the database connected, the ECS clients
//! of every account the policies name (each checked), the notifier started when webhooks are
//! configured, all gathered into a [`Context`].

use anyhow::Context as _;

use crate::clock::SharedClock;
use crate::context::{Context, Extras, PolicyReload};
use crate::ecs::client::{ClientConfig, EcsClient};
use crate::ecs::Accounts;
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifierOptions};
use crate::policy::Policy;
use crate::settings::{EcsSettings, Settings};
use crate::store::Store;

/// How plans are priced: the price file read and checked, when one is set.
pub fn prices(ecs: &EcsSettings) -> anyhow::Result<crate::pricing::PriceConfig> {
    let file = match &ecs.prices_file {
        None => None,
        Some(p) => Some(std::sync::Arc::new(
            crate::pricing::PriceFile::load(p)
                .map_err(|e| anyhow::anyhow!("the price file has problems:\n{e}"))?,
        )),
    };
    Ok(crate::pricing::PriceConfig {
        file,
        disabled: false,
    })
}

/// The context a command runs with, from its settings: the database connected, the ECS
/// clients of every account the `acting` policies name (all of `policies` when empty; each checked), the notifier started when
/// webhooks are configured, calls counted in `metrics`.
pub async fn context(
    settings: &Settings,
    policies: Vec<Policy>,
    acting: &[String],
    clock: SharedClock,
    metrics: Metrics,
) -> anyhow::Result<(Context, PolicyReload)> {
    let store = Store::connect(&settings.database).await?;
    let client = ecs_client(&settings.ecs)?.with_observer(metrics.call_observer());
    // Only the policies that act need their accounts' credentials: the others (outside
    // `--policy`) only own what they match, which needs no call.
    let acts: Vec<Policy> = policies
        .iter()
        .filter(|p| acting.is_empty() || acting.contains(&p.name))
        .cloned()
        .collect();
    let accounts = accounts(settings, client, &acts)?;
    let notifier = if settings.webhooks.is_empty() {
        None
    } else {
        Some(Notifier::start(
            settings.webhooks.clone(),
            NotifierOptions::default(),
        )?)
    };
    let prices = prices(&settings.ecs)?;
    let extras = Extras {
        metrics,
        notifier,
        window: settings.window.clone(),
        protection: settings.protection.clone(),
        prices,
    };
    Ok(Context::new(store, accounts, policies, clock, extras))
}

/// The default ECS client of these settings, with credentials looked up in the order of
/// Alibaba's SDKs (see `--profile`).
pub fn ecs_client(s: &EcsSettings) -> anyhow::Result<EcsClient> {
    let creds = crate::ecs::chain::default_chain(crate::ecs::chain::ChainOptions {
        profile: s.profile.clone(),
        ..Default::default()
    });
    let cfg = ClientConfig {
        endpoint: s.endpoint.clone(),
        connect_timeout: s.connect_timeout,
        timeout: s.call_timeout,
        signature: s.signature,
        pace: crate::ecs::pace::PaceConfig {
            ceiling: s.calls_per_second.map(f64::from),
            ..Default::default()
        },
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
    accounts.check(crate::policy::account_uses(policies))?;
    Ok(accounts)
}
