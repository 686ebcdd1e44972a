//! The credentials chain end to end: CLI profile files written to temp dirs, the lookup order,
//! and the ECS RAM role fetched over HTTP on 127.0.0.1 from the simulator's metadata service,
//! then used to sign DescribeInstances. Time is a ManualClock; nothing sleeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use ecs_janitor::clock::{ManualClock, SharedClock, SystemClock};
use ecs_janitor::ecs::chain::{default_chain, ChainOptions, ChainProvider, EnvLookup};
use ecs_janitor::ecs::client::{ClientConfig, DescribeFilter, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, CredentialsProvider, SharedProvider};
use ecs_janitor::ecs::imds::{ImdsError, ImdsProvider, TOKEN_HEADER, TOKEN_TTL_HEADER};
use ecs_janitor::ecs::profile::{ProfileError, ProfileFile, ProfileSource};
use ecs_janitor::sim::imds::{MetadataService, TokenMode, DEFAULT_ROLE};
use ecs_janitor::sim::{self, fleet, SimConfig, SimHandle, Simulator};
use tokio::sync::oneshot;

// ---------------------------------------------------------------- fixtures

/// An environment made of `pairs` only; HOME is always set (to `home`) so the real
/// `~/.aliyun/config.json` of whoever runs the tests is never read.
fn env(home: &Path, pairs: &[(&str, &str)]) -> EnvLookup {
    let mut m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("HOME".into())
        .or_insert_with(|| home.display().to_string());
    Arc::new(move |k| m.get(k).cloned())
}

/// Writes `text` as `<home>/.aliyun/config.json`.
fn write_config(home: &Path, text: &str) -> PathBuf {
    let dir = home.join(".aliyun");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, text).unwrap();
    path
}

const PROFILES: &str = r#"{
  "current": "dev",
  "profiles": [
    {"name": "dev", "mode": "AK", "access_key_id": "LTAIdev",
     "access_key_secret": "dev-secret-0001", "region_id": "cn-hangzhou",
     "sts_token": "", "ram_role_name": "", "ram_role_arn": "", "ram_session_name": "",
     "expired_seconds": 0, "retry_count": 0},
    {"name": "sts", "mode": "StsToken", "access_key_id": "STS.sts",
     "access_key_secret": "sts-secret-0002", "sts_token": "sts-token-0003"},
    {"name": "sim-role", "mode": "EcsRamRole", "ram_role_name": "EcsJanitorSimRole"},
    {"name": "any-role", "mode": "EcsRamRole"},
    {"name": "sso", "mode": "CloudSSO"}
  ]
}"#;

/// Every secret written into fixtures; none may ever be printed.
const FIXTURE_SECRETS: &[&str] = &[
    "dev-secret-0001",
    "sts-secret-0002",
    "sts-token-0003",
    "env-secret-0004",
    "env-token-0005",
    sim::DEFAULT_ACCESS_KEY_SECRET,
];

async fn start_sim(clock: SharedClock) -> (SimHandle, String) {
    let now = clock.now();
    let instances = fleet::generate(5, 3, now);
    let region = instances[0].region_id.clone();
    let cfg = SimConfig {
        clock,
        ..SimConfig::default()
    };
    let h = Simulator::new(cfg, instances)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (h, region)
}

fn client(h: &SimHandle, provider: SharedProvider, clock: SharedClock) -> EcsClient {
    let cfg = ClientConfig {
        endpoint: Some(h.endpoint()),
        read_attempts: 1,
        ..ClientConfig::default()
    };
    EcsClient::with_clock(cfg, provider, clock).unwrap()
}

/// A metadata service served alone on 127.0.0.1:0; send on the sender (or drop it) to stop it
/// gracefully, which also closes idle keep-alive connections.
struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = (&mut self.task).await;
    }
}

async fn serve(router: axum::Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Served {
        addr,
        stop: Some(tx),
        task,
    }
}

fn sim_pair() -> Credentials {
    Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, sim::DEFAULT_ACCESS_KEY_SECRET)
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 5, 6, 7, 0, 0).unwrap()
}

fn assert_no_secret(text: &str, extra: &[&str]) {
    for s in FIXTURE_SECRETS.iter().chain(extra) {
        assert!(!text.contains(s), "secret {s:?} leaked into: {text}");
    }
}

// ---------------------------------------------------------------- the profile file

#[test]
fn profile_file_on_disk_resolves_each_mode() {
    let home = tempfile::tempdir().unwrap();
    let path = write_config(home.path(), PROFILES);
    let file = ProfileFile::load(&path).unwrap();
    assert_eq!(file.current(), Some("dev"));

    let dev = file.profile(None).unwrap();
    assert_eq!(dev.name, "dev");
    let ProfileSource::AccessKey(c) = &dev.source else {
        panic!("{dev:?}")
    };
    assert_eq!(
        (c.access_key_id.as_str(), c.access_key_secret.expose()),
        ("LTAIdev", "dev-secret-0001")
    );

    let ProfileSource::StsToken(c) = file.profile(Some("sts")).unwrap().source else {
        panic!()
    };
    assert_eq!(c.security_token.unwrap().expose(), "sts-token-0003");
    assert_eq!(
        file.profile(Some("sim-role")).unwrap().source,
        ProfileSource::EcsRamRole {
            role_name: Some(DEFAULT_ROLE.into())
        }
    );
    assert_eq!(
        file.profile(Some("any-role")).unwrap().source,
        ProfileSource::EcsRamRole { role_name: None }
    );
}

#[test]
fn profile_errors_name_the_file_the_profile_and_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let path = write_config(home.path(), PROFILES);
    let file = ProfileFile::load(&path).unwrap();
    let shown = path.display().to_string();

    let e = file.profile(Some("sso")).unwrap_err();
    assert!(matches!(e, ProfileError::UnsupportedMode { .. }), "{e:?}");
    let e = e.to_string();
    for want in [
        "\"CloudSSO\"",
        "\"sso\"",
        &shown,
        "AK, StsToken, EcsRamRole",
    ] {
        assert!(e.contains(want), "{want} not in {e}");
    }

    let e = file.profile(Some("prod")).unwrap_err().to_string();
    for want in ["\"prod\"", &shown, "dev, sts, sim-role, any-role, sso"] {
        assert!(e.contains(want), "{want} not in {e}");
    }

    let missing = home.path().join("nowhere.json");
    let e = ProfileFile::load(&missing).unwrap_err();
    assert!(matches!(e, ProfileError::FileNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("nowhere.json"), "{e}");

    let broken = write_config(home.path(), "{\"current\": \"dev\",\n \"profiles\": [}");
    let e = ProfileFile::load(&broken).unwrap_err().to_string();
    assert!(e.contains(&format!("{}:2:", broken.display())), "{e}");
}

// ---------------------------------------------------------------- the chain

fn chain(opts: ChainOptions) -> ChainProvider {
    ChainProvider::new(opts)
}

fn opts(env: EnvLookup) -> ChainOptions {
    ChainOptions {
        env,
        // Never the real metadata address: if a test wrongly reached IMDS it would fail fast.
        imds_base_url: "http://127.0.0.1:9".into(),
        ..ChainOptions::default()
    }
}

#[tokio::test]
async fn environment_wins_over_profile_and_profile_over_imds() {
    let home = tempfile::tempdir().unwrap();
    write_config(home.path(), PROFILES);
    let full_env = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIenv"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "env-secret-0004"),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", "env-token-0005"),
        ("ALIBABA_CLOUD_ECS_METADATA", "SomeRole"),
    ];

    // All three present: the environment.
    let c = chain(opts(env(home.path(), &full_env)));
    assert_eq!(c.source().unwrap(), "environment variables");
    let got = c.credentials().await.unwrap();
    assert_eq!(got.access_key_id, "LTAIenv");
    assert_eq!(got.security_token.unwrap().expose(), "env-token-0005");

    // No environment keys: the file's current profile, even though a role is named.
    let c = chain(opts(env(home.path(), &full_env[3..])));
    assert!(
        c.source().unwrap().starts_with("profile \"dev\" (AK)"),
        "{c:?}"
    );
    assert_eq!(c.credentials().await.unwrap().access_key_id, "LTAIdev");

    // ALIBABA_CLOUD_PROFILE picks another profile.
    let c = chain(opts(env(
        home.path(),
        &[("ALIBABA_CLOUD_PROFILE", "sts"), full_env[3]],
    )));
    let got = c.credentials().await.unwrap();
    assert_eq!(got.access_key_id, "STS.sts");
    assert_eq!(got.security_token.unwrap().expose(), "sts-token-0003");

    // No environment keys and no profile file: the RAM role.
    let empty = tempfile::tempdir().unwrap();
    let c = chain(opts(env(empty.path(), &full_env[3..])));
    assert!(
        c.source().unwrap().starts_with("ECS RAM role \"SomeRole\""),
        "{c:?}"
    );

    // ALIBABA_CLOUD_CLI_PROFILE_DISABLED skips the file.
    let c = chain(opts(env(
        home.path(),
        &[("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true"), full_env[3]],
    )));
    assert!(c.source().unwrap().starts_with("ECS RAM role"), "{c:?}");
}

#[tokio::test]
async fn an_explicit_profile_beats_the_environment() {
    let home = tempfile::tempdir().unwrap();
    write_config(home.path(), PROFILES);
    let c = chain(ChainOptions {
        profile: Some("sts".into()),
        ..opts(env(
            home.path(),
            &[
                ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIenv"),
                ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "env-secret-0004"),
            ],
        ))
    });
    assert_eq!(c.credentials().await.unwrap().access_key_id, "STS.sts");

    // An explicit config file path is honoured too.
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join("custom.json");
    std::fs::write(&path, PROFILES).unwrap();
    let c = chain(ChainOptions {
        config_file: Some(path.clone()),
        ..opts(env(tempfile::tempdir().unwrap().path(), &[]))
    });
    assert!(
        c.source()
            .unwrap()
            .ends_with(&format!("in {}", path.display())),
        "{c:?}"
    );
}

#[tokio::test]
async fn a_broken_source_is_an_error_not_a_fall_through() {
    let home = tempfile::tempdir().unwrap();
    let role = ("ALIBABA_CLOUD_ECS_METADATA", "SomeRole");

    // Half the environment pair.
    let c = chain(opts(env(
        home.path(),
        &[("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIenv"), role],
    )));
    let e = c.credentials().await.unwrap_err().to_string();
    assert!(
        e.contains("ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not"),
        "{e}"
    );

    // A named profile whose file does not exist.
    let c = chain(ChainOptions {
        profile: Some("prod".into()),
        ..opts(env(home.path(), &[role]))
    });
    let e = c.credentials().await.unwrap_err().to_string();
    assert!(
        e.contains(".aliyun/config.json") && e.contains("does not exist"),
        "{e}"
    );

    // An unsupported mode in the current profile.
    write_config(
        home.path(),
        r#"{"current": "sso", "profiles": [{"name": "sso", "mode": "CloudSSO"}]}"#,
    );
    let c = chain(opts(env(home.path(), &[role])));
    let e = c.source().unwrap_err().to_string();
    assert!(e.contains("\"CloudSSO\"") && e.contains("\"sso\""), "{e}");
}

#[tokio::test]
async fn nothing_found_lists_every_source_and_the_fixes() {
    let home = tempfile::tempdir().unwrap();
    let c = chain(opts(env(home.path(), &[])));
    let e = c.credentials().await.unwrap_err().to_string();
    for want in [
        "1) environment: ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET are not set",
        "2) CLI profile file:",
        "config.json does not exist",
        "3) ECS RAM role: not enabled",
        "aliyun configure",
        "ALIBABA_CLOUD_PROFILE",
        "set ALIBABA_CLOUD_ECS_METADATA",
    ] {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    let c = chain(opts(env(
        home.path(),
        &[
            ("ALIBABA_CLOUD_ECS_METADATA", "SomeRole"),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
        ],
    )));
    let e = c.source().unwrap_err().to_string();
    assert!(
        e.contains("disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED"),
        "{e}"
    );
}

// ---------------------------------------------------------------- IMDS end to end

#[tokio::test]
async fn ram_role_credentials_from_the_simulator_sign_describe_instances() {
    let clock: SharedClock = Arc::new(SystemClock);
    let (h, region) = start_sim(clock.clone()).await;
    let provider = ImdsProvider::new(h.endpoint().as_str(), None, clock.clone()).unwrap();
    let creds = provider.fetch().await.unwrap();
    assert_eq!(creds.access_key_id, sim::DEFAULT_ACCESS_KEY_ID);
    assert!(creds.security_token.is_some());

    let ecs = client(&h, Arc::new(provider), clock.clone());
    let got = ecs
        .describe_instances(&region, &DescribeFilter::default())
        .await
        .unwrap();
    let want = h
        .sim
        .instances()
        .into_iter()
        .filter(|i| i.region_id == region)
        .count();
    assert_eq!(got.len(), want);
    assert!(want > 0);
}

#[tokio::test]
async fn the_chain_reaches_the_simulator_role_by_env_and_by_profile() {
    let clock: SharedClock = Arc::new(SystemClock);
    let (h, region) = start_sim(clock.clone()).await;
    let home = tempfile::tempdir().unwrap();

    // ALIBABA_CLOUD_ECS_METADATA names the role, nothing else is configured.
    let by_env = default_chain(ChainOptions {
        imds_base_url: h.endpoint().to_string(),
        clock: clock.clone(),
        ..opts(env(
            home.path(),
            &[("ALIBABA_CLOUD_ECS_METADATA", DEFAULT_ROLE)],
        ))
    });
    client(&h, by_env, clock.clone())
        .describe_instances(&region, &DescribeFilter::default())
        .await
        .unwrap();

    // A profile in EcsRamRole mode, role discovered; IMDS enabled only through the profile.
    write_config(home.path(), PROFILES);
    let by_profile = default_chain(ChainOptions {
        profile: Some("any-role".into()),
        imds_base_url: h.endpoint().to_string(),
        clock: clock.clone(),
        ..opts(env(home.path(), &[]))
    });
    client(&h, by_profile, clock.clone())
        .describe_instances(&region, &DescribeFilter::default())
        .await
        .unwrap();

    // Explicitly enabled discovery with no role named.
    let enabled = default_chain(ChainOptions {
        imds_enabled: true,
        imds_base_url: h.endpoint().to_string(),
        clock: clock.clone(),
        ..opts(env(tempfile::tempdir().unwrap().path(), &[]))
    });
    client(&h, enabled, clock)
        .describe_instances(&region, &DescribeFilter::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn cached_until_180_seconds_before_expiry_then_refreshed() {
    let manual = ManualClock::new(t0());
    let clock: SharedClock = Arc::new(manual.clone());
    let (h, region) = start_sim(clock.clone()).await;
    let svc = MetadataService::new(DEFAULT_ROLE, sim_pair(), clock.clone())
        .with_lifetime(Duration::minutes(60));
    let served = serve(svc.router()).await;
    let provider = Arc::new(ImdsProvider::new(&served.url(), None, clock.clone()).unwrap());
    let ecs = client(&h, provider.clone(), clock.clone());
    let describe = || async {
        ecs.describe_instances(&region, &DescribeFilter::default())
            .await
            .unwrap()
    };

    describe().await;
    let first = provider.fetch().await.unwrap();
    let c = svc.counts();
    assert_eq!((c.token, c.role_list, c.credentials), (1, 1, 1), "{c:?}");

    // 56 minutes on, 240 s remain: the cache serves several calls.
    manual.advance(Duration::minutes(56));
    describe().await;
    describe().await;
    assert_eq!(provider.fetch().await.unwrap(), first);
    assert_eq!(svc.counts().credentials, 1);

    // 181 s remain: still cached.
    manual.advance(Duration::seconds(59));
    assert_eq!(provider.fetch().await.unwrap(), first);
    assert_eq!(svc.counts().credentials, 1);

    // 180 s remain: refreshed, with a new token; the role is not discovered again.
    manual.advance(Duration::seconds(1));
    describe().await;
    let second = provider.fetch().await.unwrap();
    assert_ne!(second.security_token, first.security_token);
    let c = svc.counts();
    assert_eq!((c.token, c.role_list, c.credentials), (2, 1, 2), "{c:?}");
    assert_eq!(c.unauthorized, 0);

    // The new ones last another hour.
    manual.advance(Duration::minutes(50));
    assert_eq!(provider.fetch().await.unwrap(), second);
    assert_eq!(svc.counts().credentials, 2);

    // Due for refresh but the service is gone: the cached ones serve until they expire...
    manual.advance(Duration::minutes(8));
    served.stop().await;
    assert_eq!(provider.fetch().await.unwrap(), second);
    describe().await;
    // ...and then the failure surfaces, naming the URL and what failed.
    manual.advance(Duration::minutes(2));
    let e = provider.credentials().await.unwrap_err().to_string();
    assert!(e.contains("/latest/api/token"), "{e}");
    assert!(e.contains("IMDSv2 token request"), "{e}");
}

#[tokio::test]
async fn falls_back_to_v1_only_when_the_token_endpoint_is_missing() {
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let svc = MetadataService::new(DEFAULT_ROLE, sim_pair(), clock.clone())
        .with_token_mode(TokenMode::Unavailable);
    let served = serve(svc.router()).await;

    let p = ImdsProvider::new(&served.url(), None, clock.clone()).unwrap();
    let c = p.fetch().await.unwrap();
    assert_eq!(c.access_key_id, sim::DEFAULT_ACCESS_KEY_ID);
    let n = svc.counts();
    assert_eq!((n.token, n.role_list, n.credentials), (1, 1, 1), "{n:?}");

    let p = ImdsProvider::new(&served.url(), Some(DEFAULT_ROLE.into()), clock.clone())
        .unwrap()
        .with_imdsv1_fallback(false);
    let e = p.fetch().await.unwrap_err();
    assert!(
        matches!(e, ImdsError::V1Disabled { status: 404, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("ALIBABA_CLOUD_IMDSV1_DISABLED"),
        "{e}"
    );

    // The chain passes ALIBABA_CLOUD_IMDSV1_DISABLED on.
    let home = tempfile::tempdir().unwrap();
    let c = chain(ChainOptions {
        imds_base_url: served.url(),
        clock: clock.clone(),
        ..opts(env(
            home.path(),
            &[
                ("ALIBABA_CLOUD_ECS_METADATA", DEFAULT_ROLE),
                ("ALIBABA_CLOUD_IMDSV1_DISABLED", "true"),
            ],
        ))
    });
    let e = c.credentials().await.unwrap_err().to_string();
    assert!(e.contains("IMDSv1 is disabled"), "{e}");
    // No metadata read was attempted without a token.
    assert_eq!(svc.counts().credentials, 1);
}

#[tokio::test]
async fn the_metadata_service_enforces_its_token_policy() {
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let svc = MetadataService::new(DEFAULT_ROLE, sim_pair(), clock.clone());
    let served = serve(svc.router()).await;
    let list = format!(
        "{}/latest/meta-data/ram/security-credentials/",
        served.url()
    );
    let token_url = format!("{}/latest/api/token", served.url());

    // Required (the default): a read without a token, or with a made-up one, is 401.
    let r = http.get(&list).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&list)
        .header(TOKEN_HEADER, "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The token request needs its TTL header, and refuses proxied requests.
    assert_eq!(http.put(&token_url).send().await.unwrap().status(), 400);
    let r = http
        .put(&token_url)
        .header(TOKEN_TTL_HEADER, "21600")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let token = http
        .put(&token_url)
        .header(TOKEN_TTL_HEADER, "60")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = http
        .get(&list)
        .header(TOKEN_HEADER, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), DEFAULT_ROLE);
    assert_eq!(svc.counts().unauthorized, 2);

    // Optional: v1 reads are served.
    let svc = MetadataService::new(DEFAULT_ROLE, sim_pair(), clock.clone())
        .with_token_mode(TokenMode::Optional);
    let served = serve(svc.router()).await;
    let list = format!(
        "{}/latest/meta-data/ram/security-credentials/",
        served.url()
    );
    assert_eq!(http.get(&list).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_wrong_role_or_an_unreachable_service_is_named() {
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let svc = MetadataService::new(DEFAULT_ROLE, sim_pair(), clock.clone());
    let served = serve(svc.router()).await;
    let p = ImdsProvider::new(&served.url(), Some("NotMyRole".into()), clock.clone()).unwrap();
    let e = p.fetch().await.unwrap_err().to_string();
    assert!(
        e.contains("security-credentials/NotMyRole") && e.contains("HTTP 404"),
        "{e}"
    );

    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = ImdsProvider::new(&format!("http://{closed}"), None, clock).unwrap();
    let e = p.fetch().await.unwrap_err();
    assert!(matches!(e, ImdsError::Unreachable { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&format!("http://{closed}/latest/api/token")),
        "{e}"
    );
    assert!(e.contains("inside an ECS instance"), "{e}");
}

// ---------------------------------------------------------------- secrets stay secret

#[tokio::test]
async fn no_secret_or_token_in_any_error_or_debug_output() {
    let manual = ManualClock::new(t0());
    let clock: SharedClock = Arc::new(manual.clone());
    let home = tempfile::tempdir().unwrap();
    let path = write_config(home.path(), PROFILES);
    let mut out = Vec::<String>::new();

    // Profiles and the chain, for every source.
    let file = ProfileFile::load(&path).unwrap();
    out.push(format!("{file:?}"));
    for name in ["dev", "sts", "sim-role", "sso", "missing"] {
        out.push(format!("{:?}", file.profile(Some(name))));
        if let Err(e) = file.profile(Some(name)) {
            out.push(e.to_string());
        }
    }
    let env_pairs = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIenv"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "env-secret-0004"),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", "env-token-0005"),
    ];
    let opts_list = [
        opts(env(home.path(), &env_pairs)),
        opts(env(home.path(), &[])),
        opts(env(home.path(), &[("ALIBABA_CLOUD_PROFILE", "sts")])),
        opts(env(home.path(), &[env_pairs[1], env_pairs[2]])),
    ];
    for o in opts_list {
        out.push(format!("{o:?}"));
        let c = chain(o);
        out.push(format!("{c:?}"));
        if let Ok(creds) = c.credentials().await {
            out.push(format!("{creds:?}"));
        }
        if let Err(e) = c.credentials().await {
            out.push(format!("{e} {e:?}"));
        }
    }

    // The RAM role: the issued secret and token, then every failure after.
    let svc = MetadataService::new(DEFAULT_ROLE, sim_pair(), clock.clone());
    out.push(format!("{svc:?}"));
    let served = serve(svc.router()).await;
    let p = ImdsProvider::new(&served.url(), None, clock.clone()).unwrap();
    let issued = p.fetch().await.unwrap();
    let token = issued.security_token.clone().unwrap().expose().to_string();
    out.push(format!("{issued:?} {p:?}"));
    served.stop().await;
    manual.advance(Duration::hours(2));
    let e = p.credentials().await.unwrap_err();
    out.push(format!("{e} {e:?}"));

    // A metadata service that answers a failure with the secret in the body.
    let leaky = axum::Router::new().route(
        "/latest/meta-data/ram/security-credentials/{role}",
        axum::routing::get(|| async {
            r#"{"Code":"Failed","AccessKeyId":"id","AccessKeySecret":"leaky-secret-0006","SecurityToken":"leaky-token-0007","Expiration":"soon"}"#
        }),
    );
    let served = serve(leaky).await;
    let p = ImdsProvider::new(&served.url(), Some("R".into()), clock).unwrap();
    let e = p.fetch().await.unwrap_err();
    assert!(e.to_string().contains("\"Failed\""), "{e}");
    out.push(format!("{e} {e:?}"));

    let all = out.join("\n");
    assert_no_secret(
        &all,
        &[
            &token,
            issued.access_key_secret.expose(),
            "leaky-secret-0006",
            "leaky-token-0007",
        ],
    );
}
