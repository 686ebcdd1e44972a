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
///
/// Retryable are the refusals that mean "not now" rather than "never": throttling, a busy or
/// failing service, a ClientToken still being processed, and a proxy or gateway answering 5xx,
/// 429 or 408 without an ECS error document (`Janitor.Http{status}`), since none of them says
/// anything about the request itself. A refusal that concerns the whole account (see
/// [`is_account_wide`]) stays [`ErrorClass::Permanent`]; callers ask [`EcsError::account_wide`]
/// to stop the account's work instead of splitting the batch.
pub fn classify_code(code: &str) -> ErrorClass {
    match code {
        "InternalError"
        | "UnknownError"
        | "Throttling"
        | "LastTokenProcessing"
        | "OperationConflict"
        | "DependencyViolation.SLBConfiguring"
        | "IncorrectInstanceStatus.Initializing"
        // A replayed request (the nonce was seen): the next attempt signs with a new nonce, and
        // a release reuses its ClientToken, so retrying is safe either way.
        | "SignatureNonceUsed"
        // Terraform's provider retries it (NeedRetry); it is gateway throttling by another name.
        | "Rejected.Throttling"
        // 429 Too Many Requests and 408 Request Timeout from a gateway, without an ECS body.
        | "Janitor.Http429"
        | "Janitor.Http408"
        // CreateSnapshot's "not now": another snapshot of the disk, a token still being
        // processed, a disk in transfer (ecs-more.md 2.1).
        | "IncorrectDiskStatus.CreatingSnapshot"
        | "IdempotentProcessing"
        | "IncorrectDiskStatus.Transferring" => ErrorClass::Retryable,
        // `Janitor.Http5xx`: a 5xx answer without an ECS error document (a proxy or gateway).
        c if c.starts_with("ServiceUnavailable")
            || c.starts_with("Throttling.")
            || c.starts_with("Janitor.Http5") =>
        {
            ErrorClass::Retryable
        }
        // TagResources and UntagResources name a resource that does not exist (ecs-more.md 3.1):
        // for a mark, the instance is gone and its mark with it.
        "InvalidInstanceId.NotFound" | "InvalidInstanceIds.NotFound" | "InvalidResourceId.NotFound" => {
            ErrorClass::Gone
        }
        "DryRunOperation" | "DRYRUN.SUCCESS" => ErrorClass::DryRunPassed,
        _ => ErrorClass::Permanent,
    }
}

/// True when an ECS refusal concerns every call the account makes, not one instance: its
/// credentials, signature, clock, permissions or standing (Forbidden.RAM, SignatureDoesNotMatch,
/// InvalidAccessKeyId.*, InvalidTimeStamp.Expired, InvalidSecurityToken.*, ...). Splitting a
/// batch cannot help with these: each half is refused the same way. Such codes are
/// [`ErrorClass::Permanent`]; this says their scope.
pub fn is_account_wide(code: &str) -> bool {
    // A code that names an instance is about that instance, whatever its prefix.
    const NAMES_AN_INSTANCE: &[&str] = &["Forbidden.InstanceNotFound"];
    if NAMES_AN_INSTANCE.contains(&code) {
        return false;
    }
    let prefixed = |p: &str| {
        code == p
            || code
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    matches!(
        code,
        "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "InvalidSignatureMethod"
            | "MissingSecurityToken"
            | "IllegalTimestamp"
            | "InsufficientBalance"
            | "InvalidAction"
            | "UnsupportedHTTPMethod"
            | "Janitor.NoCredentials"
    ) || code.starts_with("Forbidden")
        || prefixed("InvalidAccessKeyId")
        || prefixed("InvalidAccessKeySecret")
        || prefixed("InvalidTimeStamp")
        || prefixed("InvalidSecurityToken")
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
    #[error("{action} failed: {detail}")]
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
    #[error("{action} needs at least one {what}")]
    NothingToTag {
        action: &'static str,
        what: &'static str,
    },
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

    /// True when this failure concerns every call of the account (credentials, permissions,
    /// signature, clock): stop the account's work for the run instead of splitting the batch.
    /// Always false for an error that is not [`ErrorClass::Permanent`].
    pub fn account_wide(&self) -> bool {
        match self {
            EcsError::Api { code, .. } => {
                classify_code(code) == ErrorClass::Permanent && is_account_wide(code)
            }
            EcsError::Credentials(_) => true,
            EcsError::Transport { .. } | EcsError::Invalid { .. } | EcsError::Decode { .. } => {
                false
            }
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

    /// ECS (or a gateway in front of it) refused the call for its rate: `Throttling`,
    /// `Throttling.User`, `Throttling.Api`, `Rejected.Throttling`, or HTTP 429.
    pub fn is_throttling(&self) -> bool {
        let code = self.code();
        code.contains("Throttling") || code == "Janitor.Http429"
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

/// The longest wait a throttling answer can ask for: a larger `TimeLeft` is read as this. It
/// keeps every later piece of arithmetic on the wait (a deadline, a `DateTime`) far from
/// overflow; callers clamp further to their own configured cap.
pub const MAX_TIME_LEFT: Duration = Duration::from_secs(3600);

/// Parses `Limit:1,Remain:0,TimeLeft:2000,Reset:1234` and returns `TimeLeft` (milliseconds),
/// at most [`MAX_TIME_LEFT`]. A number too large for any integer type counts as the maximum;
/// anything that is not a run of digits is ignored.
pub fn parse_time_left(header: &str) -> Option<Duration> {
    header.split(',').find_map(|part| {
        let (k, v) = part.split_once(':')?;
        if k.trim() != "TimeLeft" {
            return None;
        }
        let v = v.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Digits that overflow u64 are still "a very long time".
        let ms = v.parse::<u64>().unwrap_or(u64::MAX);
        Some(Duration::from_millis(ms).min(MAX_TIME_LEFT))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use ErrorClass::{DryRunPassed as D, Gone as G, Permanent as P, Retryable as R};

    /// Every code documented in ../shared/ecs-api.md (the ECS common error table, the gateway
    /// tables, DescribeInstances' and DeleteInstances' own tables, the SDK and Terraform notes)
    /// and in the seed's DeleteInstances.zh-CN.md, with its class and whether it concerns the
    /// whole account. Adding a code to the documents means adding it here.
    const DOCUMENTED: &[(&str, ErrorClass, bool)] = &[
        // Signature and request (ecs-api.md 1.1, 1.5, 3.4).
        ("InvalidTimeStamp.Expired", P, true),
        ("InvalidTimeStamp.Format", P, true),
        ("IllegalTimestamp", P, true),
        ("SignatureNonceUsed", R, false),
        ("SignatureDoesNotMatch", P, true),
        ("IncompleteSignature", P, true),
        ("MissingParameter", P, false),
        ("InvalidParameter", P, false),
        ("UnsupportedParameter", P, false),
        ("InvalidAccessKeyId.NotFound", P, true),
        ("InvalidAccessKeyId.Inactive", P, true),
        ("InvalidSecurityToken.Expired", P, true),
        ("InvalidSecurityToken.Malformed", P, true),
        ("InvalidSecurityToken.MismatchWithAccessKey", P, true),
        ("MissingSecurityToken", P, true),
        ("InvalidSignatureMethod", P, true),
        ("InsufficientBalance", P, true),
        ("InvalidAction", P, true),
        ("UnsupportedHTTPMethod", P, true),
        // Permissions (ecs-api.md 3.4).
        ("Forbidden.RAM", P, true),
        ("Forbidden.SubUser", P, true),
        ("Forbidden.Unauthorized", P, true),
        ("Forbidden.NotSupportRAM", P, true),
        ("Forbidden.RiskControl", P, true),
        ("Forbidden.AccessKeyDisabled", P, true),
        ("Forbidden", P, true),
        // Terraform counts it as "not found": it names one instance, so it is not account-wide.
        ("Forbidden.InstanceNotFound", P, false),
        // Idempotence (ecs-api.md 3.4, 4).
        ("IdempotentParameterMismatch", P, false),
        ("InvalidIdempotenceParameter.Mismatch", P, false),
        ("LastTokenProcessing", R, false),
        ("OperationConflict", R, false),
        // Service state and throttling (ecs-api.md 3.4, 6.3).
        ("InternalError", R, false),
        ("UnknownError", R, false),
        ("ServiceUnavailable", R, false),
        ("ServiceUnavailable.RegionMaintaining", R, false),
        ("Throttling", R, false),
        ("Throttling.User", R, false),
        ("Throttling.Api", R, false),
        ("Rejected.Throttling", R, false),
        ("InvalidRegionId.NotFound", P, false),
        // DescribeInstances (ecs-api.md 2.2).
        ("InvalidInstanceChargeType.NotFound", P, false),
        ("InvalidInternetChargeType.ValueNotSupported", P, false),
        ("InvalidLockReason.NotFound", P, false),
        ("InvalidFilterKey.NotFound", P, false),
        ("InvalidNetworkType.NotFound", P, false),
        ("InvalidStatus.NotFound", P, false),
        ("InvalidTag.Mismatch", P, false),
        ("InvalidTagCount", P, false),
        ("InvalidHpcClusterId.NotFound", P, false),
        ("InvalidHpcClusterId.Creating", P, false),
        ("DryRunOperation", D, false),
        // DeleteInstances (ecs-api.md 3.3; DeleteInstances.zh-CN.md).
        ("InvalidParameter.CrossRegionNotSupport", P, false),
        ("DRYRUN.SUCCESS", D, false),
        ("DependencyViolation.SLBConfiguring", R, false),
        ("DependencyViolation.RouteEntry", P, false),
        ("InvalidParameter.TooManyInstanceIds", P, false),
        ("InvalidInstanceIds.ValueNotSupported", P, false),
        ("InvalidOperation.DeletionProtection", P, false),
        ("InvalidOperation.NotInWhiteList", P, false),
        ("ChargeTypeViolation", P, false),
        ("IncorrectInstanceStatus.Initializing", R, false),
        ("InvalidOperation.EniLinked", P, false),
        ("IncorrectInstanceStatus", P, false),
        ("InstanceLockedForSecurity", P, false),
        ("OperationDenied.SystemInstanceNotSupport", P, false),
        ("InvalidInstanceIds.NotFound", G, false),
        ("InvalidInstanceId.NotFound", G, false),
        // TagResources and UntagResources (ecs-more.md 3.1).
        ("NumberExceed.ResourceIds", P, false),
        ("NumberExceed.Tags", P, false),
        ("OperationDenied.QuotaExceed", P, false),
        ("QuotaExceed.Tags", P, false),
        ("InvalidTagKey.Malformed", P, false),
        ("InvalidTagValue.Malformed", P, false),
        ("Duplicate.TagKey", P, false),
        ("InvalidResourceId.NotFound", G, false),
        ("InvalidResourceType.NotFound", P, false),
        // Answers without an ECS error document (a proxy or gateway), by HTTP status.
        ("Janitor.Http429", R, false),
        ("Janitor.Http408", R, false),
        ("Janitor.Http500", R, false),
        ("Janitor.Http502", R, false),
        ("Janitor.Http503", R, false),
        ("Janitor.Http504", R, false),
        ("Janitor.Http403", P, false),
        ("Janitor.Http404", P, false),
        // Near misses are not what they resemble.
        ("Throttlingish", P, false),
        ("InvalidAccessKeyIdentity", P, false),
    ];

    #[test]
    fn every_documented_code_has_its_class_and_scope() {
        let mut wrong = Vec::new();
        for (code, class, wide) in DOCUMENTED {
            let (got_class, got_wide) = (classify_code(code), is_account_wide(code));
            if got_class != *class || got_wide != *wide {
                wrong.push(format!(
                    "{code}: expected {} account_wide={wide}, got {} account_wide={got_wide}",
                    class.as_str(),
                    got_class.as_str()
                ));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn account_wide_errors_are_permanent_refusals_of_the_account() {
        let api = |code: &str| EcsError::Api {
            action: "DeleteInstances",
            status: 403,
            code: code.into(),
            message: String::new(),
            request_id: "r".into(),
            retry_after: None,
        };
        for (code, class, wide) in DOCUMENTED {
            let e = api(code);
            assert_eq!(e.class(), *class, "{code}");
            assert_eq!(e.account_wide(), *wide, "{code}");
            if *wide {
                assert_eq!(e.class(), ErrorClass::Permanent, "{code}");
            }
        }
        let connect = EcsError::Transport {
            action: "DescribeInstances",
            kind: TransportKind::Connect,
            detail: "cannot connect to ecs.cn-hangzhou.aliyuncs.com:443: connection refused".into(),
        };
        assert_eq!(connect.class(), ErrorClass::Retryable);
        assert!(!connect.account_wide() && !connect.outcome_unknown());
        let no_creds =
            EcsError::Credentials(super::super::credentials::CredentialsError::Missing {
                detail: String::new(),
            });
        assert!(no_creds.account_wide());
    }

    #[test]
    fn time_left_is_read_from_the_rate_limit_header() {
        assert_eq!(
            parse_time_left("Limit:1,Remain:0,TimeLeft:2000,Reset:1234"),
            Some(Duration::from_millis(2000))
        );
        assert_eq!(parse_time_left("Limit:1,Remain:0"), None);
        assert_eq!(parse_time_left("garbage"), None);
        assert_eq!(parse_time_left("TimeLeft:-5"), None);
        assert_eq!(parse_time_left("TimeLeft:"), None);
        // The issue's header: far past any sane wait, so it is read as the maximum.
        for huge in [
            "Limit:1,Remain:0,TimeLeft:9000000000000000,Reset:1",
            "TimeLeft:99999999999999999999999999999999",
        ] {
            assert_eq!(parse_time_left(huge), Some(MAX_TIME_LEFT), "{huge}");
        }
    }
}
