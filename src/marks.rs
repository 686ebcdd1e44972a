//! Marks on instances: each instance whose release waits out a grace period carries
//! `<prefix>release-after=<RFC 3339 UTC>` and `<prefix>policy=<name>`, so the console and anyone
//! listing instances see what will happen and when.
//!
//! Declarative, after every pass: the marks the queue wants (its active releases queued with a
//! grace, under a policy that marks and is not a dry run) are compared with the marks recorded
//! (`store::marks`), and the difference is sent: TagResources grouped by (account, region, tag
//! values), 50 ids a call; UntagResources of the two keys for marks no longer wanted. A crash or
//! a refused call is repaired by the next pass. The queue stays the source of truth: a mark is
//! written from a release, never read back as one, and a refused mark never holds a release back
//! (the plan and the status page say it is missing, and why).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::context::Context;
use crate::ecs::client::MAX_TAG_RESOURCES;
use crate::ecs::{EcsError, ErrorClass};
use crate::plan::{MarkNote, Plan};
use crate::policy::{Policy, ProtectionConfig};
use crate::store::{MarkRow, MarkState, ReleaseRow, ReleaseState, StoreError};

/// The `<prefix>release-after` value of a release due at `t`: RFC 3339, UTC, to the second.
pub fn release_after_value(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Whether `policy` (`None`: no longer loaded) marks what it queues: `release.mark` (on by
/// default with a grace), never in a dry run.
fn marks(policy: Option<&Policy>, force_dry_run: bool) -> bool {
    !force_dry_run && policy.is_none_or(|p| p.release.mark && !p.dry_run)
}

/// The marks the queue wants: one per active release queued with a grace (due later than it was
/// queued) whose policy marks, as rows still to be written.
pub fn desired(
    active: &[ReleaseRow],
    policies: &[Policy],
    prefix: &str,
    now: DateTime<Utc>,
) -> Vec<MarkRow> {
    let by_name: HashMap<&str, &Policy> = policies.iter().map(|p| (p.name.as_str(), p)).collect();
    active
        .iter()
        .filter(|r| r.state.is_active())
        .filter(|r| r.not_before > r.created_at)
        .filter(|r| marks(by_name.get(r.policy.as_str()).copied(), false))
        .map(|r| MarkRow {
            instance_id: r.instance_id.clone(),
            account: r.account.clone(),
            region: r.region.clone(),
            release_id: r.id,
            prefix: prefix.to_string(),
            release_after: release_after_value(r.not_before),
            policy: r.policy.clone(),
            state: MarkState::Written,
            code: None,
            message: None,
            request_id: None,
            updated_at: now,
            release_state: Some(r.state),
        })
        .collect()
}

/// The calls that bring the recorded marks to the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Marks to write, by (account, region, release-after, policy); each group's tags are the
    /// same, so 50 of its ids go in one call. A mark refused before goes in a group of its own,
    /// so one full instance does not hold back the others' marks.
    pub tag: Vec<Vec<MarkRow>>,
    /// Marks to remove (as recorded: their own prefix), by (account, region, prefix).
    pub untag: Vec<Vec<MarkRow>>,
    /// Records to drop without a call: the instance was released (its tags went with it), or
    /// the only call was refused (it had no effect).
    pub forget: Vec<String>,
}

/// Compares `desired` with `recorded` (pure).
pub fn changes(desired: &[MarkRow], recorded: &[MarkRow]) -> Changes {
    let rec: HashMap<&str, &MarkRow> = recorded
        .iter()
        .map(|m| (m.instance_id.as_str(), m))
        .collect();
    let wanted: HashSet<&str> = desired.iter().map(|m| m.instance_id.as_str()).collect();
    let mut tag: BTreeMap<(String, String, String, String, String), Vec<MarkRow>> = BTreeMap::new();
    let mut untag: BTreeMap<(String, String, String), Vec<MarkRow>> = BTreeMap::new();
    let mut forget = Vec::new();
    for d in desired {
        let prev = rec.get(d.instance_id.as_str());
        let same = |m: &MarkRow| {
            m.prefix == d.prefix && m.release_after == d.release_after && m.policy == d.policy
        };
        match prev {
            Some(m) if m.state == MarkState::Written && same(m) => continue,
            // Keys under another prefix (the setting changed): removed first, then written.
            Some(m) if m.prefix != d.prefix && m.state != MarkState::Failed => {
                untag
                    .entry((m.account.clone(), m.region.clone(), m.prefix.clone()))
                    .or_default()
                    .push((*m).clone());
            }
            _ => {}
        }
        let alone = match prev {
            Some(m) if m.state == MarkState::Failed => d.instance_id.clone(),
            _ => String::new(),
        };
        tag.entry((
            d.account.clone(),
            d.region.clone(),
            d.release_after.clone(),
            d.policy.clone(),
            alone,
        ))
        .or_default()
        .push(d.clone());
    }
    for m in recorded
        .iter()
        .filter(|m| !wanted.contains(m.instance_id.as_str()))
    {
        let released = matches!(
            m.release_state,
            Some(ReleaseState::Succeeded | ReleaseState::Vanished)
        );
        // An ECS refusal had no effect; a local `Janitor.*` failure (no answer) may have.
        let refused = m.state == MarkState::Failed
            && m.code
                .as_deref()
                .is_some_and(|c| !c.starts_with("Janitor."));
        if released || refused {
            forget.push(m.instance_id.clone());
        } else {
            untag
                .entry((m.account.clone(), m.region.clone(), m.prefix.clone()))
                .or_default()
                .push(m.clone());
        }
    }
    Changes {
        tag: tag.into_values().collect(),
        untag: untag.into_values().collect(),
        forget,
    }
}

/// What a refused mark call means and how to fix it, for the plan and the status page.
pub fn advice(code: &str) -> String {
    let class = crate::ecs::classify_code(code);
    match code {
        "QuotaExceed.Tags" | "OperationDenied.QuotaExceed" => {
            "the instance already holds 20 tags, ECS's limit: remove a tag it does not need and the next pass marks it; the release goes ahead on time, unmarked".into()
        }
        "InvalidTagKey.Malformed" => {
            "ECS refused the tag key: check the tag_prefix setting (1 to 128 characters with the suffix, not starting with acs: or aliyun, no http:// or https://)".into()
        }
        "InvalidTagValue.Malformed" => {
            "ECS refused a tag value (the policy's name or the release time)".into()
        }
        "InvalidResourceId.NotFound" => {
            "ECS does not know the instance any more (released elsewhere?)".into()
        }
        c if crate::ecs::is_account_wide(c) => {
            "the account's credentials may not tag instances: allow ecs:TagResources and ecs:UntagResources, or set `release.mark: false` in the policy".into()
        }
        _ if class == ErrorClass::Retryable => {
            "ECS did not accept the call now; the next pass tries again".into()
        }
        c if c.starts_with("Janitor.") => {
            "no answer from ECS; the next pass tries again".into()
        }
        _ => "ECS refused TagResources; the next pass tries again".into(),
    }
}

/// What one reconcile of marks did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkReport {
    pub written: usize,
    pub removed: usize,
    /// Marks refused (still missing) and removals refused (retried next pass).
    pub failed: usize,
    pub calls: usize,
}

/// One reconcile's calls and what they left to record.
struct Run<'a> {
    ctx: &'a Context,
    now: DateTime<Utc>,
    report: MarkReport,
    record: Vec<MarkRow>,
    forget: Vec<String>,
    /// Accounts refused as a whole (credentials, permissions): not asked again this pass.
    refused_accounts: HashMap<String, Refusal>,
}

/// A refused call as recorded: its code, its text (the client's errors carry nothing secret: no
/// signature, token or key) and ECS's RequestId.
#[derive(Debug, Clone)]
struct Refusal {
    code: String,
    message: String,
    request_id: Option<String>,
}

impl Refusal {
    fn of(e: &EcsError) -> Refusal {
        Refusal {
            code: e.code().to_string(),
            message: e.to_string(),
            request_id: e.request_id().map(str::to_string),
        }
    }
}

/// Whether a refused call of several instances is worth splitting: a refusal that may concern
/// one of them (not the account, not the moment).
fn split_on(e: &EcsError) -> bool {
    match e.class() {
        ErrorClass::Gone => true,
        ErrorClass::Permanent => !e.account_wide(),
        _ => false,
    }
}

impl Run<'_> {
    /// Removes the marks `rows` (one account, region and prefix).
    async fn untag(&mut self, rows: Vec<MarkRow>) {
        let p = ProtectionConfig {
            tag_prefix: rows[0].prefix.clone(),
            ..self.ctx.protection.clone()
        };
        let keys = [p.release_after_key(), p.policy_key()];
        let region = rows[0].region.clone();
        self.send(rows, MarkState::Removing, |client, ids| {
            let (region, keys) = (region.clone(), keys.clone());
            async move { client.untag_resources(&region, &ids, &keys).await }
        })
        .await;
    }

    /// Writes the marks `rows` (one account, region and set of tag values).
    async fn tag(&mut self, rows: Vec<MarkRow>) {
        let tags = [
            (
                self.ctx.protection.release_after_key(),
                rows[0].release_after.clone(),
            ),
            (self.ctx.protection.policy_key(), rows[0].policy.clone()),
        ];
        let region = rows[0].region.clone();
        self.send(rows, MarkState::Failed, |client, ids| {
            let (region, tags) = (region.clone(), tags.clone());
            async move { client.tag_resources(&region, &ids, &tags).await }
        })
        .await;
    }

    /// Sends `call` for `rows` (one account), 50 ids at a time. A call refused for a reason that
    /// may concern one instance is tried again for each alone, so one full or gone instance does
    /// not cost the others their marks; a refusal is recorded in state `refused`.
    async fn send<F, Fut>(&mut self, rows: Vec<MarkRow>, refused: MarkState, call: F)
    where
        F: Fn(crate::ecs::EcsClient, Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<String>, EcsError>>,
    {
        let account = rows[0].account.clone();
        let removing = refused == MarkState::Removing;
        let mut queue: Vec<Vec<MarkRow>> =
            rows.chunks(MAX_TAG_RESOURCES).map(<[_]>::to_vec).collect();
        while let Some(chunk) = queue.pop() {
            if let Some(r) = self.refused_accounts.get(&account).cloned() {
                self.fail_all(chunk, refused, &r);
                continue;
            }
            let ids: Vec<String> = chunk.iter().map(|m| m.instance_id.clone()).collect();
            self.report.calls += 1;
            match call(self.ctx.accounts.client(&account), ids.clone()).await {
                Ok(_) if removing => {
                    self.report.removed += chunk.len();
                    self.forget.extend(ids);
                }
                Ok(request_ids) => {
                    self.report.written += chunk.len();
                    for mut m in chunk {
                        m.state = MarkState::Written;
                        m.code = None;
                        m.message = None;
                        m.request_id = request_ids.first().cloned();
                        m.updated_at = self.now;
                        self.record.push(m);
                    }
                }
                Err(e) if chunk.len() > 1 && split_on(&e) => {
                    queue.extend(chunk.into_iter().map(|m| vec![m]));
                }
                // The instance is gone, and its tags with it.
                Err(e) if removing && e.class() == ErrorClass::Gone => self.forget.extend(ids),
                Err(e) => {
                    tracing::warn!(account = %account, code = e.code(), instances = ids.len(), state = refused.as_str(),
                        "marks refused; the releases go ahead on time, and the next pass tries again");
                    let r = Refusal::of(&e);
                    if e.account_wide() {
                        self.refused_accounts.insert(account.clone(), r.clone());
                    }
                    self.fail_all(chunk, refused, &r);
                }
            }
        }
    }

    fn fail_all(&mut self, rows: Vec<MarkRow>, state: MarkState, r: &Refusal) {
        self.report.failed += rows.len();
        for mut m in rows {
            m.state = state;
            m.code = Some(r.code.clone());
            m.message = Some(r.message.clone());
            m.request_id = r.request_id.clone();
            m.updated_at = self.now;
            self.record.push(m);
        }
    }
}

/// Which part of the difference a reconcile sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: as a pass ends.
    All,
    /// Only removals and forgetting: after the workers settled releases (released, or cancelled
    /// at the re-check), so a refused mark is tried once a pass, not twice.
    Removals,
}

/// Who reconciles marks: one replica at a time, under the lease [`LEASE`].
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// This process (the reconciler's owner), for the logs.
    pub owner: &'a str,
    /// How long the lease holds unrenewed (it is renewed every half of it while the work
    /// runs), and the longest a reconcile waits for another to give it back.
    pub lease: chrono::Duration,
}

/// The name of the lease marks are reconciled under.
pub const LEASE: &str = "marks";

/// Brings the marks on instances to what the queue wants (as one pass ends, or only the
/// removals after the workers). Refused calls are recorded, never returned: only the store
/// failing is an error.
///
/// One at a time, across replicas and within a process, under a lease in the database taken
/// with a token of its own (replicas whose passes ended together each sent the same
/// TagResources): a reconcile that finds it held waits for it, up to the lease's length, then
/// reads the queue afresh and does its own (the holder's difference may have been read before
/// this pass queued, or be removals only). If the holder never gives it back and its lease
/// does not run out, this one is skipped, said in the log, and the next pass repairs it.
pub async fn reconcile(
    ctx: &Context,
    holder: Holder<'_>,
    now: DateTime<Utc>,
    scope: Scope,
) -> Result<MarkReport, StoreError> {
    let token = crate::store::new_client_token();
    let lease = holder.lease.max(chrono::Duration::seconds(2));
    let waiting = lease.to_std().unwrap_or(std::time::Duration::from_secs(30));
    let deadline = tokio::time::Instant::now() + waiting;
    loop {
        let at = ctx.clock.now();
        if ctx.store.take_lease(LEASE, &token, at + lease, at).await? {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(owner = holder.owner, "marks not reconciled: another reconcile held their lease all along; the next pass tries again");
            return Ok(MarkReport::default());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Renewed every half lease while the work runs (a reconcile of thousands of marks, paced,
    // outlasts one lease).
    let renew = async {
        let every = (lease / 2)
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let at = ctx.clock.now();
            if let Err(e) = ctx.store.take_lease(LEASE, &token, at + lease, at).await {
                tracing::warn!(error = %e, "cannot renew the marks' lease");
            }
        }
    };
    let done = tokio::select! {
        done = reconcile_held(ctx, now, scope) => done,
        never = renew => never,
    };
    // Given back even after a failure; if that fails too, the lease runs out.
    if let Err(e) = ctx.store.end_lease(LEASE, &token).await {
        tracing::warn!(error = %e, "cannot give back the marks' lease; it runs out by itself");
    }
    done
}

async fn reconcile_held(
    ctx: &Context,
    now: DateTime<Utc>,
    scope: Scope,
) -> Result<MarkReport, StoreError> {
    // Only a release queued with a grace is marked (`desired`): reading those alone keeps a
    // pass that queued a whole fleet at once from reading it all back.
    let active = ctx.store.waiting_releases().await?;
    let recorded = ctx.store.marks().await?;
    let policies = ctx.policies.current();
    let want = desired(&active, &policies, &ctx.protection.tag_prefix, now);
    let c = changes(&want, &recorded);
    let mut run = Run {
        ctx,
        now,
        report: MarkReport::default(),
        record: Vec::new(),
        forget: c.forget,
        refused_accounts: HashMap::new(),
    };
    for rows in c.untag {
        run.untag(rows).await;
    }
    // A mark being rewritten under a new prefix is recorded by its write, not forgotten.
    let rewritten: HashSet<&str> = want.iter().map(|m| m.instance_id.as_str()).collect();
    run.forget.retain(|id| !rewritten.contains(id.as_str()));
    for rows in c.tag.into_iter().filter(|_| scope == Scope::All) {
        run.tag(rows).await;
    }
    ctx.store.forget_marks(&run.forget).await?;
    ctx.store.record_marks(&run.record).await?;
    if run.report != MarkReport::default() {
        tracing::info!(
            written = run.report.written,
            removed = run.report.removed,
            failed = run.report.failed,
            calls = run.report.calls,
            "marks reconciled"
        );
    }
    Ok(run.report)
}

/// Notes on each of the plan's releases waiting out their grace under a policy that marks what
/// its mark is: written, to be written, or missing and why. Nothing in a dry run.
pub fn annotate(
    plan: &mut Plan,
    recorded: &[MarkRow],
    policies: &[Policy],
    protection: &ProtectionConfig,
    force_dry_run: bool,
) {
    let now = plan.generated_at;
    let rec: HashMap<&str, &MarkRow> = recorded
        .iter()
        .map(|m| (m.instance_id.as_str(), m))
        .collect();
    for pp in &mut plan.policies {
        let policy = policies.iter().find(|p| p.name == pp.policy);
        if policy.is_none() || !marks(policy, force_dry_run) {
            continue;
        }
        for r in pp.releases.iter_mut().filter(|r| r.is_pending(now)) {
            let value = release_after_value(r.not_before);
            r.mark = Some(match rec.get(r.instance_id.as_str()) {
                Some(m)
                    if m.state == MarkState::Written
                        && m.prefix == protection.tag_prefix
                        && m.release_after == value
                        && m.policy == r.policy =>
                {
                    MarkNote::Written
                }
                Some(m) if m.state == MarkState::Failed => {
                    let code = m.code.clone().unwrap_or_default();
                    MarkNote::Missing {
                        why: advice(&code),
                        code,
                    }
                }
                _ => MarkNote::ToWrite,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReleaseId;

    fn row(id: &str, after: &str, state: MarkState) -> MarkRow {
        MarkRow {
            instance_id: id.into(),
            account: String::new(),
            region: "cn-hangzhou".into(),
            release_id: ReleaseId(1),
            prefix: "janitor:".into(),
            release_after: after.into(),
            policy: "p".into(),
            state,
            code: None,
            message: None,
            request_id: None,
            updated_at: chrono::Utc::now(),
            release_state: Some(ReleaseState::Pending),
        }
    }

    #[test]
    fn only_the_difference_is_sent() {
        let want = vec![
            row("i-same", "T1", MarkState::Written),
            row("i-new", "T1", MarkState::Written),
            row("i-moved", "T2", MarkState::Written),
            row("i-full", "T1", MarkState::Written),
        ];
        let mut full = row("i-full", "T1", MarkState::Failed);
        full.code = Some("QuotaExceed.Tags".into());
        let mut released = row("i-released", "T1", MarkState::Written);
        released.release_state = Some(ReleaseState::Succeeded);
        let mut refused = row("i-refused", "T1", MarkState::Failed);
        refused.code = Some("QuotaExceed.Tags".into());
        let recorded = vec![
            row("i-same", "T1", MarkState::Written),
            row("i-moved", "T1", MarkState::Written),
            full,
            row("i-cancelled", "T1", MarkState::Written),
            released,
            refused,
        ];
        let c = changes(&want, &recorded);
        let groups: Vec<Vec<&str>> = c
            .tag
            .iter()
            .map(|g| g.iter().map(|m| m.instance_id.as_str()).collect())
            .collect();
        // The new one, the one refused before alone, the moved one under its new time.
        assert_eq!(groups, [vec!["i-new"], vec!["i-full"], vec!["i-moved"]]);
        let untag: Vec<&str> = c
            .untag
            .iter()
            .flatten()
            .map(|m| m.instance_id.as_str())
            .collect();
        assert_eq!(untag, ["i-cancelled"]);
        assert_eq!(c.forget, ["i-released", "i-refused"]);
    }

    #[test]
    fn every_refusal_says_how_to_fix_it() {
        assert!(advice("QuotaExceed.Tags").contains("20 tags"));
        assert!(advice("Forbidden.RAM").contains("ecs:TagResources"));
        assert!(advice("Throttling.User").contains("next pass"));
        assert!(advice("Janitor.Timeout").contains("next pass"));
    }
}
