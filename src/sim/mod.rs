//! A stateful ECS simulator that speaks ECS's wire protocol (RPC, JSON, signed with V1 or V3), so that
//! ecs-janitor — or Alibaba's own SDKs — can be tried, tested and benchmarked with no cloud
//! account.
//!
//! It holds a fleet per region, serves `DescribeInstances` (both paging styles and the filters
//! ecs-janitor uses) and `DeleteInstances` with ECS's rules and error codes, remembers
//! ClientTokens, verifies both signatures (V1 HMAC-SHA1 and V3 ACS3-HMAC-SHA256, see [`auth`]),
//! nonces, timestamps and STS tokens, and can inject faults. `GET
//! /__sim/state` shows the remaining fleet and the log of effective releases.

mod auth;
pub mod fleet;
pub mod imds;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::ecs::types::{ChargeType, Instance, InstanceStatus};

/// The AccessKey pair the simulator accepts unless told otherwise.
pub const DEFAULT_ACCESS_KEY_ID: &str = "sim-access-key-id";
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "sim-access-key-secret";

/// Fault injection. Rates are probabilities per request, drawn from a seeded source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Answer 500 InternalError without doing anything.
    pub internal_error_rate: f64,
    /// Answer 400 Throttling without doing anything.
    pub throttle_rate: f64,
    /// Carry out a DeleteInstances, then close the connection before the answer's body.
    pub drop_after_commit_rate: f64,
    /// Added before every answer.
    pub latency: Duration,
    /// Which actions the error faults apply to (empty: all).
    pub actions: Vec<String>,
}

/// How the simulator behaves.
#[derive(Clone)]
pub struct SimConfig {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub faults: Faults,
    pub seed: u64,
    /// Timestamps further than this from the simulator's clock are refused.
    pub max_clock_skew: chrono::Duration,
    /// The `TimeLeft` sent with a throttling answer.
    pub throttle_time_left: Duration,
    pub clock: SharedClock,
    /// More accounts, each with its own key. The key above is the default account (`""`);
    /// every instance belongs to the default account unless [`Simulator::assign`] says otherwise,
    /// and a caller sees and releases only its own account's instances.
    pub accounts: Vec<SimAccount>,
    /// STS keys: each signs as an account (`""`: the default one) and is accepted only with its
    /// security token, until it expires.
    pub sts_keys: Vec<SimStsKey>,
    /// How long DescribeInstances still lists an instance after a successful DeleteInstances.
    /// ECS releases asynchronously: the release is accepted at once and the instance goes away
    /// shortly after. How long that takes, and what DescribeInstances shows meanwhile, is not
    /// documented; the simulator keeps the instance listed as it was.
    pub release_delay: Duration,
}

/// A further account of the simulator and the key that signs as it.
#[derive(Clone)]
pub struct SimAccount {
    pub name: String,
    pub access_key_id: String,
    pub access_key_secret: String,
}

impl std::fmt::Debug for SimAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAccount")
            .field("name", &self.name)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .finish()
    }
}

/// A temporary (STS) key of the simulator: its AccessKey pair, the security token that must come
/// with it (V1 `SecurityToken`, V3 `x-acs-security-token`) and its expiry.
#[derive(Clone)]
pub struct SimStsKey {
    /// The account it signs as (`""`: the default account).
    pub account: String,
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for SimStsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStsKey")
            .field("account", &self.account)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("security_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("faults", &self.faults)
            .field("seed", &self.seed)
            .field("accounts", &self.accounts)
            .field("sts_keys", &self.sts_keys)
            .finish_non_exhaustive()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            access_key_id: DEFAULT_ACCESS_KEY_ID.into(),
            access_key_secret: DEFAULT_ACCESS_KEY_SECRET.into(),
            faults: Faults::default(),
            seed: 1,
            max_clock_skew: chrono::Duration::minutes(15),
            throttle_time_left: Duration::from_millis(50),
            clock: Arc::new(SystemClock),
            accounts: Vec::new(),
            sts_keys: Vec::new(),
            release_delay: Duration::from_secs(3),
        }
    }
}

/// One effective release, as the simulator carried it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRecord {
    /// The account that released it (`""`: the default account).
    pub account: String,
    pub instance_id: String,
    pub region: String,
    pub client_token: Option<String>,
    pub force: bool,
    pub terminate_subscription: bool,
    /// Every disk of the instance was released with it, whatever its `DeleteWithInstance`: so
    /// for a security-locked instance. Otherwise each disk followed its own `DeleteWithInstance`.
    /// (The simulator models no disks beyond this.)
    pub all_disks_released: bool,
    pub request_id: String,
    pub at: DateTime<Utc>,
}

/// A request the simulator saw, for tests that check what was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallLogEntry {
    /// The account that signed the call (`""`: the default account).
    pub account: String,
    pub action: String,
    pub region: String,
    pub client_token: Option<String>,
    /// `InstanceId.N` of a DeleteInstances, or the `InstanceIds` filter of a DescribeInstances.
    pub instance_ids: Vec<String>,
    /// The `NextToken` or `PageNumber` a DescribeInstances asked for (`None` for a first page).
    pub page: Option<String>,
    /// `OK` or the error code answered; `Dropped` when the answer was cut off.
    pub outcome: String,
    /// The signature the call was verified with: `v1` or `v3`.
    pub signature: String,
}

/// A stored answer to a ClientToken.
#[derive(Debug, Clone)]
struct TokenEntry {
    fingerprint: String,
    request_id: String,
}

#[derive(Debug)]
struct SimState {
    /// region → instance id → instance; ordered, so paging is stable.
    fleet: HashMap<String, BTreeMap<String, Instance>>,
    /// Instance id → its account, for instances not in the default account.
    owners: HashMap<String, String>,
    releases: Vec<ReleaseRecord>,
    calls: Vec<CallLogEntry>,
    tokens: HashMap<String, TokenEntry>,
    nonces: HashMap<String, DateTime<Utc>>,
    rng: StdRng,
    request_seq: u64,
    /// Released instances ECS still lists, until when (asynchronous release).
    releasing: HashMap<String, DateTime<Utc>>,
    /// Scripted answers, each used once by the first call it matches.
    script: Vec<ScriptStep>,
}

/// The simulator's shared state and rules; cheap to clone.
#[derive(Clone)]
pub struct Simulator {
    cfg: Arc<Mutex<SimConfig>>,
    state: Arc<Mutex<SimState>>,
}

/// An ECS error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

fn api_err(status: u16, code: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        code: code.into(),
        message: message.into(),
    }
}

/// What a handled action produced.
enum Outcome {
    Ok(serde_json::Value),
    /// Carried out, but the connection is closed before the answer.
    Dropped,
    /// A gateway's HTML error page (status 503), without doing anything.
    Html503,
}

/// A scripted answer for the next call of one action (tests script what a bullet needs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scripted {
    /// A gateway's HTML 503 page; the call has no effect.
    Html503,
    /// DescribeInstances answers an empty list (what ECS answers a principal that may not
    /// describe the instances).
    EmptyList,
    /// An ECS error with this HTTP status and code; the call has no effect.
    Error { status: u16, code: String },
    /// DeleteInstances is carried out, then the connection is cut before the answer.
    LostAnswer,
}

/// One scripted answer and the action it is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ScriptStep {
    pub action: String,
    pub answer: Scripted,
    /// Only for a call naming this instance (DeleteInstances' `InstanceId.N`, or
    /// DescribeInstances' `InstanceIds`); any call of the action when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// A tag to set on an instance (`POST /__sim/tag`).
#[derive(Debug, Clone, serde::Deserialize)]
struct TagRequest {
    instance_id: String,
    key: String,
    value: String,
}

impl Simulator {
    pub fn new(cfg: SimConfig, fleet: Vec<Instance>) -> Self {
        let mut by_region: HashMap<String, BTreeMap<String, Instance>> = HashMap::new();
        for inst in fleet {
            by_region
                .entry(inst.region_id.clone())
                .or_default()
                .insert(inst.instance_id.clone(), inst);
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        Simulator {
            cfg: Arc::new(Mutex::new(cfg)),
            state: Arc::new(Mutex::new(SimState {
                fleet: by_region,
                owners: HashMap::new(),
                releases: Vec::new(),
                calls: Vec::new(),
                tokens: HashMap::new(),
                nonces: HashMap::new(),
                rng,
                request_seq: 0,
                releasing: HashMap::new(),
                script: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config(&self) -> SimConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the fault settings (tests turn faults on and off between phases).
    pub fn set_faults(&self, faults: Faults) {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).faults = faults;
    }

    /// Adds or replaces an instance.
    pub fn upsert(&self, inst: Instance) {
        let mut st = self.state();
        for r in st.fleet.values_mut() {
            r.remove(&inst.instance_id);
        }
        st.fleet
            .entry(inst.region_id.clone())
            .or_default()
            .insert(inst.instance_id.clone(), inst);
    }

    /// Moves an instance to `account` (`""`: the default account): only that account's key
    /// sees and releases it.
    pub fn assign(&self, instance_id: &str, account: &str) {
        let mut st = self.state();
        if account.is_empty() {
            st.owners.remove(instance_id);
        } else {
            st.owners
                .insert(instance_id.to_string(), account.to_string());
        }
    }

    /// The account an instance belongs to.
    pub fn account_of(&self, instance_id: &str) -> String {
        self.state()
            .owners
            .get(instance_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes an instance in place; false when it does not exist.
    pub fn modify(&self, instance_id: &str, f: impl FnOnce(&mut Instance)) -> bool {
        let mut st = self.state();
        for r in st.fleet.values_mut() {
            if let Some(i) = r.get_mut(instance_id) {
                f(i);
                return true;
            }
        }
        false
    }

    /// The remaining fleet, ordered by region then id (released instances ECS may still list
    /// for a while are not part of it).
    pub fn instances(&self) -> Vec<Instance> {
        let st = self.state();
        let mut regions: Vec<_> = st.fleet.keys().cloned().collect();
        regions.sort();
        regions
            .iter()
            .flat_map(|r| st.fleet[r].values())
            .filter(|i| !st.releasing.contains_key(&i.instance_id))
            .cloned()
            .collect()
    }

    /// Scripts the answer to the next call `step` matches.
    pub fn script(&self, step: ScriptStep) {
        self.state().script.push(step);
    }

    /// Sets a tag on an instance; false when it does not exist.
    pub fn tag(&self, instance_id: &str, key: &str, value: &str) -> bool {
        self.modify(instance_id, |i| {
            i.tags.insert(key.to_string(), value.to_string());
        })
    }

    /// Every effective release so far, in order.
    pub fn releases(&self) -> Vec<ReleaseRecord> {
        self.state().releases.clone()
    }

    /// Every request answered so far (after authentication), in order.
    pub fn calls(&self) -> Vec<CallLogEntry> {
        self.state().calls.clone()
    }

    /// The axum router (for embedding).
    pub fn router(&self) -> Router {
        let cfg = self.config();
        let creds = crate::ecs::Credentials::new(cfg.access_key_id, cfg.access_key_secret);
        Router::new()
            .route("/", get(handle).post(handle))
            .route("/__sim/state", get(state_handler))
            .route("/__sim/script", axum::routing::post(script_handler))
            .route("/__sim/tag", axum::routing::post(tag_handler))
            .with_state(self.clone())
            .merge(imds::metadata_router(imds::DEFAULT_ROLE, creds, cfg.clock))
    }

    /// Serves on `addr` (use port 0 for any) until the returned handle is shut down or dropped.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await;
        });
        Ok(SimHandle {
            addr,
            sim: self.clone(),
            cancel,
            task: Some(task),
        })
    }

    fn next_request_id(&self, st: &mut SimState) -> String {
        st.request_seq += 1;
        let r: u64 = st.rng.gen();
        let s = format!("{:016X}{:016X}", st.request_seq, r);
        format!(
            "{}-{}-{}-{}-{}",
            &s[0..8],
            &s[8..12],
            &s[12..16],
            &s[16..20],
            &s[20..32]
        )
    }

    /// Authenticates and answers one request.
    fn process(
        &self,
        req: &auth::Incoming<'_>,
    ) -> (Result<Outcome, ApiError>, String, Option<Duration>) {
        let cfg = self.config();
        let mut st = self.state();
        let request_id = self.next_request_id(&mut st);
        let (account, params, signature) = match auth::authenticate(&cfg, &mut st, req) {
            Ok(a) => (a.account, a.params, a.signature),
            Err(e) => return (Err(e), request_id, None),
        };
        let params = params.as_slice();
        let map: HashMap<&str, &str> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let action = map.get("Action").copied().unwrap_or_default().to_string();
        let region = map.get("RegionId").copied().unwrap_or_default().to_string();
        let mut log = CallLogEntry {
            account: account.clone(),
            action: action.clone(),
            region,
            client_token: map.get("ClientToken").map(|s| s.to_string()),
            instance_ids: match map.get("InstanceIds") {
                Some(raw) => serde_json::from_str(raw).unwrap_or_default(),
                None => instance_id_params(params)
                    .map(|ids| ids.into_iter().map(|(_, id)| id).collect())
                    .unwrap_or_default(),
            },
            page: map
                .get("NextToken")
                .filter(|t| !t.is_empty())
                .or_else(|| map.get("PageNumber").filter(|n| **n != "1"))
                .map(|s| s.to_string()),
            outcome: String::new(),
            signature: signature.to_string(),
        };
        // Released instances stop being listed once their delay is over.
        let now = cfg.clock.now();
        let over: Vec<String> = st
            .releasing
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in over {
            st.releasing.remove(&id);
            for f in st.fleet.values_mut() {
                f.remove(&id);
            }
        }
        let scripted = st.script.iter().position(|s| {
            s.action == action
                && s.instance_id
                    .as_ref()
                    .is_none_or(|id| log.instance_ids.contains(id))
        });
        let scripted = scripted.map(|i| st.script.remove(i).answer);
        let faults_apply = cfg.faults.actions.is_empty() || cfg.faults.actions.contains(&action);
        let mut retry_after = None;
        let result = if let Some(answer) = scripted {
            match answer {
                Scripted::Html503 => Ok(Outcome::Html503),
                Scripted::EmptyList => Ok(Outcome::Ok(json!({
                    "Instances": {"Instance": []},
                    "TotalCount": 0,
                    "PageNumber": 1,
                    "PageSize": 100,
                    "NextToken": "",
                }))),
                Scripted::Error { status, code } => Err(api_err(
                    status,
                    code.clone(),
                    format!("scripted answer {code}"),
                )),
                Scripted::LostAnswer if action == "DeleteInstances" => delete(
                    &mut st,
                    &account,
                    &map,
                    params,
                    &request_id,
                    now,
                    cfg.release_delay,
                )
                .map(|_| Outcome::Dropped),
                Scripted::LostAnswer => Ok(Outcome::Dropped),
            }
        } else if faults_apply
            && st
                .rng
                .gen_bool(cfg.faults.internal_error_rate.clamp(0.0, 1.0))
        {
            Err(api_err(
                500,
                "InternalError",
                "The request processing has failed due to some unknown error.",
            ))
        } else if faults_apply && st.rng.gen_bool(cfg.faults.throttle_rate.clamp(0.0, 1.0)) {
            retry_after = Some(cfg.throttle_time_left);
            Err(api_err(
                400,
                "Throttling",
                "Request was denied due to request throttling.",
            ))
        } else {
            match action.as_str() {
                "" => Err(api_err(
                    400,
                    "MissingParameter",
                    "The input parameter \"Action\" that is mandatory for processing this request is not supplied.",
                )),
                "DescribeInstances" => describe(&mut st, &account, &map).map(Outcome::Ok),
                "DeleteInstances" => {
                    let drop = st.rng.gen_bool(cfg.faults.drop_after_commit_rate.clamp(0.0, 1.0));
                    delete(&mut st, &account, &map, params, &request_id, now, cfg.release_delay).map(|v| {
                        if drop && v.get("RequestId").is_some() {
                            Outcome::Dropped
                        } else {
                            Outcome::Ok(v)
                        }
                    })
                }
                _ => Err(api_err(
                    404,
                    "InvalidAction.NotFound",
                    format!("Specified api {action} is not found, please check your url and method."),
                )),
            }
        };
        log.outcome = match &result {
            Ok(Outcome::Ok(_)) => "OK".into(),
            Ok(Outcome::Dropped) => "Dropped".into(),
            Ok(Outcome::Html503) => "Html503".into(),
            Err(e) => e.code.clone(),
        };
        st.calls.push(log);
        (result, request_id, retry_after)
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Simulator,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://ADDR/`, the endpoint to give the client.
    pub fn endpoint(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("a socket address forms a URL")
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn parse_bool(map: &HashMap<&str, &str>, key: &str) -> Result<bool, ApiError> {
    match map.get(key) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(api_err(
            400,
            "InvalidParameter",
            format!("The specified parameter \"{key}\" is not valid: {v:?} is not a boolean."),
        )),
    }
}

/// A region's instances, when the simulator has any there.
type RegionFleet<'a> = Option<&'a BTreeMap<String, Instance>>;

fn require_region<'a>(
    st: &'a SimState,
    map: &HashMap<&str, &str>,
) -> Result<(&'a str, RegionFleet<'a>), ApiError> {
    let region = map.get("RegionId").copied().unwrap_or_default();
    if region.is_empty() {
        return Err(api_err(
            400,
            "MissingParameter",
            "The input parameter \"RegionId\" that is mandatory for processing this request is not supplied.",
        ));
    }
    // A region ECS has, or one the simulator was given instances in, is served (empty when it
    // holds none); any other is unknown, as it is to ECS.
    match st.fleet.get_key_value(region) {
        Some((k, v)) => Ok((k.as_str(), Some(v))),
        None if crate::policy::is_known_region(region) => Ok(("", None)),
        None => Err(api_err(
            404,
            "InvalidRegionId.NotFound",
            format!("The specified region {region:?} does not exist."),
        )),
    }
}

/// Whether `account` owns the instance `id`.
fn owns(st: &SimState, account: &str, id: &str) -> bool {
    if st.owners.is_empty() {
        return account.is_empty();
    }
    st.owners.get(id).map_or("", String::as_str) == account
}

/// DescribeInstances' tag filters: `Tag.N.Key` with an optional `Tag.N.Value` (the deprecated
/// lowercase `key`/`value` too), N = 1..20.
fn tag_filters(map: &HashMap<&str, &str>) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut by_n: BTreeMap<usize, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (k, v) in map {
        let Some(rest) = k.strip_prefix("Tag.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        let e = by_n.entry(n).or_default();
        match field {
            "Key" => e.0 = Some(v),
            "key" => e.0 = e.0.or(Some(v)),
            "Value" => e.1 = Some(v),
            "value" => e.1 = e.1.or(Some(v)),
            _ => {}
        }
    }
    let mut tags = Vec::new();
    for (n, (key, value)) in by_n {
        if key.is_none() && value.is_none() {
            continue;
        }
        if n == 0 || n > MAX_TAG_FILTERS {
            return Err(api_err(
                400,
                "InvalidTagCount",
                format!("The number of tags exceeds {MAX_TAG_FILTERS}: Tag.N counts from 1 to {MAX_TAG_FILTERS}, got Tag.{n}."),
            ));
        }
        match key {
            Some(k) => tags.push((k.to_string(), value.map(str::to_string))),
            None => {
                return Err(api_err(
                    400,
                    "InvalidTag.Mismatch",
                    format!("Tag.{n}.Value is given without Tag.{n}.Key."),
                ))
            }
        }
    }
    Ok(tags)
}

/// The most `Tag.N` filters DescribeInstances takes.
pub const MAX_TAG_FILTERS: usize = 20;
/// The most instances a DescribeInstances filtered by tags returns, over all its pages (beyond
/// that ECS points to ListTagResources).
pub const MAX_TAG_FILTERED: usize = 1000;

fn describe(
    st: &mut SimState,
    account: &str,
    map: &HashMap<&str, &str>,
) -> Result<serde_json::Value, ApiError> {
    let (_, fleet) = require_region(st, map)?;
    let status = match map.get("Status") {
        None => None,
        Some(s) => Some(InstanceStatus::parse(s).ok_or_else(|| {
            api_err(
                404,
                "InvalidStatus.NotFound",
                format!("The specified Status {s:?} is not found."),
            )
        })?),
    };
    let charge = match map.get("InstanceChargeType") {
        None => None,
        Some(s) => Some(ChargeType::parse(s).ok_or_else(|| {
            api_err(
                404,
                "InvalidInstanceChargeType.NotFound",
                format!("The specified InstanceChargeType {s:?} is not found."),
            )
        })?),
    };
    let ids: Option<HashSet<String>> = match map.get("InstanceIds") {
        None => None,
        Some(raw) => {
            let v: Vec<String> = serde_json::from_str(raw).map_err(|_| {
                api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"InstanceIds\" is not a JSON array of instance ids.",
                )
            })?;
            if v.len() > 100 {
                return Err(api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"InstanceIds\" holds more than 100 ids.",
                ));
            }
            Some(v.into_iter().collect())
        }
    };
    let tags = tag_filters(map)?;
    let matches = |i: &Instance| {
        status.is_none_or(|s| i.status == s)
            && charge.is_none_or(|c| i.charge_type == c)
            && ids.as_ref().is_none_or(|set| set.contains(&i.instance_id))
            && tags.iter().all(|(k, v)| match (i.tags.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
            && owns(st, account, &i.instance_id)
    };

    let token_mode = map.contains_key("NextToken") || map.contains_key("MaxResults");
    let size_param = if token_mode { "MaxResults" } else { "PageSize" };
    let default_size = 10;
    let size = match map.get(size_param) {
        None => default_size,
        // MaxResults outside 10..100 is brought into it, as ECS documents (GO-V2-ECS).
        Some(s) if token_mode => match s.parse::<u64>() {
            Ok(n) => n.clamp(10, 100) as usize,
            Err(_) => {
                return Err(api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"MaxResults\" is not a number.",
                ))
            }
        },
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(api_err(
                    400,
                    "InvalidParameter",
                    format!(
                        "The specified parameter \"{size_param}\" must be a number from 1 to 100."
                    ),
                ))
            }
        },
    };
    if parse_bool(map, "DryRun")? {
        return Err(api_err(
            400,
            "DryRunOperation",
            "Request validation has been passed with DryRun flag set.",
        ));
    }
    let empty = BTreeMap::new();
    let fleet = fleet.unwrap_or(&empty);
    // Looked up by id, as ECS does, rather than by scanning the region.
    let by_id: BTreeMap<String, Instance>;
    let fleet = match &ids {
        Some(set) => {
            by_id = set
                .iter()
                .filter_map(|id| fleet.get_key_value(id))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            &by_id
        }
        None => fleet,
    };
    // With tag filters, nothing past the MAX_TAG_FILTERED-th match is listed.
    let cap: Option<String> = if tags.is_empty() {
        None
    } else {
        fleet
            .values()
            .filter(|i| matches(i))
            .nth(MAX_TAG_FILTERED - 1)
            .map(|i| i.instance_id.clone())
    };
    let within = |i: &&Instance| cap.as_ref().is_none_or(|c| i.instance_id <= *c);
    let body = if token_mode {
        let after = match map.get("NextToken").filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(decode_token(t).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"NextToken\" is not valid.",
                )
            })?),
        };
        let iter: Box<dyn Iterator<Item = &Instance>> = match &after {
            Some(a) => Box::new(
                fleet
                    .range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .map(|(_, i)| i),
            ),
            None => Box::new(fleet.values()),
        };
        let mut page: Vec<&Instance> = Vec::with_capacity(size);
        let mut more = false;
        for i in iter.filter(|i| matches(i)).take_while(within) {
            if page.len() == size {
                more = true;
                break;
            }
            page.push(i);
        }
        let next = if more {
            page.last()
                .map(|i| encode_token(&i.instance_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        json!({
            "NextToken": next,
            "MaxResults": size,
            "TotalCount": page.len(),
            "Instances": {"Instance": page.iter().map(|i| i.to_wire()).collect::<Vec<_>>()},
        })
    } else {
        let number = match map.get("PageNumber") {
            None => 1,
            Some(s) => s.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    "The specified parameter \"PageNumber\" must be a number from 1.",
                )
            })?,
        };
        let all: Vec<&Instance> = fleet
            .values()
            .filter(|i| matches(i))
            .take_while(within)
            .collect();
        let page: Vec<_> = all
            .iter()
            .skip((number - 1).saturating_mul(size))
            .take(size)
            .map(|i| i.to_wire())
            .collect();
        json!({
            "PageNumber": number,
            "PageSize": size,
            "TotalCount": all.len(),
            "Instances": {"Instance": page},
        })
    };
    Ok(body)
}

/// NextToken is the hex of the last id served: opaque to clients, stable across releases.
fn encode_token(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(t: &str) -> Option<String> {
    if t.len() % 2 != 0 || t.len() > 256 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `InstanceId.N` parameters, ordered by N; an error when N is not a positive number.
fn instance_id_params(params: &[(String, String)]) -> Result<Vec<(usize, String)>, ApiError> {
    let mut ids = Vec::new();
    for (k, v) in params {
        if let Some(n) = k.strip_prefix("InstanceId.") {
            let n: usize = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    format!("The parameter name \"{k}\" is not valid: N counts from 1."),
                )
            })?;
            ids.push((n, v.clone()));
        }
    }
    ids.sort();
    Ok(ids)
}

fn delete(
    st: &mut SimState,
    account: &str,
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
    request_id: &str,
    now: DateTime<Utc>,
    release_delay: Duration,
) -> Result<serde_json::Value, ApiError> {
    let (region, _) = require_region(st, map)?;
    let region = region.to_string();
    let region_param = map.get("RegionId").copied().unwrap_or_default().to_string();
    // An id named twice (under one index or two) is one instance, released once.
    let mut seen = HashSet::new();
    let ids: Vec<String> = instance_id_params(params)?
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| seen.insert(id.clone()))
        .collect();
    if ids.is_empty() {
        return Err(api_err(
            400,
            "MissingParameter",
            "The input parameter \"InstanceId.N\" that is mandatory for processing this request is not supplied.",
        ));
    }
    if ids.len() > 100 {
        return Err(api_err(
            403,
            "InvalidParameter.TooManyInstanceIds",
            "Instance ids cannot be more than 100.",
        ));
    }
    let force = parse_bool(map, "Force")?;
    let terminate = parse_bool(map, "TerminateSubscription")?;
    let dry_run = parse_bool(map, "DryRun")?;
    let token = map.get("ClientToken").map(|s| s.to_string());
    if let Some(t) = &token {
        if t.is_empty() || t.chars().count() > 64 || !t.is_ascii() {
            return Err(api_err(
                400,
                "InvalidParameter",
                "The specified parameter \"ClientToken\" must be 1 to 64 ASCII characters.",
            ));
        }
    }
    let fingerprint = format!(
        "{region_param}|{}|{force}|{terminate}|{dry_run}",
        ids.join(",")
    );
    // ClientTokens are scoped to the account that sent them.
    let token_key = token.as_ref().map(|t| {
        if account.is_empty() {
            t.clone()
        } else {
            format!("{account}/{t}")
        }
    });
    if let Some(t) = &token_key {
        if let Some(prev) = st.tokens.get(t) {
            if prev.fingerprint == fingerprint {
                return Ok(json!({"RequestId": prev.request_id}));
            }
            return Err(api_err(
                400,
                "IdempotentParameterMismatch",
                "The request is retried with updated parameters.",
            ));
        }
    }
    if dry_run {
        return Err(api_err(
            400,
            "DryRunOperation",
            "Request validation has been passed with DryRun flag set.",
        ));
    }
    let fleet = st.fleet.get(&region);
    for id in &ids {
        let Some(i) = fleet
            .and_then(|f| f.get(id))
            .filter(|_| owns(st, account, id))
        else {
            return Err(api_err(
                404,
                "InvalidInstanceId.NotFound",
                format!("The specified InstanceId does not exist: {id}"),
            ));
        };
        if st.releasing.contains_key(id) {
            // Undocumented: what ECS answers a second release of an instance it is releasing.
            return Err(api_err(
                403,
                "IncorrectInstanceStatus",
                format!("The specified instance {id} is being released."),
            ));
        }
        if i.deletion_protection {
            return Err(api_err(
                403,
                "InvalidOperation.DeletionProtection",
                format!("The operation is not allowed due to deletion protection: {id}"),
            ));
        }
        // A security lock does not block a release ("DeleteInstances: Unaffected"); the
        // instance's disks then go with it whatever their DeleteWithInstance says (recorded in
        // the release). InstanceLockedForSecurity is answered only when a test scripts it.
        if i.charge_type == ChargeType::PrePaid {
            let expired = i.expired_time.is_some_and(|t| t <= now);
            if !terminate || !expired {
                let why = if !expired {
                    "the subscription has not expired"
                } else {
                    "TerminateSubscription is not true"
                };
                return Err(api_err(
                    403,
                    "ChargeTypeViolation",
                    format!("The subscription instance {id} cannot be released: {why}."),
                ));
            }
        }
        match i.status {
            InstanceStatus::Stopped => {}
            InstanceStatus::Running | InstanceStatus::Starting | InstanceStatus::Stopping
                if force => {}
            InstanceStatus::Pending => {
                return Err(api_err(
                    403,
                    "IncorrectInstanceStatus.Initializing",
                    format!("The instance {id} is still initializing."),
                ))
            }
            other => {
                return Err(api_err(
                    403,
                    "IncorrectInstanceStatus",
                    format!("The specified instance is in an incorrect status for the requested action; Status of {id} is {other} but the expected status is in (Stopped)."),
                ))
            }
        }
    }
    let locked: HashSet<String> = st
        .fleet
        .get(&region)
        .map(|f| {
            ids.iter()
                .filter(|id| f.get(*id).is_some_and(Instance::security_locked))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // Every member passed: the batch is carried out as a whole.
    if release_delay.is_zero() {
        if let Some(f) = st.fleet.get_mut(&region) {
            for id in &ids {
                f.remove(id);
            }
        }
    } else {
        let until = now + chrono::Duration::from_std(release_delay).unwrap_or_default();
        for id in &ids {
            st.releasing.insert(id.clone(), until);
        }
    }
    for id in &ids {
        st.releases.push(ReleaseRecord {
            all_disks_released: locked.contains(id),
            account: account.to_string(),
            instance_id: id.clone(),
            region: region.clone(),
            client_token: token.clone(),
            force,
            terminate_subscription: terminate,
            request_id: request_id.to_string(),
            at: now,
        });
    }
    if let Some(t) = token_key {
        st.tokens.insert(
            t,
            TokenEntry {
                fingerprint,
                request_id: request_id.to_string(),
            },
        );
    }
    Ok(json!({"RequestId": request_id}))
}

async fn handle(
    State(sim): State<Simulator>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    respond(&sim, &method, &headers, query.as_deref(), &body).await
}

/// Answers one ECS RPC request from its raw parts, exactly as the endpoint `/` does: parameters
/// come from the query and, for a form (or any non-empty POST) body, from the body. Public so
/// the whole request path (parsing, signature check, dispatch) can be fuzzed without a socket.
pub async fn respond(
    sim: &Simulator,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let query: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let is_form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form || (*method == Method::POST && !body.is_empty()) {
        form_urlencoded::parse(body).into_owned().collect()
    } else {
        Vec::new()
    };
    let req = auth::Incoming {
        method: method.as_str(),
        headers,
        query,
        form,
        body,
    };
    let (result, request_id, retry_after) = sim.process(&req);
    let latency = sim.config().faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match result {
        Ok(Outcome::Ok(mut v)) => {
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "RequestId".into(),
                    json!(o.get("RequestId").cloned().unwrap_or(json!(request_id))),
                );
            }
            (StatusCode::OK, Json(v)).into_response()
        }
        Ok(Outcome::Html503) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/html")],
            "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>",
        )
            .into_response(),
        Ok(Outcome::Dropped) => {
            // Headers go out, then the body fails: the connection is cut before the answer.
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("simulated lost answer"))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Err(e) => {
            let body = json!({
                "RequestId": request_id,
                "HostId": "ecs.aliyuncs.com",
                "Code": &e.code,
                "Message": &e.message,
                "Recommend": format!(
                    "https://api.aliyun.com/troubleshoot?q={}&product=Ecs&requestId={request_id}",
                    e.code
                ),
            });
            let mut resp = (e.status, Json(body)).into_response();
            if let Some(d) = retry_after {
                if let Ok(v) =
                    format!("Limit:10,Remain:0,TimeLeft:{},Reset:0", d.as_millis()).parse()
                {
                    resp.headers_mut().insert("x-ratelimit-user-api", v);
                }
            }
            resp
        }
    }
}

async fn state_handler(State(sim): State<Simulator>) -> Response {
    let instances: Vec<_> = sim.instances().iter().map(|i| i.to_wire()).collect();
    Json(json!({
        "instances": instances,
        "releases": sim.releases(),
    }))
    .into_response()
}

async fn script_handler(State(sim): State<Simulator>, Json(step): Json<ScriptStep>) -> Response {
    sim.script(step);
    Json(json!({"scripted": true})).into_response()
}

async fn tag_handler(State(sim): State<Simulator>, Json(t): Json<TagRequest>) -> Response {
    if sim.tag(&t.instance_id, &t.key, &t.value) {
        Json(json!({"tagged": t.instance_id})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no instance {}", t.instance_id)})),
        )
            .into_response()
    }
}
