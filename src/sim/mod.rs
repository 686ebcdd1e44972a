//! A stateful ECS simulator that speaks ECS's wire protocol (RPC, JSON, signed with V1 or V3), so that
//! ecs-janitor — or Alibaba's own SDKs — can be tried, tested and benchmarked with no cloud
//! account.
//!
//! It holds a fleet per region, serves `DescribeInstances` (both paging styles and the filters
//! ecs-janitor uses) and `DeleteInstances` with ECS's rules and error codes, remembers
//! ClientTokens, verifies both signatures (V1 HMAC-SHA1 and V3 ACS3-HMAC-SHA256, see [`auth`]),
//! nonces, timestamps and STS tokens, and can inject faults. `GET
//! /__sim/state` shows the remaining fleet and the log of effective releases.
//!
//! The simulator's model lives here: its configuration, its state and the [`Simulator`] API that
//! tests, the demo and the benchmarks drive. A request goes [`http`] (the axum server) →
//! [`dispatch`] (authentication by [`auth`], faults, scripted answers, the call log) → one action
//! ([`describe`], [`delete`], [`disks`] for DescribeDisks, [`price`] for DescribePrice and
//! DescribeRenewalPrice, [`tags`] for TagResources and UntagResources), with the parameters the
//! actions share in [`params`]. Every instance has
//! disks ([`disks`]: given, or drawn from its id), released with it as ECS releases them.

mod auth;
mod delete;
mod describe;
pub mod disks;
mod dispatch;
pub mod fleet;
mod http;
pub mod imds;
mod params;
pub mod price;
pub mod snapshots;
mod tags;

pub use describe::{MAX_TAG_FILTERED, MAX_TAG_FILTERS};
pub use http::{respond, SimHandle};
pub use tags::{is_system_tag, MAX_CUSTOM_TAGS, MAX_RESOURCES as MAX_TAG_RESOURCES};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::clock::{SharedClock, SystemClock};
use crate::ecs::types::{Disk, Instance};

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
    /// How long a snapshot takes from CreateSnapshot to `accomplished` (not bounded by ECS).
    pub snapshot_time: Duration,
    /// Calls per wall-clock minute each (account, region) may make of an API, by action; calls
    /// beyond it are refused with `Throttling.User` until the minute ends. No quota: unlimited.
    pub quotas: BTreeMap<String, u64>,
    /// The quota's window: ECS's is the wall-clock minute; tests shorten it to run quickly.
    pub quota_window: Duration,
    /// The currency DescribePrice and DescribeRenewalPrice answer in: `CNY` (the China site) or
    /// `USD` (the international site), per ../shared/ecs-more.md 1.2.
    pub price_currency: String,
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
            snapshot_time: Duration::from_secs(2),
            quotas: BTreeMap::new(),
            quota_window: Duration::from_secs(60),
            price_currency: "CNY".to_string(),
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
    pub all_disks_released: bool,
    /// How many of its disks outlived it (`DeleteWithInstance=false`), now pay-as-you-go.
    pub disks_kept: usize,
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
    /// `InstanceId.N` of a DeleteInstances, `ResourceId.N` of a TagResources or UntagResources,
    /// or the `InstanceIds` filter of a DescribeInstances.
    pub instance_ids: Vec<String>,
    /// The `NextToken` or `PageNumber` a DescribeInstances asked for (`None` for a first page).
    pub page: Option<String>,
    /// Paged by cursor (`NextToken`/`MaxResults`) rather than by number (`PageNumber`): a
    /// listing by number starts with one first page; one by cursor may follow it when the
    /// fleet moved while it was listed.
    pub by_cursor: bool,
    /// A DescribeDisks' `DiskType` and creation-time filters (`Filter.1.Value`,
    /// `Filter.2.Value`), as sent; empty for other calls.
    pub disk_filters: Vec<(String, String)>,
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

/// Everything the simulator remembers between requests.
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
    releasing: Releasing,
    /// Scripted answers, each used once by the first call it matches.
    script: Vec<ScriptStep>,
    /// Calls counted against a quota: (account, region, action) → (minute, calls in it).
    quota_used: HashMap<(String, String, String), (i64, u64)>,
    /// Every instance's disks, and the disks that outlived their instance.
    disks: disks::DiskStore,
    snapshots: snapshots::SnapshotStore,
    /// Answers being sent now (waiting out the latency), and the most at once so far.
    in_flight: usize,
    peak_in_flight: usize,
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

impl SimState {
    /// Whether `account` owns the instance `id`.
    fn owns(&self, account: &str, id: &str) -> bool {
        if self.owners.is_empty() {
            return account.is_empty();
        }
        self.owners.get(id).map_or("", String::as_str) == account
    }
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

impl Simulator {
    pub fn new(cfg: SimConfig, fleet: Vec<Instance>) -> Self {
        let mut by_region: HashMap<String, BTreeMap<String, Instance>> = HashMap::new();
        let mut disk_store = disks::DiskStore::default();
        for inst in fleet {
            disk_store.set(&inst.instance_id, disks::default_disks(&inst));
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
                releasing: Releasing::default(),
                script: Vec::new(),
                quota_used: HashMap::new(),
                in_flight: 0,
                peak_in_flight: 0,
                disks: disk_store,
                snapshots: snapshots::SnapshotStore::default(),
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

    /// Limits each (account, region) to `per_minute` calls of `action` per wall-clock minute.
    pub fn set_quota(&self, action: &str, per_minute: u64) {
        self.cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .quotas
            .insert(action.to_string(), per_minute);
    }

    /// Adds or replaces an instance; a new instance gets its default disks.
    pub fn upsert(&self, inst: Instance) {
        let mut st = self.state();
        if !st.disks.has(&inst.instance_id) {
            st.disks.set(&inst.instance_id, disks::default_disks(&inst));
        }
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

    /// Gives an instance exactly these disks (in place of its default ones).
    pub fn set_disks(&self, instance_id: &str, disks: Vec<Disk>) {
        self.state().disks.set(instance_id, disks);
    }

    /// Every disk, attached or outliving its instance, by region then id.
    pub fn disks(&self) -> Vec<Disk> {
        self.state().disks.all()
    }

    /// Every snapshot that exists, in id order.
    pub fn snapshots(&self) -> Vec<snapshots::Snapshot> {
        self.state().snapshots.all()
    }

    /// Deletes a snapshot, as its RetentionDays ending or someone in the console would; false
    /// when there is no such snapshot.
    pub fn delete_snapshot(&self, snapshot_id: &str) -> bool {
        self.state().snapshots.delete(snapshot_id)
    }

    /// The next snapshots of `disk_id` end `failed` instead of `accomplished`.
    pub fn fail_snapshots_of(&self, disk_id: &str) {
        self.state()
            .snapshots
            .failing_disks
            .insert(disk_id.to_string());
    }

    /// Every effective release so far, in order.
    pub fn releases(&self) -> Vec<ReleaseRecord> {
        self.state().releases.clone()
    }

    /// Every request answered so far (after authentication), in order.
    pub fn calls(&self) -> Vec<CallLogEntry> {
        self.state().calls.clone()
    }

    /// The most answers that waited out the latency at the same time since the last call of
    /// this method (how many requests a client had in flight at once); starts counting again.
    pub fn take_peak_in_flight(&self) -> usize {
        let mut st = self.state();
        let peak = st.peak_in_flight;
        st.peak_in_flight = st.in_flight;
        peak
    }

    /// An answer starts waiting out the latency; it is counted in flight until the guard drops.
    fn answering(&self) -> InFlight {
        let mut st = self.state();
        st.in_flight += 1;
        st.peak_in_flight = st.peak_in_flight.max(st.in_flight);
        InFlight(self.clone())
    }
}

/// An answer in flight (see [`Simulator::take_peak_in_flight`]); dropping it ends it.
struct InFlight(Simulator);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

/// Released instances ECS still lists, each until when: looked up by id, and expired in order
/// of time, so a call costs what expires, not a walk over everything released so far.
#[derive(Debug, Default)]
pub(crate) struct Releasing {
    until: HashMap<String, DateTime<Utc>>,
    order: std::collections::BTreeSet<(DateTime<Utc>, String)>,
}

impl Releasing {
    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.until.contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: String, until: DateTime<Utc>) {
        if let Some(old) = self.until.insert(id.clone(), until) {
            self.order.remove(&(old, id.clone()));
        }
        self.order.insert((until, id));
    }

    /// Takes out and returns the instances whose release is over at `now`.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let mut over = Vec::new();
        while let Some((t, _)) = self.order.first() {
            if *t > now {
                break;
            }
            if let Some((_, id)) = self.order.pop_first() {
                self.until.remove(&id);
                over.push(id);
            }
        }
        over
    }
}

#[cfg(test)]
mod releasing_tests {
    use super::*;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + i64::from(s), 0).unwrap()
    }

    #[test]
    fn releases_expire_in_time_order_and_a_new_time_replaces_the_old() {
        let mut r = Releasing::default();
        r.insert("i-b".into(), at(20));
        r.insert("i-a".into(), at(10));
        r.insert("i-c".into(), at(30));
        // Released again: only the later time counts.
        r.insert("i-a".into(), at(25));
        assert!(r.expire(at(9)).is_empty());
        assert_eq!(r.expire(at(20)), vec!["i-b".to_string()]);
        assert!(r.contains_key("i-a") && !r.contains_key("i-b"));
        assert_eq!(r.expire(at(40)), vec!["i-a".to_string(), "i-c".to_string()]);
        assert!(!r.contains_key("i-a") && !r.contains_key("i-c"));
    }
}
