//! A JSON Schema (draft 2020-12) of the policy format, for editors such as yaml-language-server.
//!
//! The schema checks shapes and spellings; rules it cannot express (cron fields, cross-key
//! rules, unique names) are left to `ecs-janitor validate`.

use serde_json::{json, Value};

use crate::ecs::InstanceStatus;

const DURATION_PATTERN: &str = "^([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$";

fn duration(description: &str) -> Value {
    json!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "minLength": 2,
        "description": format!("{description} Written like 30s, 15m, 2h, 7d, 1w or 1d12h."),
    })
}

fn selector(description: &str) -> Value {
    let statuses: Vec<&str> = InstanceStatus::ALL.iter().map(|s| s.as_str()).collect();
    json!({
        "type": "object",
        "description": description,
        "additionalProperties": false,
        "properties": {
            "charge_type": {"enum": ["PrePaid", "PostPaid"], "description": "PrePaid (subscription) or PostPaid (pay-as-you-go)."},
            "status": {
                "description": "One status or a list of them.",
                "oneOf": [
                    {"enum": statuses},
                    {"type": "array", "items": {"enum": statuses}, "minItems": 1, "uniqueItems": true}
                ]
            },
            "tags": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"type": "string"},
                "description": "Tag key to value; \"*\" means the key is present with any value."
            },
            "name": {"type": "string", "minLength": 1, "description": "Glob on InstanceName."},
            "instance_type": {"type": "string", "minLength": 1, "description": "Glob on InstanceType, e.g. ecs.g6.*"},
            "zone": {"type": "string", "minLength": 1, "description": "Zone id, e.g. cn-hangzhou-h."},
            "resource_group_id": {"type": "string", "minLength": 1},
            "instance_ids": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            "created_before": duration("CreationTime at least this long ago."),
            "expired": {"type": "boolean", "description": "A subscription whose ExpiredTime has passed."},
            "expired_for": duration("A subscription that expired at least this long ago."),
            "stopped_for": duration("Seen Stopped by ecs-janitor continuously for at least this long."),
        }
    })
}

/// The JSON Schema of one policy document.
pub fn json_schema() -> Value {
    let mut select = selector("Every condition given must hold.");
    select["minProperties"] = json!(1);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/ecs-janitor/ecs-janitor/policy.schema.json",
        "title": "ecs-janitor lifecycle policy",
        "description": "One policy per YAML document. Reference: docs/policies.md.",
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "schedule", "regions", "select"],
        // Unless regions_unchecked is true, every region is one of ECS's.
        "if": {"not": {"properties": {"regions_unchecked": {"const": true}}, "required": ["regions_unchecked"]}},
        "then": {"properties": {"regions": {"items": {"enum": super::ECS_REGIONS}}}},
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$", "description": "Unique across all policy files."},
            "description": {"type": "string"},
            "account": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,63}$", "description": "The account to act on: an aliyun CLI profile, or an entry under `accounts:` in janitor.yaml. Default: the default credentials."},
            "schedule": {"type": "string", "description": "Cron with a seconds field, UTC: \"sec min hour day-of-month month day-of-week [year]\", e.g. \"0 */15 * * * *\"."},
            "regions": {"type": "array", "minItems": 1, "uniqueItems": true, "items": {"type": "string", "pattern": "^[a-z]{2,}-[a-z0-9-]*[a-z0-9]$"}, "description": "ECS region ids, e.g. [cn-hangzhou, ap-southeast-1]; each must be a known ECS region unless regions_unchecked is true."},
            "regions_unchecked": {"type": "boolean", "default": false, "description": "Accept region ids that ecs-janitor's list of ECS regions lacks (a region opened since this release, or a private one). They must still be well formed."},
            "select": select,
            "exclude": selector("Any one condition holding excludes the instance (each tag pair counts alone)."),
            "release": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "force": {"type": "boolean", "default": false, "description": "DeleteInstances Force: release instances that are not Stopped."},
                    "terminate_subscription": {"type": "boolean", "default": false, "description": "DeleteInstances TerminateSubscription: release subscription instances."},
                    "grace": duration("Wait this long after the first match before releasing."),
                    "allow_security_locked": {"type": "boolean", "default": false, "description": "Release instances with a security lock (their disks are released too)."},
                    "snapshot": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["retention_days"],
                        "description": "Snapshot the instance's disks before releasing it; the release waits until every snapshot is accomplished, and fails if one fails.",
                        "properties": {
                            "retention_days": {"type": "integer", "minimum": 1, "maximum": 65536, "description": "ECS releases the snapshots after this many days."},
                            "disks": {"type": "string", "enum": ["data", "all"], "default": "data", "description": "data: the data disks; all: the system disk too."}
                        }
                    },
                    "mark": {"type": "boolean", "description": "Tag each instance waiting out its grace with <prefix>release-after and <prefix>policy (TagResources). Default: true when grace is set; true needs grace."}
                }
            },
            "limits": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "max_releases_per_run": {"type": "integer", "minimum": 1, "maximum": 4294967295_u64, "default": 50}
                }
            },
            "dry_run": {"type": "boolean", "default": false}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LIMITS_KEYS, RELEASE_KEYS, SELECTOR_KEYS, TOP_KEYS};

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    }

    fn sorted(k: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn regions_are_listed_unless_unchecked() {
        let s = json_schema();
        let listed = s["then"]["properties"]["regions"]["items"]["enum"]
            .as_array()
            .unwrap();
        assert!(listed.iter().any(|r| r == "cn-hangzhou"));
        assert!(!listed.iter().any(|r| r == "cn-hangzou"));
        assert_eq!(
            s["if"]["not"]["properties"]["regions_unchecked"]["const"],
            json!(true)
        );
    }

    /// The schema and the validator must agree on every key name.
    #[test]
    fn schema_lists_exactly_the_validator_keys() {
        let s = json_schema();
        assert_eq!(keys(&s), sorted(TOP_KEYS));
        assert_eq!(keys(&s["properties"]["select"]), sorted(SELECTOR_KEYS));
        assert_eq!(keys(&s["properties"]["exclude"]), sorted(SELECTOR_KEYS));
        assert_eq!(keys(&s["properties"]["release"]), sorted(RELEASE_KEYS));
        assert_eq!(keys(&s["properties"]["limits"]), sorted(LIMITS_KEYS));
    }
}
