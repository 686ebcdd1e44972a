//! TagResources and UntagResources as ECS documents them (../shared/ecs-more.md 3.1; ECS-V2
//! `tag_resources_request_model.go`, `untag_resources_request_model.go`; ECS-DOCS
//! `Tags/TagResources.md`), for instances: tags written are what DescribeInstances lists.
//!
//! Documented, and modelled: `ResourceType` (lowercase), `ResourceId.N` at most 50
//! (`NumberExceed.ResourceIds`), `Tag.N` / `TagKey.N` at most 20 (`NumberExceed.Tags`); a key of
//! 1 to 128 characters, not starting with `acs:` or `aliyun`, without `http://` or `https://`
//! (`InvalidTagKey.Malformed`); a value of at most 128 characters without them
//! (`InvalidTagValue.Malformed`; the docs disagree on whether a value may start with `acs:` or
//! `aliyun`, and ecs-more.md says to forbid both); a key twice in one call (`Duplicate.TagKey`);
//! an existing key is overwritten; a resource may hold 20 custom tags (`QuotaExceed.Tags`), system
//! `acs:` tags not counted; an unknown resource (`InvalidResourceId.NotFound`) or type
//! (`InvalidResourceType.NotFound`); UntagResources' `All=true` (only without `TagKey.N`).
//!
//! Not documented, and chosen here:
//! - A call is all or nothing: one refused resource refuses the whole call, none is tagged.
//! - The HTTP statuses: 400 for malformed requests, 403 for the quota, 404 for what is not found.
//! - `ResourceType` must be exactly `instance` (the simulator holds no other taggable resource;
//!   ECS's other documented types, `disk`, `snapshot`, ..., answer `InvalidResourceType.NotFound`
//!   here, which ECS would not).
//! - The key and value prefixes are compared without regard to case.
//! - An id named twice is tagged once; an instance being released (still listed) can be tagged.
//! - UntagResources with neither `TagKey.N` nor `All=true` removes nothing and succeeds;
//!   `All=true` with `TagKey.N` is `InvalidParameter`; `All=true` leaves system `acs:` tags, which
//!   a user cannot remove; removing a key the instance does not hold is no error.

use std::collections::HashMap;

use serde_json::json;

use super::params::{indexed_params, parse_bool, require_region, unique_ids};
use super::{api_err, ApiError, SimState};

/// The most resources one call names.
pub const MAX_RESOURCES: usize = 50;
/// The most tags one call writes or removes.
pub const MAX_TAGS: usize = 20;
/// The most custom tags (not `acs:`) one resource holds.
pub const MAX_CUSTOM_TAGS: usize = 20;
/// The longest key or value, in characters.
const MAX_LEN: usize = 128;

/// A system tag: written by Alibaba Cloud services, listed, never counted toward the 20.
pub fn is_system_tag(key: &str) -> bool {
    key.to_ascii_lowercase().starts_with("acs:")
}

fn malformed(code: &str, what: &str, text: &str, why: &str) -> ApiError {
    api_err(
        400,
        code,
        format!("The specified {what} {text:?} is not valid: {why}."),
    )
}

/// Why ECS refuses `text` as a tag key (`key`: 1 to 128 characters) or value (at most 128):
/// neither may start with `acs:` or `aliyun` or contain `http://` or `https://`.
fn check_tag_text(text: &str, key: bool) -> Result<(), ApiError> {
    let (code, what, min) = if key {
        ("InvalidTagKey.Malformed", "Tag.N.Key", 1)
    } else {
        ("InvalidTagValue.Malformed", "Tag.N.Value", 0)
    };
    let noun = if key { "a tag key" } else { "a tag value" };
    let lower = text.to_ascii_lowercase();
    let len = text.chars().count();
    let why = if len < min || len > MAX_LEN {
        format!("{noun} has {min} to {MAX_LEN} characters")
    } else if lower.starts_with("acs:") || lower.starts_with("aliyun") {
        format!("{noun} cannot start with acs: or aliyun")
    } else if lower.contains("http://") || lower.contains("https://") {
        format!("{noun} cannot contain http:// or https://")
    } else {
        return Ok(());
    };
    Err(malformed(code, what, text, &why))
}

/// The instances a call names: its region, each listed id once, every one of them the caller's.
struct Target {
    region: String,
    ids: Vec<String>,
}

fn target(
    st: &SimState,
    account: &str,
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
) -> Result<Target, ApiError> {
    let (region, _) = require_region(st, map)?;
    match map.get("ResourceType").copied() {
        Some("instance") => {}
        None | Some("") => {
            return Err(api_err(
                400,
                "MissingParameter",
                "The input parameter \"ResourceType\" that is mandatory for processing this request is not supplied.",
            ))
        }
        Some(other) => {
            return Err(api_err(
                404,
                "InvalidResourceType.NotFound",
                format!("The specified ResourceType {other:?} does not exist."),
            ))
        }
    }
    let ids = unique_ids(params, "ResourceId.")?;
    if ids.len() > MAX_RESOURCES {
        return Err(api_err(
            400,
            "NumberExceed.ResourceIds",
            format!(
                "The maximum number of ResourceIds is exceeded: at most {MAX_RESOURCES}, got {}.",
                ids.len()
            ),
        ));
    }
    let fleet = st.fleet.get(region);
    for id in &ids {
        let found = fleet.is_some_and(|f| f.contains_key(id)) && st.owns(account, id);
        if !found {
            return Err(api_err(
                404,
                "InvalidResourceId.NotFound",
                format!("The specified ResourceIds are not found in our records: {id}"),
            ));
        }
    }
    Ok(Target {
        region: region.to_string(),
        ids,
    })
}

fn too_many_tags(n: usize) -> ApiError {
    api_err(
        400,
        "NumberExceed.Tags",
        format!("The maximum number of Tags is exceeded: at most {MAX_TAGS} per call, got {n}."),
    )
}

/// `Tag.N.Key` / `Tag.N.Value`, in N order, checked (CreateSnapshot's tags too).
pub(super) fn tags_of(
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut ns: Vec<usize> = Vec::new();
    for (k, _) in params {
        let Some(rest) = k.strip_prefix("Tag.") else {
            continue;
        };
        let n = rest
            .strip_suffix(".Key")
            .or_else(|| rest.strip_suffix(".Value"))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    format!("The parameter name \"{k}\" is not valid: use Tag.N.Key and Tag.N.Value, N from 1."),
                )
            })?;
        if !ns.contains(&n) {
            ns.push(n);
        }
    }
    ns.sort_unstable();
    if ns.is_empty() {
        return Err(api_err(
            400,
            "MissingParameter",
            "The input parameter \"Tag.N.Key\" that is mandatory for processing this request is not supplied.",
        ));
    }
    if ns.len() > MAX_TAGS || ns.last().is_some_and(|n| *n > MAX_TAGS) {
        return Err(too_many_tags(ns.len().max(*ns.last().unwrap_or(&0))));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for n in ns {
        let key = map.get(format!("Tag.{n}.Key").as_str()).copied();
        let Some(key) = key else {
            return Err(api_err(
                400,
                "MissingParameter",
                format!("Tag.{n}.Value is given without Tag.{n}.Key."),
            ));
        };
        let value = map
            .get(format!("Tag.{n}.Value").as_str())
            .copied()
            .unwrap_or_default();
        check_tag_text(key, true)?;
        check_tag_text(value, false)?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(api_err(
                400,
                "Duplicate.TagKey",
                format!("The Tag.N.Key {key:?} is given more than once."),
            ));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Answers one TagResources call by `account`: every named instance gets every tag, or none.
pub(super) fn tag_resources(
    st: &mut SimState,
    account: &str,
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
    request_id: &str,
) -> Result<serde_json::Value, ApiError> {
    let t = target(st, account, map, params)?;
    let tags = tags_of(map, params)?;
    let fleet = st.fleet.get_mut(&t.region).ok_or_else(|| {
        api_err(
            404,
            "InvalidResourceId.NotFound",
            "The specified ResourceIds are not found in our records.",
        )
    })?;
    for id in &t.ids {
        let inst = &fleet[id];
        let custom = inst.tags.iter().filter(|(k, _)| !is_system_tag(k)).count();
        let added = tags
            .iter()
            .filter(|(k, _)| !inst.tags.contains_key(k))
            .count();
        if custom + added > MAX_CUSTOM_TAGS {
            return Err(api_err(
                403,
                "QuotaExceed.Tags",
                format!(
                    "The maximum number of tags of resource {id} is exceeded: it holds {custom} of {MAX_CUSTOM_TAGS} and {added} would be added."
                ),
            ));
        }
    }
    for id in &t.ids {
        if let Some(inst) = fleet.get_mut(id) {
            for (k, v) in &tags {
                inst.tags.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(json!({"RequestId": request_id}))
}

/// Answers one UntagResources call by `account`: the keys named (or with `All=true`, every
/// custom tag) are removed from every named instance.
pub(super) fn untag_resources(
    st: &mut SimState,
    account: &str,
    map: &HashMap<&str, &str>,
    params: &[(String, String)],
    request_id: &str,
) -> Result<serde_json::Value, ApiError> {
    let t = target(st, account, map, params)?;
    let all = parse_bool(map, "All")?;
    let keys: Vec<String> = indexed_params(params, "TagKey.")?
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    if keys.len() > MAX_TAGS {
        return Err(too_many_tags(keys.len()));
    }
    if all && !keys.is_empty() {
        return Err(api_err(
            400,
            "InvalidParameter",
            "The parameter All=true cannot be given with TagKey.N.",
        ));
    }
    for k in &keys {
        if k.is_empty() || k.chars().count() > MAX_LEN {
            return Err(malformed(
                "InvalidTagKey.Malformed",
                "TagKey.N",
                k,
                "a tag key has 1 to 128 characters",
            ));
        }
    }
    if let Some(fleet) = st.fleet.get_mut(&t.region) {
        for id in &t.ids {
            let Some(inst) = fleet.get_mut(id) else {
                continue;
            };
            if all {
                let custom: Vec<String> = inst
                    .tags
                    .iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| !is_system_tag(k))
                    .collect();
                for k in custom {
                    inst.tags.remove(&k);
                }
            } else {
                for k in keys.iter().filter(|k| !is_system_tag(k)) {
                    inst.tags.remove(k);
                }
            }
        }
    }
    Ok(json!({"RequestId": request_id}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::types::{ChargeType, InstanceStatus};
    use crate::sim::{SimConfig, Simulator};

    const REGION: &str = "cn-hangzhou";

    fn sim(ids: &[&str]) -> Simulator {
        let fleet = ids
            .iter()
            .map(|id| {
                let mut i = crate::sim::fleet::generate(1, 7, chrono::Utc::now()).remove(0);
                i.instance_id = id.to_string();
                i.region_id = REGION.to_string();
                i.status = InstanceStatus::Stopped;
                i.charge_type = ChargeType::PostPaid;
                i.tags.clear();
                i
            })
            .collect();
        Simulator::new(SimConfig::default(), fleet)
    }

    /// A call's parameters: the region and type, then `extra`.
    fn params(extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut p = vec![
            ("RegionId".to_string(), REGION.to_string()),
            ("ResourceType".to_string(), "instance".to_string()),
        ];
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        p
    }

    fn ids(ids: &[&str]) -> Vec<(&'static str, String)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (leak(format!("ResourceId.{}", i + 1)), id.to_string()))
            .collect()
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        pairs
            .iter()
            .enumerate()
            .flat_map(|(i, (k, v))| {
                [
                    (leak(format!("Tag.{}.Key", i + 1)), k.to_string()),
                    (leak(format!("Tag.{}.Value", i + 1)), v.to_string()),
                ]
            })
            .collect()
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn call(
        s: &Simulator,
        action: &str,
        p: &[(String, String)],
    ) -> Result<serde_json::Value, ApiError> {
        let map: HashMap<&str, &str> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut st = s.state();
        match action {
            "TagResources" => tag_resources(&mut st, "", &map, p, "rid"),
            _ => untag_resources(&mut st, "", &map, p, "rid"),
        }
    }

    fn code(r: Result<serde_json::Value, ApiError>) -> String {
        match r {
            Ok(_) => "OK".into(),
            Err(e) => e.code,
        }
    }

    fn tags_of_instance(s: &Simulator, id: &str) -> Vec<(String, String)> {
        s.instances()
            .into_iter()
            .find(|i| i.instance_id == id)
            .map(|i| i.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn tags_are_written_and_an_existing_key_is_overwritten() {
        let s = sim(&["i-a", "i-b"]);
        let mut p = ids(&["i-a", "i-b"]);
        p.extend(tags(&[("janitor:policy", "ci"), ("team", "x")]));
        assert_eq!(code(call(&s, "TagResources", &params(&p))), "OK");
        let mut p = ids(&["i-a"]);
        p.extend(tags(&[("janitor:policy", "other")]));
        assert_eq!(code(call(&s, "TagResources", &params(&p))), "OK");
        assert_eq!(
            tags_of_instance(&s, "i-a"),
            [
                ("janitor:policy".to_string(), "other".to_string()),
                ("team".to_string(), "x".to_string())
            ]
        );
        assert_eq!(tags_of_instance(&s, "i-b")[0].1, "ci");
    }

    #[test]
    fn counts_over_the_limits_are_refused() {
        let names: Vec<String> = (0..51).map(|n| format!("i-{n}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = sim(&refs);
        let mut p = ids(&refs);
        p.extend(tags(&[("k", "v")]));
        assert_eq!(
            code(call(&s, "TagResources", &params(&p))),
            "NumberExceed.ResourceIds"
        );
        let keys: Vec<(String, String)> = (0..21).map(|n| (format!("k{n}"), "v".into())).collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut p = ids(&["i-0"]);
        p.extend(tags(&pairs));
        assert_eq!(
            code(call(&s, "TagResources", &params(&p))),
            "NumberExceed.Tags"
        );
        let mut p = ids(&["i-0"]);
        p.extend((1..=21).map(|n| (leak(format!("TagKey.{n}")), format!("k{n}"))));
        assert_eq!(
            code(call(&s, "UntagResources", &params(&p))),
            "NumberExceed.Tags"
        );
    }

    #[test]
    fn a_resource_holds_twenty_custom_tags_system_tags_aside() {
        let s = sim(&["i-full", "i-other"]);
        s.modify("i-full", |i| {
            for n in 0..20 {
                i.tags.insert(format!("k{n}"), "v".into());
            }
            i.tags
                .insert("acs:autoscaling:scalingGroupId".into(), "asg-1".into());
        });
        // Overwriting a key it holds adds nothing: accepted.
        let mut p = ids(&["i-full"]);
        p.extend(tags(&[("k3", "new")]));
        assert_eq!(code(call(&s, "TagResources", &params(&p))), "OK");
        // A 21st custom tag is refused, for the whole call: the other instance is untouched.
        let mut p = ids(&["i-other", "i-full"]);
        p.extend(tags(&[("janitor:policy", "ci")]));
        assert_eq!(
            code(call(&s, "TagResources", &params(&p))),
            "QuotaExceed.Tags"
        );
        assert!(tags_of_instance(&s, "i-other").is_empty());
        // Nineteen custom tags and a system one: one more fits.
        s.modify("i-full", |i| {
            i.tags.remove("k0");
        });
        let mut p = ids(&["i-full"]);
        p.extend(tags(&[("janitor:policy", "ci")]));
        assert_eq!(code(call(&s, "TagResources", &params(&p))), "OK");
    }

    #[test]
    fn malformed_keys_and_values_and_duplicates_are_refused() {
        let s = sim(&["i-a"]);
        let long = "k".repeat(129);
        for (k, v, want) in [
            ("acs:thing", "v", "InvalidTagKey.Malformed"),
            ("Aliyun-x", "v", "InvalidTagKey.Malformed"),
            ("see-https://x", "v", "InvalidTagKey.Malformed"),
            ("", "v", "InvalidTagKey.Malformed"),
            (long.as_str(), "v", "InvalidTagKey.Malformed"),
            ("k", "http://x", "InvalidTagValue.Malformed"),
            ("k", "acs:x", "InvalidTagValue.Malformed"),
            ("k", long.as_str(), "InvalidTagValue.Malformed"),
            ("k", "", "OK"),
        ] {
            let mut p = ids(&["i-a"]);
            p.extend(tags(&[(k, v)]));
            assert_eq!(
                code(call(&s, "TagResources", &params(&p))),
                want,
                "{k:?}={v:?}"
            );
        }
        let mut p = ids(&["i-a"]);
        p.extend(tags(&[("k", "1"), ("k", "2")]));
        assert_eq!(
            code(call(&s, "TagResources", &params(&p))),
            "Duplicate.TagKey"
        );
    }

    #[test]
    fn unknown_resources_and_types_are_not_found() {
        let s = sim(&["i-a"]);
        let mut p = ids(&["i-a", "i-nope"]);
        p.extend(tags(&[("k", "v")]));
        assert_eq!(
            code(call(&s, "TagResources", &params(&p))),
            "InvalidResourceId.NotFound"
        );
        assert!(tags_of_instance(&s, "i-a").is_empty(), "all or nothing");
        let mut p = vec![
            ("RegionId".to_string(), REGION.to_string()),
            ("ResourceType".to_string(), "Instance".to_string()),
            ("ResourceId.1".to_string(), "i-a".to_string()),
        ];
        p.extend(
            tags(&[("k", "v")])
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        assert_eq!(
            code(call(&s, "TagResources", &p)),
            "InvalidResourceType.NotFound"
        );
    }

    #[test]
    fn untag_removes_keys_or_with_all_every_custom_tag() {
        let s = sim(&["i-a"]);
        s.modify("i-a", |i| {
            i.tags.insert("a".into(), "1".into());
            i.tags.insert("b".into(), "2".into());
            i.tags.insert("acs:system".into(), "3".into());
        });
        let mut p = ids(&["i-a"]);
        p.push(("TagKey.1", "a".into()));
        p.push(("TagKey.2", "never-there".into()));
        assert_eq!(code(call(&s, "UntagResources", &params(&p))), "OK");
        assert_eq!(tags_of_instance(&s, "i-a").len(), 2);
        let mut p = ids(&["i-a"]);
        p.push(("All", "true".into()));
        p.push(("TagKey.1", "b".into()));
        assert_eq!(
            code(call(&s, "UntagResources", &params(&p))),
            "InvalidParameter"
        );
        let mut p = ids(&["i-a"]);
        p.push(("All", "true".into()));
        assert_eq!(code(call(&s, "UntagResources", &params(&p))), "OK");
        assert_eq!(
            tags_of_instance(&s, "i-a"),
            [("acs:system".to_string(), "3".to_string())]
        );
    }
}
