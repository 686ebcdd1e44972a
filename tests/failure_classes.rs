//! What a failure means, as the client sees it on the wire: 429 and 408 without an ECS body,
//! `Rejected.Throttling`, refused connections and unresolvable hosts are retried (a connection
//! never made had no effect); errors name the host and the cause; and no throttling header,
//! however large its `TimeLeft`, makes the client wait past its cap or panic.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecs_janitor::backoff::{add_capped, Backoff};
use ecs_janitor::ecs::client::{ClientConfig, DescribeFilter, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::ecs::error::{parse_time_left, MAX_TIME_LEFT};
use ecs_janitor::ecs::ErrorClass;
use ecs_janitor::sim::{self, Faults, SimConfig, Simulator};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that answers every request with `answer` (a whole HTTP/1.1 response) and counts
/// the requests it read.
async fn canned(answer: String) -> (url::Url, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The client sends POST with an empty body: the request ends with its headers.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url::Url::parse(&format!("http://{addr}/")).unwrap(), seen)
}

fn response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

const CAP: Duration = Duration::from_millis(20);
const ATTEMPTS: u32 = 3;

fn client(endpoint: url::Url) -> EcsClient {
    let cfg = ClientConfig {
        endpoint: Some(endpoint),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        read_attempts: ATTEMPTS,
        read_backoff: Backoff::new(Duration::from_millis(1), CAP),
        // A throttle holds the key no longer than a backoff's cap either.
        pace: ecs_janitor::ecs::pace::PaceConfig {
            max_hold: CAP,
            ..Default::default()
        },
        ..ClientConfig::default()
    };
    let creds = Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, sim::DEFAULT_ACCESS_KEY_SECRET);
    EcsClient::new(cfg, Arc::new(StaticProvider(creds))).unwrap()
}

/// Generous: three attempts and two waits of at most CAP, on a loaded machine.
const BOUND: Duration = Duration::from_secs(4);

#[tokio::test]
async fn gateway_429_and_408_without_a_body_are_retried_not_permanent() {
    for status in ["429 Too Many Requests", "408 Request Timeout"] {
        let (url, seen) = canned(response(status, &[], "")).await;
        let err = client(url)
            .describe_instances("cn-hangzhou", &DescribeFilter::default())
            .await
            .unwrap_err();
        let code = format!("Janitor.Http{}", &status[..3]);
        assert_eq!(err.code(), code, "{err}");
        assert_eq!(err.class(), ErrorClass::Retryable, "{status}: {err}");
        assert!(!err.account_wide());
        assert_eq!(
            seen.load(Ordering::SeqCst),
            ATTEMPTS as usize,
            "{status} was not retried"
        );
    }
}

#[tokio::test]
async fn rejected_throttling_is_retried_and_forbidden_ram_stops_at_once() {
    let body = r#"{"RequestId":"r-1","Code":"Rejected.Throttling","Message":"slow down"}"#;
    let (url, seen) = canned(response("400 Bad Request", &[], body)).await;
    let err = client(url)
        .describe_instances("cn-hangzhou", &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), ATTEMPTS as usize);

    let body = r#"{"RequestId":"r-2","Code":"Forbidden.RAM","Message":"User not authorized"}"#;
    let (url, seen) = canned(response("403 Forbidden", &[], body)).await;
    let err = client(url)
        .describe_instances("cn-hangzhou", &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.account_wide(), "{err}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a permanent refusal is not retried"
    );
}

#[tokio::test]
async fn a_refused_connection_names_the_host_and_cause_and_is_retryable() {
    // A port nothing listens on: bind one, then let it go.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let err = client(url)
        .describe_instances("cn-hangzhou", &DescribeFilter::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot connect to 127.0.0.1:{port}: connection refused"
        )),
        "{text}"
    );
    assert_eq!(err.code(), "Janitor.ConnectFailed");
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(
        !err.outcome_unknown(),
        "a connection never made had no effect"
    );
}

#[tokio::test]
async fn an_unresolvable_host_is_a_connect_failure_that_names_the_host() {
    let url = url::Url::parse("http://ecs.cn-hangzhuo.invalid/").unwrap();
    let err = client(url)
        .describe_instances("cn-hangzhou", &DescribeFilter::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ecs.cn-hangzhuo.invalid"), "{text}");
    assert_eq!(err.code(), "Janitor.ConnectFailed", "{text}");
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(!err.outcome_unknown());
}

#[tokio::test]
async fn a_huge_time_left_from_the_simulator_is_waited_only_up_to_the_cap() {
    let cfg = SimConfig {
        faults: Faults {
            throttle_rate: 1.0,
            ..Faults::default()
        },
        throttle_time_left: Duration::from_millis(9_000_000_000_000_000),
        ..SimConfig::default()
    };
    let h = Simulator::new(cfg, common::ci_fleet(3))
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let err = client(h.endpoint())
        .describe_instances("cn-hangzhou", &DescribeFilter::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() < BOUND, "waited {:?}", started.elapsed());
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert_eq!(err.retry_after(), Some(MAX_TIME_LEFT));
    assert_eq!(
        h.sim
            .calls()
            .iter()
            .filter(|c| c.action == "DescribeInstances")
            .count(),
        ATTEMPTS as usize
    );
}

/// Header values as a gateway might send them, or garble them.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,40}".prop_map(|n| format!("Limit:1,Remain:0,TimeLeft:{n},Reset:1")),
        "[ -~]{0,60}".prop_map(|s| format!("TimeLeft:{s}")),
        "[ -~]{0,80}",
        any::<u64>().prop_map(|n| format!("TimeLeft:{n}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No header value panics the parser, the backoff or the time arithmetic after it, and the
    /// wait that comes out is never past the cap.
    #[test]
    fn any_header_value_gives_a_wait_within_the_cap(
        value in header_value(), retries in 0u32..200, cap_ms in 1u64..600_000, seed: u64,
    ) {
        use rand::SeedableRng;
        let floor = parse_time_left(&value);
        if let Some(f) = floor {
            prop_assert!(f <= MAX_TIME_LEFT);
        }
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(cap_ms));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let wait = b.delay(retries, floor, &mut rng);
        prop_assert!(wait <= b.cap, "{value:?}: {wait:?} > {:?}", b.cap);
        let now = chrono::Utc::now();
        prop_assert!(add_capped(now, wait) >= now);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same through the client on the wire: a throttled read with an arbitrary header ends
    /// after its attempts, within a few caps, without a panic.
    #[test]
    fn any_throttling_header_on_the_wire_ends_the_read_within_its_caps(value in header_value()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let body = r#"{"RequestId":"r","Code":"Throttling.User","Message":"flow control"}"#;
            let value = value.replace(['\r', '\n'], " ");
            let (url, seen) =
                canned(response("400 Bad Request", &[("x-ratelimit-user-api", value.trim())], body)).await;
            let started = Instant::now();
            let err = client(url)
                .describe_instances("cn-hangzhou", &DescribeFilter::default())
                .await
                .unwrap_err();
            prop_assert!(started.elapsed() < BOUND, "{value:?}: waited {:?}", started.elapsed());
            prop_assert_eq!(err.class(), ErrorClass::Retryable);
            prop_assert_eq!(seen.load(Ordering::SeqCst), ATTEMPTS as usize);
            Ok(())
        })?;
    }
}
