//! How many DescribeInstances pages of 100 the simulator serves per second to the client, over
//! real HTTP on 127.0.0.1, so other benchmarks know the simulator is not their bottleneck.
//!
//! `cargo bench --bench sim_describe` measures; under `cargo test` it runs a small smoke pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecs_janitor::ecs::client::{ClientConfig, DescribeFilter, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::sim::{self, fleet, SimConfig, Simulator};

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (instances, seconds) = if measuring {
        (100_000, 5.0)
    } else {
        (2_000, 0.2)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let now = chrono::Utc::now();
        let sim = Simulator::new(SimConfig::default(), fleet::generate(instances, 1, now));
        let h = sim.serve("127.0.0.1:0".parse().unwrap()).await.expect("serve");
        let client = EcsClient::new(
            ClientConfig { endpoint: Some(h.endpoint()), ..ClientConfig::default() },
            Arc::new(StaticProvider(Credentials::new(
                sim::DEFAULT_ACCESS_KEY_ID,
                sim::DEFAULT_ACCESS_KEY_SECRET,
            ))),
        )
        .expect("client");
        for concurrency in [1usize, 4] {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let c = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut pages = 0usize;
                    let mut n = 0usize;
                    let region = fleet::REGIONS[w % fleet::REGIONS.len()];
                    while start.elapsed() < Duration::from_secs_f64(seconds) {
                        let mut token: Option<String> = None;
                        loop {
                            let p = c
                                .describe_page(region, &DescribeFilter::default(), token.as_deref())
                                .await
                                .expect("describe");
                            pages += 1;
                            n += p.instances.len();
                            match p.next_token {
                                Some(t) => token = Some(t),
                                None => break,
                            }
                        }
                    }
                    (pages, n)
                }));
            }
            let mut pages = 0;
            let mut n = 0;
            for t in tasks {
                let (p, i) = t.await.expect("task");
                pages += p;
                n += i;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "sim_describe: fleet {instances}, concurrency {concurrency}: {pages} pages ({n} instances) in {secs:.2} s = {:.0} pages/s",
                pages as f64 / secs
            );
            assert!(pages > 0);
        }
        h.shutdown().await;
    });
}
