//! Property tests of the promises other code and users lean on, over generated inputs. They add
//! to the properties next to the code (src/ecs/sign.rs, src/backoff.rs, src/plan/tests.rs,
//! src/policy/duration.rs) rather than repeat them:
//!
//! - percent-encoding equals a byte-by-byte reference model, and the string to sign (hence the
//!   signature) changes whenever the parameter set does, including `&`/`=` smuggling attempts;
//! - backoff ceilings are exactly `min(cap, base·2^n)`, never shrink, and never overflow for any
//!   attempt number or base;
//! - no protected instance is planned, under any protect tag key, policy mix, observations and
//!   queue, and a protected instance is only ever skipped for its protection;
//! - claiming batches from a real SQLite store until the queue is empty yields batches of at most
//!   100 ids, one region and one flag combination each, holding every due release exactly once.
//!
//! Runs are seeded (set `PROPTEST_RNG_SEED` to explore other inputs, `PROPTEST_CASES` for more
//! of them) and case counts are small enough for the whole file to run in seconds.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use ecs_janitor::backoff::Backoff;
use ecs_janitor::ecs::sign::{percent_encode, sign, string_to_sign};
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::plan::{evaluate, EvalContext, QueuedInfo, SkipReason};
use ecs_janitor::policy::{self, Policy, ProtectionConfig};
use ecs_janitor::store::{BatchId, NewRelease, ReleaseId};

/// The seed of every property here unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x006a_616e_6974_6f72;

/// `cases` cases from the fixed seed, unless `PROPTEST_CASES` or `PROPTEST_RNG_SEED` say
/// otherwise (for a longer or different local run).
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = match base.rng_seed {
        RngSeed::Random => RngSeed::Fixed(SEED),
        fixed => fixed,
    };
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        cases
    };
    ProptestConfig {
        cases,
        rng_seed,
        ..base
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

// ---- percent-encoding and signing ------------------------------------------------------------

/// RFC 3986 unreserved characters stay; every other UTF-8 byte becomes `%XX`, uppercase.
fn reference_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Parameter sets with distinct names: names drawn from a few realistic ones plus random text,
/// values from any text, including `&`, `=`, `%`, spaces and non-ASCII.
fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("Action".to_string()),
        Just("RegionId".to_string()),
        Just("InstanceId.1".to_string()),
        Just("InstanceId.2".to_string()),
        Just("ClientToken".to_string()),
        "[A-Za-z0-9.&=%_~ -]{1,10}",
    ];
    proptest::collection::vec((name, "\\PC{0,12}"), 1..8).prop_map(|mut v| {
        let mut seen = HashSet::new();
        v.retain(|(k, _)| seen.insert(k.clone()));
        v
    })
}

/// A change to a parameter set that ECS must see as a different request.
#[derive(Debug, Clone)]
enum Change {
    Value(usize, String),
    Name(usize, String),
    Remove(usize),
    Add(String, String),
    /// Folds parameter j into parameter i's value as `&name=value`: an attempt to make two
    /// parameters look like one.
    Smuggle(usize, usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), "\\PC{0,12}").prop_map(|(i, v)| Change::Value(i, v)),
        (any::<usize>(), "[A-Za-z0-9.]{1,10}").prop_map(|(i, n)| Change::Name(i, n)),
        any::<usize>().prop_map(Change::Remove),
        ("[A-Za-z0-9.]{1,10}", "\\PC{0,12}").prop_map(|(n, v)| Change::Add(n, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Change::Smuggle(i, j)),
    ]
}

/// `params` changed by `c`, or `None` when the change would leave the set as it was (or give
/// two parameters one name, which no signer sends).
fn apply(params: &[(String, String)], c: &Change) -> Option<Vec<(String, String)>> {
    let mut p = params.to_vec();
    let n = p.len();
    let has = |p: &[(String, String)], k: &str| p.iter().any(|(x, _)| x == k);
    match c {
        Change::Value(i, v) => {
            let i = i % n;
            if p[i].1 == *v {
                return None;
            }
            p[i].1 = v.clone();
        }
        Change::Name(i, name) => {
            if has(&p, name) {
                return None;
            }
            p[i % n].0 = name.clone();
        }
        Change::Remove(i) => {
            p.remove(i % n);
        }
        Change::Add(name, v) => {
            if has(&p, name) {
                return None;
            }
            p.push((name.clone(), v.clone()));
        }
        Change::Smuggle(i, j) => {
            let (i, j) = (i % n, j % n);
            if i == j {
                return None;
            }
            let (k, v) = p[j].clone();
            p[i].1 = format!("{}&{k}={v}", p[i].1);
            p.remove(j);
        }
    }
    Some(p)
}

proptest! {
    #![proptest_config(config(256))]

    /// The encoder is exactly the reference: not only does it round-trip, it encodes nothing
    /// unreserved and uses uppercase hex, which signatures computed by Alibaba's SDKs depend on.
    #[test]
    fn percent_encoding_is_exactly_rfc3986_unreserved(s in "\\PC{0,24}|[ -~]{0,24}") {
        prop_assert_eq!(percent_encode(&s), reference_encode(&s));
    }

    /// Whatever order the parameters are given in, the signature is the same.
    #[test]
    fn signature_is_independent_of_parameter_order(
        (p, shuffled) in params().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
        method in prop_oneof![Just("GET"), Just("POST")],
    ) {
        prop_assert_eq!(
            sign("secret", &string_to_sign(method, &p)),
            sign("secret", &string_to_sign(method, &shuffled))
        );
    }

    /// Any change to the parameters, the method or the secret changes what is signed or the
    /// signature, so a verifier refuses a request altered in transit.
    #[test]
    fn any_change_changes_the_signature(
        p in params(),
        c in change(),
        secret in "[A-Za-z0-9]{1,16}",
        other_secret in "[A-Za-z0-9]{1,16}",
    ) {
        let sts = string_to_sign("POST", &p);
        let sig = sign(&secret, &sts);
        if let Some(q) = apply(&p, &c) {
            let sts2 = string_to_sign("POST", &q);
            prop_assert_ne!(&sts, &sts2, "{:?} left the string to sign unchanged", c);
            prop_assert_ne!(&sig, &sign(&secret, &sts2));
        }
        prop_assert_ne!(&sts, &string_to_sign("GET", &p));
        if other_secret != secret {
            prop_assert_ne!(&sig, &sign(&other_secret, &sts));
        }
    }
}

// ---- backoff -----------------------------------------------------------------------------------

/// `base · 2^n` in nanoseconds, saturating at `u128::MAX`.
fn ideal_ns(base: Duration, n: u32) -> u128 {
    let b = base.as_nanos();
    if b == 0 {
        return 0;
    }
    if n >= 127 {
        return u128::MAX;
    }
    b.saturating_mul(1u128 << n)
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..600_000).prop_map(Duration::from_millis),
        (0u64..2_000_000).prop_map(Duration::from_micros),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
        Just(Duration::ZERO),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// For any base, cap and attempt number, even absurd ones, the delay lies in
    /// `[0, min(cap, base·2^n)]` and nothing overflows or panics.
    #[test]
    fn delay_is_bounded_for_any_attempt(
        base in any_duration(),
        cap in any_duration(),
        n in prop_oneof![0u32..80, any::<u32>(), Just(u32::MAX)],
        seed: u64,
    ) {
        let b = Backoff::new(base, cap);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let d = b.delay(n, None, &mut rng);
        let bound = cap.as_nanos().min(ideal_ns(base, n));
        prop_assert!(d.as_nanos() <= bound, "{d:?} over {bound}ns");
        prop_assert!(b.ceiling(n).as_nanos() <= bound);
    }

    /// With whole-millisecond settings below 35 years (any real configuration), the ceiling is
    /// exactly `min(cap, base·2^n)`: doubling is not cut short, and the cap is reached.
    #[test]
    fn ceiling_is_exactly_capped_doubling(
        base_ms in prop_oneof![0u64..10_000, any::<u64>()],
        cap_ms in 0u64..(1 << 40),
        n in prop_oneof![0u32..70, any::<u32>()],
    ) {
        let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
        let want = u128::from(cap_ms).min(ideal_ns(Duration::from_millis(base_ms), n) / 1_000_000);
        prop_assert_eq!(b.ceiling(n).as_millis(), want);
    }

    /// Waits never shrink as retries go on.
    #[test]
    fn ceiling_never_shrinks(base in any_duration(), cap in any_duration(), n in 0u32..200) {
        let b = Backoff::new(base, cap);
        prop_assert!(b.ceiling(n) <= b.ceiling(n + 1));
    }
}

// ---- protected instances are never planned ----------------------------------------------------

const STATUSES: [&str; 5] = ["Pending", "Running", "Starting", "Stopping", "Stopped"];
const REGIONS: [&str; 3] = ["cn-hangzhou", "cn-shanghai", "us-west-1"];
const TAG_KEYS: [&str; 4] = ["purpose", "owner", "janitor:protect", "keep-me"];
const TAG_VALUES: [&str; 4] = ["ci", "bob", "true", "false"];
const NAMES: [&str; 3] = ["ci-1", "web-1", "db-9"];
const LOCKS: [&str; 3] = ["security", "financial", "Security"];

/// The building blocks of one generated policy.
#[derive(Debug, Clone)]
struct PolicySpec {
    statuses: Vec<usize>,
    prepaid: Option<bool>,
    /// (key, value) indices; a value index past the end means `"*"`.
    tag: Option<(usize, usize)>,
    name_glob: Option<usize>,
    created_before_days: Option<u8>,
    stopped_for_hours: Option<u8>,
    expired: bool,
    exclude_tag: Option<(usize, usize)>,
    regions: Vec<usize>,
    /// force, terminate_subscription, allow_security_locked, dry_run
    flags: (bool, bool, bool, bool),
    grace_hours: u8,
    limit: u32,
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    (
        // Each condition is given sometimes, so that policies often match something.
        proptest::collection::vec(0..STATUSES.len(), 0..3),
        proptest::option::weighted(0.3, any::<bool>()),
        proptest::option::weighted(0.4, (0..TAG_KEYS.len(), 0..=TAG_VALUES.len())),
        proptest::option::weighted(0.3, 0usize..3),
        proptest::option::weighted(0.3, 0u8..20),
        proptest::option::weighted(0.2, 0u8..4),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(0.3, (0..TAG_KEYS.len(), 0..=TAG_VALUES.len())),
        proptest::collection::vec(0..REGIONS.len(), 1..3),
        any::<(bool, bool, bool, bool)>(),
        0u8..3,
        1u32..12,
    )
        .prop_map(
            |(
                statuses,
                prepaid,
                tag,
                name_glob,
                created_before_days,
                stopped_for_hours,
                expired,
                exclude_tag,
                regions,
                flags,
                grace_hours,
                limit,
            )| PolicySpec {
                statuses,
                prepaid,
                tag,
                name_glob,
                created_before_days,
                stopped_for_hours,
                expired,
                exclude_tag,
                regions,
                flags,
                grace_hours,
                limit,
            },
        )
}

fn tag_yaml((k, v): (usize, usize)) -> String {
    format!(
        "{{{:?}: {:?}}}",
        TAG_KEYS[k],
        TAG_VALUES.get(v).unwrap_or(&"*")
    )
}

/// The spec as a policy document that passes validation: the cross-key rules ECS imposes
/// (Running needs force, subscriptions need terminate_subscription) are honoured.
fn policy_yaml(n: usize, s: &PolicySpec) -> String {
    let mut select = Vec::new();
    let mut statuses: Vec<&str> = s.statuses.iter().map(|i| STATUSES[*i]).collect();
    statuses.sort_unstable();
    statuses.dedup();
    if !statuses.is_empty() {
        select.push(format!("status: [{}]", statuses.join(", ")));
    }
    if let Some(p) = s.prepaid {
        select.push(format!(
            "charge_type: {}",
            if p { "PrePaid" } else { "PostPaid" }
        ));
    }
    if let Some(t) = s.tag {
        select.push(format!("tags: {}", tag_yaml(t)));
    }
    if let Some(g) = s.name_glob {
        select.push(format!("name: {:?}", ["ci-*", "*", "web-?"][g]));
    }
    if let Some(d) = s.created_before_days {
        select.push(format!("created_before: {d}d"));
    }
    if let Some(h) = s.stopped_for_hours {
        select.push(format!("stopped_for: {h}h"));
    }
    if s.expired {
        select.push("expired: true".into());
    }
    if select.is_empty() {
        select.push("status: [Stopped]".into());
    }
    let (mut force, mut terminate, allow_locked, dry_run) = s.flags;
    force |= statuses.contains(&"Running");
    terminate |= s.prepaid == Some(true) || s.expired;
    let mut regions: Vec<&str> = s.regions.iter().map(|i| REGIONS[*i]).collect();
    regions.sort_unstable();
    regions.dedup();
    let exclude = s
        .exclude_tag
        .map(|t| format!("exclude: {{tags: {}}}\n", tag_yaml(t)))
        .unwrap_or_default();
    format!(
        "name: p{n}\nschedule: '0 * * * * *'\nregions: [{}]\nselect: {{{}}}\n{exclude}\
         release: {{force: {force}, terminate_subscription: {terminate}, \
         allow_security_locked: {allow_locked}, grace: {}h}}\n\
         limits: {{max_releases_per_run: {}}}\ndry_run: {dry_run}\n",
        regions.join(", "),
        select.join(", "),
        s.grace_hours,
        s.limit,
    )
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    proptest::collection::vec(policy_spec(), 1..5).prop_map(|specs| {
        let docs: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(n, s)| policy_yaml(n, s))
            .collect();
        let text = docs.join("---\n");
        match policy::load_str("generated.yaml", &text) {
            Ok(set) => set.policies,
            Err(d) => panic!("the generator wrote an invalid policy:\n{d}\n{text}"),
        }
    })
}

/// An instance and what ecs-janitor knows of it: when it was first seen Stopped (hours ago)
/// and when its queued release is due (hours from now).
type Observed = (Instance, Option<i64>, Option<i64>);

fn instance() -> impl Strategy<Value = Observed> {
    (
        (
            // Mostly Stopped; index 5 is past STATUSES: Unknown.
            prop_oneof![3 => Just(4usize), 2 => 0usize..6],
            any::<bool>(),
            0..REGIONS.len(),
            0..NAMES.len(),
        ),
        proptest::collection::vec((0..TAG_KEYS.len(), 0..TAG_VALUES.len()), 0..4),
        proptest::bool::weighted(0.2),
        proptest::collection::vec(0..LOCKS.len(), 0..2),
        (0i64..30, -10i64..10),
        proptest::option::of(0i64..6),
        proptest::option::weighted(0.2, -2i64..3),
    )
        .prop_map(
            |(
                (status, prepaid, region, name),
                tags,
                deletion_protection,
                locks,
                (age, expiry),
                seen,
                queued,
            )| {
                let inst = Instance {
                    instance_id: String::new(),
                    instance_name: NAMES[name].into(),
                    region_id: REGIONS[region].into(),
                    zone_id: format!("{}-h", REGIONS[region]),
                    status: STATUSES
                        .get(status)
                        .and_then(|s| InstanceStatus::parse(s))
                        .unwrap_or(InstanceStatus::Unknown),
                    charge_type: if prepaid {
                        ChargeType::PrePaid
                    } else {
                        ChargeType::PostPaid
                    },
                    instance_type: "ecs.g6.large".into(),
                    creation_time: Some(now() - chrono::Duration::days(age)),
                    expired_time: Some(now() + chrono::Duration::days(expiry)),
                    auto_release_time: None,
                    deletion_protection,
                    lock_reasons: locks.iter().map(|l| LOCKS[*l].to_string()).collect(),
                    tags: tags
                        .iter()
                        .map(|(k, v)| (TAG_KEYS[*k].to_string(), TAG_VALUES[*v].to_string()))
                        .collect(),
                    resource_group_id: "rg-1".into(),
                    stopped_mode: String::new(),
                };
                (inst, seen, queued)
            },
        )
}

/// Why `inst` must not be released by `policy`, if it must not.
fn protected_by(
    inst: &Instance,
    policy: &Policy,
    protection: &ProtectionConfig,
) -> Option<SkipReason> {
    // The protect tag with any value but one that says no (the fleet's keys are spelled right).
    let says_no = |v: &str| ["false", "no", "0", "off"].contains(&v.trim().to_lowercase().as_str());
    if inst
        .tags
        .get(&protection.protect_tag_key)
        .is_some_and(|v| !says_no(v))
    {
        Some(SkipReason::Protected {
            tag: protection.protect_tag_key.clone(),
        })
    } else if inst.deletion_protection {
        Some(SkipReason::DeletionProtection)
    } else if inst.security_locked() && !policy.release.allow_security_locked {
        Some(SkipReason::SecurityLocked)
    } else {
        None
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Over arbitrary fleets and policies: no instance with the protect tag (whatever the key is
    /// configured to), deletion protection, or a security lock (unless the policy allows it) is
    /// planned; such an instance never counts against a policy's limit; and when a policy skips
    /// it, the reason given is its protection.
    #[test]
    fn a_protected_instance_is_never_planned(
        ps in policies(),
        fleet in proptest::collection::vec(instance(), 0..40),
        key in prop_oneof![Just("janitor:protect"), Just("keep-me")],
    ) {
        let mut inventory = Vec::new();
        let mut ctx = EvalContext {
            protection: ProtectionConfig {
                protect_tag_key: key.to_string(),
                ..ProtectionConfig::default()
            },
            ..EvalContext::default()
        };
        for (n, (mut inst, seen, queued)) in fleet.into_iter().enumerate() {
            inst.instance_id = format!("i-{n}");
            if let Some(h) = seen {
                ctx.observations.insert(inst.instance_id.clone(), now() - chrono::Duration::hours(h));
            }
            if let Some(h) = queued {
                ctx.queued.insert(inst.instance_id.clone(), QueuedInfo {
                    policy: "p0".into(),
                    not_before: now() + chrono::Duration::hours(h),
                });
            }
            inventory.push(inst);
        }
        let plan = evaluate(&ps, &inventory, &ctx, now());
        let by_id: HashMap<&str, &Instance> =
            inventory.iter().map(|i| (i.instance_id.as_str(), i)).collect();
        for pp in &plan.policies {
            let policy = ps.iter().find(|p| p.name == pp.policy).unwrap();
            for r in &pp.releases {
                let inst = by_id[r.instance_id.as_str()];
                prop_assert_eq!(
                    protected_by(inst, policy, &ctx.protection), None,
                    "{} planned by {}: {:?}", r.instance_id, pp.policy, inst
                );
            }
            for s in &pp.skips {
                let inst = by_id[s.instance_id.as_str()];
                if let Some(why) = protected_by(inst, policy, &ctx.protection) {
                    prop_assert!(
                        s.reason == why
                            || matches!(s.reason, SkipReason::StoppedSinceUnknown { .. }),
                        "{} skipped by {} for {:?}, not for {:?}", s.instance_id, pp.policy, s.reason, why
                    );
                }
            }
        }
    }
}

// ---- batches -----------------------------------------------------------------------------------

/// The most ids DeleteInstances takes in one call.
const ECS_MAX_IDS: usize = 100;

/// A release to enqueue: instance number, region, force, terminate_subscription, due now.
type Queued = (usize, usize, bool, bool, bool);

fn queued() -> impl Strategy<Value = Queued> {
    (
        0usize..600,
        // Mostly one region and no flags, so that groups outgrow one batch.
        prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(2)],
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.85),
    )
}

/// Claims batches at `at` until none is left, checking each against the stored releases
/// (`rows`, by id). Returns the release ids batched.
async fn claim_all(
    store: &ecs_janitor::store::Store,
    rows: &HashMap<ReleaseId, ecs_janitor::store::ReleaseRow>,
    at: DateTime<Utc>,
    max_batch: usize,
    seen_batches: &mut HashSet<BatchId>,
) -> Vec<ReleaseId> {
    let mut batched = Vec::new();
    // A lease far longer than the test, so no batch comes back for a second claim.
    let lease = Duration::from_secs(86_400 * 7);
    while let Some(b) = store
        .claim("prop", at, lease, max_batch, None)
        .await
        .unwrap()
    {
        assert!(seen_batches.insert(b.fence.batch_id), "batch claimed twice");
        assert!(!b.members.is_empty(), "an empty batch");
        assert!(
            b.members.len() <= ECS_MAX_IDS,
            "a batch of {} ids",
            b.members.len()
        );
        for m in &b.members {
            let r = &rows[&m.release_id];
            assert_eq!(r.instance_id, m.instance_id);
            assert_eq!(r.region, b.region, "a batch mixes regions");
            assert_eq!(r.account, b.account, "a batch mixes accounts");
            assert_eq!(
                (r.force, r.terminate_subscription),
                (b.force, b.terminate_subscription),
                "a batch mixes flags"
            );
            assert!(r.not_before <= at, "a release batched before it is due");
            batched.push(m.release_id);
        }
    }
    batched
}

proptest! {
    #![proptest_config(config(12))]

    /// However releases arrive (accounts, regions, flags, duplicates, due now or later), the
    /// batches a worker claims hold at most 100 ids of one account, one region and one flag
    /// combination, and every
    /// queued release is batched exactly once, when it is due.
    #[test]
    fn batches_are_small_uniform_and_cover_the_queue_once(
        items in proptest::collection::vec(queued(), 0..600),
        split in any::<prop::sample::Index>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = common::sqlite().await;
            let store = &db.store;
            let later = now() + chrono::Duration::hours(1);
            let releases: Vec<NewRelease> = items
                .iter()
                .map(|&(inst, region, force, terminate, due)| NewRelease {
                    instance_id: format!("i-{inst}"),
                    instance_name: format!("name-{inst}"),
                    // Mostly the default account, some in a second one.
                    account: if inst % 7 == 0 { "prod".into() } else { String::new() },
                    region: REGIONS[region].into(),
                    policy: "p".into(),
                    force,
                    terminate_subscription: terminate,
                    not_before: if due { now() } else { later },
                    reasons: String::new(),
                    snapshot: None,
                    saving: None,
                })
                .collect();
            let k = split.index(releases.len() + 1);
            let mut created = store.enqueue(&releases[..k], now()).await.unwrap();
            created.extend(store.enqueue(&releases[k..], now()).await.unwrap());

            // One active release per instance: the first queued for it.
            let mut rows = HashMap::new();
            for (id, instance) in &created {
                let row = store.release(*id).await.unwrap();
                let first = releases.iter().find(|r| &r.instance_id == instance).unwrap();
                assert_eq!(
                    (&row.region, row.force, row.terminate_subscription, row.not_before),
                    (&first.region, first.force, first.terminate_subscription, first.not_before),
                );
                rows.insert(*id, row);
            }
            let distinct: HashSet<&str> = releases.iter().map(|r| r.instance_id.as_str()).collect();
            assert_eq!(created.len(), distinct.len());

            let max_batch = ecs_janitor::worker::WorkerConfig::default().max_batch;
            let mut seen_batches = HashSet::new();
            let due_now = claim_all(store, &rows, now(), max_batch, &mut seen_batches).await;
            let mut want_now: Vec<ReleaseId> = rows
                .values()
                .filter(|r| r.not_before <= now())
                .map(|r| r.id)
                .collect();
            let mut got_now = due_now.clone();
            got_now.sort_unstable();
            want_now.sort_unstable();
            assert_eq!(got_now, want_now, "due releases batched other than once each");

            let due_later = claim_all(store, &rows, later, max_batch, &mut seen_batches).await;
            let mut all: Vec<ReleaseId> = due_now.into_iter().chain(due_later).collect();
            all.sort_unstable();
            let mut want: Vec<ReleaseId> = rows.keys().copied().collect();
            want.sort_unstable();
            assert_eq!(all, want, "releases batched other than once each");
            for id in &all {
                let row = store.release(*id).await.unwrap();
                assert_eq!(row.state, ecs_janitor::store::ReleaseState::InFlight);
                assert!(row.batch_id.is_some_and(|b| seen_batches.contains(&b)));
            }
        });
    }
}

/// One thing that happens between two worker steps.
#[derive(Debug, Clone)]
enum Event {
    Pause,
    Resume,
    /// Tag instance `k` `janitor:protect=true`.
    Protect(usize),
    Unprotect(usize),
    /// An operator cancels instance `k`'s pending release (if it has one).
    Cancel(usize),
    /// The next DeleteInstances is carried out but its answer is lost.
    LoseAnswer,
    /// The next DeleteInstances gets a gateway's HTML 503 and has no effect.
    Html503,
    /// A worker claims a batch and dies holding it (its lease expires).
    Kill,
    /// A reconcile pass.
    Pass,
    /// One worker step: claim, re-check, decide, maybe send.
    Step,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => Just(Event::Pause),
        2 => Just(Event::Resume),
        2 => (0..6usize).prop_map(Event::Protect),
        1 => (0..6usize).prop_map(Event::Unprotect),
        1 => (0..6usize).prop_map(Event::Cancel),
        1 => Just(Event::LoseAnswer),
        1 => Just(Event::Html503),
        1 => Just(Event::Kill),
        2 => Just(Event::Pass),
        6 => Just(Event::Step),
    ]
}

proptest! {
    #![proptest_config(config(24))]

    /// Whatever happens between steps (pauses, protections, operators' cancels, lost answers,
    /// refused calls, a worker dying with a lease), no DeleteInstances is sent that the decision
    /// would refuse at that moment: none while paused, none naming a protected instance, a token
    /// never with another member set, and no instance released twice.
    #[test]
    fn nothing_is_sent_that_the_decision_would_refuse(
        events in proptest::collection::vec(event(), 1..60),
    ) {
        use ecs_janitor::sim::{Scripted, ScriptStep};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let h = common::start_sim(common::ci_fleet(6), ecs_janitor::sim::Faults::default(), 5).await;
            let db = common::sqlite().await;
            let policy = policy::load_str(
                "p.yaml",
                "name: ci\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  tags: {purpose: ci}\n  status: Stopped\n",
            )
            .unwrap()
            .policies;
            let app = common::Pipeline {
                cfg: ecs_janitor::worker::WorkerConfig {
                    backoff: ecs_janitor::backoff::Backoff::new(
                        std::time::Duration::ZERO,
                        std::time::Duration::ZERO,
                    ),
                    lease: std::time::Duration::from_millis(30),
                    max_batch: 3,
                    ..Default::default()
                },
                ..common::Pipeline::new(&db.store, common::client(&h), policy.clone())
            }
            .build();
            let store = &db.store;
            let mut paused = false;
            let mut protected: HashSet<String> = HashSet::new();
            for ev in &events {
                match ev {
                    Event::Pause => {
                        store.pause("prop", "test", Utc::now()).await.unwrap();
                        paused = true;
                    }
                    Event::Resume => {
                        store.resume("prop", "", Utc::now()).await.unwrap();
                        paused = false;
                    }
                    Event::Protect(k) => {
                        h.sim.tag(&format!("i-{k}"), "janitor:protect", "true");
                        protected.insert(format!("i-{k}"));
                    }
                    Event::Unprotect(k) => {
                        h.sim.tag(&format!("i-{k}"), "janitor:protect", "false");
                        protected.remove(&format!("i-{k}"));
                    }
                    Event::Cancel(k) => {
                        let rows = store.active_releases().await.unwrap();
                        if let Some(r) = rows.iter().find(|r| r.instance_id == format!("i-{k}")) {
                            let _ = store.cancel_release(r.id, "prop", "test", None, Utc::now()).await;
                        }
                    }
                    Event::LoseAnswer => h.sim.script(ScriptStep {
                        action: "DeleteInstances".into(),
                        answer: Scripted::LostAnswer,
                        instance_id: None,
                    }),
                    Event::Html503 => h.sim.script(ScriptStep {
                        action: "DeleteInstances".into(),
                        answer: Scripted::Html503,
                        instance_id: None,
                    }),
                    Event::Kill => {
                        let _ = store
                            .claim("dead", Utc::now(), std::time::Duration::from_millis(1), 3, None)
                            .await
                            .unwrap();
                    }
                    Event::Pass => {
                        let now = Utc::now();
                        app.reconciler.pass(&policy, now, None, now).await.unwrap();
                    }
                    Event::Step => {
                        let before = h.sim.calls().len();
                        app.workers.step().await.unwrap();
                        for c in h.sim.calls().into_iter().skip(before) {
                            if c.action != "DeleteInstances" {
                                continue;
                            }
                            assert!(!paused, "DeleteInstances sent while paused: {c:?}");
                            for i in &c.instance_ids {
                                assert!(!protected.contains(i), "protected {i} was sent: {c:?}");
                            }
                        }
                    }
                }
            }
            common::assert_tokens_consistent(&h);
        });
    }
}
