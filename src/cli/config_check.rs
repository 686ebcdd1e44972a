//! `config check`, and the checks `run` makes before it starts: every setting with its value and
//! source (secrets redacted), then every problem `run` would refuse to start on.

use std::process::ExitCode;
use std::time::Duration;

use super::redact;
use crate::settings::{Settings, Source};
use crate::store::Store;

/// Whether each account the file maps has a usable profile.
fn account_problems(settings: &Settings) -> Vec<String> {
    settings
        .accounts
        .iter()
        .filter_map(|(account, profile)| {
            let place = settings
                .account_places
                .get(account)
                .map_or(String::new(), |p| format!("{p}: "));
            crate::ecs::accounts::profile_credentials(profile)
                .err()
                .map(|e| format!("{place}account {account}: profile {profile} is unusable: {e}"))
        })
        .collect()
}

/// Whether the default credentials can be used, when a policy acts on the default account
/// (one without `account:`): without them such a policy would fail only at its first tick,
/// perhaps a day after `run` started and reported ready.
fn default_credentials_problem(
    settings: &Settings,
    policies: &[crate::policy::Policy],
) -> Option<String> {
    let users: Vec<&crate::policy::Policy> =
        policies.iter().filter(|p| p.account.is_none()).collect();
    let first = users.first()?;
    let chain = crate::ecs::chain::ChainProvider::new(crate::ecs::chain::ChainOptions {
        profile: settings.ecs.profile.clone(),
        ..Default::default()
    });
    let e = chain.source().err()?;
    let more = match users.len() - 1 {
        0 => " acts".to_string(),
        n => format!(" and {} act", crate::money::plural(n, "other", "others")),
    };
    Some(format!(
        "credentials: policy {} ({}:{}){more} with the default credentials, which cannot be used: {e}",
        first.name,
        first.source.file.display(),
        first.source.line
    ))
}

/// Everything `run` checks before it starts, each problem once with where it comes from: the
/// policies, the ECS client and the accounts, and the database.
pub(super) async fn preflight(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let policies = match crate::policy::load_dir(&settings.policies) {
        Ok(set) => set.policies,
        Err(diags) => {
            problems.extend(diags.iter().map(|d| d.to_string()));
            Vec::new()
        }
    };
    match crate::assemble::ecs_client(&settings.ecs) {
        Ok(client) => {
            if let Err(e) = crate::assemble::accounts(settings, client, &policies) {
                problems.push(format!("accounts: {e:#}"));
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    problems.extend(account_problems(settings));
    problems.extend(default_credentials_problem(settings, &policies));
    let url = &settings.database;
    let db_source = settings.source("database");
    if let Some(path) = Store::missing_file(url) {
        // A check makes nothing: `run` creates the file; only its folder must be there.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            problems.push(format!(
                "{db_source}: the SQLite database {} cannot be made: its folder {} does not exist",
                path.display(),
                dir.display()
            ));
        }
        return problems.iter().map(|p| redact(p, settings)).collect();
    }
    match tokio::time::timeout(Duration::from_secs(15), Store::connect(url)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!(
            "{db_source}: cannot use the database {}: {e:#}",
            crate::store::redact_url(url)
        )),
        Err(_) => problems.push(format!(
            "{db_source}: the database {} did not answer within 15 s",
            crate::store::redact_url(url)
        )),
    }
    problems.iter().map(|p| redact(p, settings)).collect()
}

/// The source column: where a value came from, in a word.
fn source_word(s: &Source) -> String {
    match s {
        Source::Flag(_) => "flag".into(),
        Source::Env(var) => format!("environment ({var})"),
        Source::File { .. } => "file".into(),
        Source::Default => "default".into(),
        Source::Unset => "unset".into(),
    }
}

/// Prints the settings `run` would use and every problem it would refuse to start on (`found`
/// holds those of the file and the values). Exit 1 on any problem.
pub(super) async fn config_check(
    settings: &Settings,
    found: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut problems = found;
    match &settings.file {
        Some(f) => outln!("configuration file: {}", f.display()),
        None => outln!("configuration file: none (--config, JANITOR_CONFIG or ./janitor.yaml)"),
    }
    outln!("{:<32} {:<48} SOURCE", "SETTING", "VALUE");
    for r in &settings.resolved {
        let name = match r.spec.flag {
            Some(f) => format!("--{f}"),
            None => r.spec.env.to_string(),
        };
        let shown = match (&r.raw, r.spec.secret) {
            (None, true) => "not set".to_string(),
            (Some(_), true) => "<redacted>".to_string(),
            (None, false) => "-".to_string(),
            (Some(v), false) => redact(&crate::store::redact_url(v), settings),
        };
        outln!("{:<32} {:<48} {}", name, shown, source_word(&r.source));
    }
    for (var, secret) in [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", false),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", true),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", true),
    ] {
        let v = std::env::var(var).ok().filter(|v| !v.is_empty());
        let (shown, source) = match (&v, secret) {
            (None, _) => ("not set".to_string(), ""),
            (Some(_), true) => ("<redacted>".to_string(), "environment"),
            (Some(v), false) => (v.clone(), "environment"),
        };
        outln!("{:<32} {:<48} {}", var, shown, source);
    }
    // The structured settings, which only the file gives (a webhook by its name and host: its
    // URL may hold a token).
    if let Some(w) = &settings.window {
        outln!("{:<32} {:<48} file", "window", w.to_string());
    }
    for (i, hook) in settings.webhooks.iter().enumerate() {
        outln!(
            "{:<32} {:<48} file",
            format!("webhook {}", i + 1),
            format!(
                "{} ({})",
                hook.label(),
                format!("{:?}", hook.format).to_lowercase()
            )
        );
    }
    // Accounts the file maps, and whether each one's profile can sign (no secret is shown).
    for (account, profile) in &settings.accounts {
        let status = match crate::ecs::accounts::profile_credentials(profile) {
            Ok((source, _)) => source,
            Err(e) => redact(&format!("UNUSABLE: {e}"), settings),
        };
        outln!(
            "{:<32} {:<48} {}",
            format!("account {account}"),
            format!("profile {profile}"),
            status
        );
    }
    // What `run` itself checks, once every value is good; otherwise what does not depend on them.
    if problems.is_empty() {
        problems.extend(preflight(settings).await);
    } else {
        problems.extend(account_problems(settings));
    }
    problems.dedup();
    if problems.is_empty() {
        outln!("No problems: `run` would start with these settings.");
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    outln!("{}:", crate::policy::count(problems.len(), "problem"));
    for p in &problems {
        outln!("{p}");
    }
    eprintln!(
        "{} found; `run` would refuse to start.",
        crate::policy::count(problems.len(), "problem")
    );
    Ok(ExitCode::from(1))
}
