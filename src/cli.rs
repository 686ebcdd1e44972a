//! The command line: clap definitions, and for each subcommand a call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::ecs::client::{ClientConfig, EcsClient};
use crate::ecs::credentials::{EnvProvider, SharedProvider};
use crate::sim::{self, Faults, SimConfig, Simulator};

/// Releases unneeded Alibaba Cloud ECS instances from declarative lifecycle policies.
#[derive(Debug, Parser)]
#[command(name = "ecs-janitor", version, about, long_about = None)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "JANITOR_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ECS simulator: a stateful fake ECS endpoint for trying, testing and benchmarking.
    Simulate(SimulateArgs),
}

/// How to reach ECS.
#[derive(Debug, Clone, Args)]
pub struct EcsArgs {
    /// Replace https://ecs.<region>.aliyuncs.com/ for every region (http allowed, e.g. the simulator).
    #[arg(long, env = "JANITOR_ECS_ENDPOINT")]
    pub endpoint: Option<url::Url>,
    /// Seconds to wait for a connection to ECS.
    #[arg(long, env = "JANITOR_ECS_CONNECT_TIMEOUT", default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Seconds one ECS call may take in all.
    #[arg(long, env = "JANITOR_ECS_TIMEOUT", default_value_t = 30.0)]
    pub call_timeout: f64,
}

impl EcsArgs {
    /// The client these flags describe, with credentials from the environment.
    pub fn client(&self) -> anyhow::Result<EcsClient> {
        self.client_with(Arc::new(EnvProvider::from_env()))
    }

    pub fn client_with(&self, creds: SharedProvider) -> anyhow::Result<EcsClient> {
        let secs = |what: &str, v: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{what} must be a positive number of seconds, got {v}"))
        };
        let cfg = ClientConfig {
            endpoint: self.endpoint.clone(),
            connect_timeout: secs("connect-timeout", self.connect_timeout)?,
            timeout: secs("call-timeout", self.call_timeout)?,
            ..ClientConfig::default()
        };
        EcsClient::new(cfg, creds).context("cannot build the HTTP client")
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Generate a fleet of this many instances (ignored with --fleet).
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Seed of the generated fleet and of fault injection.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load the fleet from a JSON array of instances in DescribeInstances' shape.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// The AccessKey id the simulator accepts.
    #[arg(long, default_value = sim::DEFAULT_ACCESS_KEY_ID)]
    pub access_key_id: String,
    /// The AccessKey secret the simulator accepts.
    #[arg(long, default_value = sim::DEFAULT_ACCESS_KEY_SECRET, hide_default_value = true)]
    pub access_key_secret: String,
    /// Probability of answering 500 InternalError without doing anything.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub internal_error_rate: f64,
    /// Probability of answering 400 Throttling without doing anything.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub throttle_rate: f64,
    /// Probability that a DeleteInstances is carried out but its answer is lost.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub drop_after_commit_rate: f64,
    /// Milliseconds added before every answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; give a probability from 0 to 1"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not a probability; give a number from 0 to 1"
        ))
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Simulate(args) => simulate(args).await,
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
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
        ..SimConfig::default()
    };
    let handle = Simulator::new(cfg, fleet)
        .serve(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
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
