//! What a plan says of a release's mark: the tags announcing it on its instance, written, still to
//! be written, or missing and why. Evaluation sets none; `marks::annotate` fills them in from what
//! was recorded. A missing mark never holds a release back.

use serde_json::{json, Value};

/// The mark of a release waiting out its grace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkNote {
    /// `<prefix>release-after` and `<prefix>policy` are on the instance.
    Written,
    /// Written when the release is queued (or by the next pass).
    ToWrite,
    /// TagResources was refused: the instance carries no mark. The release still goes ahead on
    /// time.
    Missing {
        /// ECS's code (`QuotaExceed.Tags`), or a local `Janitor.*` one.
        code: String,
        /// What happened and how to fix it, in words.
        why: String,
    },
}

impl MarkNote {
    pub fn code(&self) -> &'static str {
        match self {
            MarkNote::Written => "written",
            MarkNote::ToWrite => "to_write",
            MarkNote::Missing { .. } => "missing",
        }
    }

    /// `{"state": "missing", "code": "QuotaExceed.Tags", "why": "..."}`.
    pub fn json(&self) -> Value {
        match self {
            MarkNote::Missing { code, why } => {
                json!({"state": self.code(), "code": code, "why": why})
            }
            _ => json!({"state": self.code()}),
        }
    }

    /// `mark missing (QuotaExceed.Tags): ...`, for a missing mark only.
    pub fn missing_line(&self) -> Option<String> {
        match self {
            MarkNote::Missing { code, why } => Some(format!("mark missing ({code}): {why}")),
            _ => None,
        }
    }
}
