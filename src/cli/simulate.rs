//! `simulate`: serve the ECS simulator until Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::args::SimulateArgs;
use crate::sim::{self, Faults, SimConfig, Simulator};

pub(super) async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let fleet = match &args.fleet {
        Some(path) => sim::fleet::load_file(path)?,
        None => sim::fleet::generate(args.instances, args.seed, chrono::Utc::now()),
    };
    let n = fleet.len();
    let cfg = SimConfig {
        access_key_id: args.access_key_id.clone(),
        access_key_secret: args.access_key_secret,
        faults: Faults {
            internal_error_rate: args.internal_error_rate,
            throttle_rate: args.throttle_rate,
            drop_after_commit_rate: args.drop_after_commit_rate,
            latency: Duration::from_millis(args.latency_ms),
            actions: Vec::new(),
        },
        seed: args.seed,
        release_delay: Duration::from_millis(args.release_delay_ms),
        quotas: args.quotas.iter().cloned().collect(),
        ..SimConfig::default()
    };
    let handle = Simulator::new(cfg, fleet)
        .serve(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    outln!(
        "ECS simulator serving {n} instances at {} (AccessKeyId {}). State: {}__sim/state. Ctrl-C stops it.",
        handle.endpoint(),
        args.access_key_id,
        handle.endpoint()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
