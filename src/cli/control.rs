//! The operator's commands on the queue and its audit log: `queue list|show|retry|cancel`,
//! `pause`, `resume` and `history`. Each records who acted.

use std::process::ExitCode;

use super::args::{ExemptArgs, HistoryArgs, PauseArgs, QueueCommand};
use super::operator;
use crate::inventory::Located;
use crate::settings::Settings;
use crate::store::{ReleaseFilter, Store};

/// Opens the database for a command that records something for later (`pause`, `exempt`):
/// it may come before the first `apply` or `run`, so a SQLite file that is not there is
/// created, and said so, since a command pointed at the wrong file would otherwise hold nothing.
async fn open_noting_new(settings: &Settings) -> anyhow::Result<Store> {
    let missing = Store::missing_file(&settings.database);
    let store = Store::connect(&settings.database).await?;
    if let Some(path) = missing {
        eprintln!(
            "Note: there was no database at {}; a new one was made there. `apply` and `run` \
             must use this same database (--database, JANITOR_DATABASE_URL) for this to reach them.",
            path.display()
        );
    }
    Ok(store)
}

/// Where the policies' accounts and regions list `instance` (see [`crate::inventory::locate`]);
/// unchecked when the policies do not load or their credentials cannot be used.
async fn locate(settings: &Settings, instance: &str) -> Located {
    let policies = match super::plan::load_policies(&settings.policies, &[]) {
        Ok(p) => p,
        Err(_) => {
            return Located::Unchecked(format!(
                "the policies in {} do not load; `validate` says why",
                settings.policies.display()
            ))
        }
    };
    let accounts = crate::assemble::ecs_client(&settings.ecs)
        .and_then(|client| crate::assemble::accounts(settings, client, &policies));
    match accounts {
        Ok(accounts) => crate::inventory::locate(&accounts, &policies, instance).await,
        Err(e) => Located::Unchecked(format!("{e:#}")),
    }
}

pub(super) async fn pause(args: &PauseArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = open_noting_new(settings).await?;
    let db = store.shown_url().to_string();
    match store
        .pause(&operator(), &args.reason, chrono::Utc::now())
        .await?
    {
        Some(already) => outln!(
            "Already {} (database {db}); the pause is kept as it was. `ecs-janitor resume` lifts it.",
            already.describe()
        ),
        None => outln!(
            "Releases are paused on every replica and command using the database {db}. `ecs-janitor resume` lifts it."
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn exempt(args: &ExemptArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = open_noting_new(settings).await?;
    let now = chrono::Utc::now();
    if args.list {
        let rows = store.exemptions(now).await?;
        if args.json {
            // One JSON array, as `queue list --json` and `history --json` give.
            outln!("{}", serde_json::to_string_pretty(&rows)?);
        } else if rows.is_empty() {
            outln!(
                "No exemptions in force. (Tag exemptions, `janitor:exempt-until`, show in plans.)"
            );
        } else {
            for r in &rows {
                outln!(
                    "{}  until {}  by {}: {}",
                    r.instance_id,
                    r.until.format("%Y-%m-%d %H:%M UTC"),
                    r.by,
                    r.reason
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let instance = crate::plan::exempt::instance_id(args.instance.as_deref().unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    let reason = args.reason.as_deref().unwrap_or_default().trim();
    if reason.is_empty() {
        anyhow::bail!("give --reason: it is recorded with the exemption and shown in plans");
    }
    if args.remove {
        if !store
            .remove_exemption(instance, &operator(), reason, now)
            .await?
        {
            anyhow::bail!(
                "{instance} has no exemption in the database (`exempt --list` shows them); a tag exemption ends when its tag is removed"
            );
        }
        outln!("{instance} is no longer exempt; the next pass may select it again.");
        return Ok(ExitCode::SUCCESS);
    }
    let text = args.until.as_deref().unwrap_or_default();
    let until = crate::plan::exempt::new_until(text, now, settings.protection.max_exemption())
        .map_err(|e| anyhow::anyhow!("--until: {e}"))?;
    if !args.unchecked {
        match locate(settings, instance).await {
            Located::Found(places) => {
                for (account, i) in &places {
                    outln!(
                        "{instance} is {:?} in {}{}: {}, {}.",
                        i.instance_name,
                        i.region_id,
                        crate::inventory::account_suffix(account),
                        i.status.as_str(),
                        i.charge_type.as_str()
                    );
                }
            }
            Located::Nowhere(pairs) => {
                let places: Vec<String> = pairs
                    .iter()
                    .map(|(a, r)| format!("{r}{}", crate::inventory::account_suffix(a)))
                    .collect();
                anyhow::bail!(
                    "{instance} is not listed in any region the policies cover ({}), so no policy could release it and nothing was exempted: check the id (the plan shows each instance's). To record it anyway, add --unchecked.",
                    places.join(", ")
                );
            }
            Located::Unchecked(why) => eprintln!(
                "Note: could not check that {instance} exists ({why}); the exemption is recorded anyway."
            ),
        }
    }
    let done = store
        .exempt(instance, until, &operator(), reason, now)
        .await?;
    outln!(
        "{instance} is exempt from every policy until {}{}.",
        until.format("%Y-%m-%d %H:%M UTC"),
        if done.replaced {
            " (replacing its earlier exemption)"
        } else {
            ""
        }
    );
    for id in &done.cancelled {
        outln!("Cancelled its pending release {id}.");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn resume(reason: Option<&str>, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = Store::connect_existing(&settings.database).await?;
    store
        .resume(&operator(), reason.unwrap_or_default(), chrono::Utc::now())
        .await?;
    outln!("Releases are resumed.");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn queue(cmd: QueueCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now();
    if let QueueCommand::List { state: Some(s), .. } = &cmd {
        s.parse::<crate::store::ReleaseState>()
            .map_err(|e| anyhow::anyhow!("--state: {e}"))?;
    }
    let store = Store::connect_existing(&settings.database).await?;
    match cmd {
        QueueCommand::List {
            state,
            policy,
            json,
        } => {
            if let (Some(p), false) = (store.pause_state().await?, json) {
                outln!(
                    "Releases are {}; nothing is sent until `ecs-janitor resume`.",
                    p.describe()
                );
            }
            let rows = store
                .list_releases(&ReleaseFilter {
                    state,
                    policy,
                    limit: None,
                    ..ReleaseFilter::default()
                })
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{}", queue_header());
            for r in rows {
                outln!(
                    "{}",
                    queue_line([
                        &r.id,
                        &r.instance_id,
                        &r.region,
                        &r.state,
                        &r.attempts,
                        &r.policy,
                        &saves_cell(r.saving.as_ref()),
                        &r.last_code.or(r.last_error).unwrap_or_default(),
                    ])
                );
            }
        }
        QueueCommand::Show { id } => {
            let mut shown = serde_json::to_value(store.release(id).await?)?;
            let snapshots = store.snapshots_of(id).await?;
            if !snapshots.is_empty() {
                shown["snapshots"] = serde_json::to_value(snapshots)?;
            }
            outln!("{}", serde_json::to_string_pretty(&shown)?);
        }
        QueueCommand::Retry { id, reason } => {
            store
                .retry_release(id, &operator(), reason.as_deref().unwrap_or_default(), now)
                .await?;
            outln!("Release {id} is pending again; the next apply or the daemon sends it.");
        }
        QueueCommand::Cancel {
            id,
            reason,
            hold_for,
        } => {
            let until = hold_for.map(|d| now + d);
            store
                .cancel_release(id, &operator(), &reason, until, now)
                .await?;
            match until {
                Some(t) => outln!(
                    "Release {id} is cancelled; its instance is held out of the policy until {}.",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => outln!(
                    "Release {id} is cancelled; its instance is held out of the policy until `queue retry {id}`."
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn history(args: HistoryArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = Store::connect_existing(&settings.database).await?;
    let events = store
        .events_where(&crate::store::EventFilter {
            policy: args.policy.clone(),
            instance_id: args.instance.clone(),
            kind: args.kind.clone(),
            since: args.since,
            limit: Some(args.limit),
        })
        .await?;
    if events.is_empty() {
        unrecorded_filter(&store, &args).await?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in events {
        // A release's success: what it saves per month, as it was queued (list prices).
        let saves = e
            .saving
            .map(|s| format!("; {}", s.words()))
            .unwrap_or_default();
        outln!(
            "{} {:<16} {:<24} {:<28} {:<28} {} {}{saves}",
            e.at.format("%Y-%m-%dT%H:%M:%SZ"),
            e.kind,
            e.instance_id.unwrap_or_default(),
            e.policy.unwrap_or_default(),
            e.code.unwrap_or_default(),
            e.request_id
                .map(|r| format!("RequestId {r}"))
                .unwrap_or_default(),
            e.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// When `history` found nothing: a `--kind` that is no kind of event is an error naming the
/// kinds (found trying `--kind succeded`: an empty answer, as if nothing had happened); a
/// `--policy` the log has never named gets a note of the policies it does name (a policy may
/// simply not have acted yet).
async fn unrecorded_filter(store: &Store, args: &HistoryArgs) -> anyhow::Result<()> {
    use crate::store::EVENT_KINDS;
    if let Some(k) = args.kind.as_deref().filter(|k| !EVENT_KINDS.contains(k)) {
        let hint = crate::policy::closest(k, EVENT_KINDS)
            .map(|c| format!("did you mean {c:?}? "))
            .unwrap_or_default();
        anyhow::bail!(
            "no event is of kind {k:?}; {hint}the kinds are {}",
            EVENT_KINDS.join(", ")
        );
    }
    let Some(p) = args.policy.as_deref() else {
        return Ok(());
    };
    let policies = store.event_policies().await?;
    if !policies.iter().any(|x| x == p) {
        let names: Vec<&str> = policies.iter().map(String::as_str).collect();
        let hint = crate::policy::closest(p, &names)
            .map(|c| format!(" (did you mean {c:?}?)"))
            .unwrap_or_default();
        eprintln!(
            "Note: no event names policy {p:?}{hint}; the log names {}.",
            if names.is_empty() {
                "no policy yet".to_string()
            } else {
                format!("the policies {}", names.join(", "))
            }
        );
    }
    Ok(())
}

/// `queue list`'s table heading.
fn queue_header() -> String {
    let columns = [
        "ID",
        "INSTANCE",
        "REGION",
        "STATE",
        "TRY",
        "POLICY",
        "SAVES/MONTH",
        "LAST",
    ];
    queue_line(columns.each_ref().map(|c| c as &dyn std::fmt::Display))
}

/// One line of `queue list`'s table, its cells as text so that every width applies (a type's
/// own Display may ignore a width: the STATE column was ragged).
fn queue_line(c: [&dyn std::fmt::Display; 8]) -> String {
    let c = c.map(|x| x.to_string());
    format!(
        "{:>6} {:<24} {:<16} {:<10} {:>3} {:<28} {:<18} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    )
}

/// The queue table's SAVES/MONTH cell: the figure a release was queued with (list price, kept
/// as it was then), or, for a subscription that bills nothing while it waits, the month of
/// renewal its release spares.
fn saves_cell(s: Option<&crate::store::ReleaseSaving>) -> String {
    let Some(s) = s else {
        return "-".to_string();
    };
    match (&s.monthly, &s.renewal_avoided) {
        (Some(m), Some(r)) if m.minor == 0 => format!("{} renewal", r.display()),
        (Some(m), _) => m.display(),
        (None, _) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;
    use crate::store::ReleaseSaving;

    #[test]
    fn the_queue_table_keeps_its_columns_whatever_the_state() {
        let line = |state: crate::store::ReleaseState| {
            // The state as the table is given it: its own Display, which ignores a width.
            queue_line([&7, &"i-1", &"cn-hangzhou", &state, &1, &"ci", &"¥1.00", &""])
        };
        let (a, b) = (
            line(crate::store::ReleaseState::Succeeded),
            line(crate::store::ReleaseState::Pending),
        );
        let header = queue_header();
        let at = |l: &str| l.find("ci").unwrap();
        assert_eq!(at(&a), at(&b), "{a}\n{b}");
        assert_eq!(header.find("POLICY").unwrap(), at(&a), "{header}\n{a}");
    }

    #[test]
    fn a_subscription_shows_the_renewal_it_spares() {
        let saving = |monthly: Option<i64>, renewal: Option<i64>| ReleaseSaving {
            basis: String::new(),
            monthly: monthly.map(|m| Money::new(m, "CNY")),
            renewal_avoided: renewal.map(|r| Money::new(r, "CNY")),
        };
        assert_eq!(saves_cell(None), "-");
        assert_eq!(saves_cell(Some(&saving(Some(39_040), None))), "¥390.40");
        assert_eq!(
            saves_cell(Some(&saving(Some(0), Some(165_680)))),
            "¥1,656.80 renewal"
        );
        // Pay-as-you-go disks of a subscription: the run rate comes first.
        assert_eq!(
            saves_cell(Some(&saving(Some(4_000), Some(50_282)))),
            "¥40.00"
        );
        assert_eq!(saves_cell(Some(&saving(None, Some(50_282)))), "unknown");
    }
}
