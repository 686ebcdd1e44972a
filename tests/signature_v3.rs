//! Signature V3 (ACS3-HMAC-SHA256) end to end: the client signing V3 against the simulator, the
//! simulator's answer to each way a V3 request can be wrong, STS keys under both signatures, and
//! a property that the simulator accepts whatever the client signs, either way.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ecs_janitor::ecs::client::{
    ClientConfig, DeleteRequest, DescribeFilter, EcsClient, SignatureVersion,
};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::ecs::sign;
use ecs_janitor::ecs::types::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::ecs::{EcsError, Secret};
use ecs_janitor::sim::{self, SimConfig, SimHandle, SimStsKey, Simulator};

const REGION: &str = "cn-hangzhou";
const STS_ID: &str = "STS.sim-temporary-key";
const STS_SECRET: &str = "sim-temporary-secret";
const STS_TOKEN: &str = "sim-temporary-token-0001";
const EXPIRED_ID: &str = "STS.sim-expired-key";

fn inst(id: &str, status: InstanceStatus) -> Instance {
    common::inst(id, REGION, status, ChargeType::PostPaid)
}

async fn start(fleet: Vec<Instance>) -> SimHandle {
    let cfg = SimConfig {
        release_delay: Duration::ZERO,
        sts_keys: vec![
            SimStsKey {
                account: String::new(),
                access_key_id: STS_ID.into(),
                access_key_secret: STS_SECRET.into(),
                security_token: STS_TOKEN.into(),
                expires_at: Utc::now() + chrono::Duration::hours(1),
            },
            SimStsKey {
                account: String::new(),
                access_key_id: EXPIRED_ID.into(),
                access_key_secret: STS_SECRET.into(),
                security_token: STS_TOKEN.into(),
                expires_at: Utc::now() - chrono::Duration::minutes(1),
            },
        ],
        ..SimConfig::default()
    };
    Simulator::new(cfg, fleet)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client_with(h: &SimHandle, signature: SignatureVersion, creds: Credentials) -> EcsClient {
    let cfg = ClientConfig {
        endpoint: Some(h.endpoint()),
        signature,
        read_attempts: 1,
        ..ClientConfig::default()
    };
    EcsClient::new(cfg, Arc::new(StaticProvider(creds))).unwrap()
}

fn default_creds() -> Credentials {
    Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, sim::DEFAULT_ACCESS_KEY_SECRET)
}

fn sts_creds(id: &str, token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: id.into(),
        access_key_secret: Secret::new(STS_SECRET),
        security_token: token.map(Secret::new),
    }
}

fn code(e: &EcsError) -> &str {
    match e {
        EcsError::Api { code, .. } => code,
        other => panic!("expected an ECS error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn the_client_signing_v3_lists_filters_and_releases() {
    let mut fleet: Vec<Instance> = (0..25)
        .map(|i| inst(&format!("i-v3-{i:03}"), InstanceStatus::Stopped))
        .collect();
    fleet.push(inst("i-v3-running", InstanceStatus::Running));
    let h = start(fleet).await;
    let c = client_with(&h, SignatureVersion::V3, default_creds());
    let all = c
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 26);
    let running = c
        .describe_instances(
            REGION,
            &DescribeFilter {
                status: Some(InstanceStatus::Running),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    let req = DeleteRequest {
        region: REGION.into(),
        instance_ids: vec!["i-v3-000".into(), "i-v3-001".into()],
        force: false,
        terminate_subscription: false,
        dry_run: false,
        client_token: "v3-token-1".into(),
    };
    let first = c.delete_instances(&req).await.unwrap();
    // The replay answers the first RequestId and releases nothing more.
    let replay = c.delete_instances(&req).await.unwrap();
    assert_eq!(first.request_id, replay.request_id);
    assert_eq!(h.sim.releases().len(), 2);
    let calls = h.sim.calls();
    assert!(calls.iter().all(|c| c.outcome == "OK"), "{calls:?}");
    // A wrong secret is refused as ECS refuses it.
    let wrong = client_with(
        &h,
        SignatureVersion::V3,
        Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, "not-the-secret"),
    );
    let e = wrong
        .describe_instances(REGION, &DescribeFilter::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
}

#[tokio::test]
async fn sts_keys_need_their_own_unexpired_token_under_either_signature() {
    let h = start(vec![inst("i-1", InstanceStatus::Stopped)]).await;
    for sig in [SignatureVersion::V1, SignatureVersion::V3] {
        let cases = [
            (sts_creds(STS_ID, Some(STS_TOKEN)), None),
            (sts_creds(STS_ID, None), Some("MissingSecurityToken")),
            (
                sts_creds(STS_ID, Some("someone-elses-token")),
                Some("InvalidSecurityToken.MismatchWithAccessKey"),
            ),
            (
                sts_creds(EXPIRED_ID, Some(STS_TOKEN)),
                Some("InvalidSecurityToken.Expired"),
            ),
        ];
        for (creds, want) in cases {
            let got = client_with(&h, sig, creds)
                .describe_instances(REGION, &DescribeFilter::default())
                .await;
            match (want, got) {
                (None, Ok(list)) => assert_eq!(list.len(), 1),
                (Some(w), Err(e)) => assert_eq!(code(&e), w, "{sig}"),
                (w, got) => panic!("{sig}: wanted {w:?}, got {got:?}"),
            }
        }
    }
}

/// A V3 request signed by hand, so each part can be got wrong on purpose.
struct V3Req {
    method: &'static str,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Headers to sign (lowercase); all sent ones when `None`.
    signed: Option<Vec<String>>,
    secret: String,
    key_id: String,
    algorithm: String,
    /// Sent after signing, unsigned.
    unsigned: Vec<(String, String)>,
}

impl V3Req {
    fn new(h: &SimHandle, action: &str) -> Self {
        V3Req {
            method: "POST",
            query: vec![("RegionId".into(), REGION.into())],
            headers: vec![
                ("host".into(), h.addr.to_string()),
                ("x-acs-action".into(), action.into()),
                ("x-acs-version".into(), "2014-05-26".into()),
                (
                    "x-acs-date".into(),
                    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
                (
                    "x-acs-signature-nonce".into(),
                    uuid::Uuid::new_v4().simple().to_string(),
                ),
                (
                    "x-acs-content-sha256".into(),
                    sign::EMPTY_BODY_SHA256.into(),
                ),
            ],
            body: Vec::new(),
            signed: None,
            secret: sim::DEFAULT_ACCESS_KEY_SECRET.into(),
            key_id: sim::DEFAULT_ACCESS_KEY_ID.into(),
            algorithm: sign::V3_ALGORITHM.into(),
            unsigned: Vec::new(),
        }
    }

    fn set(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.into(), value.into()));
        self
    }

    fn remove(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| k != name);
        self
    }

    fn form_body(mut self, form: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.body = body.into_bytes();
        let hash = sign::sha256_hex(&self.body);
        self.set("content-type", "application/x-www-form-urlencoded")
            .set("x-acs-content-sha256", &hash)
    }

    async fn send(self, h: &SimHandle) -> (u16, serde_json::Value) {
        let canonical = sign::CanonicalHeaders::new(&self.headers);
        let names: Vec<String> = self
            .signed
            .clone()
            .unwrap_or_else(|| canonical.names().map(str::to_string).collect());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let hash = canonical
            .get("x-acs-content-sha256")
            .unwrap_or_default()
            .to_string();
        let cr =
            sign::v3_canonical_request(self.method, "/", &self.query, &canonical, &refs, &hash);
        let signature = sign::v3_sign(&self.secret, &sign::v3_string_to_sign(&cr));
        let auth = format!(
            "{} Credential={},SignedHeaders={},Signature={signature}",
            self.algorithm,
            self.key_id,
            refs.join(";")
        );
        let url = format!("{}?{}", h.endpoint(), sign::canonical_query(&self.query));
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut rb = reqwest::Client::new()
            .request(method, url)
            .header("authorization", auth)
            .body(self.body);
        for (k, v) in self.headers.iter().chain(&self.unsigned) {
            if k != "host" {
                rb = rb.header(k.as_str(), v.as_str());
            }
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }
}

fn answer_code(v: &serde_json::Value) -> &str {
    v["Code"].as_str().unwrap_or("OK")
}

#[tokio::test]
async fn every_way_a_v3_request_can_be_wrong_is_refused_with_its_code() {
    let h = start(vec![inst("i-1", InstanceStatus::Stopped)]).await;
    // The baseline passes, so each refusal below is for its own reason.
    let (status, v) = V3Req::new(&h, "DescribeInstances").send(&h).await;
    assert_eq!((status, answer_code(&v)), (200, "OK"), "{v}");

    let mut cases: Vec<(&str, V3Req, &str)> = Vec::new();
    let mut wrong_secret = V3Req::new(&h, "DescribeInstances");
    wrong_secret.secret = "wrong".into();
    cases.push(("wrong secret", wrong_secret, "SignatureDoesNotMatch"));
    let mut unknown_key = V3Req::new(&h, "DescribeInstances");
    unknown_key.key_id = "nobody".into();
    cases.push(("unknown key", unknown_key, "InvalidAccessKeyId.NotFound"));
    let mut sm3 = V3Req::new(&h, "DescribeInstances");
    sm3.algorithm = "ACS3-HMAC-SM3".into();
    cases.push(("other algorithm", sm3, "InvalidSignatureMethod"));
    let mut unsigned_acs = V3Req::new(&h, "DescribeInstances");
    unsigned_acs
        .unsigned
        .push(("x-acs-extra".into(), "not signed".into()));
    cases.push(("unsigned x-acs header", unsigned_acs, "IncompleteSignature"));
    let mut listed_absent = V3Req::new(&h, "DescribeInstances");
    listed_absent.signed = Some(
        ["host", "x-acs-action", "x-acs-content-sha256", "x-acs-date"]
            .iter()
            .chain(&["x-acs-signature-nonce", "x-acs-version", "x-not-sent"])
            .map(|s| s.to_string())
            .collect(),
    );
    cases.push((
        "signs an absent header",
        listed_absent,
        "IncompleteSignature",
    ));
    cases.push((
        "no nonce",
        V3Req::new(&h, "DescribeInstances").remove("x-acs-signature-nonce"),
        "MissingParameter",
    ));
    cases.push((
        "no content hash",
        V3Req::new(&h, "DescribeInstances").remove("x-acs-content-sha256"),
        "MissingParameter",
    ));
    let old = (Utc::now() - chrono::Duration::minutes(20))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    cases.push((
        "stale date",
        V3Req::new(&h, "DescribeInstances").set("x-acs-date", &old),
        "InvalidTimeStamp.Expired",
    ));
    cases.push((
        "date format",
        V3Req::new(&h, "DescribeInstances").set("x-acs-date", "2024-01-01 00:00:00"),
        "InvalidTimeStamp.Format",
    ));
    // The hash is signed, but it is not the body's.
    let mut tampered = V3Req::new(&h, "DescribeInstances").form_body(&[("Status", "Running")]);
    tampered.body = b"Status=Stopped".to_vec();
    cases.push(("body not the hashed one", tampered, "SignatureDoesNotMatch"));
    cases.push((
        "accesskey-id header names another key",
        V3Req::new(&h, "DescribeInstances").set("x-acs-accesskey-id", "someone-else"),
        "IncompleteSignature",
    ));
    for (what, req, want) in cases {
        let (status, v) = req.send(&h).await;
        assert_eq!(answer_code(&v), want, "{what}: {v}");
        assert!(status >= 400, "{what}");
    }

    // An Authorization header that is not a whole V3 one.
    let (_, v) = {
        let resp = reqwest::Client::new()
            .post(h.endpoint())
            .header(
                "authorization",
                "ACS3-HMAC-SHA256 Credential=x,SignedHeaders=host",
            )
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(answer_code(&v), "IncompleteSignature", "{v}");

    // A nonce is good once, whichever signature used it.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let (_, v) = V3Req::new(&h, "DescribeInstances")
        .set("x-acs-signature-nonce", &nonce)
        .send(&h)
        .await;
    assert_eq!(answer_code(&v), "OK", "{v}");
    let (_, v) = V3Req::new(&h, "DescribeInstances")
        .set("x-acs-signature-nonce", &nonce)
        .send(&h)
        .await;
    assert_eq!(answer_code(&v), "SignatureNonceUsed", "{v}");
}

#[tokio::test]
async fn v3_uses_the_clients_signed_headers_and_takes_parameters_from_a_form_body() {
    let h = start(vec![
        inst("i-run", InstanceStatus::Running),
        inst("i-stop", InstanceStatus::Stopped),
    ])
    .await;
    // Like the Python SDK: user-agent and accept are signed too.
    let (_, v) = V3Req::new(&h, "DescribeInstances")
        .set("user-agent", "AlibabaCloud (Linux) Python/3 TeaDSL/2")
        .set("accept", "application/json")
        .send(&h)
        .await;
    assert_eq!(answer_code(&v), "OK", "{v}");
    // A header the client signed, changed on the way, breaks the signature.
    let mut changed = V3Req::new(&h, "DescribeInstances").set("user-agent", "a");
    changed.signed = None;
    let canon = sign::CanonicalHeaders::new(&changed.headers);
    changed.signed = Some(canon.names().map(str::to_string).collect());
    changed.headers.retain(|(k, _)| k != "user-agent");
    changed.unsigned.push(("user-agent".into(), "b".into()));
    let (_, v) = changed.send(&h).await;
    assert_eq!(answer_code(&v), "SignatureDoesNotMatch", "{v}");
    // Parameters in a form body act like query ones.
    let (_, v) = V3Req::new(&h, "DescribeInstances")
        .form_body(&[("Status", "Running")])
        .send(&h)
        .await;
    let ids: Vec<&str> = v["Instances"]["Instance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i-run"], "{v}");
    // DeleteInstances with its ids in the body.
    let (_, v) = V3Req::new(&h, "DeleteInstances")
        .form_body(&[("InstanceId.1", "i-stop"), ("ClientToken", "form-1")])
        .send(&h)
        .await;
    assert_eq!(answer_code(&v), "OK", "{v}");
    assert_eq!(h.sim.releases()[0].instance_id, "i-stop");
}

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            "[ !*'();:@&=+$,/?#\\[\\]%~\"<>{}|\\\\^`]{1,12}",
            "[a-z0-9 ._~-]{0,12}",
        ]
    }

    /// Whatever the values, the simulator verifies what the client signs, V1 and V3 alike,
    /// with a long-term key or an STS one.
    #[test]
    fn the_simulator_accepts_what_the_client_signs_either_way() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = rt.block_on(start(vec![inst("i-1", InstanceStatus::Stopped)]));
        let mut clients = Vec::new();
        for sig in [SignatureVersion::V1, SignatureVersion::V3] {
            clients.push(client_with(&h, sig, default_creds()));
            clients.push(client_with(&h, sig, sts_creds(STS_ID, Some(STS_TOKEN))));
        }
        let mut runner = TestRunner::new(Config {
            cases: 96,
            ..Config::default()
        });
        runner
            .run(
                &(0..clients.len(), value(), value(), value()),
                |(which, key, tag_value, name)| {
                    let params = vec![
                        ("Tag.1.Key".to_string(), key),
                        ("Tag.1.Value".to_string(), tag_value),
                        ("InstanceName".to_string(), name),
                    ];
                    let got = rt.block_on(clients[which].call_action(
                        "DescribeInstances",
                        REGION,
                        &params,
                    ));
                    prop_assert!(got.is_ok(), "{:?} with {params:?}: {got:?}", which);
                    Ok(())
                },
            )
            .unwrap();
    }
}

/// `--signature`, `JANITOR_SIGNATURE` and `ecs.signature` choose what the binary sends; the
/// default stays V1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_signs_as_the_flag_environment_or_config_file_says() {
    let h = start(vec![inst("i-1", InstanceStatus::Stopped)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "name: p\nschedule: \"0 */15 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  status: Stopped\n",
    )
    .unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ecs-janitor"));
        c.args(args)
            .current_dir(dir.path())
            .env_remove("JANITOR_SIGNATURE")
            .env("JANITOR_POLICIES", dir.path().join("policies"))
            .env(
                "JANITOR_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("j.db").display()),
            )
            .env("JANITOR_ECS_ENDPOINT", h.endpoint().as_str())
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", sim::DEFAULT_ACCESS_KEY_ID)
            .env(
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                sim::DEFAULT_ACCESS_KEY_SECRET,
            );
        if let Some(v) = env {
            c.env("JANITOR_SIGNATURE", v);
        }
        c
    };
    let mut seen = 0;
    let mut plan_signed = |c: std::process::Command, want: &str| {
        let mut c = c;
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = h.sim.calls();
        assert!(calls.len() > seen, "the plan described the region");
        for call in &calls[seen..] {
            assert_eq!(call.signature, want, "{call:?}");
        }
        seen = calls.len();
    };
    let out = tokio::task::block_in_place(|| {
        plan_signed(run(&["plan"], None), "v1");
        plan_signed(run(&["plan", "--signature", "v3"], None), "v3");
        plan_signed(run(&["plan"], Some("v3")), "v3");
        std::fs::write(dir.path().join("janitor.yaml"), "ecs:\n  signature: v3\n").unwrap();
        plan_signed(run(&["plan"], None), "v3");
        plan_signed(run(&["plan", "--signature", "v1"], None), "v1");
        run(&["plan", "--signature", "v2"], None).output().unwrap()
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("v1") && err.contains("v3"), "{err}");
}
