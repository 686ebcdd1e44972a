//! The saved plan (`plan --out FILE`): exactly the releases a person reviewed, so that
//! `apply --plan FILE` acts on that set and nothing more.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Plan;

/// A reviewed set of releases, as written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    /// Always [`SavedPlan::VERSION`] for files this build writes.
    pub version: u32,
    #[serde(with = "crate::timefmt")]
    pub created_at: DateTime<Utc>,
    /// The database the plan was made against (its queue and observations); `apply --plan`
    /// refuses a plan from another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    pub releases: Vec<SavedRelease>,
}

/// One reviewed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRelease {
    pub instance_id: String,
    pub region: String,
    pub policy: String,
    pub force: bool,
    pub terminate_subscription: bool,
    /// The earliest release time the plan showed (grace), so apply can respect it.
    #[serde(with = "crate::timefmt")]
    pub not_before: DateTime<Utc>,
}

/// Why a saved plan could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("{path}: cannot {action} the plan file: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a valid ecs-janitor plan file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: plan file version {found} is not supported (this build reads version {expected}); run `plan --out` again")]
    Version {
        path: PathBuf,
        found: String,
        expected: u32,
    },
}

impl SavedPlan {
    /// The file format version this build writes and reads.
    pub const VERSION: u32 = 1;

    /// The releases of `plan` that apply may act on: those of policies that are neither refused
    /// nor dry runs.
    pub fn from_plan(plan: &Plan) -> SavedPlan {
        let releases = plan
            .policies
            .iter()
            .filter(|p| !p.dry_run && p.refused.is_none())
            .flat_map(|p| p.releases.iter())
            .map(|r| SavedRelease {
                instance_id: r.instance_id.clone(),
                region: r.region.clone(),
                policy: r.policy.clone(),
                force: r.force,
                terminate_subscription: r.terminate_subscription,
                not_before: r.not_before,
            })
            .collect();
        SavedPlan {
            version: Self::VERSION,
            created_at: plan.generated_at,
            database_id: None,
            releases,
        }
    }

    /// Writes the plan as pretty JSON, through a temporary file and a rename so a reader never
    /// sees half a plan.
    pub fn save(&self, path: &Path) -> Result<(), SavedPlanError> {
        let io = |action, source| SavedPlanError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| SavedPlanError::Corrupt {
            path: path.to_path_buf(),
            source: e,
        })?;
        text.push('\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("write", e))
    }

    /// Reads a plan file, checking its version before anything else.
    pub fn load(path: &Path) -> Result<SavedPlan, SavedPlanError> {
        let text = std::fs::read_to_string(path).map_err(|e| SavedPlanError::Io {
            path: path.to_path_buf(),
            action: "read",
            source: e,
        })?;
        Self::from_json(path, &text)
    }

    /// Parses plan file text; `path` is only used in errors.
    pub fn from_json(path: &Path, text: &str) -> Result<SavedPlan, SavedPlanError> {
        let corrupt = |e| SavedPlanError::Corrupt {
            path: path.to_path_buf(),
            source: e,
        };
        let raw: serde_json::Value = serde_json::from_str(text).map_err(corrupt)?;
        match raw.get("version") {
            Some(v) if v.as_u64() == Some(u64::from(Self::VERSION)) => {}
            Some(v) => {
                return Err(SavedPlanError::Version {
                    path: path.to_path_buf(),
                    found: v.to_string(),
                    expected: Self::VERSION,
                })
            }
            None => {
                return Err(SavedPlanError::Version {
                    path: path.to_path_buf(),
                    found: "(missing)".into(),
                    expected: Self::VERSION,
                })
            }
        }
        serde_json::from_value(raw).map_err(corrupt)
    }
}
