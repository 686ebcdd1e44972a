//! Whether the running replicas, and a one-shot `apply` beside them, run the same policy files.
//! While they do not, no DeleteInstances is sent: the workers' gate, and their last check before
//! each call, read [`crate::context::Policies::disagreement`], which this module sets.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::context::Context;
use crate::policy::Policy;
use crate::store::{ReplicaRow, StoreError};

/// What a replica says of itself before it has compared its set with the others': it holds.
pub const NOT_YET_COMPARED: &str =
    "this replica has not yet compared its policy set with the other replicas' (the database did not answer)";

/// This process among replicas: told apart from another given the same id.
fn nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{}-{started}", std::process::id())
    })
}

/// A policy set as replicas compare it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// [`crate::policy::set_digest`] of the folder it was loaded from.
    pub digest: String,
    /// Its policy names, for people.
    pub names: String,
}

impl PolicySet {
    /// The set `policies`, just loaded from `dir`.
    pub fn of(dir: &Path, policies: &[Policy]) -> PolicySet {
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        PolicySet {
            digest: crate::policy::set_digest(dir),
            names: names.join(", "),
        }
    }
}

/// A replica's beat: records that replica `id` runs `set`, counted as running for three of its
/// leases, then compares the live replicas' sets and holds releases while they differ. `None`
/// when the database did not answer (the last look stands); else whether they agree, and
/// whether that changed.
pub async fn beat(
    ctx: &Context,
    id: &str,
    set: &PolicySet,
    lease: chrono::Duration,
    now: DateTime<Utc>,
) -> Option<(bool, bool)> {
    let looked = async {
        let clash = ctx
            .store
            .replica_seen(id, nonce(), &set.digest, &set.names, now + lease * 3, now)
            .await?;
        // Once this replica's row says so: the workers compare it with the rows they read.
        ctx.policies.set_digest(&set.digest);
        Ok::<_, StoreError>((clash, ctx.store.live_replicas(now).await?))
    };
    match looked.await {
        Ok((Some(until), _)) => {
            // Told apart by their nonces: both hold while both write the row.
            let why = format!(
                "another process runs as replica {id} (counted as running until {}): two daemons given one id, or this one before a restart; releases wait until it stops (give each daemon its own --replica-id)",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            );
            let changed = ctx.policies.set_disagreement(Some(why.clone()));
            if changed {
                tracing::warn!("{why}");
            }
            Some((false, changed))
        }
        Ok((None, live)) => Some(hold_if_different(ctx, &live)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot compare this replica's policy set with the others'");
            None
        }
    }
}

/// A one-shot command's look, without joining the replicas: its `set` against the live
/// replicas' (none running: they agree). Holds its releases while they differ.
pub async fn compare(
    ctx: &Context,
    set: &PolicySet,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    ctx.policies.set_digest(&set.digest);
    let mut live = ctx.store.live_replicas(now).await?;
    if live.is_empty() {
        return Ok(true);
    }
    live.push(ReplicaRow {
        id: "this apply".into(),
        policies_digest: set.digest.clone(),
        policies: set.names.clone(),
        live_until: now,
    });
    Ok(hold_if_different(ctx, &live).0)
}

/// Why releases wait when a running replica's set (`live`, the digests the workers read before
/// each claim) is not this process's (`own`): a replica that joined since this process last
/// compared holds it at its next claim, not at its next beat.
pub fn another_set(own: &str, live: &[String]) -> Option<String> {
    let short = |d: &str| d.get(..12).unwrap_or(d).to_string();
    let other = live.iter().find(|d| d.as_str() != own)?;
    Some(format!(
        "a running replica runs another policy set ({}) than this one ({}); releases wait until every replica runs the same files (update or stop the others; the status page names which replica runs which policies)",
        short(other),
        short(own)
    ))
}

/// Sets the hold from `live`: whether they agree, and whether the hold changed.
fn hold_if_different(ctx: &Context, live: &[ReplicaRow]) -> (bool, bool) {
    let why = crate::store::disagreement(live);
    let agree = why.is_none();
    let changed = ctx.policies.set_disagreement(why.clone());
    if changed {
        match why {
            Some(why) => tracing::warn!("{why}"),
            None => tracing::info!("the replicas run the same policy set; releases go on"),
        }
    }
    (agree, changed)
}
