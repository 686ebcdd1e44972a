//! ECS errors and what to do about them. Classification looks only at the error `Code` (and at
//! the transport failure kind), never at message text, because messages change and are localised.

use std::fmt;
use std::time::Duration;

/// What a caller should do with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Try again later (with the same ClientToken, for a release).
    Retryable,
    /// The instance does not exist: for a release this means done.
    Gone,
    /// A DryRun request passed every check.
    DryRunPassed,
    /// Will not succeed on retry.
    Permanent,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Gone => "gone",
            ErrorClass::DryRunPassed => "dry-run-passed",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// Classifies an ECS error code.
pub fn classify_code(code: &str) -> ErrorClass {
    match code {
        "InternalError"
        | "UnknownError"
        | "Throttling"
        | "LastTokenProcessing"
        | "OperationConflict"
        | "DependencyViolation.SLBConfiguring"
        | "IncorrectInstanceStatus.Initializing" => ErrorClass::Retryable,
        // `Janitor.Http5xx`: a 5xx answer without an ECS error document (a proxy or gateway).
        c if c.starts_with("ServiceUnavailable")
            || c.starts_with("Throttling.")
            || c.starts_with("Janitor.Http5") =>
        {
            ErrorClass::Retryable
        }
        "InvalidInstanceId.NotFound" | "InvalidInstanceIds.NotFound" => ErrorClass::Gone,
        "DryRunOperation" | "DRYRUN.SUCCESS" => ErrorClass::DryRunPassed,
        _ => ErrorClass::Permanent,
    }
}

/// How a call failed before an ECS answer could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Could not connect: the request was certainly not processed.
    Connect,
    /// Timed out after sending: the request may or may not have been processed.
    Timeout,
    /// The connection broke or the answer was unreadable: the outcome is unknown.
    LostAnswer,
}

/// An ECS call that failed.
#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    /// ECS answered with an error document.
    #[error("{action} failed: HTTP {status} {code}: {message} (RequestId {request_id})")]
    Api {
        action: &'static str,
        status: u16,
        code: String,
        message: String,
        request_id: String,
        /// From `x-ratelimit-user-api` / `x-ratelimit-user` `TimeLeft`, a minimum wait.
        retry_after: Option<Duration>,
    },
    /// No usable answer.
    #[error("{action} failed: {kind:?}: {detail}")]
    Transport {
        action: &'static str,
        kind: TransportKind,
        detail: String,
    },
    /// Refused locally before sending: the request could never be valid.
    #[error("{action} not sent: {reason}")]
    Invalid {
        action: &'static str,
        #[source]
        reason: InvalidRequest,
    },
    /// ECS answered 2xx with a body this client cannot read.
    #[error("{action}: unreadable answer (HTTP {status}, RequestId {request_id}): {detail}")]
    Decode {
        action: &'static str,
        status: u16,
        request_id: String,
        detail: String,
    },
    /// No credentials could be found.
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialsError),
}

/// Why a request was refused before sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("DeleteInstances takes 1 to 100 instance ids, got {0}")]
    InstanceCount(usize),
    #[error("DescribeInstances filters at most 100 instance ids, got {0}")]
    TooManyIdsToDescribe(usize),
    #[error("ClientToken must be 1 to 64 ASCII characters, got {len} characters{non_ascii}", non_ascii = if *.non_ascii { " with non-ASCII ones" } else { "" })]
    ClientToken { len: usize, non_ascii: bool },
    #[error("region id {0:?} is not valid")]
    Region(String),
    #[error("at most 20 tag filters, got {0}")]
    TooManyTags(usize),
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connect",
            TransportKind::Timeout => "timeout",
            TransportKind::LostAnswer => "lost-answer",
        })
    }
}

impl EcsError {
    /// What to do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            EcsError::Api { code, .. } => classify_code(code),
            EcsError::Transport { .. } => ErrorClass::Retryable,
            EcsError::Decode { .. } => ErrorClass::Retryable,
            EcsError::Invalid { .. } | EcsError::Credentials(_) => ErrorClass::Permanent,
        }
    }

    /// The ECS error code, or a stable local code for failures without one.
    pub fn code(&self) -> &str {
        match self {
            EcsError::Api { code, .. } => code,
            EcsError::Transport { kind, .. } => match kind {
                TransportKind::Connect => "Janitor.ConnectFailed",
                TransportKind::Timeout => "Janitor.Timeout",
                TransportKind::LostAnswer => "Janitor.LostAnswer",
            },
            EcsError::Decode { .. } => "Janitor.UnreadableAnswer",
            EcsError::Invalid { .. } => "Janitor.InvalidRequest",
            EcsError::Credentials(_) => "Janitor.NoCredentials",
        }
    }

    /// The RequestId of ECS's answer, when there was one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            EcsError::Api { request_id, .. } | EcsError::Decode { request_id, .. } => {
                Some(request_id)
                    .filter(|r| !r.is_empty())
                    .map(String::as_str)
            }
            _ => None,
        }
    }

    /// A minimum wait ECS asked for (throttling `TimeLeft`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EcsError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when the request may have taken effect even though no answer was read: retrying must
    /// reuse the same ClientToken.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            EcsError::Transport {
                kind: TransportKind::Timeout | TransportKind::LostAnswer,
                ..
            } | EcsError::Decode { .. }
        )
    }
}

/// Parses `Limit:1,Remain:0,TimeLeft:2000,Reset:1234` and returns `TimeLeft` (milliseconds).
pub fn parse_time_left(header: &str) -> Option<Duration> {
    header.split(',').find_map(|part| {
        let (k, v) = part.split_once(':')?;
        (k.trim() == "TimeLeft")
            .then(|| v.trim().parse::<u64>().ok())
            .flatten()
            .map(Duration::from_millis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_as_the_issue_lists() {
        let table = [
            ("InternalError", ErrorClass::Retryable),
            ("UnknownError", ErrorClass::Retryable),
            ("ServiceUnavailable", ErrorClass::Retryable),
            (
                "ServiceUnavailable.RegionMaintaining",
                ErrorClass::Retryable,
            ),
            ("Throttling", ErrorClass::Retryable),
            ("Throttling.User", ErrorClass::Retryable),
            ("Throttling.Api", ErrorClass::Retryable),
            ("LastTokenProcessing", ErrorClass::Retryable),
            ("OperationConflict", ErrorClass::Retryable),
            ("DependencyViolation.SLBConfiguring", ErrorClass::Retryable),
            (
                "IncorrectInstanceStatus.Initializing",
                ErrorClass::Retryable,
            ),
            ("InvalidInstanceId.NotFound", ErrorClass::Gone),
            ("InvalidInstanceIds.NotFound", ErrorClass::Gone),
            ("DryRunOperation", ErrorClass::DryRunPassed),
            ("DRYRUN.SUCCESS", ErrorClass::DryRunPassed),
            ("InvalidOperation.DeletionProtection", ErrorClass::Permanent),
            ("InstanceLockedForSecurity", ErrorClass::Permanent),
            ("ChargeTypeViolation", ErrorClass::Permanent),
            ("DependencyViolation.RouteEntry", ErrorClass::Permanent),
            ("IncorrectInstanceStatus", ErrorClass::Permanent),
            ("Forbidden.RAM", ErrorClass::Permanent),
            ("SignatureDoesNotMatch", ErrorClass::Permanent),
            ("InvalidAccessKeyId.NotFound", ErrorClass::Permanent),
            ("IdempotentParameterMismatch", ErrorClass::Permanent),
            ("Throttlingish", ErrorClass::Permanent),
            ("Janitor.Http502", ErrorClass::Retryable),
            ("Janitor.Http404", ErrorClass::Permanent),
        ];
        for (code, class) in table {
            assert_eq!(classify_code(code), class, "{code}");
        }
    }

    #[test]
    fn time_left_is_read_from_the_rate_limit_header() {
        assert_eq!(
            parse_time_left("Limit:1,Remain:0,TimeLeft:2000,Reset:1234"),
            Some(Duration::from_millis(2000))
        );
        assert_eq!(parse_time_left("Limit:1,Remain:0"), None);
        assert_eq!(parse_time_left("garbage"), None);
    }
}
