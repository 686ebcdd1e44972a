//! ecs-janitor releases Alibaba Cloud ECS instances that nobody needs, following declarative
//! lifecycle policies kept as YAML in git.
//!
//! The modules follow the data flow:
//! `policy` (YAML → validated policies) → `schedule` (cron ticks) → `inventory` (DescribeInstances)
//! → `plan` (pure decisions with reasons) → `store` (the durable release queue) → `worker`
//! (re-verify, DeleteInstances, record) → `marks` (tags announcing releases in their grace) →
//! `server` (health, metrics, API, status page).
//! `ecs` is the signed OpenAPI client and `sim` a faithful ECS simulator used by tests, the demo and
//! the benchmarks.

pub mod app;
pub mod assemble;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod context;
pub mod daemon;
pub mod demo;
pub mod ecs;
pub mod inventory;
pub mod marks;
pub mod memory;
pub mod metrics;
pub mod money;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod pricing;
pub mod reconcile;
pub mod replicas;
pub mod schedule;
pub mod server;
pub mod settings;
pub mod signals;
pub mod sim;
pub mod store;
pub mod timefmt;
pub mod window;
pub mod worker;
