//! The ECS client against the simulator, over real HTTP on 127.0.0.1: paging, filters, every
//! error code and its class, ClientToken replay, injected faults, and bad input into the simulator.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ecs_janitor::clock::{ManualClock, SystemClock};
use ecs_janitor::ecs::client::{ClientConfig, DeleteRequest, DescribeFilter, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::ecs::error::{EcsError, ErrorClass, TransportKind};
use ecs_janitor::ecs::sign;
use ecs_janitor::ecs::types::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, fleet, Faults, SimConfig, SimHandle, Simulator};

const REGION: &str = "cn-hangzhou";

fn inst(id: &str, status: InstanceStatus, charge: ChargeType) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: format!("name-{id}"),
        region_id: REGION.into(),
        zone_id: "cn-hangzhou-h".into(),
        status,
        charge_type: charge,
        instance_type: "ecs.g6.large".into(),
        creation_time: Some(Utc::now() - chrono::Duration::days(30)),
        expired_time: Some(fleet::payg_expiry()),
        auto_release_time: None,
        deletion_protection: false,
        lock_reasons: vec![],
        tags: ecs_janitor::ecs::Tags::new(),
        resource_group_id: "rg-1".into(),
        stopped_mode: "KeepCharging".into(),
    }
}

async fn start(fleet: Vec<Instance>, faults: Faults) -> SimHandle {
    let cfg = SimConfig {
        faults,
        seed: 7,
        ..SimConfig::default()
    };
    Simulator::new(cfg, fleet)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client_for(h: &SimHandle, secret: &str) -> EcsClient {
    let cfg = ClientConfig {
        endpoint: Some(h.endpoint()),
        read_backoff: ecs_janitor::backoff::Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(20),
        ),
        ..ClientConfig::default()
    };
    let creds = Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, secret);
    EcsClient::new(cfg, Arc::new(StaticProvider(creds))).unwrap()
}

fn client(h: &SimHandle) -> EcsClient {
    client_for(h, sim::DEFAULT_ACCESS_KEY_SECRET)
}

fn del(ids: &[&str], token: &str) -> DeleteRequest {
    DeleteRequest {
        region: REGION.into(),
        instance_ids: ids.iter().map(|s| s.to_string()).collect(),
        force: false,
        terminate_subscription: false,
        dry_run: false,
        client_token: token.into(),
    }
}

fn api_code(e: &EcsError) -> (&str, u16) {
    match e {
        EcsError::Api { code, status, .. } => (code, *status),
        other => panic!("expected an ECS error answer, got {other:?}"),
    }
}

/// Sends a request signed by hand, so a test can send what the client refuses to build.
async fn raw(
    h: &SimHandle,
    params: &[(&str, &str)],
    nonce: Option<&str>,
) -> (u16, serde_json::Value) {
    let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let nonce = nonce
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut p: Vec<(String, String)> = vec![
        ("Version".into(), "2014-05-26".into()),
        ("Format".into(), "JSON".into()),
        ("AccessKeyId".into(), sim::DEFAULT_ACCESS_KEY_ID.into()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), nonce),
        ("Timestamp".into(), now),
    ];
    p.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let sig = sign::sign(
        sim::DEFAULT_ACCESS_KEY_SECRET,
        &sign::string_to_sign("GET", &p),
    );
    p.push(("Signature".into(), sig));
    let q: Vec<String> = p
        .iter()
        .map(|(k, v)| format!("{}={}", sign::percent_encode(k), sign::percent_encode(v)))
        .collect();
    let url = format!("{}?{}", h.endpoint(), q.join("&"));
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn token_paging_returns_every_instance_once_across_thousands() {
    let now = Utc::now();
    let fleet = fleet::generate(5000, 11, now);
    let expected: HashSet<String> = fleet
        .iter()
        .filter(|i| i.region_id == REGION)
        .map(|i| i.instance_id.clone())
        .collect();
    assert!(expected.len() > 1000);
    let h = start(fleet, Faults::default()).await;
    let got = client(&h)
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap();
    let ids: HashSet<String> = got.iter().map(|i| i.instance_id.clone()).collect();
    assert_eq!(ids.len(), got.len(), "no instance twice");
    assert_eq!(ids, expected);
    // ceil(n/100) pages, each a DescribeInstances call.
    let calls = h.sim.calls().len();
    assert_eq!(calls, expected.len().div_ceil(100));
}

#[tokio::test]
async fn page_number_paging_covers_the_fleet_with_total_count() {
    let fleet = fleet::generate(1500, 12, Utc::now());
    let n = fleet.iter().filter(|i| i.region_id == REGION).count();
    let h = start(fleet, Faults::default()).await;
    let mut seen = HashSet::new();
    for page in 1.. {
        let pn = page.to_string();
        let (status, body) = raw(
            &h,
            &[
                ("Action", "DescribeInstances"),
                ("RegionId", REGION),
                ("PageNumber", &pn),
                ("PageSize", "100"),
            ],
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["TotalCount"].as_u64().unwrap() as usize, n);
        let items = body["Instances"]["Instance"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        for i in items {
            assert!(seen.insert(i["InstanceId"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(seen.len(), n);
}

#[tokio::test]
async fn every_server_side_filter_narrows_the_answer() {
    let now = Utc::now();
    let fleet = fleet::generate(3000, 13, now);
    let local: Vec<Instance> = fleet
        .iter()
        .filter(|i| i.region_id == REGION)
        .cloned()
        .collect();
    let h = start(fleet, Faults::default()).await;
    let c = client(&h);
    let ids = |v: &[Instance]| {
        v.iter()
            .map(|i| i.instance_id.clone())
            .collect::<HashSet<_>>()
    };
    let check = |f: DescribeFilter, pred: Box<dyn Fn(&Instance) -> bool>| {
        let c = c.clone();
        let want: HashSet<String> = local
            .iter()
            .filter(|i| pred(i))
            .map(|i| i.instance_id.clone())
            .collect();
        async move {
            let got = c.describe_instances(REGION, &f).await.unwrap();
            assert!(!want.is_empty(), "the filter {f:?} selects something");
            assert_eq!(ids(&got), want, "filter {f:?}");
        }
    };
    check(
        DescribeFilter {
            status: Some(InstanceStatus::Stopped),
            ..Default::default()
        },
        Box::new(|i| i.status == InstanceStatus::Stopped),
    )
    .await;
    check(
        DescribeFilter {
            charge_type: Some(ChargeType::PrePaid),
            ..Default::default()
        },
        Box::new(|i| i.charge_type == ChargeType::PrePaid),
    )
    .await;
    check(
        DescribeFilter {
            tags: vec![
                ("purpose".into(), "ci".into()),
                ("env".into(), "dev".into()),
            ],
            ..Default::default()
        },
        Box::new(|i| {
            i.tags.get("purpose").map(String::as_str) == Some("ci")
                && i.tags.get("env").map(String::as_str) == Some("dev")
        }),
    )
    .await;
    check(
        DescribeFilter {
            tags: vec![("keep".into(), String::new())],
            ..Default::default()
        },
        Box::new(|i| i.tags.contains_key("keep")),
    )
    .await;
    // More than 100 ids are split into several calls by the client.
    let some: Vec<String> = local
        .iter()
        .step_by(3)
        .take(150)
        .map(|i| i.instance_id.clone())
        .collect();
    let set: HashSet<String> = some.iter().cloned().collect();
    check(
        DescribeFilter {
            instance_ids: Some(some.clone()),
            status: Some(InstanceStatus::Running),
            ..Default::default()
        },
        Box::new(move |i| set.contains(&i.instance_id) && i.status == InstanceStatus::Running),
    )
    .await;
    // Unknown ids just produce fewer entries.
    let got = c
        .describe_instances(
            REGION,
            &DescribeFilter {
                instance_ids: Some(vec!["i-nope".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn release_rules_answer_ecs_codes_with_their_classes() {
    let now = Utc::now();
    let mut protected = inst("i-protected", InstanceStatus::Stopped, ChargeType::PostPaid);
    protected.deletion_protection = true;
    let mut locked = inst("i-locked", InstanceStatus::Stopped, ChargeType::PostPaid);
    locked.lock_reasons = vec!["security".into()];
    let running = inst("i-running", InstanceStatus::Running, ChargeType::PostPaid);
    let pending = inst("i-pending", InstanceStatus::Pending, ChargeType::PostPaid);
    let mut sub_live = inst("i-sub-live", InstanceStatus::Stopped, ChargeType::PrePaid);
    sub_live.expired_time = Some(now + chrono::Duration::days(10));
    let mut sub_expired = inst(
        "i-sub-expired",
        InstanceStatus::Stopped,
        ChargeType::PrePaid,
    );
    sub_expired.expired_time = Some(now - chrono::Duration::days(10));
    let ok = inst("i-ok", InstanceStatus::Stopped, ChargeType::PostPaid);
    let h = start(
        vec![
            protected,
            locked,
            running,
            pending,
            sub_live,
            sub_expired,
            ok,
        ],
        Faults::default(),
    )
    .await;
    let c = client(&h);
    let cases: Vec<(DeleteRequest, &str, u16, ErrorClass)> = vec![
        (
            del(&["i-protected"], "t1"),
            "InvalidOperation.DeletionProtection",
            403,
            ErrorClass::Permanent,
        ),
        (
            del(&["i-running"], "t3"),
            "IncorrectInstanceStatus",
            403,
            ErrorClass::Permanent,
        ),
        (
            del(&["i-pending"], "t3b"),
            "IncorrectInstanceStatus.Initializing",
            403,
            ErrorClass::Retryable,
        ),
        (
            DeleteRequest {
                terminate_subscription: true,
                ..del(&["i-sub-live"], "t4")
            },
            "ChargeTypeViolation",
            403,
            ErrorClass::Permanent,
        ),
        (
            del(&["i-sub-expired"], "t5"),
            "ChargeTypeViolation",
            403,
            ErrorClass::Permanent,
        ),
        (
            del(&["i-missing"], "t6"),
            "InvalidInstanceId.NotFound",
            404,
            ErrorClass::Gone,
        ),
        (
            DeleteRequest {
                dry_run: true,
                ..del(&["i-ok"], "t7")
            },
            "DryRunOperation",
            400,
            ErrorClass::DryRunPassed,
        ),
        // All or nothing: one bad member refuses the whole batch.
        (
            del(&["i-ok", "i-protected"], "t8"),
            "InvalidOperation.DeletionProtection",
            403,
            ErrorClass::Permanent,
        ),
    ];
    for (req, code, status, class) in cases {
        let e = c.delete_instances(&req).await.unwrap_err();
        assert_eq!(api_code(&e), (code, status), "{req:?}");
        assert_eq!(e.class(), class, "{code}");
        assert!(e.request_id().is_some(), "errors carry a RequestId");
    }
    assert!(
        h.sim.releases().is_empty(),
        "nothing was released by refused calls"
    );

    // What is allowed goes through.
    c.delete_instances(&DeleteRequest {
        force: true,
        ..del(&["i-running"], "t9")
    })
    .await
    .unwrap();
    c.delete_instances(&DeleteRequest {
        terminate_subscription: true,
        ..del(&["i-sub-expired"], "t10")
    })
    .await
    .unwrap();
    c.delete_instances(&del(&["i-ok"], "t11")).await.unwrap();
    // A security lock does not block the release; the instance's disks all go with it.
    c.delete_instances(&del(&["i-locked"], "t2")).await.unwrap();
    let releases = h.sim.releases();
    let released: Vec<&str> = releases.iter().map(|r| r.instance_id.as_str()).collect();
    assert_eq!(released, ["i-running", "i-sub-expired", "i-ok", "i-locked"]);
    let all_disks: Vec<bool> = releases.iter().map(|r| r.all_disks_released).collect();
    assert_eq!(all_disks, [false, false, false, true]);
    let left: HashSet<String> = h
        .sim
        .instances()
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert!(!left.contains("i-ok") && left.contains("i-protected"));
}

#[tokio::test]
async fn auth_errors_wrong_secret_unknown_key_skew_and_nonce_reuse() {
    let h = start(
        vec![inst("i-1", InstanceStatus::Stopped, ChargeType::PostPaid)],
        Faults::default(),
    )
    .await;
    let e = client_for(&h, "wrong-secret")
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), ("SignatureDoesNotMatch", 400));
    assert_eq!(e.class(), ErrorClass::Permanent);

    let cfg = ClientConfig {
        endpoint: Some(h.endpoint()),
        ..ClientConfig::default()
    };
    let other = EcsClient::new(
        cfg.clone(),
        Arc::new(StaticProvider(Credentials::new("nobody", "x"))),
    )
    .unwrap();
    let e = other
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), ("InvalidAccessKeyId.NotFound", 404));

    // A client whose clock is 20 minutes fast.
    let skewed = ManualClock::new(Utc::now() + chrono::Duration::minutes(20));
    let c = EcsClient::with_clock(
        cfg,
        Arc::new(StaticProvider(Credentials::new(
            sim::DEFAULT_ACCESS_KEY_ID,
            sim::DEFAULT_ACCESS_KEY_SECRET,
        ))),
        Arc::new(skewed),
    )
    .unwrap();
    let e = c
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), ("InvalidTimeStamp.Expired", 400));

    let params = [("Action", "DescribeInstances"), ("RegionId", REGION)];
    let (s, _) = raw(&h, &params, Some("fixed-nonce")).await;
    assert_eq!(s, 200);
    let (s, body) = raw(&h, &params, Some("fixed-nonce")).await;
    assert_eq!(
        (s, body["Code"].as_str().unwrap()),
        (400, "SignatureNonceUsed")
    );
    let _ = SystemClock;
}

#[tokio::test]
async fn a_client_token_replays_the_first_answer_and_refuses_other_parameters() {
    let h = start(
        vec![
            inst("i-a", InstanceStatus::Stopped, ChargeType::PostPaid),
            inst("i-b", InstanceStatus::Stopped, ChargeType::PostPaid),
        ],
        Faults::default(),
    )
    .await;
    let c = client(&h);
    let first = c.delete_instances(&del(&["i-a"], "tok-1")).await.unwrap();
    let again = c.delete_instances(&del(&["i-a"], "tok-1")).await.unwrap();
    assert_eq!(
        first.request_id, again.request_id,
        "same answer for the same token"
    );
    assert_eq!(h.sim.releases().len(), 1, "the second call did nothing");
    let e = c
        .delete_instances(&del(&["i-b"], "tok-1"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), ("IdempotentParameterMismatch", 400));
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(h.sim.instances().iter().any(|i| i.instance_id == "i-b"));
}

#[tokio::test]
async fn injected_faults_have_the_right_classes() {
    let h = start(
        vec![inst("i-a", InstanceStatus::Stopped, ChargeType::PostPaid)],
        Faults {
            internal_error_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let c = client(&h);
    let e = c
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), ("InternalError", 500));
    assert_eq!(e.class(), ErrorClass::Retryable);
    // A read is retried inside the client: four attempts by default.
    assert_eq!(h.sim.calls().len(), 4);
    let e = c.delete_instances(&del(&["i-a"], "x")).await.unwrap_err();
    assert_eq!(api_code(&e), ("InternalError", 500));
    assert_eq!(
        h.sim.calls().len(),
        5,
        "a release is sent once: the queue retries it"
    );

    h.sim.set_faults(Faults {
        throttle_rate: 1.0,
        ..Faults::default()
    });
    let e = c.delete_instances(&del(&["i-a"], "x")).await.unwrap_err();
    assert_eq!(api_code(&e), ("Throttling", 400));
    assert_eq!(e.class(), ErrorClass::Retryable);
    assert_eq!(
        e.retry_after(),
        Some(Duration::from_millis(50)),
        "TimeLeft is honoured"
    );

    // Reads recover when a fault clears between attempts.
    h.sim.set_faults(Faults {
        internal_error_rate: 0.5,
        ..Faults::default()
    });
    for _ in 0..5 {
        c.describe_instances(REGION, &DescribeFilter::default())
            .await
            .unwrap();
    }

    h.sim.set_faults(Faults {
        drop_after_commit_rate: 1.0,
        ..Faults::default()
    });
    let e = c
        .delete_instances(&del(&["i-a"], "lost"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            EcsError::Transport {
                kind: TransportKind::LostAnswer,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.outcome_unknown());
    assert_eq!(e.class(), ErrorClass::Retryable);
    assert_eq!(h.sim.releases().len(), 1, "the release happened");
    // The retry with the same token gets the first answer; nothing is released twice.
    h.sim.set_faults(Faults::default());
    let again = c.delete_instances(&del(&["i-a"], "lost")).await.unwrap();
    assert_eq!(again.request_id, h.sim.releases()[0].request_id);
    assert_eq!(h.sim.releases().len(), 1);

    h.sim.set_faults(Faults {
        latency: Duration::from_millis(500),
        ..Faults::default()
    });
    let cfg = ClientConfig {
        endpoint: Some(h.endpoint()),
        timeout: Duration::from_millis(100),
        read_attempts: 1,
        ..ClientConfig::default()
    };
    let slow = EcsClient::new(
        cfg,
        Arc::new(StaticProvider(Credentials::new(
            sim::DEFAULT_ACCESS_KEY_ID,
            sim::DEFAULT_ACCESS_KEY_SECRET,
        ))),
    )
    .unwrap();
    let e = slow
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            EcsError::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.class(), ErrorClass::Retryable);
}

#[tokio::test]
async fn bad_input_gets_ecs_errors_never_a_crash() {
    let h = start(
        vec![inst("i-a", InstanceStatus::Stopped, ChargeType::PostPaid)],
        Faults::default(),
    )
    .await;
    let ids101: Vec<(String, String)> = (1..=101)
        .map(|n| (format!("InstanceId.{n}"), format!("i-{n}")))
        .collect();
    let mut p101: Vec<(&str, &str)> = vec![("Action", "DeleteInstances"), ("RegionId", REGION)];
    p101.extend(ids101.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let long = "x".repeat(65);
    // (request parameters, HTTP status, ECS code)
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("RegionId", REGION)], 400, "MissingParameter"),
        (
            vec![("Action", "RebootEverything"), ("RegionId", REGION)],
            404,
            "InvalidAction.NotFound",
        ),
        (
            vec![
                ("Action", "DescribeInstances"),
                ("RegionId", REGION),
                ("InstanceIds", "[\"i-a\""),
            ],
            400,
            "InvalidParameter",
        ),
        (
            vec![
                ("Action", "DescribeInstances"),
                ("RegionId", REGION),
                ("Status", "Sleeping"),
            ],
            404,
            "InvalidStatus.NotFound",
        ),
        (p101, 403, "InvalidParameter.TooManyInstanceIds"),
        (
            vec![
                ("Action", "DeleteInstances"),
                ("RegionId", REGION),
                ("InstanceId.1", "i-a"),
                ("ClientToken", "tøken"),
            ],
            400,
            "InvalidParameter",
        ),
        (
            vec![
                ("Action", "DeleteInstances"),
                ("RegionId", REGION),
                ("InstanceId.1", "i-a"),
                ("ClientToken", &long),
            ],
            400,
            "InvalidParameter",
        ),
        (
            vec![("Action", "DeleteInstances"), ("InstanceId.1", "i-a")],
            400,
            "MissingParameter",
        ),
        (
            vec![("Action", "DeleteInstances"), ("RegionId", REGION)],
            400,
            "MissingParameter",
        ),
        (
            vec![
                ("Action", "DeleteInstances"),
                ("RegionId", REGION),
                ("InstanceId.1", "i-a"),
                ("Force", "maybe"),
            ],
            400,
            "InvalidParameter",
        ),
        (
            vec![
                ("Action", "DescribeInstances"),
                ("RegionId", "NOT A REGION"),
            ],
            404,
            "InvalidRegionId.NotFound",
        ),
        (
            vec![
                ("Action", "DescribeInstances"),
                ("RegionId", REGION),
                // Out of range is clamped (see describe_applies_ecs_limits…); not a number is not.
                ("MaxResults", "many"),
            ],
            400,
            "InvalidParameter",
        ),
    ];
    for (params, status, code) in cases {
        let (s, body) = raw(&h, &params, None).await;
        assert_eq!(
            (s, body["Code"].as_str().unwrap_or("?")),
            (status, code),
            "{params:?}"
        );
        for field in ["RequestId", "HostId", "Message", "Recommend"] {
            assert!(body[field].is_string(), "{field} in {body}");
        }
    }
    // Booleans in any case, and form bodies.
    let (s, _) = raw(
        &h,
        &[
            ("Action", "DeleteInstances"),
            ("RegionId", REGION),
            ("InstanceId.1", "i-a"),
            ("Force", "True"),
            ("DryRun", "FALSE"),
        ],
        None,
    )
    .await;
    assert_eq!(s, 200);
    // The simulator is still serving.
    let (s, _) = raw(
        &h,
        &[("Action", "DescribeInstances"), ("RegionId", REGION)],
        None,
    )
    .await;
    assert_eq!(s, 200);
    // The client refuses locally what ECS would refuse.
    let c = client(&h);
    let ids: Vec<String> = (0..101).map(|n| format!("i-{n}")).collect();
    let mut r = del(&[], "t");
    r.instance_ids = ids;
    assert!(matches!(
        c.delete_instances(&r).await,
        Err(EcsError::Invalid { .. })
    ));
    assert!(matches!(
        c.delete_instances(&del(&["i-a"], &long)).await,
        Err(EcsError::Invalid { .. })
    ));
    assert!(matches!(
        c.delete_instances(&del(&["i-a"], "tøken")).await,
        Err(EcsError::Invalid { .. })
    ));
}

/// Found by fuzzing (fuzz/regressions/sim_request/duplicate-instance-ids-released-once.req):
/// the simulator recorded an instance named twice in one DeleteInstances as released twice.
#[tokio::test]
async fn an_instance_named_twice_in_one_call_is_released_once() {
    let h = start(
        vec![
            inst("i-a", InstanceStatus::Stopped, ChargeType::PostPaid),
            inst("i-b", InstanceStatus::Stopped, ChargeType::PostPaid),
        ],
        Faults::default(),
    )
    .await;
    let delete = [("Action", "DeleteInstances"), ("RegionId", REGION)];
    // The same index twice, then the same id under two indices.
    for ids in [
        [("InstanceId.1", "i-a"), ("InstanceId.1", "i-a")],
        [("InstanceId.1", "i-b"), ("InstanceId.2", "i-b")],
    ] {
        let params: Vec<(&str, &str)> = delete.iter().chain(&ids).copied().collect();
        let (status, body) = raw(&h, &params, None).await;
        assert_eq!(status, 200, "{body}");
    }
    let released: Vec<String> = h
        .sim
        .releases()
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    assert_eq!(released, ["i-a", "i-b"]);
    assert!(h.sim.instances().is_empty());
}

#[tokio::test]
async fn form_bodies_are_signed_and_accepted_like_the_go_sdk_sends_them() {
    let h = start(
        vec![inst("i-a", InstanceStatus::Stopped, ChargeType::PostPaid)],
        Faults::default(),
    )
    .await;
    let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let query: Vec<(String, String)> = vec![
        ("Action".into(), "DescribeInstances".into()),
        ("Version".into(), "2014-05-26".into()),
        ("Format".into(), "JSON".into()),
        ("AccessKeyId".into(), sim::DEFAULT_ACCESS_KEY_ID.into()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), "n-form-1".into()),
        ("Timestamp".into(), now),
    ];
    let form = vec![
        ("RegionId".to_string(), REGION.to_string()),
        ("InstanceName".to_string(), "a b".to_string()),
    ];
    let mut all = query.clone();
    all.extend(form.clone());
    let sig = sign::sign(
        sim::DEFAULT_ACCESS_KEY_SECRET,
        &sign::string_to_sign("POST", &all),
    );
    let mut q = query;
    q.push(("Signature".into(), sig));
    // Go's url.Values.Encode sends spaces as '+': the simulator must form-decode.
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&form)
        .finish();
    assert!(body.contains('+'));
    let resp = reqwest::Client::new()
        .post(h.endpoint())
        .query(&q)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
}

#[tokio::test]
async fn secrets_never_reach_errors_or_debug_output() {
    let secret = "SuperSecretValue-9f8e7d";
    let token = "StsTokenValue-1a2b3c";
    let h = start(vec![], Faults::default()).await;
    let creds = Credentials {
        access_key_id: sim::DEFAULT_ACCESS_KEY_ID.into(),
        access_key_secret: ecs_janitor::ecs::Secret::new(secret),
        security_token: Some(ecs_janitor::ecs::Secret::new(token)),
    };
    let provider = Arc::new(StaticProvider(creds));
    // A wrong secret: the simulator echoes the string to sign, which carries the token.
    let c = EcsClient::new(
        ClientConfig {
            endpoint: Some(h.endpoint()),
            ..ClientConfig::default()
        },
        provider.clone(),
    )
    .unwrap();
    let e = c
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    // Nothing listens on port 9 of localhost: a transport error whose URL holds the token.
    let closed = EcsClient::new(
        ClientConfig {
            endpoint: Some(url::Url::parse("http://127.0.0.1:9/").unwrap()),
            read_attempts: 1,
            ..ClientConfig::default()
        },
        provider,
    )
    .unwrap();
    let e2 = closed
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(e2.class(), ErrorClass::Retryable);
    for text in [
        format!("{e} {e:?}"),
        format!("{e2} {e2:?}"),
        format!("{c:?} {closed:?}"),
    ] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains(token), "{text}");
        assert!(!text.contains(&sign::percent_encode(token)), "{text}");
    }
    let _: Option<DateTime<Utc>> = None;
}

/// `n` Stopped instances tagged `k=v`, ids in order.
fn tagged_fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            let mut x = inst(
                &format!("i-{i:05}"),
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
            );
            x.tags.insert("k".into(), "v".into());
            x
        })
        .collect()
}

#[tokio::test]
async fn describe_applies_ecs_limits_max_results_tags_regions_and_dry_run() {
    let fleet = tagged_fleet(120);
    let h = start(fleet, Faults::default()).await;
    let page_len = |v: &serde_json::Value| v["Instances"]["Instance"].as_array().map(Vec::len);
    // MaxResults is brought into 10..100, not refused.
    for (asked, served) in [
        ("1", 10),
        ("9", 10),
        ("10", 10),
        ("55", 55),
        ("100", 100),
        ("500", 100),
    ] {
        let (status, v) = raw(
            &h,
            &[
                ("Action", "DescribeInstances"),
                ("RegionId", REGION),
                ("MaxResults", asked),
            ],
            None,
        )
        .await;
        assert_eq!(status, 200, "MaxResults={asked}: {v}");
        assert_eq!(page_len(&v), Some(served), "MaxResults={asked}");
        assert_eq!(v["MaxResults"], served, "MaxResults={asked}");
    }
    // At most 20 Tag.N filters; N counts from 1.
    let mut params: Vec<(String, String)> = (1..=20)
        .map(|n| (format!("Tag.{n}.Key"), "k".to_string()))
        .collect();
    let send = |params: Vec<(String, String)>| {
        let h = &h;
        async move {
            let mut p: Vec<(&str, &str)> =
                vec![("Action", "DescribeInstances"), ("RegionId", REGION)];
            p.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            raw(h, &p, None).await
        }
    };
    let (status, v) = send(params.clone()).await;
    assert_eq!(status, 200, "{v}");
    params.push(("Tag.25.Key".into(), "k".into()));
    let (status, v) = send(params).await;
    assert_eq!(
        (status, v["Code"].as_str()),
        (400, Some("InvalidTagCount")),
        "{v}"
    );
    let (_, v) = send(vec![("Tag.0.Key".into(), "k".into())]).await;
    assert_eq!(v["Code"], "InvalidTagCount", "{v}");
    let (_, v) = send(vec![("Tag.3.Value".into(), "v".into())]).await;
    assert_eq!(v["Code"], "InvalidTag.Mismatch", "{v}");
    // An unknown region is an error, not an empty list; a real one without instances is empty.
    let (status, v) = raw(
        &h,
        &[
            ("Action", "DescribeInstances"),
            ("RegionId", "cn-nowhere-9"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, v["Code"].as_str()),
        (404, Some("InvalidRegionId.NotFound")),
        "{v}"
    );
    let (status, v) = raw(
        &h,
        &[("Action", "DescribeInstances"), ("RegionId", "eu-west-1")],
        None,
    )
    .await;
    assert_eq!((status, page_len(&v)), (200, Some(0)), "{v}");
    // DryRun checks the request and answers DryRunOperation; a bad request still fails as such.
    let (status, v) = raw(
        &h,
        &[
            ("Action", "DescribeInstances"),
            ("RegionId", REGION),
            ("DryRun", "true"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, v["Code"].as_str()),
        (400, Some("DryRunOperation")),
        "{v}"
    );
    let (_, v) = raw(
        &h,
        &[
            ("Action", "DescribeInstances"),
            ("RegionId", REGION),
            ("DryRun", "true"),
            ("Status", "Sleeping"),
        ],
        None,
    )
    .await;
    assert_eq!(v["Code"], "InvalidStatus.NotFound", "{v}");
    let (_, v) = raw(
        &h,
        &[
            ("Action", "DescribeInstances"),
            ("RegionId", "cn-nowhere-9"),
            ("DryRun", "true"),
        ],
        None,
    )
    .await;
    assert_eq!(v["Code"], "InvalidRegionId.NotFound", "{v}");
}

#[tokio::test]
async fn tag_filtered_listings_stop_at_a_thousand_instances() {
    let fleet = tagged_fleet(1005);
    let h = start(fleet, Faults::default()).await;
    let c = client(&h);
    let tagged = c
        .describe_instances(
            REGION,
            &DescribeFilter {
                tags: vec![("k".into(), "v".into())],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tagged.len(), 1000);
    let all = c
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 1005);
}

// ---- Savings: DescribeDisks, DescribePrice, DescribeRenewalPrice ----

use ecs_janitor::ecs::client::DiskQuery;
use ecs_janitor::ecs::client::PriceRequest;
use ecs_janitor::ecs::types::{Disk, DiskKind};
use ecs_janitor::sim::disks::disk_of;

fn disks_for(i: &Instance, data: &[(&str, u32, bool)]) -> Vec<Disk> {
    let mut out = vec![disk_of(i, 0, DiskKind::System, "cloud_essd", 40, true)];
    for (n, (cat, size, dwi)) in data.iter().enumerate() {
        out.push(disk_of(i, n + 1, DiskKind::Data, cat, *size, *dwi));
    }
    out
}

#[tokio::test]
async fn describe_disks_filters_by_creation_time_and_refuses_a_malformed_filter() {
    // Ten instances created a minute apart, at 10:00:00, 10:01:00, ... (a disk is created
    // with its instance); one more at 10:04:30.
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-05T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut fleet: Vec<Instance> = (0..10)
        .map(|n| {
            let mut i = inst(
                &format!("i-{n:02}"),
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
            );
            i.creation_time = Some(base + chrono::Duration::minutes(n));
            i
        })
        .collect();
    let mut odd = inst("i-odd", InstanceStatus::Stopped, ChargeType::PostPaid);
    odd.creation_time = Some(base + chrono::Duration::seconds(4 * 60 + 30));
    fleet.push(odd);
    let h = start(fleet.clone(), Faults::default()).await;
    for i in &fleet {
        h.sim.set_disks(&i.instance_id, disks_for(i, &[]));
    }
    let ask = |extra: &[(&'static str, &'static str)]| {
        let mut p = vec![
            ("Action", "DescribeDisks"),
            ("RegionId", REGION),
            ("MaxResults", "100"),
        ];
        p.extend_from_slice(extra);
        p
    };
    let owners = |body: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = body["Disks"]["Disk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["InstanceId"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    // Each disk says when it was created, to the second.
    let (_, body) = raw(&h, &ask(&[]), None).await;
    let odd_disk = body["Disks"]["Disk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["InstanceId"] == "i-odd")
        .cloned()
        .unwrap();
    assert_eq!(odd_disk["CreationTime"], "2026-01-05T10:04:30Z");
    // Created after 10:04 (the time named itself is out, modelled strictly): 10:04:30 and
    // 10:05 onwards.
    let after = [
        ("Filter.1.Key", "CreationStartTime"),
        ("Filter.1.Value", "2026-01-05T10:04Z"),
    ];
    let (s, body) = raw(&h, &ask(&after), None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        owners(&body),
        ["i-05", "i-06", "i-07", "i-08", "i-09", "i-odd"]
    );
    // Created before 10:05: up to 10:04:30, not 10:05 itself; both filters AND.
    let before = [
        ("Filter.2.Key", "CreationEndTime"),
        ("Filter.2.Value", "2026-01-05T10:05Z"),
    ];
    let (_, body) = raw(&h, &ask(&before), None).await;
    assert_eq!(
        owners(&body),
        ["i-00", "i-01", "i-02", "i-03", "i-04", "i-odd"]
    );
    let both = [after, before].concat();
    let (_, body) = raw(&h, &ask(&both), None).await;
    assert_eq!(owners(&body), ["i-odd"]);
    // The client sends them by the minute.
    let c = client_for(&h, sim::DEFAULT_ACCESS_KEY_SECRET);
    let q = DiskQuery {
        created_after: Some(base + chrono::Duration::seconds(7 * 60 + 59)),
        ..DiskQuery::default()
    };
    let (page, next) = c.describe_disks_page(REGION, &q, None).await.unwrap();
    assert_eq!(next, None);
    let mut got: Vec<&str> = page.iter().map(|d| d.instance_id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["i-08", "i-09"], "after 10:07");
    // A wrong key, a value without its key, and a value that is not a time are refused.
    for bad in [
        &[
            ("Filter.1.Key", "CreationEndTime"),
            ("Filter.1.Value", "2026-01-05T10:04Z"),
        ][..],
        &[("Filter.2.Value", "2026-01-05T10:04Z")][..],
        &[
            ("Filter.1.Key", "CreationStartTime"),
            ("Filter.1.Value", "yesterday"),
        ][..],
    ] {
        let (s, body) = raw(&h, &ask(bad), None).await;
        assert_eq!(
            (s, body["Code"].as_str()),
            (400, Some("InvalidParameter")),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn describe_disks_pages_by_region_and_filters_by_instance_kind_and_zone() {
    // A third of the fleet in zone -g, the rest in -h.
    let fleet: Vec<Instance> = (0..300)
        .map(|n| {
            let mut i = inst(
                &format!("i-{n:03}"),
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
            );
            if n % 3 == 0 {
                i.zone_id = "cn-hangzhou-g".into();
            }
            i
        })
        .collect();
    let h = start(fleet.clone(), Faults::default()).await;
    for i in &fleet {
        h.sim.set_disks(
            &i.instance_id,
            disks_for(i, &[("cloud_efficiency", 100, false)]),
        );
    }
    let c = client_for(&h, sim::DEFAULT_ACCESS_KEY_SECRET);
    let all = c.describe_disks(REGION, None).await.unwrap();
    assert_eq!(all.len(), 600, "two disks each, all pages");
    let pages = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == "DescribeDisks")
        .count();
    assert_eq!(pages, 2, "600 disks at 500 a page");
    // DiskType splits the region's disks in two: the system disks and the data disks.
    for (kind, want) in [(DiskKind::System, 300), (DiskKind::Data, 300)] {
        let mut got = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let query = DiskQuery {
                kind: Some(kind),
                ..DiskQuery::default()
            };
            let (page, next) = c
                .describe_disks_page(REGION, &query, token.as_deref())
                .await
                .unwrap();
            got.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(got.len(), want, "{kind:?} disks");
        assert!(got.iter().all(|d| d.kind == kind));
    }
    let by_number = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut p = vec![("Action", "DescribeDisks"), ("RegionId", REGION)];
        p.extend_from_slice(extra);
        p
    };
    let disks_of = |body: &serde_json::Value| body["Disks"]["Disk"].as_array().unwrap().clone();
    // ZoneId keeps the disks of one zone, ANDed with the other filters.
    let in_g = [("ZoneId", "cn-hangzhou-g"), ("MaxResults", "500")];
    let (_, body) = raw(&h, &by_number(&in_g), None).await;
    let page = disks_of(&body);
    assert_eq!(page.len(), 200, "100 instances' two disks");
    assert!(page.iter().all(|d| d["ZoneId"] == "cn-hangzhou-g"));
    let data_in_h = [
        ("ZoneId", "cn-hangzhou-h"),
        ("DiskType", "data"),
        ("MaxResults", "500"),
    ];
    let (_, body) = raw(&h, &by_number(&data_in_h), None).await;
    let page = disks_of(&body);
    assert_eq!(page.len(), 200);
    assert!(page
        .iter()
        .all(|d| d["ZoneId"] == "cn-hangzhou-h" && d["Type"] == "data"));
    // Paged by number, an answer counts every match (TotalCount); pages hold at most 100.
    let (page, total) = c.count_disks(REGION, &DiskQuery::default()).await.unwrap();
    assert_eq!((page.len(), total), (100, 600));
    let data = DiskQuery {
        kind: Some(DiskKind::Data),
        ..DiskQuery::default()
    };
    let (page, total) = c.count_disks(REGION, &data).await.unwrap();
    assert_eq!((page.len(), total), (100, 300));
    assert!(page.iter().all(|d| d.kind == DiskKind::Data));
    // By number: the default page of 10, a later page, a PageSize past 100 refused, and a
    // NextToken winning over PageNumber (the token's paging, TotalCount of its page only).
    let (s, body) = raw(&h, &by_number(&[("PageNumber", "1")]), None).await;
    assert_eq!((s, body["TotalCount"].as_u64()), (200, Some(600)));
    assert_eq!(body["Disks"]["Disk"].as_array().map(Vec::len), Some(10));
    let (_, body) = raw(
        &h,
        &by_number(&[("PageNumber", "6"), ("PageSize", "100")]),
        None,
    )
    .await;
    assert_eq!(body["Disks"]["Disk"].as_array().map(Vec::len), Some(100));
    let (_, body) = raw(
        &h,
        &by_number(&[("PageNumber", "7"), ("PageSize", "100")]),
        None,
    )
    .await;
    assert_eq!(body["Disks"]["Disk"].as_array().map(Vec::len), Some(0));
    let (s, body) = raw(&h, &by_number(&[("PageSize", "101")]), None).await;
    assert_eq!((s, body["Code"].as_str()), (400, Some("InvalidParameter")));
    let (_, first) = raw(&h, &by_number(&[("MaxResults", "50")]), None).await;
    let token = first["NextToken"].as_str().unwrap();
    let mut next = by_number(&[("MaxResults", "500"), ("PageNumber", "1")]);
    next.push(("NextToken", token));
    let (_, body) = raw(&h, &next, None).await;
    let page = body["Disks"]["Disk"].as_array().unwrap();
    assert_eq!(page.len(), 500, "the 500 after the token's first 50");
    assert_ne!(page[0]["DiskId"], first["Disks"]["Disk"][0]["DiskId"]);
    let mine = c.describe_disks(REGION, Some("i-007")).await.unwrap();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|d| d.instance_id == "i-007"));
    let data = mine.iter().find(|d| d.kind == DiskKind::Data).unwrap();
    assert_eq!(
        (
            data.category.as_str(),
            data.size_gb,
            data.delete_with_instance
        ),
        ("cloud_efficiency", 100, false)
    );
    assert_eq!(data.charge_type, ChargeType::PostPaid);
}

#[tokio::test]
async fn a_release_takes_its_disks_except_those_set_to_outlive_it() {
    let a = inst("i-plain", InstanceStatus::Stopped, ChargeType::PostPaid);
    let mut b = inst("i-locked", InstanceStatus::Stopped, ChargeType::PostPaid);
    b.lock_reasons = vec!["security".into()];
    let h = start(vec![a.clone(), b.clone()], Faults::default()).await;
    h.sim
        .set_disks("i-plain", disks_for(&a, &[("cloud_essd", 200, false)]));
    h.sim
        .set_disks("i-locked", disks_for(&b, &[("cloud_essd", 200, false)]));
    let c = client_for(&h, sim::DEFAULT_ACCESS_KEY_SECRET);
    c.delete_instances(&DeleteRequest {
        region: REGION.into(),
        instance_ids: vec!["i-plain".into(), "i-locked".into()],
        force: false,
        terminate_subscription: false,
        dry_run: false,
        client_token: "disk-token-1".into(),
    })
    .await
    .unwrap();
    let left = c.describe_disks(REGION, None).await.unwrap();
    // Only i-plain's kept data disk is left: detached, pay-as-you-go, Available.
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].disk_id, "d-plain-1");
    assert!(left[0].instance_id.is_empty());
    assert_eq!(left[0].status, "Available");
    let rel = h.sim.releases();
    let kept: Vec<(String, usize)> = rel
        .iter()
        .map(|r| (r.instance_id.clone(), r.disks_kept))
        .collect();
    assert_eq!(
        kept,
        vec![("i-plain".to_string(), 1), ("i-locked".to_string(), 0)]
    );
}

#[tokio::test]
async fn describe_price_answers_the_documented_table() {
    let h = start(vec![], Faults::default()).await;
    let c = client_for(&h, sim::DEFAULT_ACCESS_KEY_SECRET);
    let q = c
        .describe_price(
            REGION,
            &PriceRequest::Instance {
                instance_type: "ecs.g6.large".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(q.currency, "CNY");
    assert_eq!(q.detail("instanceType"), Some(480_000), "¥0.48 an hour");
    assert!(q.detail("systemDisk").is_some());
    let d = c
        .describe_price(
            REGION,
            &PriceRequest::Disk {
                category: "cloud_essd".into(),
                size_gb: 40,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        d.detail("dataDisk"),
        Some(54_800),
        "¥40 a month is ¥0.0548 an hour"
    );
    let e = c
        .describe_price(
            REGION,
            &PriceRequest::Instance {
                instance_type: "ecs.nonesuch".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidInstanceType.ValueNotSupported");
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
}

#[tokio::test]
async fn describe_renewal_price_prices_a_month_of_a_subscription() {
    let mut sub = inst("i-sub", InstanceStatus::Stopped, ChargeType::PrePaid);
    sub.expired_time = Some(Utc::now() - chrono::Duration::days(3));
    let payg = inst("i-payg", InstanceStatus::Stopped, ChargeType::PostPaid);
    let h = start(vec![sub.clone(), payg], Faults::default()).await;
    h.sim.set_disks("i-sub", disks_for(&sub, &[]));
    let c = client_for(&h, sim::DEFAULT_ACCESS_KEY_SECRET);
    let q = c.describe_renewal_price(REGION, "i-sub").await.unwrap();
    // 0.75 × 730 h × ¥0.48 = ¥262.80, plus the 40 GiB ESSD system disk at ¥40.
    assert_eq!(q.detail("instanceType"), Some(262_800_000));
    assert_eq!(q.detail("systemDisk"), Some(40_000_000));
    assert_eq!(q.original_micros, 302_800_000);
    let e = c
        .describe_renewal_price(REGION, "i-payg")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidInstanceChargeType.ValueNotSupported");
    let e = c
        .describe_renewal_price(REGION, "i-gone")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidInstanceId.NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_number_listing_that_sees_the_fleet_move_lists_again_by_cursor() {
    // 350 stopped instances, the first 50 being released: ECS lists them for a while, then
    // not, and they stop being listed between the listing's first page and the others.
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let fleet: Vec<Instance> = (0..350)
        .map(|n| {
            inst(
                &format!("i-{n:04}"),
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
            )
        })
        .collect();
    let cfg = SimConfig {
        faults: Faults {
            latency: Duration::from_millis(300),
            ..Faults::default()
        },
        clock: clock.clone(),
        release_delay: Duration::from_secs(10),
        ..SimConfig::default()
    };
    let h = Simulator::new(cfg, fleet)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let c = client(&h);
    let gone: Vec<String> = (0..50).map(|n| format!("i-{n:04}")).collect();
    let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
    c.delete_instances(&del(&refs, "moving-fleet-1"))
        .await
        .unwrap();
    let before = h.sim.calls().len();
    let listing = tokio::spawn({
        let c = c.clone();
        async move {
            let slots = tokio::sync::Semaphore::new(4);
            c.describe_instances_concurrently(REGION, &DescribeFilter::default(), &slots)
                .await
        }
    });
    // The first page is answered (its answer is still on its way: 300 ms), then the released
    // ones stop being listed, before the other pages are asked for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.sim.calls()[before..]
        .iter()
        .any(|c| c.action == "DescribeInstances")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first page was asked for"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    clock.advance(chrono::Duration::seconds(11));
    let listed: HashSet<String> = listing
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    let remaining: HashSet<String> = (50..350).map(|n| format!("i-{n:04}")).collect();
    assert_eq!(
        listed.len(),
        remaining.len(),
        "every instance listed once, none skipped by the pages' shift"
    );
    assert_eq!(listed, remaining);
}
