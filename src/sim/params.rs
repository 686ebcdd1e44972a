//! The request parameters the actions read the same way: `RegionId`, booleans such as `DryRun`,
//! and numbered lists (`InstanceId.N`, `ResourceId.N`, `TagKey.N`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{api_err, ApiError, SimState};
use crate::ecs::types::Instance;

/// A boolean parameter (`true`/`false`, any case); `false` when absent.
pub(super) fn parse_bool(map: &HashMap<&str, &str>, key: &str) -> Result<bool, ApiError> {
    match map.get(key) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(api_err(
            400,
            "InvalidParameter",
            format!("The specified parameter \"{key}\" is not valid: {v:?} is not a boolean."),
        )),
    }
}

/// A region's instances, when the simulator has any there.
pub(super) type RegionFleet<'a> = Option<&'a BTreeMap<String, Instance>>;

/// The region a call names and its instances; an error when `RegionId` is missing or names no
/// region.
pub(super) fn require_region<'a>(
    st: &'a SimState,
    map: &HashMap<&str, &str>,
) -> Result<(&'a str, RegionFleet<'a>), ApiError> {
    let region = map.get("RegionId").copied().unwrap_or_default();
    if region.is_empty() {
        return Err(api_err(
            400,
            "MissingParameter",
            "The input parameter \"RegionId\" that is mandatory for processing this request is not supplied.",
        ));
    }
    // A region ECS has, or one the simulator was given instances in, is served (empty when it
    // holds none); any other is unknown, as it is to ECS.
    match st.fleet.get_key_value(region) {
        Some((k, v)) => Ok((k.as_str(), Some(v))),
        None if crate::ecs::regions::is_known_region(region) => Ok(("", None)),
        None => Err(api_err(
            404,
            "InvalidRegionId.NotFound",
            format!("The specified region {region:?} does not exist."),
        )),
    }
}

/// `InstanceId.N` parameters, ordered by N; an error when N is not a positive number.
pub(super) fn instance_id_params(
    params: &[(String, String)],
) -> Result<Vec<(usize, String)>, ApiError> {
    indexed_params(params, "InstanceId.")
}

/// The parameters `PREFIX` + N (`ResourceId.`, `TagKey.`), ordered by N; an error when N is not
/// a positive number.
pub(super) fn indexed_params(
    params: &[(String, String)],
    prefix: &str,
) -> Result<Vec<(usize, String)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in params {
        if let Some(n) = k.strip_prefix(prefix) {
            let n: usize = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                api_err(
                    400,
                    "InvalidParameter",
                    format!("The parameter name \"{k}\" is not valid: N counts from 1."),
                )
            })?;
            out.push((n, v.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// The ids of the `PREFIX` + N parameters (`InstanceId.`, `ResourceId.`), in N order, an id named
/// twice (under one index or two) once; `MissingParameter` when there is none.
pub(super) fn unique_ids(
    params: &[(String, String)],
    prefix: &str,
) -> Result<Vec<String>, ApiError> {
    let mut seen = HashSet::new();
    let ids: Vec<String> = indexed_params(params, prefix)?
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| seen.insert(id.clone()))
        .collect();
    if ids.is_empty() {
        return Err(api_err(
            400,
            "MissingParameter",
            format!("The input parameter \"{prefix}N\" that is mandatory for processing this request is not supplied."),
        ));
    }
    Ok(ids)
}
