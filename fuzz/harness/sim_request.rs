//! The check behind the `sim_request` fuzz target, shared with `tests/fuzz_seeds.rs` so that
//! stable `cargo test` replays every committed seed and crash through the very same code.
//!
//! An input is up to [`MAX_REQUESTS`] requests, separated by lines reading exactly `%%`. Each
//! request is a header line, a query line, and a body (the rest, less one final newline):
//!
//! ```text
//! POST form sign
//! Action=DeleteInstances&RegionId=cn-hangzhou&InstanceId.1=i-stopped&ClientToken=t1
//! Force=true
//! ```
//!
//! The header line's first word is the HTTP method; the words after it switch on options:
//! `form` sends `Content-Type: application/x-www-form-urlencoded`; `sign` makes the request
//! authentic (fills in whichever of `AccessKeyId`, `SignatureMethod`, `SignatureVersion`,
//! `Timestamp` and `SignatureNonce` are missing and signs the whole, so the fuzzer reaches the
//! actions behind the signature check); `faults` turns on the simulator's fault injection for
//! that request. Without `sign` the request goes as written, signature and all.
//!
//! Every request goes through `sim::respond`, the handler behind the simulator's HTTP endpoint,
//! against a fresh simulator with a small fleet covering every rule of DeleteInstances. It must
//! never panic; every answer must be a well-formed ECS answer; and whatever was asked, the
//! simulator must only ever have released what real ECS would release.

// The fuzz target and the seed test each use a different part of this file.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use chrono::{DateTime, Duration, TimeZone, Utc};
use ecs_janitor::clock::ManualClock;
use ecs_janitor::ecs::sign;
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, Faults, SimConfig, Simulator};

/// A line on its own between two requests of one input.
pub const REQUEST_SEPARATOR: &[u8] = b"\n%%\n";

/// Requests per input; later separators stay in the last request's body.
pub const MAX_REQUESTS: usize = 8;

/// The simulator's clock: fixed, so inputs replay identically and seeds can carry timestamps.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

/// `now()` in the `Timestamp` format ECS expects.
pub const TIMESTAMP: &str = "2025-06-01T12:00:00Z";

/// One request of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub form: bool,
    pub sign: bool,
    pub faults: bool,
    pub query: String,
    pub body: Vec<u8>,
}

/// The requests an input stands for.
pub fn requests(data: &[u8]) -> Vec<Request> {
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while chunks.len() + 1 < MAX_REQUESTS {
        match find(rest, REQUEST_SEPARATOR) {
            Some(i) => {
                chunks.push(&rest[..i]);
                rest = &rest[i + REQUEST_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    chunks.push(rest);
    chunks.into_iter().map(request).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn request(chunk: &[u8]) -> Request {
    let (header, rest) = split_line(chunk);
    let (query, body) = split_line(rest);
    // Files end with a newline; it is not part of the body.
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let header = String::from_utf8_lossy(header);
    let mut words = header.split_whitespace();
    let method = words
        .next()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let opts: Vec<&str> = words.collect();
    Request {
        method,
        form: opts.contains(&"form"),
        sign: opts.contains(&"sign"),
        faults: opts.contains(&"faults"),
        query: String::from_utf8_lossy(query).into_owned(),
        body: body.to_vec(),
    }
}

fn instance(id: &str, region: &str, status: InstanceStatus) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: format!("name-{id}"),
        region_id: region.into(),
        zone_id: format!("{region}-h"),
        status,
        charge_type: ChargeType::PostPaid,
        instance_type: "ecs.g6.large".into(),
        creation_time: Some(now() - Duration::days(30)),
        expired_time: Some(sim::fleet::payg_expiry()),
        auto_release_time: None,
        deletion_protection: false,
        lock_reasons: vec![],
        tags: ecs_janitor::ecs::Tags::from([("purpose".to_string(), "ci".to_string())]),
        resource_group_id: "rg-1".into(),
        stopped_mode: "KeepCharging".into(),
    }
}

/// A fleet with one instance per rule of DeleteInstances, named after it (`i-protected`,
/// `i-locked`, `i-sub-expired`, ...), in cn-hangzhou, and two more in cn-shanghai.
pub fn fleet() -> Vec<Instance> {
    use InstanceStatus::*;
    let hz = "cn-hangzhou";
    let mut out = vec![
        instance("i-stopped", hz, Stopped),
        instance("i-stopped2", hz, Stopped),
        instance("i-running", hz, Running),
        instance("i-starting", hz, Starting),
        instance("i-stopping", hz, Stopping),
        instance("i-pending", hz, Pending),
    ];
    let mut protected = instance("i-protected", hz, Stopped);
    protected.deletion_protection = true;
    let mut locked = instance("i-locked", hz, Stopped);
    locked.lock_reasons.push("security".into());
    let mut financial = instance("i-financial", hz, Stopped);
    financial.lock_reasons.push("financial".into());
    let mut expired = instance("i-sub-expired", hz, Stopped);
    expired.charge_type = ChargeType::PrePaid;
    expired.expired_time = Some(now() - Duration::days(1));
    let mut active = instance("i-sub-active", hz, Stopped);
    active.charge_type = ChargeType::PrePaid;
    active.expired_time = Some(now() + Duration::days(200));
    let mut web = instance("i-web", hz, Stopped);
    web.tags = ecs_janitor::ecs::Tags::from([
        ("purpose".to_string(), "web".to_string()),
        ("owner".to_string(), "bob".to_string()),
    ]);
    out.extend([protected, locked, financial, expired, active, web]);
    out.push(instance("i-sh-1", "cn-shanghai", Stopped));
    out.push(instance("i-sh-2", "cn-shanghai", Running));
    out
}

/// The same as `respond` would collect: the query's pairs, then the body's for a form or a
/// non-empty POST.
fn params_as_sent(r: &Request, query: &str) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if r.form || (r.method == Method::POST && !r.body.is_empty()) {
        params.extend(form_urlencoded::parse(&r.body).into_owned());
    }
    params
}

/// The query to send: as written, or completed and signed.
fn final_query(r: &Request, index: usize) -> String {
    if !r.sign {
        return r.query.clone();
    }
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(r.query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "Signature")
        .collect();
    let nonce = format!("fuzz-nonce-{index}");
    for (k, v) in [
        ("AccessKeyId", sim::DEFAULT_ACCESS_KEY_ID),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("Timestamp", TIMESTAMP),
        ("SignatureNonce", nonce.as_str()),
    ] {
        if !pairs.iter().any(|(n, _)| n == k) {
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    let unsigned = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    let signed_params: Vec<(String, String)> = params_as_sent(r, &unsigned)
        .into_iter()
        .filter(|(k, _)| k != "Signature")
        .collect();
    let sts = sign::string_to_sign(r.method.as_str(), &signed_params);
    let signature = sign::sign(sim::DEFAULT_ACCESS_KEY_SECRET, &sts);
    pairs.push(("Signature".into(), signature));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish()
}

thread_local! {
    /// One runtime per thread, built once: libFuzzer calls the target millions of times.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// What one request was answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// `None` when the body was cut off (a simulated lost answer).
    pub body: Option<serde_json::Value>,
}

/// Sends every request of `data` to a fresh simulator and checks the answers and the fleet.
/// Returns the answers, for tests that look closer.
pub fn check(data: &[u8]) -> Vec<Answer> {
    let cfg = SimConfig {
        clock: Arc::new(ManualClock::new(now())),
        seed: 7,
        ..SimConfig::default()
    };
    let initial = fleet();
    let sim = Simulator::new(cfg, initial.clone());
    let mut answers = Vec::new();
    for (index, r) in requests(data).into_iter().enumerate() {
        sim.set_faults(if r.faults {
            Faults {
                internal_error_rate: 0.2,
                throttle_rate: 0.2,
                drop_after_commit_rate: 0.5,
                ..Faults::default()
            }
        } else {
            Faults::default()
        });
        let mut headers = HeaderMap::new();
        if r.form {
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        let query = final_query(&r, index);
        let (status, bytes) = RUNTIME.with(|rt| {
            rt.block_on(async {
                let resp = sim::respond(&sim, &r.method, &headers, Some(&query), &r.body).await;
                let status = resp.status();
                (
                    status,
                    axum::body::to_bytes(resp.into_body(), usize::MAX).await,
                )
            })
        });
        assert!(
            status == StatusCode::OK || status.is_client_error() || status.is_server_error(),
            "unexpected status {status}"
        );
        let body = match bytes {
            Err(_) => {
                // Only a DeleteInstances carried out under injected faults loses its answer.
                assert!(
                    status == StatusCode::OK && r.faults,
                    "a body was cut off without faults"
                );
                None
            }
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("every answer is JSON");
                let id = v.get("RequestId").and_then(|x| x.as_str());
                assert!(id.is_some_and(|s| !s.is_empty()), "no RequestId: {v}");
                if status != StatusCode::OK {
                    let code = v.get("Code").and_then(|x| x.as_str());
                    assert!(
                        code.is_some_and(|s| !s.is_empty()),
                        "error without Code: {v}"
                    );
                    assert!(v.get("Message").is_some_and(|m| m.is_string()), "{v}");
                }
                Some(v)
            }
        };
        answers.push(Answer { status, body });
    }
    check_releases(&initial, &sim);
    answers
}

/// Whatever was asked, the simulator only released what ECS would: existing instances, once,
/// in their own region, never deletion-protected or initializing (security-locked ones with all
/// their disks), running ones only with Force, subscriptions only expired and with
/// TerminateSubscription.
fn check_releases(initial: &[Instance], sim: &Simulator) {
    let mut released = HashSet::new();
    for rec in sim.releases() {
        let i = initial
            .iter()
            .find(|i| i.instance_id == rec.instance_id)
            .unwrap_or_else(|| panic!("released an unknown instance: {rec:?}"));
        assert!(
            released.insert(rec.instance_id.clone()),
            "released twice: {rec:?}"
        );
        assert_eq!(rec.region, i.region_id, "released from another region");
        assert!(
            !i.deletion_protection,
            "released despite deletion protection"
        );
        // A security lock does not block a release, but then every disk goes with it.
        assert_eq!(
            rec.all_disks_released,
            i.security_locked(),
            "disks of a release not as ECS releases them: {rec:?}"
        );
        assert_ne!(
            i.status,
            InstanceStatus::Pending,
            "released while initializing"
        );
        assert!(
            i.status == InstanceStatus::Stopped || rec.force,
            "released a {} instance without Force",
            i.status
        );
        if i.charge_type == ChargeType::PrePaid {
            assert!(
                rec.terminate_subscription,
                "subscription without TerminateSubscription"
            );
            assert!(
                i.expired_time.is_some_and(|t| t <= rec.at),
                "unexpired subscription"
            );
        }
    }
    let remaining: Vec<Instance> = sim.instances();
    let expected: Vec<&Instance> = initial
        .iter()
        .filter(|i| !released.contains(&i.instance_id))
        .collect();
    assert_eq!(
        remaining.len(),
        expected.len(),
        "the fleet changed beyond releases"
    );
    for i in &remaining {
        assert!(
            expected.contains(&i),
            "instance changed or appeared: {}",
            i.instance_id
        );
    }
}
