//! `demo`: the main job on embedded defaults, the simulator in-process and SQLite in a temporary
//! directory, with nothing to configure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::{App, AppError, ApplyOptions};
use crate::clock::{OffsetClock, SharedClock};
use crate::context::{Context, Extras};
use crate::ecs::client::{ClientConfig, EcsClient};
use crate::ecs::credentials::{Credentials, StaticProvider};
use crate::plan::{self, Plan};
use crate::sim::{self, SimConfig, Simulator};
use crate::store::{ReleaseState, Store};
use crate::worker::WorkerConfig;

/// The example policies, built in so the demo needs no files.
pub const DEMO_POLICIES: [(&str, &str); 2] = [
    (
        "policies/release-expired-subscriptions.yaml",
        include_str!("../policies/release-expired-subscriptions.yaml"),
    ),
    (
        "policies/release-stopped-payg-tagged.yaml",
        include_str!("../policies/release-stopped-payg-tagged.yaml"),
    ),
];

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub instances: usize,
    pub seed: u64,
    /// Where the SQLite file goes; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub color: bool,
}

/// The main job on embedded defaults: the simulator in-process with a seeded fleet, SQLite in a
/// temporary directory, the example policies. Day 0: a pass records which instances are stopped
/// and starts the grace periods. Then the clock jumps a day ahead, and day 1's plan is applied.
/// Returns the text to print and the number of instances released.
pub async fn demo(opts: DemoOptions, out: &mut dyn FnMut(&str)) -> Result<usize, AppError> {
    let clock = OffsetClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let fleet = sim::fleet::generate(opts.instances, opts.seed, shared.now());
    let sim_cfg = SimConfig {
        clock: shared.clone(),
        seed: opts.seed,
        ..SimConfig::default()
    };
    let handle = Simulator::new(sim_cfg, fleet)
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| AppError::Other(format!("cannot start the simulator: {e}")))?;
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()
                .map_err(|e| AppError::Other(format!("cannot make a temporary directory: {e}")))?;
            tmp.path().to_path_buf()
        }
    };
    let db = dir.join("janitor.db");
    let url = format!("sqlite://{}", db.display());
    out(&format!(
        "ecs-janitor demo: simulator with {} instances at {}, queue in {}\n",
        opts.instances,
        handle.endpoint(),
        db.display()
    ));
    let store = Store::connect(&url).await?;
    let client = EcsClient::with_clock(
        ClientConfig {
            endpoint: Some(handle.endpoint()),
            ..ClientConfig::default()
        },
        Arc::new(StaticProvider(Credentials::new(
            sim::DEFAULT_ACCESS_KEY_ID,
            sim::DEFAULT_ACCESS_KEY_SECRET,
        ))),
        shared.clone(),
    )
    .map_err(|e| AppError::Other(format!("cannot build the HTTP client: {e}")))?;
    let inputs = DEMO_POLICIES
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec()))
        .collect();
    let policies = crate::policy::load_bytes(inputs)
        .map_err(|d| AppError::Other(format!("the built-in policies do not load:\n{d}")))?
        .policies;
    let worker_cfg = WorkerConfig {
        backoff: crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        ..WorkerConfig::default()
    };
    let accounts = crate::ecs::Accounts::single(client);
    let (ctx, reload) = Context::new(
        store,
        accounts,
        policies.clone(),
        shared.clone(),
        Extras::default(),
    );
    let app = App::new(ctx, reload, worker_cfg, false);
    out("\n== Day 0: first look. Stopped instances are noted; grace periods start.\n\n");
    let first = app
        .apply(None, &ApplyOptions::default(), CancellationToken::new())
        .await?;
    out(&plan::render_text(&first.pass.plan, opts.color));
    out("\n");
    clock.advance(chrono::Duration::hours(25));
    out("\n== Day 1 (the clock jumps 25 hours): the plan, then apply.\n\n");
    let plan: Plan = app.reconciler.plan_only(&policies, shared.now()).await?;
    out(&plan::render_text(&plan, opts.color));
    let report = app
        .apply(None, &ApplyOptions::default(), CancellationToken::new())
        .await?;
    out("\n");
    out(&report.render(shared.now()));
    let released = report.in_state(ReleaseState::Succeeded).count();
    let sim_released = handle.sim.releases().len();
    if sim_released != released {
        return Err(AppError::Other(format!(
            "the simulator released {sim_released} instances but the queue recorded {released}"
        )));
    }
    handle.shutdown().await;
    Ok(released)
}
