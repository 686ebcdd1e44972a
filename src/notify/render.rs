//! The message a webhook receives for a batch: generic JSON with the events, DingTalk markdown
//! or Slack mrkdwn, with long instance lists and diagnostics cut.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{InstanceRef, Notification, WebhookFormat};
use crate::money::plural;
use crate::store::SavedTotals;

/// The longest `problems` text a message carries; the rest is cut with a pointer to `validate`.
const MAX_PROBLEMS_CHARS: usize = 3000;

/// The message body a webhook of `format` receives for `batch`, listing at most `max_instances`
/// instances per event.
pub fn render(format: WebhookFormat, batch: &[Notification], max_instances: usize) -> Value {
    let title = title(batch);
    match format {
        WebhookFormat::Generic => json!({
            "source": "ecs-janitor",
            "title": title,
            "text": text(Flavor::Plain, &title, batch, max_instances),
            "events": batch.iter().map(|n| event_json(n, max_instances)).collect::<Vec<_>>(),
        }),
        WebhookFormat::DingTalk => json!({
            "msgtype": "markdown",
            "markdown": {
                "title": title,
                "text": text(Flavor::DingTalk, &title, batch, max_instances),
            },
        }),
        WebhookFormat::Slack => json!({
            "text": text(Flavor::Slack, &title, batch, max_instances),
        }),
    }
}

/// `ecs-janitor: stale-dev: 3 scheduled, 1 failed`.
pub(super) fn title(batch: &[Notification]) -> String {
    let mut policies: Vec<&str> = Vec::new();
    for p in batch.iter().filter_map(Notification::policy) {
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let (mut scheduled, mut released, mut failed, mut cancelled) = (0, 0, 0, 0);
    let (mut refused, mut load_failed) = (false, false);
    for n in batch {
        match n {
            Notification::Scheduled { releases, .. } => scheduled += releases.len(),
            Notification::Released { releases, .. } => released += releases.len(),
            Notification::Failed { releases, .. } => failed += releases.len(),
            Notification::Cancelled { releases, .. } => cancelled += releases.len(),
            Notification::Refused { .. } => refused = true,
            Notification::PolicyLoadFailed { .. } => load_failed = true,
        }
    }
    let mut parts = Vec::new();
    if scheduled > 0 {
        parts.push(format!("{scheduled} scheduled"));
    }
    if released > 0 {
        parts.push(format!("{released} released"));
    }
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if cancelled > 0 {
        parts.push(format!("{cancelled} no longer scheduled"));
    }
    if refused {
        parts.push("refused".to_string());
    }
    if load_failed {
        parts.push("policy files failed to load".to_string());
    }
    if parts.is_empty() {
        parts.push("nothing to report".to_string());
    }
    if policies.is_empty() {
        format!("ecs-janitor: {}", parts.join(", "))
    } else {
        format!("ecs-janitor: {}: {}", policies.join(", "), parts.join(", "))
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    crate::timefmt::text(t)
}

fn human_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn instance_json(i: &InstanceRef) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("instance_id".into(), json!(i.instance_id));
    m.insert("instance_name".into(), json!(i.instance_name));
    m.insert("region".into(), json!(i.region));
    m
}

/// `{count, instances: [first max], omitted}` for an event's list.
fn capped_list<T>(
    items: &[T],
    max: usize,
    item: impl Fn(&T) -> serde_json::Map<String, Value>,
) -> (usize, Vec<Value>, usize) {
    let shown: Vec<Value> = items
        .iter()
        .take(max)
        .map(|x| Value::Object(item(x)))
        .collect();
    (items.len(), shown, items.len().saturating_sub(max))
}

fn event_json(n: &Notification, max: usize) -> Value {
    match n {
        Notification::Scheduled {
            policy,
            releases,
            at,
            saving,
            paused,
        } => {
            let (count, instances, omitted) = capped_list(releases, max, instance_json);
            let saves = saving.as_ref().map(|s| {
                json!({
                    "monthly": s.monthly.iter().map(|m| json!({"amount": m.decimal(), "currency": m.currency})).collect::<Vec<_>>(),
                    "unknown": s.unknown,
                    "list_price": true,
                })
            });
            let mut v = json!({"kind": "scheduled", "policy": policy, "at": rfc3339(*at),
                   "count": count, "instances": instances, "omitted": omitted});
            if let Some(saves) = saves {
                v["saves"] = saves;
            }
            if let Some(p) = paused {
                v["paused"] = json!(p);
            }
            v
        }
        Notification::Released { policy, releases } => {
            let (count, instances, omitted) = capped_list(releases, max, |r| {
                let mut m = instance_json(&r.instance);
                m.insert("request_id".into(), json!(r.request_id));
                m.insert("at".into(), json!(rfc3339(r.at)));
                if let Some(s) = &r.saving {
                    m.insert("saving".into(), json!(s));
                }
                m
            });
            let mut v = json!({"kind": "released", "policy": policy, "count": count,
                   "instances": instances, "omitted": omitted});
            if let Some(t) = released_totals(releases) {
                let list = |t: &crate::money::Totals| {
                    t.iter()
                        .map(|m| json!({"amount": m.decimal(), "currency": m.currency}))
                        .collect::<Vec<_>>()
                };
                v["saves"] = json!({
                    "monthly": list(&t.monthly),
                    "renewal_avoided": list(&t.renewal),
                    "unknown": t.unknown,
                    "list_price": true,
                });
            }
            v
        }
        Notification::Failed { policy, releases } => {
            let (count, instances, omitted) = capped_list(releases, max, |r| {
                let mut m = instance_json(&r.instance);
                m.insert("code".into(), json!(r.code));
                m.insert("message".into(), json!(r.message));
                m.insert("request_id".into(), json!(r.request_id));
                m.insert("at".into(), json!(rfc3339(r.at)));
                m
            });
            json!({"kind": "failed", "policy": policy, "count": count,
                   "instances": instances, "omitted": omitted})
        }
        Notification::Cancelled { policy, releases } => {
            let (count, instances, omitted) = capped_list(releases, max, |r| {
                let mut m = instance_json(&r.instance);
                m.insert("reason".into(), json!(r.reason));
                m
            });
            json!({"kind": "cancelled", "policy": policy, "count": count,
                   "instances": instances, "omitted": omitted})
        }
        Notification::Refused {
            policy,
            count,
            limit,
        } => json!({"kind": "refused", "policy": policy, "count": count, "limit": limit}),
        Notification::PolicyLoadFailed { problems } => {
            json!({"kind": "policy_load_failed", "problems": cap_problems(problems)})
        }
    }
}

fn cap_problems(problems: &str) -> String {
    let problems = problems.trim_end();
    if problems.chars().count() <= MAX_PROBLEMS_CHARS {
        return problems.to_string();
    }
    let mut s: String = problems.chars().take(MAX_PROBLEMS_CHARS).collect();
    s.push_str("\n… (cut; run `ecs-janitor validate` for the full list)");
    s
}

/// The markup a human-readable body is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Plain,
    DingTalk,
    Slack,
}

impl Flavor {
    fn heading(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::DingTalk => format!("### {s}"),
            Flavor::Slack => format!("*{}*", self.escape(s)),
        }
    }

    fn bold(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::DingTalk => format!("**{s}**"),
            Flavor::Slack => format!("*{}*", self.escape(s)),
        }
    }

    fn code(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::DingTalk | Flavor::Slack => format!("`{}`", self.escape(s)),
        }
    }

    /// Slack reads `&`, `<` and `>` as markup; the other flavours take text as it is.
    fn escape(self, s: &str) -> String {
        match self {
            Flavor::Slack => s
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
            Flavor::Plain | Flavor::DingTalk => s.to_string(),
        }
    }

    fn bullet(self) -> &'static str {
        match self {
            Flavor::Slack => "• ",
            Flavor::Plain | Flavor::DingTalk => "- ",
        }
    }

    /// A block of diagnostics, kept as written.
    fn preformatted(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::Slack => format!("```\n{}\n```", self.escape(s)),
            // DingTalk's markdown has no code blocks; a quote keeps the lines apart.
            Flavor::DingTalk => s
                .lines()
                .map(|l| format!("> {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The human-readable body: a heading, then one paragraph per event.
fn text(flavor: Flavor, title: &str, batch: &[Notification], max: usize) -> String {
    let mut paragraphs = vec![flavor.heading(title)];
    for n in batch {
        paragraphs.push(event_text(flavor, n, max));
    }
    paragraphs.join("\n\n")
}

fn instance_words(flavor: Flavor, i: &InstanceRef) -> String {
    let id = flavor.escape(&i.instance_id);
    let region = flavor.escape(&i.region);
    if i.instance_name.is_empty() {
        format!("{id} in {region}")
    } else {
        format!("{id} ({}) in {region}", flavor.escape(&i.instance_name))
    }
}

fn list<T>(flavor: Flavor, items: &[T], max: usize, line: impl Fn(&T) -> String) -> String {
    let mut lines: Vec<String> = items
        .iter()
        .take(max)
        .map(|x| format!("{}{}", flavor.bullet(), line(x)))
        .collect();
    if items.len() > max {
        lines.push(format!("{}and {} more", flavor.bullet(), items.len() - max));
    }
    lines.join("\n")
}

/// `; releasing in 24h saves ≈ ¥1,200/month`.
fn saving_words(s: &super::ScheduledSaving) -> String {
    let hours = s.within.num_hours().max(0);
    let within = if hours >= 48 && hours % 24 == 0 {
        format!("{}d", hours / 24)
    } else if hours >= 1 {
        format!("{hours}h")
    } else {
        format!("{}m", s.within.num_minutes().max(0))
    };
    let amount = if s.monthly.is_empty() {
        "an unknown amount".to_string()
    } else {
        format!("≈ {}/month", s.monthly.display_whole("CNY"))
    };
    let unknown = if s.unknown > 0 && !s.monthly.is_empty() {
        format!(" ({} unknown)", s.unknown)
    } else {
        String::new()
    };
    format!("; releasing in {within} saves {amount}{unknown}")
}

/// What a batch of completed releases saves per month; `None` when none of them was priced.
fn released_totals(releases: &[super::ReleasedInstance]) -> Option<SavedTotals> {
    SavedTotals::of(releases.iter().filter_map(|r| r.saving.as_ref()))
}

/// What released instances save, in words: `, saving ≈ ¥1,411/month at list prices (1
/// unknown); renewal avoided ≈ ¥503/month`.
fn released_words(t: &SavedTotals) -> String {
    let mut w = if t.monthly.is_empty() {
        ", saving unknown".to_string()
    } else {
        format!(
            ", saving ≈ {}/month at list prices",
            t.monthly.display_whole("CNY")
        )
    };
    if t.unknown > 0 && !t.monthly.is_empty() {
        w.push_str(&format!(" ({} unknown)", t.unknown));
    }
    w.push_str(&t.renewal_words());
    w
}

fn event_text(flavor: Flavor, n: &Notification, max: usize) -> String {
    match n {
        Notification::Scheduled {
            policy,
            releases,
            at,
            saving,
            paused,
        } => format!(
            "{}: {} will be released at {} (grace period started){}{}\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "instance", "instances"),
            human_time(*at),
            saving.as_ref().map(saving_words).unwrap_or_default(),
            paused
                .as_ref()
                .map(|p| format!(
                    ". Releases are {}: these wait until someone resumes",
                    flavor.escape(p)
                ))
                .unwrap_or_default(),
            list(flavor, releases, max, |i| instance_words(flavor, i)),
        ),
        Notification::Released { policy, releases } => format!(
            "{}: {} released{}\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "instance", "instances"),
            released_totals(releases)
                .map(|t| released_words(&t))
                .unwrap_or_default(),
            list(flavor, releases, max, |r| {
                let mut s = format!(
                    "{} at {}",
                    instance_words(flavor, &r.instance),
                    human_time(r.at)
                );
                if let Some(id) = &r.request_id {
                    s.push_str(&format!(", RequestId {}", flavor.escape(id)));
                }
                if let Some(saving) = &r.saving {
                    s.push_str(&format!("; {}", saving.words()));
                }
                s
            }),
        ),
        Notification::Failed { policy, releases } => format!(
            "{}: {} failed\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "release", "releases"),
            list(flavor, releases, max, |r| {
                let mut s = format!(
                    "{} at {}: {} {}",
                    instance_words(flavor, &r.instance),
                    human_time(r.at),
                    flavor.code(&r.code),
                    flavor.escape(&r.message)
                );
                if let Some(id) = &r.request_id {
                    s.push_str(&format!(" (RequestId {})", flavor.escape(id)));
                }
                s
            }),
        ),
        Notification::Cancelled { policy, releases } => format!(
            "{}: {} no longer to be released (announced before, now cancelled)\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "instance", "instances"),
            list(flavor, releases, max, |r| format!(
                "{}: {}",
                instance_words(flavor, &r.instance),
                flavor.escape(&r.reason)
            )),
        ),
        Notification::Refused {
            policy,
            count,
            limit,
        } => format!(
            "{}: refused, {} would exceed limits.max_releases_per_run {limit}; nothing was \
             released. Raise the limit if this is intended, or narrow the policy.",
            flavor.bold(policy),
            plural(*count, "release", "releases"),
        ),
        Notification::PolicyLoadFailed { problems } => format!(
            "{}\n\n{}",
            flavor.bold("Policy files failed to load:"),
            flavor.preformatted(&cap_problems(problems)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_notice_says_what_releasing_saves() {
        let mut monthly = crate::money::Totals::new();
        monthly.add(&crate::money::Money::new(1_230_040, "CNY"));
        let n = Notification::Scheduled {
            policy: "stale-dev".into(),
            releases: vec![super::super::InstanceRef {
                instance_id: "i-1".into(),
                instance_name: String::new(),
                region: "cn-hangzhou".into(),
            }],
            at: chrono::DateTime::parse_from_rfc3339("2024-05-07T02:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            saving: Some(super::super::ScheduledSaving {
                monthly,
                unknown: 1,
                within: chrono::Duration::hours(24),
            }),
            paused: None,
        };
        let v = render(WebhookFormat::Generic, std::slice::from_ref(&n), 10);
        let text = v.to_string();
        assert!(
            text.contains("releasing in 24h saves ≈ ¥12,300/month (1 unknown)"),
            "{text}"
        );
        assert_eq!(
            v["events"][0]["saves"]["monthly"],
            json!([{"amount": "12300.40", "currency": "CNY"}]),
            "{v}"
        );
    }

    #[test]
    fn long_problems_are_cut() {
        let p = "e\n".repeat(MAX_PROBLEMS_CHARS);
        let s = cap_problems(&p);
        assert!(s.ends_with("run `ecs-janitor validate` for the full list)"));
        assert!(s.chars().count() < MAX_PROBLEMS_CHARS + 80);
    }

    #[test]
    fn slack_escapes_markup_in_names() {
        let batch = vec![Notification::Scheduled {
            saving: None,
            paused: None,
            policy: "p<&>".into(),
            releases: vec![InstanceRef {
                instance_id: "i-1".into(),
                instance_name: "<!channel>".into(),
                region: "cn-hangzhou".into(),
            }],
            at: DateTime::from_timestamp(0, 0).unwrap(),
        }];
        let v = render(WebhookFormat::Slack, &batch, 50);
        let text = v["text"].as_str().unwrap();
        assert!(
            !text.contains("<!channel>") && text.contains("&lt;!channel&gt;"),
            "{text}"
        );
        assert!(text.contains("*p&lt;&amp;&gt;*"), "{text}");
    }
}
