//! Fleets for the simulator: a realistic generated one from a seed, or one read from a JSON file
//! of instances in `DescribeInstances`' shape.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ecs::types::{ChargeType, Instance, InstanceStatus, WireInstance};

/// The regions a generated fleet spreads over.
pub const REGIONS: [&str; 4] = ["cn-hangzhou", "cn-shanghai", "cn-beijing", "ap-southeast-1"];

/// Far-future expiry that ECS reports for pay-as-you-go instances.
pub fn payg_expiry() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2099-12-31T15:59:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// How long ECS keeps listing a subscription after it expired unrenewed: it releases the
/// instance's computing resources 15 days after.
const EXPIRED_KEPT_DAYS: i64 = 15;

/// Generates `n` instances, the same ones for the same `(n, seed, now)`.
///
/// The mix resembles a real account: CI runners, web servers, sandboxes, batch and database
/// machines; both charge types; every status; subscriptions still paid for, or expired within
/// the 15 days ECS keeps them (stopped, once their day of expiry is over);
/// a few with deletion protection, a `janitor:protect=true` tag, or a security lock.
pub fn generate(n: usize, seed: u64, now: DateTime<Utc>) -> Vec<Instance> {
    let mut rng = StdRng::seed_from_u64(seed);
    let roles = ["ci", "web", "sandbox", "batch", "db"];
    let owners = ["alice", "bob", "chen", "dana", "eve", "farid"];
    let types = [
        "ecs.g6.large",
        "ecs.g6.xlarge",
        "ecs.c7.large",
        "ecs.r7.2xlarge",
        "ecs.t6-c1m2.large",
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let region = REGIONS[rng.gen_range(0..REGIONS.len())];
        let zone = format!("{region}-{}", ["a", "b", "h", "i"][rng.gen_range(0..4)]);
        let role = roles[rng.gen_range(0..roles.len())];
        let mut tags = crate::ecs::Tags::new();
        tags.insert("purpose".to_string(), role.to_string());
        tags.insert(
            "owner".to_string(),
            owners[rng.gen_range(0..owners.len())].to_string(),
        );
        tags.insert(
            "env".to_string(),
            ["prod", "staging", "dev"][rng.gen_range(0..3)].to_string(),
        );
        if rng.gen_bool(0.02) {
            tags.insert("janitor:protect".to_string(), "true".to_string());
        }
        if rng.gen_bool(0.05) {
            tags.insert("keep".to_string(), "true".to_string());
        }
        // Subscriptions are rarer for CI runners and sandboxes.
        let prepaid_p = if matches!(role, "ci" | "sandbox") {
            0.1
        } else {
            0.4
        };
        let charge_type = if rng.gen_bool(prepaid_p) {
            ChargeType::PrePaid
        } else {
            ChargeType::PostPaid
        };
        let drawn = match rng.gen_range(0..100) {
            0..=49 => InstanceStatus::Running,
            50..=89 => InstanceStatus::Stopped,
            90..=93 => InstanceStatus::Starting,
            94..=97 => InstanceStatus::Stopping,
            _ => InstanceStatus::Pending,
        };
        let created = now - Duration::minutes(rng.gen_range(60..60 * 24 * 400));
        let expired_time = match charge_type {
            ChargeType::PostPaid => payg_expiry(),
            // Half of the subscriptions have expired, from half an hour to 15 days ago: ECS
            // releases an unrenewed subscription's computing resources 15 days after it expired,
            // so older ones are no longer listed.
            ChargeType::PrePaid if rng.gen_bool(0.5) => {
                now - Duration::minutes(rng.gen_range(30..60 * 24 * EXPIRED_KEPT_DAYS))
            }
            ChargeType::PrePaid => now + Duration::days(rng.gen_range(1..365)),
        };
        // ECS stops an unrenewed subscription between 00:00 on the day it expires and 00:00 the
        // next day, and lists it Stopped (the console's Expired) from then on; within that day it
        // may still be in any state.
        let status = if charge_type == ChargeType::PrePaid && now - expired_time > Duration::days(1)
        {
            InstanceStatus::Stopped
        } else {
            drawn
        };
        let deletion_protection = charge_type == ChargeType::PostPaid && rng.gen_bool(0.03);
        let mut lock_reasons = Vec::new();
        if rng.gen_bool(0.01) {
            lock_reasons.push("security".to_string());
        }
        if charge_type == ChargeType::PrePaid && expired_time < now && rng.gen_bool(0.2) {
            lock_reasons.push("financial".to_string());
        }
        let id = instance_id(&mut rng, region);
        let instance_type = types[rng.gen_range(0..types.len())].to_string();
        let resource_group_id =
            format!("rg-{}", ["platform", "data", "tools"][rng.gen_range(0..3)]);
        // Economical mode (StopCharging) is for pay-as-you-go instances; a subscription shows
        // Not-applicable, stopped or not. (The mode is drawn where it always was, so the rest of
        // the fleet stays as it was.)
        let mode = (drawn == InstanceStatus::Stopped)
            .then(|| ["KeepCharging", "StopCharging"][rng.gen_range(0..2)]);
        let stopped_mode = match (status, charge_type, mode) {
            (InstanceStatus::Stopped, ChargeType::PostPaid, Some(m)) => m.to_string(),
            _ => "Not-applicable".to_string(),
        };
        out.push(Instance {
            instance_name: format!("{role}-{}-{i}", tags["owner"]),
            region_id: region.to_string(),
            zone_id: zone,
            status,
            charge_type,
            instance_type,
            creation_time: Some(created),
            expired_time: Some(expired_time),
            auto_release_time: None,
            deletion_protection,
            lock_reasons,
            tags,
            resource_group_id,
            stopped_mode,
            instance_id: id,
        });
    }
    out
}

/// An id in ECS's style: `i-` + a two-letter region code + 18 lowercase alphanumerics.
fn instance_id(rng: &mut StdRng, region: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let prefix = match region {
        "cn-hangzhou" => "bp",
        "cn-shanghai" => "uf",
        "cn-beijing" => "2z",
        _ => "t4",
    };
    let tail: String = (0..18)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("i-{prefix}{tail}")
}

/// Why a fleet file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read fleet file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "fleet file {path} is not a JSON array of instances in DescribeInstances' shape: {source}"
    )]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("fleet file {path}, element {index}: {reason}")]
    Instance {
        path: String,
        index: usize,
        reason: String,
    },
}

/// Reads a JSON array of instance objects (`InstanceId`, `RegionId`, `Status`, ...). Unknown
/// fields are ignored. Every instance needs an id and a region; ids must be unique.
pub fn load_file(path: &Path) -> Result<Vec<Instance>, FleetError> {
    let p = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| FleetError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&p, &text)
}

/// Parses the content of a fleet file; `name` appears in errors.
pub fn parse(name: &str, text: &[u8]) -> Result<Vec<Instance>, FleetError> {
    let wires: Vec<WireInstance> =
        serde_json::from_slice(text).map_err(|source| FleetError::Parse {
            path: name.to_string(),
            source,
        })?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(wires.len());
    for (index, w) in wires.into_iter().enumerate() {
        let err = |reason: String| FleetError::Instance {
            path: name.to_string(),
            index,
            reason,
        };
        if w.instance_id.is_empty() {
            return Err(err("InstanceId is missing".into()));
        }
        if w.region_id.is_empty() {
            return Err(err(format!(
                "instance {}: RegionId is missing",
                w.instance_id
            )));
        }
        if !seen.insert(w.instance_id.clone()) {
            return Err(err(format!("instance {} appears twice", w.instance_id)));
        }
        let inst = w.into_instance().map_err(|e| err(e.to_string()))?;
        out.push(inst);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fleet_lives_in_known_regions() {
        for r in REGIONS {
            assert!(crate::ecs::regions::is_known_region(r), "{r}");
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn generation_is_reproducible_and_varied() {
        let a = generate(2000, 42, now());
        assert_eq!(a, generate(2000, 42, now()));
        assert_ne!(a, generate(2000, 43, now()));
        let ids: std::collections::HashSet<_> = a.iter().map(|i| &i.instance_id).collect();
        assert_eq!(ids.len(), a.len(), "ids are unique");
        for st in InstanceStatus::ALL {
            assert!(a.iter().any(|i| i.status == st), "some {st}");
        }
        for r in REGIONS {
            assert!(a.iter().any(|i| i.region_id == r), "some in {r}");
        }
        assert!(a.iter().any(|i| i.deletion_protection));
        assert!(a.iter().any(|i| i.security_locked()));
        assert!(a
            .iter()
            .any(|i| i.tags.get("janitor:protect").map(String::as_str) == Some("true")));
        assert!(a
            .iter()
            .any(|i| i.charge_type == ChargeType::PrePaid && i.expired_time.unwrap() < now()));
        assert!(a
            .iter()
            .any(|i| i.charge_type == ChargeType::PrePaid && i.expired_time.unwrap() > now()));
    }

    #[test]
    fn expired_subscriptions_are_stopped_and_gone_after_fifteen_days() {
        let a = generate(5000, 42, now());
        let expired: Vec<&Instance> = a
            .iter()
            .filter(|i| i.charge_type == ChargeType::PrePaid && i.expired_time.unwrap() < now())
            .collect();
        assert!(expired.len() > 100, "{}", expired.len());
        for i in &expired {
            let ago = now() - i.expired_time.unwrap();
            assert!(
                ago < Duration::days(15),
                "{}: expired {ago} ago",
                i.instance_id
            );
            if ago > Duration::days(1) {
                assert_eq!(i.status, InstanceStatus::Stopped, "{}", i.instance_id);
            }
        }
        // Some expired within the day and not stopped yet; some stopped for days.
        assert!(expired.iter().any(|i| i.status != InstanceStatus::Stopped));
        assert!(expired
            .iter()
            .any(|i| now() - i.expired_time.unwrap() > Duration::days(7)));
        // Economical mode is pay-as-you-go's alone.
        for i in a.iter().filter(|i| i.stopped_mode != "Not-applicable") {
            assert_eq!(i.status, InstanceStatus::Stopped, "{}", i.instance_id);
            assert_eq!(i.charge_type, ChargeType::PostPaid, "{}", i.instance_id);
        }
        assert!(a.iter().any(|i| i.stopped_mode == "StopCharging"));
        assert!(a.iter().any(|i| i.stopped_mode == "KeepCharging"));
    }

    #[test]
    fn fleet_files_ignore_unknown_fields_and_name_bad_elements() {
        let ok = br#"[{"InstanceId":"i-1","RegionId":"cn-hangzhou","Status":"Stopped",
            "InstanceChargeType":"PostPaid","SpotStrategy":"NoSpot","Cpu":2}]"#;
        let f = parse("f.json", ok).unwrap();
        assert_eq!(f[0].status, InstanceStatus::Stopped);

        let dup = br#"[{"InstanceId":"i-1","RegionId":"r","InstanceChargeType":"PostPaid"},
                       {"InstanceId":"i-1","RegionId":"r","InstanceChargeType":"PostPaid"}]"#;
        let e = parse("f.json", dup).unwrap_err().to_string();
        assert!(
            e.contains("element 1") && e.contains("i-1 appears twice"),
            "{e}"
        );

        let e = parse("f.json", b"{}").unwrap_err().to_string();
        assert!(e.contains("f.json") && e.contains("JSON array"), "{e}");
    }
}
