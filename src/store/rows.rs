//! The typed values the store returns: rows, states and ids.
//!
//! Times are decoded from stored milliseconds, states from their stored names, flags from 0/1.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::db::{json_rows, parse_json_rows};
use super::from_ms;

/// Defines an id newtype: stored and serialised as its number, printed as it.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize,
            serde::Deserialize, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                $name(v)
            }
        }

        impl PartialEq<i64> for $name {
            fn eq(&self, other: &i64) -> bool {
                self.0 == *other
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id_type!(
    /// A release's id.
    ReleaseId
);
id_type!(
    /// A batch's id.
    BatchId
);
id_type!(
    /// An audit-log entry's id: entries are numbered in the order they were written.
    EventId
);

/// Proof that a worker holds a batch's lease: completion is refused without the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub batch_id: BatchId,
    pub owner: String,
    pub claims: i64,
}

/// How a batch ended (`Open` while it may still be sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Open,
    /// Every member settled.
    Done,
    /// Retired: its members went on in new batches under new tokens.
    Split,
    /// Some member failed.
    Failed,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Open => "open",
            BatchState::Done => "done",
            BatchState::Split => "split",
            BatchState::Failed => "failed",
        }
    }
}

/// Where a release is in its life. Stored as its [`ReleaseState::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Queued; due at `not_before`.
    Pending,
    /// Due, and its snapshots are being taken (`release.snapshot`): not batched for
    /// DeleteInstances until every one is accomplished. Stored as `pending` with
    /// `snapshot_stage = 'snapshotting'`.
    Snapshotting,
    /// A member of an open batch.
    InFlight,
    /// Released by an answer to ecs-janitor's own call.
    Succeeded,
    /// Refused for good, or out of attempts.
    Failed,
    /// Withdrawn: by an operator, a re-check, or a pass it no longer qualifies in.
    Cancelled,
    /// Missing from the re-check before our call: released by someone else, or invisible to
    /// these credentials. Never counted as released; queued again if an inventory lists it.
    Vanished,
}

impl ReleaseState {
    pub const ALL: [ReleaseState; 7] = [
        ReleaseState::Pending,
        ReleaseState::Snapshotting,
        ReleaseState::InFlight,
        ReleaseState::Succeeded,
        ReleaseState::Failed,
        ReleaseState::Cancelled,
        ReleaseState::Vanished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Pending => "pending",
            ReleaseState::Snapshotting => "snapshotting",
            ReleaseState::InFlight => "in_flight",
            ReleaseState::Succeeded => "succeeded",
            ReleaseState::Failed => "failed",
            ReleaseState::Cancelled => "cancelled",
            ReleaseState::Vanished => "vanished",
        }
    }

    /// Pending, snapshotting or in flight: holds the instance's one active release.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ReleaseState::Pending | ReleaseState::Snapshotting | ReleaseState::InFlight
        )
    }
}

impl std::fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets callers compare with a state's name (`row.state == "succeeded"`).
impl PartialEq<&str> for ReleaseState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ReleaseState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl std::str::FromStr for ReleaseState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ReleaseState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a release state; use one of {}",
                    ReleaseState::ALL.map(ReleaseState::as_str).join(", ")
                )
            })
    }
}

/// The columns of a release, with its batch's ClientToken.
pub(super) const RELEASE_SELECT: &str =
    "SELECT r.id, r.instance_id, r.instance_name, r.region, r.policy, r.force,
            r.terminate_subscription,
            CASE WHEN r.state = 'pending' AND r.snapshot_stage = 'snapshotting'
                 THEN 'snapshotting' ELSE r.state END AS state, r.not_before, r.batch_id,
            r.attempts + CASE WHEN r.state = 'in_flight' THEN COALESCE(b.attempts, 0) ELSE 0 END
                AS attempts, r.last_code,
            r.last_message, r.request_id, r.reasons, r.created_at, r.updated_at,
            b.client_token, r.account, r.saving_basis, r.saving_minor, r.saving_currency,
            r.renewal_minor
     FROM releases r LEFT JOIN batches b ON b.id = r.batch_id";

/// The columns [`RELEASE_SELECT`] gives, in [`RawRelease`]'s order: what a listing aggregates
/// into one JSON text.
pub(super) const RELEASE_COLUMNS: &str =
    "id, instance_id, instance_name, region, policy, force, terminate_subscription, state,
     not_before, batch_id, attempts, last_code, last_message, request_id, reasons, created_at,
     updated_at, client_token, account, saving_basis, saving_minor, saving_currency,
     renewal_minor";

/// A release's columns as stored. Read as a row, or (serde reads a struct from an array in its
/// fields' order) as an array of [`RELEASE_COLUMNS`].
#[derive(Debug, Clone, FromRow, serde::Deserialize)]
pub(super) struct RawRelease {
    pub(super) id: ReleaseId,
    instance_id: String,
    instance_name: String,
    region: String,
    policy: String,
    force: i64,
    terminate_subscription: i64,
    state: String,
    not_before: i64,
    batch_id: Option<BatchId>,
    attempts: i64,
    last_code: Option<String>,
    last_message: Option<String>,
    request_id: Option<String>,
    reasons: String,
    created_at: i64,
    updated_at: i64,
    client_token: Option<String>,
    account: String,
    saving_basis: Option<String>,
    saving_minor: Option<i64>,
    saving_currency: Option<String>,
    renewal_minor: Option<i64>,
}

/// One release, as `queue list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRow {
    pub id: ReleaseId,
    pub instance_id: String,
    pub instance_name: String,
    pub region: String,
    /// The account it belongs to (`""`: the default account).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub account: String,
    pub policy: String,
    pub force: bool,
    pub terminate_subscription: bool,
    pub state: ReleaseState,
    #[serde(with = "crate::timefmt")]
    pub not_before: DateTime<Utc>,
    pub batch_id: Option<BatchId>,
    pub attempts: i64,
    pub client_token: Option<String>,
    pub last_error: Option<String>,
    /// The last error's code, or the outcome's (`DryRunOperation`, `InvalidInstanceId.NotFound`).
    pub last_code: Option<String>,
    pub request_id: Option<String>,
    /// Why the policy selected it.
    pub reasons: String,
    #[serde(with = "crate::timefmt")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::timefmt")]
    pub updated_at: DateTime<Utc>,
    /// What it saves per month, as planned when it was queued (`None`: not priced).
    pub saving: Option<ReleaseSaving>,
}

/// The monthly saving a release was queued with, kept so reports stay true after prices change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSaving {
    /// `compute_and_disks`, `disks_only` or `renewal_avoided`.
    pub basis: String,
    /// The run-rate saved; `None` when its price was unknown.
    pub monthly: Option<crate::money::Money>,
    /// A subscription's month of renewal avoided.
    pub renewal_avoided: Option<crate::money::Money>,
}

/// What some releases save per month, summed per currency (list prices, the figures they were
/// queued with).
#[derive(Debug, Clone, Default)]
pub struct SavedTotals {
    pub monthly: crate::money::Totals,
    /// Subscriptions' months of renewal avoided.
    pub renewal: crate::money::Totals,
    /// Priced releases whose run-rate saving was unknown.
    pub unknown: usize,
}

impl SavedTotals {
    /// The totals of `savings`; `None` when there are none (nothing was priced).
    pub fn of<'a>(savings: impl IntoIterator<Item = &'a ReleaseSaving>) -> Option<SavedTotals> {
        let mut t = SavedTotals::default();
        let mut priced = false;
        for s in savings {
            priced = true;
            match &s.monthly {
                Some(m) => t.monthly.add(m),
                None => t.unknown += 1,
            }
            if let Some(r) = &s.renewal_avoided {
                t.renewal.add(r);
            }
        }
        priced.then_some(t)
    }

    /// `; renewal avoided ≈ ¥503/month`, or nothing when no subscription was released.
    pub fn renewal_words(&self) -> String {
        if self.renewal.is_empty() {
            String::new()
        } else {
            format!(
                "; renewal avoided ≈ {}/month",
                self.renewal.display_whole("CNY")
            )
        }
    }
}

impl ReleaseSaving {
    /// The saving kept in a release's columns: `None` when it was not priced (no basis).
    pub(super) fn from_columns(
        basis: Option<String>,
        minor: Option<i64>,
        currency: Option<String>,
        renewal_minor: Option<i64>,
    ) -> Option<ReleaseSaving> {
        let basis = basis?;
        let currency = currency.unwrap_or_default();
        Some(ReleaseSaving {
            basis,
            monthly: minor.map(|v| crate::money::Money::new(v, currency.clone())),
            renewal_avoided: renewal_minor.map(|v| crate::money::Money::new(v, currency)),
        })
    }

    /// `saves ≈ ¥390.40/month`, `saves ≈ ¥0.00/month, renewal avoided ≈ ¥502.82/month`, or
    /// `saving unknown`: list prices, as queued.
    pub fn words(&self) -> String {
        let mut w = match &self.monthly {
            Some(m) => format!("saves ≈ {}/month", m.display()),
            None => "saving unknown".to_string(),
        };
        if let Some(r) = &self.renewal_avoided {
            w.push_str(&format!(", renewal avoided ≈ {}/month", r.display()));
        }
        w
    }
}

impl Serialize for ReleaseSaving {
    /// `{"basis", "monthly": {"amount": "390.40", "currency": "CNY"} | null, "renewal_avoided"}`:
    /// amounts as decimal strings, as the plan's JSON carries them.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = |m: &Option<crate::money::Money>| {
            m.as_ref()
                .map(|m| serde_json::json!({"amount": m.decimal(), "currency": m.currency}))
        };
        let mut st = s.serialize_struct("ReleaseSaving", 3)?;
        st.serialize_field("basis", &self.basis)?;
        st.serialize_field("monthly", &m(&self.monthly))?;
        st.serialize_field("renewal_avoided", &m(&self.renewal_avoided))?;
        st.end()
    }
}

impl<'r, R: sqlx::Row> FromRow<'r, R> for ReleaseRow
where
    RawRelease: FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        RawRelease::from_row(row)?.decoded()
    }
}

impl RawRelease {
    pub(super) fn decoded(self) -> Result<ReleaseRow, sqlx::Error> {
        let r = self;
        Ok(ReleaseRow {
            id: r.id,
            instance_id: r.instance_id,
            instance_name: r.instance_name,
            region: r.region,
            account: r.account,
            policy: r.policy,
            force: r.force != 0,
            terminate_subscription: r.terminate_subscription != 0,
            state: r
                .state
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            not_before: from_ms(r.not_before),
            batch_id: r.batch_id,
            attempts: r.attempts,
            client_token: r.client_token,
            last_error: r.last_message,
            last_code: r.last_code,
            request_id: r.request_id,
            reasons: r.reasons,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
            saving: ReleaseSaving::from_columns(
                r.saving_basis,
                r.saving_minor,
                r.saving_currency,
                r.renewal_minor,
            ),
        })
    }
}

/// A member of a claimed batch.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct BatchMember {
    pub release_id: ReleaseId,
    pub instance_id: String,
    pub instance_name: String,
    pub policy: String,
    /// The snapshots' retention it was queued with (`release.snapshot`), if any.
    pub snapshot_days: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub(super) struct BatchRow {
    id: BatchId,
    account: String,
    region: String,
    force: i64,
    terminate_subscription: i64,
    client_token: String,
    attempts: i64,
    tries: i64,
    claims: i64,
    last_code: Option<String>,
    uncertain: i64,
}

impl BatchRow {
    pub(super) fn id(&self) -> BatchId {
        self.id
    }

    pub(super) fn into_claimed(self, owner: &str, members: Vec<BatchMember>) -> ClaimedBatch {
        ClaimedBatch {
            fence: Fence {
                batch_id: self.id,
                owner: owner.to_string(),
                claims: self.claims,
            },
            account: self.account,
            region: self.region,
            force: self.force != 0,
            terminate_subscription: self.terminate_subscription != 0,
            client_token: self.client_token,
            attempts: self.attempts,
            tries: self.tries,
            last_code: self.last_code,
            uncertain: self.uncertain != 0,
            members,
        }
    }
}

/// A claimed batch's row with its members: what a claim made in one statement returns.
#[derive(Debug, Clone, FromRow)]
pub(super) struct ClaimRow {
    #[sqlx(flatten)]
    batch: BatchRow,
    /// The members, as [`members_json`] aggregates them: one row a claim, not one a member.
    members: Option<String>,
}

/// A member as a claim reads it back: `[release_id, instance_id, instance_name, policy,
/// snapshot_days]`.
type MemberTuple = (ReleaseId, String, String, String, Option<i64>);

impl ClaimRow {
    /// The batch `row` describes, leased to `owner`, its members in id order; `None` for no
    /// row or no members.
    pub(super) fn claimed(
        row: Option<ClaimRow>,
        owner: &str,
    ) -> Result<Option<ClaimedBatch>, sqlx::Error> {
        let Some(row) = row else { return Ok(None) };
        let mut tuples: Vec<MemberTuple> = parse_json_rows(row.members.as_deref(), "members")?;
        if tuples.is_empty() {
            return Ok(None);
        }
        tuples.sort_unstable_by_key(|t| t.0);
        let members = tuples
            .into_iter()
            .map(
                |(release_id, instance_id, instance_name, policy, snapshot_days)| BatchMember {
                    release_id,
                    instance_id,
                    instance_name,
                    policy,
                    snapshot_days,
                },
            )
            .collect();
        Ok(Some(row.batch.into_claimed(owner, members)))
    }
}

/// A subquery giving the members of a batch as one JSON text (see [`json_rows`]), from the
/// rows of `from` (columns `release_id, instance_id, instance_name, policy, snapshot_days`),
/// in any order: [`ClaimRow::claimed`] sorts them.
pub(super) fn members_json(postgres: bool, from: &str) -> String {
    let agg = json_rows(
        postgres,
        "release_id, instance_id, instance_name, policy, snapshot_days",
        None,
    );
    format!("(SELECT {agg} FROM {from})")
}

/// A batch a worker holds under a lease: one DeleteInstances call, its token and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    pub fence: Fence,
    /// Whose credentials sign the call (`""`: the default account).
    pub account: String,
    pub region: String,
    pub force: bool,
    pub terminate_subscription: bool,
    pub client_token: String,
    /// Calls already sent with this token: the token is in use once this is above 0.
    pub attempts: i64,
    /// Tries so far, counting re-checks that failed before a call; bounded by `max_attempts`.
    pub tries: i64,
    /// The code the last call ended with; `None` while a call is (or was, when the process
    /// died) in flight.
    pub last_code: Option<String>,
    /// Some call sent with this token may have taken effect (a lost answer, or a call in
    /// flight when the process died).
    pub uncertain: bool,
    pub members: Vec<BatchMember>,
}

/// How a policy run ended. Stored as its [`RunStatus::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Reconciled: releases queued and cancelled as planned.
    Ok,
    /// Reconciled as a dry run: nothing queued.
    DryRun,
    /// ECS refused the account's listing or calls as a whole.
    Refused,
    /// The pass failed before it finished.
    Error,
}

impl RunStatus {
    pub const ALL: [RunStatus; 4] = [
        RunStatus::Ok,
        RunStatus::DryRun,
        RunStatus::Refused,
        RunStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::DryRun => "dry_run",
            RunStatus::Refused => "refused",
            RunStatus::Error => "error",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a run outcome"))
    }
}

/// A policy run as stored (times in milliseconds).
#[derive(Debug, Clone, FromRow)]
struct RawRun {
    policy: String,
    scheduled_for: i64,
    owner: String,
    started_at: i64,
    finished_at: Option<i64>,
    outcome: Option<String>,
    planned: i64,
    enqueued: i64,
    cancelled: i64,
    refused: i64,
}

/// One policy run: one policy's reconcile of one tick, by one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRow {
    pub policy: String,
    /// The tick.
    #[serde(with = "crate::timefmt")]
    pub scheduled_for: DateTime<Utc>,
    /// The replica that took it.
    pub owner: String,
    #[serde(with = "crate::timefmt")]
    pub started_at: DateTime<Utc>,
    /// `None` while it runs (or when its replica died).
    #[serde(with = "crate::timefmt::option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` while it runs (or when its replica died).
    pub outcome: Option<RunStatus>,
    pub planned: i64,
    pub enqueued: i64,
    pub cancelled: i64,
    /// 1 when ECS refused the account as a whole, else 0.
    pub refused: i64,
}

impl<'r, R: sqlx::Row> FromRow<'r, R> for RunRow
where
    RawRun: FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let r = RawRun::from_row(row)?;
        Ok(RunRow {
            policy: r.policy,
            scheduled_for: from_ms(r.scheduled_for),
            owner: r.owner,
            started_at: from_ms(r.started_at),
            finished_at: r.finished_at.map(from_ms),
            outcome: r
                .outcome
                .map(|o| o.parse())
                .transpose()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            planned: r.planned,
            enqueued: r.enqueued,
            cancelled: r.cancelled,
            refused: r.refused,
        })
    }
}

/// An audit-log entry as stored (times in milliseconds).
#[derive(Debug, Clone, FromRow)]
struct RawEvent {
    id: EventId,
    at: i64,
    kind: String,
    release_id: Option<ReleaseId>,
    batch_id: Option<BatchId>,
    policy: Option<String>,
    instance_id: Option<String>,
    code: Option<String>,
    request_id: Option<String>,
    client_token: Option<String>,
    detail: String,
    /// The release's saving columns, joined on a success (NULL otherwise).
    saving_basis: Option<String>,
    saving_minor: Option<i64>,
    saving_currency: Option<String>,
    renewal_minor: Option<i64>,
}

/// One audit log entry, as `history --json` shows it (times in RFC 3339, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    pub id: EventId,
    #[serde(with = "crate::timefmt")]
    pub at: DateTime<Utc>,
    pub kind: String,
    pub release_id: Option<ReleaseId>,
    pub batch_id: Option<BatchId>,
    pub policy: Option<String>,
    pub instance_id: Option<String>,
    pub code: Option<String>,
    pub request_id: Option<String>,
    pub client_token: Option<String>,
    pub detail: String,
    /// On a release's success: the saving it was released with (the figure it was queued
    /// with; absent when it was not priced, and on every other event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saving: Option<ReleaseSaving>,
}

impl<'r, R: sqlx::Row> FromRow<'r, R> for EventRow
where
    RawEvent: FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let e = RawEvent::from_row(row)?;
        Ok(EventRow {
            id: e.id,
            at: from_ms(e.at),
            kind: e.kind,
            release_id: e.release_id,
            batch_id: e.batch_id,
            policy: e.policy,
            instance_id: e.instance_id,
            code: e.code,
            request_id: e.request_id,
            client_token: e.client_token,
            detail: e.detail,
            saving: ReleaseSaving::from_columns(
                e.saving_basis,
                e.saving_minor,
                e.saving_currency,
                e.renewal_minor,
            ),
        })
    }
}
