//! Alibaba's own Python SDKs against the simulator on 127.0.0.1: `alibabacloud-ecs20140526`
//! (today's SDK, signature V3) and `aliyun-python-sdk-ecs` (the older one, signature V1), each
//! through paging with NextToken, tag and status filters, DryRun, DeleteInstances with a
//! ClientToken and its replay, a wrong secret refused, and the answers savings read
//! (DescribePrice, DescribeRenewalPrice, DescribeDisks).
//!
//! Skipped, with a note, where `python3` or the packages are missing; `.ci/run` installs them.

mod common;

use std::process::Command;

use ecs_janitor::ecs::types::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, Faults, SimHandle};

const REGION: &str = "cn-hangzhou";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive_ecs.py");

/// Whether `python3` can import `module`; prints why the test is skipped when not.
fn python_has(module: &str, package: &str) -> bool {
    match Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
    {
        Err(e) => {
            eprintln!("SKIPPED: python3 is not available ({e}); install it and `python3 -m pip install {package}` to run this test");
            false
        }
        Ok(o) if !o.status.success() => {
            eprintln!(
                "SKIPPED: the Python package {package} is not installed (`python3 -m pip install {package}`): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Ok(_) => true,
    }
}

fn fleet() -> Vec<Instance> {
    let mut out = Vec::new();
    for i in 0..23 {
        let mut inst = common::inst(
            &format!("i-ci-{i:03}"),
            REGION,
            InstanceStatus::Stopped,
            ChargeType::PostPaid,
        );
        inst.tags.insert("purpose".into(), "ci".into());
        out.push(inst);
    }
    // Filtered out: running, or another purpose.
    let mut running = common::inst(
        "i-ci-running",
        REGION,
        InstanceStatus::Running,
        ChargeType::PostPaid,
    );
    running.tags.insert("purpose".into(), "ci".into());
    let mut web = common::inst(
        "i-web-stopped",
        REGION,
        InstanceStatus::Stopped,
        ChargeType::PostPaid,
    );
    web.tags.insert("purpose".into(), "web".into());
    // A subscription, for DescribeRenewalPrice.
    let sub = common::inst(
        "i-sub-expired",
        REGION,
        InstanceStatus::Stopped,
        ChargeType::PrePaid,
    );
    out.extend([running, web, sub]);
    out
}

async fn drive(h: &SimHandle, kind: &str, delete_id: &str, token: &str) -> serde_json::Value {
    let endpoint = h.addr.to_string();
    let args = [
        SCRIPT,
        kind,
        &endpoint,
        REGION,
        sim::DEFAULT_ACCESS_KEY_ID,
        sim::DEFAULT_ACCESS_KEY_SECRET,
        delete_id,
        token,
        "i-sub-expired",
        "i-web-stopped",
    ]
    .map(str::to_string);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{kind} SDK script failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{kind} SDK script printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn scenario(kind: &str, module: &str, package: &str, signature: &str) {
    if !python_has(module, package) {
        return;
    }
    let h = common::start_sim(fleet(), Faults::default(), 16).await;
    let v = drive(&h, kind, "i-ci-007", &format!("{kind}-sdk-token-1")).await;
    let mut paged: Vec<String> = v["paged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    // 23 matches, 10 a page: three pages, each instance once.
    assert_eq!(v["pages"], 3, "{v}");
    paged.sort();
    let want: Vec<String> = (0..23).map(|i| format!("i-ci-{i:03}")).collect();
    assert_eq!(paged, want, "{v}");
    assert_eq!(v["dry_run"], "DryRunOperation", "{v}");
    assert_eq!(
        v["delete"], v["replay"],
        "the replay answers the first RequestId: {v}"
    );
    // aliyun-python-sdk-core turns a SignatureDoesNotMatch whose echoed string to sign equals its
    // own into InvalidAccessKeySecret: so the echo matched, and only the secret was wrong.
    let wrong_secret = if kind == "old" {
        "InvalidAccessKeySecret"
    } else {
        "SignatureDoesNotMatch"
    };
    assert_eq!(v["wrong_secret"], wrong_secret, "{v}");
    // What savings read: a price with its breakdown, a renewal price, an instance's disks.
    assert_eq!(v["price"]["currency"], "CNY", "{v}");
    assert_eq!(v["price"]["details"]["instanceType"], 0.48, "{v}");
    assert!(v["price"]["details"]["systemDisk"].is_number(), "{v}");
    assert_eq!(v["renewal"]["currency"], "CNY", "{v}");
    assert!(v["renewal"]["original"].as_f64().unwrap() > 0.0, "{v}");
    let want: Vec<serde_json::Value> = h
        .sim
        .disks()
        .iter()
        .filter(|d| d.instance_id == "i-web-stopped")
        .map(|d| {
            serde_json::json!({
                "id": d.disk_id, "type": d.kind.as_str(), "category": d.category,
                "size": d.size_gb, "delete_with_instance": d.delete_with_instance,
            })
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(v["disks"], serde_json::Value::Array(want), "{v}");
    let releases = h.sim.releases();
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0].instance_id, "i-ci-007");
    assert_eq!(
        releases[0].client_token.as_deref(),
        Some(format!("{kind}-sdk-token-1").as_str())
    );
    // Every call the simulator accepted was signed as this SDK signs.
    let calls = h.sim.calls();
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(c.signature, signature, "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alibabacloud_ecs20140526_signs_v3_and_is_served() {
    scenario(
        "new",
        "alibabacloud_ecs20140526.client",
        "alibabacloud-ecs20140526",
        "v3",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_python_sdk_ecs_signs_v1_and_is_served() {
    scenario(
        "old",
        "aliyunsdkecs.request.v20140526.DescribeInstancesRequest",
        "aliyun-python-sdk-ecs",
        "v1",
    )
    .await;
}
