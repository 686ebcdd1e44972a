//! The status page at `/`: server-rendered HTML (no script), refreshed every 30 s, with the pause
//! state, the policies, the savings and their chart, releases waiting (with their marks), done and
//! failed.

use axum::extract::State;
use axum::response::Html;
use chrono::{DateTime, Utc};

use super::api::loaded;
use super::{AdminContext, ApiError};
use crate::store::ReleaseFilter;

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    html_escape::encode_safe(s)
}

/// How long ago `t` was, or how long until it comes: `5m ago`, `in 1s`. A time still ahead,
/// by however little, is never "ago": its seconds are rounded up.
fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let ms = (now - t).num_milliseconds();
    let (v, pre, post) = if ms >= 0 {
        (ms / 1000, "", " ago")
    } else {
        (ms.unsigned_abs().div_ceil(1000) as i64, "in ", "")
    };
    let text = if v >= 86_400 {
        format!("{}d {}h", v / 86_400, (v % 86_400) / 3600)
    } else if v >= 3600 {
        format!("{}h {}m", v / 3600, (v % 3600) / 60)
    } else if v >= 60 {
        format!("{}m", v / 60)
    } else {
        format!("{v}s")
    };
    format!("{pre}{text}{post}")
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,sans-serif;margin:0;padding:1rem;\
color:#1d232a;background:#fafbfc;max-width:72rem}h1{font-size:1.4rem;margin:.2rem 0 1rem}\
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}table{border-collapse:collapse;width:100%;\
font-size:.9rem}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #dde1e6;\
vertical-align:top}th{background:#eef1f4}.scroll{overflow-x:auto}code{font-size:.85em;\
word-break:break-all}.banner{padding:.6rem .8rem;border-radius:.3rem;margin-bottom:1rem;\
font-weight:600}.paused{background:#ffe3e3;color:#8a1111}.running{background:#e3f6e8;\
color:#0f5a2a}.waiting{background:#fff4d6;color:#6b4a00}.muted{color:#66707a}.fail{color:#8a1111}figure{margin:0 0 1rem}\
#savings td{white-space:nowrap}";

/// `≈ ¥390.40/month`, `unknown`, or `-` for a release queued unpriced.
fn saves(r: &crate::store::ReleaseRow) -> String {
    match &r.saving {
        None => "-".into(),
        Some(s) => match (&s.monthly, &s.renewal_avoided) {
            (Some(m), Some(renew)) if m.minor == 0 => {
                format!("renewal ≈ {} avoided", renew.display())
            }
            (Some(m), _) => format!("≈ {}/month", m.display()),
            (None, _) => "unknown".into(),
        },
    }
}

/// A waiting release's mark on its instance: written, missing and why, or `-` (none wanted:
/// no grace, `release.mark: false`, a dry run; or not yet written).
fn mark_cell(
    r: &crate::store::ReleaseRow,
    marks: &std::collections::HashMap<&str, &crate::store::MarkRow>,
) -> String {
    use crate::store::MarkState;
    match marks.get(r.instance_id.as_str()) {
        Some(m) if m.release_id == r.id && m.state == MarkState::Written => format!(
            "<code>{}release-after={}</code>",
            esc(&m.prefix),
            esc(&m.release_after)
        ),
        Some(m) if m.release_id == r.id && m.state == MarkState::Failed => {
            let code = m.code.as_deref().unwrap_or("");
            format!(
                "<span class=\"fail\">missing</span> <code>{}</code><br><span class=\"muted\">{}</span>",
                esc(code),
                esc(&crate::marks::advice(code))
            )
        }
        _ => "-".into(),
    }
}

/// Days the chart covers.
const CHART_DAYS: i64 = 30;

/// The savings summary and the chart of the last 30 days.
async fn savings_section(
    h: &mut String,
    store: &crate::store::Store,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let sum = store.savings_summary(now).await?;
    let days = store.savings_by_day(now, CHART_DAYS).await?;
    let currency = [&sum.since_start, &sum.upcoming]
        .iter()
        .find_map(|t| t.iter().next().map(|m| m.currency))
        .unwrap_or_else(|| "CNY".to_string());
    h.push_str("<h2>Savings</h2><table id=\"savings\">");
    for (label, id, t) in [
        ("Saved this month (UTC)", "saved-month", &sum.this_month),
        ("Saved since the start", "saved-total", &sum.since_start),
        (
            "Upcoming (queued, waiting out their grace or due)",
            "saved-upcoming",
            &sum.upcoming,
        ),
    ] {
        h.push_str(&format!(
            "<tr><th>{label}</th><td id=\"{id}\">≈ {}/month</td></tr>",
            esc(&t.display_whole(&currency))
        ));
    }
    h.push_str("</table>");
    let mut note = "Monthly run-rate released: list prices for 730 hours, before discounts, as each release was priced when queued.".to_string();
    if sum.released_unknown > 0 {
        note.push_str(&format!(
            " {} released with an unknown price are not counted.",
            sum.released_unknown
        ));
    }
    h.push_str(&format!("<p class=\"muted\">{}</p>", esc(&note)));
    h.push_str(&savings_chart(&days, &currency));
    Ok(())
}

/// An SVG (no script) of releases and savings per day: two bar rows over the same days, each bar
/// with a `<title>` naming its day and figures. Savings are drawn in `currency` only.
fn savings_chart(days: &[crate::store::DaySavings], currency: &str) -> String {
    const W: f64 = 600.0;
    const ROW: f64 = 80.0;
    const TOP: f64 = 26.0;
    const GAP: f64 = 48.0;
    let n = days.len().max(1) as f64;
    let slot = W / n;
    let minor = |d: &crate::store::DaySavings| {
        d.saved
            .iter()
            .find(|m| m.currency == currency)
            .map_or(0, |m| m.minor)
    };
    let max_n = days.iter().map(|d| d.releases).max().unwrap_or(0).max(1) as f64;
    let max_s = days.iter().map(minor).max().unwrap_or(0).max(1) as f64;
    let day_text = |d: i64| {
        chrono::DateTime::from_timestamp(d * 86_400, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let money = |v: i64| crate::money::Money::new(v, currency).display_whole();
    let height = TOP + ROW + GAP + ROW + 26.0;
    let mut svg = format!(
        "<figure><svg id=\"savings-chart\" role=\"img\" viewBox=\"0 0 {W} {height}\" width=\"100%\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"18\">\
         <title>Releases and monthly savings per day, last {} days</title>",
        days.len()
    );
    svg.push_str(&format!(
        "<text x=\"0\" y=\"18\">Releases per day (max {})</text>",
        max_n as i64
    ));
    svg.push_str(&format!(
        "<text x=\"0\" y=\"{}\">Saved per day, {}/month (max {})</text>",
        TOP + ROW + GAP - 8.0,
        esc(currency),
        esc(&money(max_s as i64))
    ));
    for (i, d) in days.iter().enumerate() {
        let x = i as f64 * slot + 1.0;
        let w = (slot - 2.0).max(1.0);
        let label = format!(
            "{}: {} released, ≈ {}/month",
            day_text(d.day),
            d.releases,
            d.saved.display_whole(currency)
        );
        let hn = d.releases as f64 / max_n * ROW;
        svg.push_str(&format!(
            "<rect class=\"releases\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{hn:.1}\" fill=\"#4a78b5\"><title>{}</title></rect>",
            TOP + ROW - hn,
            esc(&label)
        ));
        let hs = minor(d) as f64 / max_s * ROW;
        let base = TOP + ROW + GAP + ROW;
        svg.push_str(&format!(
            "<rect class=\"saved\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{hs:.1}\" fill=\"#2f8f4e\"><title>{}</title></rect>",
            base - hs,
            esc(&label)
        ));
    }
    for y in [TOP + ROW, TOP + ROW + GAP + ROW] {
        svg.push_str(&format!(
            "<line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#999\"/>"
        ));
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\">{}</text><text x=\"{W}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            height - 4.0,
            day_text(first.day),
            height - 4.0,
            day_text(last.day)
        ));
    }
    svg.push_str("</svg><figcaption class=\"muted\">Releases done and the monthly run-rate they saved, per day (UTC).</figcaption></figure>");
    svg
}

/// The status page: server-rendered HTML, no scripts, readable on a phone.
pub(super) async fn status_page(State(s): State<AdminContext>) -> Result<Html<String>, ApiError> {
    let now = s.ctx.clock.now();
    let snap = s.ctx.store.metrics_snapshot(now).await?;
    let runs = s.ctx.store.runs(1000).await?;
    let mut waiting = s
        .ctx
        .store
        .list_releases(&ReleaseFilter {
            state: Some("snapshotting".into()),
            policy: None,
            limit: Some(200),
            ..ReleaseFilter::default()
        })
        .await?;
    waiting.extend(
        s.ctx
            .store
            .list_releases(&ReleaseFilter {
                state: Some("pending".into()),
                policy: None,
                limit: Some(200),
                ..ReleaseFilter::default()
            })
            .await?,
    );
    let recent = s
        .ctx
        .store
        .list_releases(&ReleaseFilter {
            state: Some("succeeded".into()),
            policy: None,
            limit: Some(50),
            ..ReleaseFilter::default()
        })
        .await?;
    let failed = s
        .ctx
        .store
        .list_releases(&ReleaseFilter {
            state: Some("failed".into()),
            policy: None,
            limit: Some(50),
            ..ReleaseFilter::default()
        })
        .await?;
    let marks = s.ctx.store.marks().await?;
    let marks: std::collections::HashMap<&str, &crate::store::MarkRow> =
        marks.iter().map(|m| (m.instance_id.as_str(), m)).collect();
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"30\"><title>ecs-janitor</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body><h1>ecs-janitor</h1>");
    if let Some(p) = s.ctx.store.pause_state().await? {
        h.push_str(&format!(
            "<div class=\"banner paused\" id=\"paused\">Paused: releases are stopped on every replica and command ({}). Plans go on. <code>ecs-janitor resume</code> or POST /api/v1/resume to resume.</div>",
            esc(&p.describe())
        ));
    } else if let Some(w) = s.ctx.window.as_ref().filter(|w| !w.is_open(now)) {
        // Due releases are held; say why and until when (found in a user trial: the page said
        // "Running" while the window held four due releases, and nothing else said so).
        let until = match w.next_open(now) {
            Some(t) => format!("until it opens at {} UTC", t.format("%Y-%m-%d %H:%M")),
            None => "for good: it never opens".to_string(),
        };
        h.push_str(&format!(
            "<div class=\"banner waiting\" id=\"window\">Outside the operating window ({}): due releases wait {}. Plans go on.</div>",
            esc(&w.to_string()),
            esc(&until)
        ));
    } else {
        h.push_str("<div class=\"banner running\" id=\"running\">Running: releases are carried out as scheduled.</div>");
    }
    if let Some(why) = s.ctx.policies.disagreement() {
        // A replica on another checkout would queue and cancel the others' releases, or release
        // under a policy deleted on purpose: every replica holds until they agree.
        h.push_str(&format!(
            "<div class=\"banner paused\" id=\"policy-sets\">Releases wait: {}.</div>",
            esc(&why)
        ));
    }
    let load_error = s.health.load_error();
    if let Some(e) = load_error {
        // The folder changed and was refused: what runs is not what is in git.
        h.push_str(&format!(
            "<div class=\"banner paused\" id=\"load-error\">The policy files changed and were refused; the policies loaded before keep running. <code>ecs-janitor validate</code> says why:<br><code>{}</code></div>",
            esc(&e)
        ));
    }
    h.push_str(&format!(
        "<p class=\"muted\">{} in the queue; oldest due release waiting {:.0} s. Updated {} UTC.</p>",
        snap.queue_depth,
        snap.oldest_due_age_seconds,
        now.format("%Y-%m-%d %H:%M:%S")
    ));

    savings_section(&mut h, &s.ctx.store, now).await?;

    h.push_str("<h2>Policies</h2><div class=\"scroll\"><table id=\"policies\"><tr><th>Policy</th><th>Schedule (UTC)</th><th>Next run</th><th>Last run</th></tr>");
    let policies = loaded(&s);
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let errors = s.ctx.store.why_runs_failed(&runs, &names).await?;
    for p in policies {
        let next = crate::schedule::next_after(&p, now)
            .map(|t| format!("{} ({})", t.format("%Y-%m-%d %H:%M:%S"), esc(&ago(now, t))))
            .unwrap_or_else(|| "never".into());
        let last = runs
            .iter()
            .find(|r| r.policy == p.name)
            .map(|r| {
                let why = errors.get(&p.name).map_or(String::new(), |e| {
                    format!("<br><span class=\"fail\">{}</span>", esc(e))
                });
                format!(
                    "{} {} ({} planned, {} queued, {} cancelled){why}",
                    r.scheduled_for.format("%Y-%m-%d %H:%M:%S"),
                    esc(r.outcome.map_or("running", |o| o.as_str())),
                    r.planned,
                    r.enqueued,
                    r.cancelled
                )
            })
            .unwrap_or_else(|| "not yet".into());
        h.push_str(&format!(
            "<tr><td>{}{}{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            p.account.as_deref().map_or(String::new(), |a| format!(
                " <span class=\"muted\">(account {})</span>",
                esc(a)
            )),
            if p.dry_run {
                " <span class=\"muted\">(dry run)</span>"
            } else {
                ""
            },
            esc(&p.schedule_text),
            next,
            last
        ));
    }
    h.push_str("</table></div>");

    h.push_str("<h2>Waiting out their grace period</h2>");
    if waiting.is_empty() {
        h.push_str("<p class=\"muted\" id=\"waiting\">None.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table id=\"waiting\"><tr><th>Instance</th><th>Region</th><th>Policy</th><th>Saves</th><th>Released</th><th>Mark</th></tr>");
        for r in &waiting {
            h.push_str(&format!(
                "<tr><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.instance_id),
                esc(&r.instance_name),
                esc(&r.region),
                esc(&r.policy),
                esc(&saves(r)),
                if r.state == crate::store::ReleaseState::Snapshotting {
                    format!(
                        "snapshotting: {}",
                        esc(r.last_error.as_deref().unwrap_or("snapshots progressing"))
                    )
                } else if r.not_before > now {
                    esc(&ago(now, r.not_before)).into_owned()
                } else {
                    "due now".to_string()
                },
                mark_cell(r, &marks)
            ));
        }
        h.push_str("</table></div>");
    }

    exemptions_section(&mut h, &s.ctx.store, now).await?;

    h.push_str("<h2>Recent failures</h2>");
    if failed.is_empty() {
        h.push_str("<p class=\"muted\" id=\"failures\">None.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table id=\"failures\"><tr><th>Instance</th><th>Policy</th><th>Code</th><th>RequestId</th><th>When</th></tr>");
        for r in &failed {
            h.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"fail\"><code>{}</code><br><span class=\"muted\">{}</span></td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&r.instance_id),
                esc(&r.policy),
                esc(r.last_code.as_deref().unwrap_or("")),
                esc(r.last_error.as_deref().unwrap_or("")),
                esc(r.request_id.as_deref().unwrap_or("-")),
                esc(&ago(now, r.updated_at)),
            ));
        }
        h.push_str("</table></div>");
    }

    h.push_str("<h2>Recent releases</h2>");
    if recent.is_empty() {
        h.push_str("<p class=\"muted\" id=\"released\">None yet.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table id=\"released\"><tr><th>Instance</th><th>Policy</th><th>Saves</th><th>RequestId</th><th>When</th></tr>");
        for r in &recent {
            h.push_str(&format!(
                "<tr><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&r.instance_id),
                esc(&r.instance_name),
                esc(&r.policy),
                esc(&saves(r)),
                esc(r.request_id.as_deref().unwrap_or("-")),
                esc(&ago(now, r.updated_at)),
            ));
        }
        h.push_str("</table></div>");
    }
    h.push_str("</body></html>");
    Ok(Html(h))
}

/// Exemptions in force: operators' (from the database) and owners' tags (as the last pass that
/// listed each instance saw them), invalid tags first: they protect until someone fixes them.
async fn exemptions_section(
    h: &mut String,
    store: &crate::store::Store,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let ops = store.exemptions(now).await?;
    let tags: Vec<_> = store
        .seen_exemptions()
        .await?
        .into_iter()
        .filter(|e| e.until.is_none_or(|t| t > now))
        .collect();
    h.push_str("<h2>Exemptions</h2>");
    if ops.is_empty() && tags.is_empty() {
        h.push_str("<p class=\"muted\" id=\"exemptions\">None.</p>");
        return Ok(());
    }
    h.push_str("<div class=\"scroll\"><table id=\"exemptions\"><tr><th>Instance</th><th>Until</th><th>By</th><th>Why</th></tr>");
    for e in &tags {
        let (until, class) = match (&e.problem, e.until) {
            (Some(p), _) => (
                format!("invalid tag {:?}: {p}; protected until fixed", e.value),
                " class=\"fail\"",
            ),
            (None, Some(t)) => (
                format!("{} ({})", t.format("%Y-%m-%d %H:%M UTC"), ago(now, t)),
                "",
            ),
            (None, None) => (String::new(), ""),
        };
        h.push_str(&format!(
            "<tr><td><code>{}</code> {}</td><td{class}>{}</td><td>tag (seen {} by policy {})</td><td>{}</td></tr>",
            esc(&e.instance_id),
            esc(&e.region),
            esc(&until),
            esc(&ago(now, e.seen_at)),
            esc(&e.policy),
            esc(&e.reason),
        ));
    }
    for e in &ops {
        h.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{} ({})</td><td>{}</td><td>{}</td></tr>",
            esc(&e.instance_id),
            e.until.format("%Y-%m-%d %H:%M UTC"),
            esc(&ago(now, e.until)),
            esc(&e.by),
            esc(&e.reason),
        ));
    }
    h.push_str("</table></div>");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_ahead_by_less_than_a_second_is_in_a_second_not_ago() {
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(ago(now, now + ms(400)), "in 1s");
        assert_eq!(ago(now, now + ms(1_000)), "in 1s");
        assert_eq!(ago(now, now + ms(61_000)), "in 1m");
        assert_eq!(ago(now, now), "0s ago");
        assert_eq!(ago(now, now - ms(1_999)), "1s ago");
        assert_eq!(ago(now, now - ms(90_061_000)), "1d 1h ago");
    }
}
