//! Credentials of the ECS instance's RAM role, from the instance metadata service (IMDS).
//!
//! Each fetch asks for an IMDSv2 session token first (`PUT /latest/api/token`) and sends it with
//! every metadata read. Only when the metadata service has no token endpoint (404 or 405, an old
//! or v1-only service) does it read without a token, and only if v1 is allowed. Any other failure
//! of the token request is an error: it means the service is unreachable or refusing, and a v1
//! read would fail the same way or bypass a hardened instance's policy.
//!
//! The temporary credentials are cached and fetched again once no more than
//! [`REFRESH_BEFORE`] remains before their `Expiration`, judged by an injected clock. If that
//! refresh fails while the cached credentials have not yet expired, they are used and the failure
//! is logged, so a brief metadata hiccup does not stop a release.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use super::credentials::{Credentials, CredentialsError, CredentialsProvider, Secret};
use crate::clock::SharedClock;

/// The metadata service's address inside every ECS instance.
pub const DEFAULT_IMDS_URL: &str = "http://100.100.100.200";
/// Credentials are fetched again when this little time remains before they expire.
pub const REFRESH_BEFORE: chrono::Duration = chrono::Duration::seconds(180);
/// The IMDSv2 token's lifetime we ask for, in seconds (the service's maximum).
pub const TOKEN_TTL_SECONDS: u32 = 21600;
/// The header of the token request that says how long the token should live.
pub const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
/// The header that carries the token on metadata reads.
pub const TOKEN_HEADER: &str = "x-aliyun-ecs-metadata-token";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "latest/api/token";
/// Path of the RAM role credentials; `GET` it for the role name, `GET` it plus `<role>` for the
/// credentials.
pub const CREDENTIALS_PATH: &str = "latest/meta-data/ram/security-credentials/";
/// Connect and read timeouts, as Alibaba's SDKs use them.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// What failed while talking to the metadata service. Never holds a secret or token: bodies
/// of credential answers are never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    #[error("the instance metadata base URL {url:?} is not usable: {reason}")]
    BadBaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client for the instance metadata service: {0}")]
    Client(String),
    #[error(
        "{what} at {url} failed: {reason}. The ECS RAM role is only reachable from inside an \
         ECS instance that has one attached; elsewhere use environment variables or a CLI profile"
    )]
    Unreachable {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("{what} at {url} answered HTTP {status}{hint}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error(
        "the IMDSv2 token endpoint {url} answered HTTP {status} and IMDSv1 is disabled \
         (ALIBABA_CLOUD_IMDSV1_DISABLED): enable IMDSv2 on the metadata service or allow v1"
    )]
    V1Disabled { url: String, status: u16 },
    #[error(
        "no RAM role is attached to this instance ({url} lists none): attach one in the ECS \
         console, or name it with ALIBABA_CLOUD_ECS_METADATA"
    )]
    NoRole { url: String },
    #[error("the RAM role credentials at {url} are unusable: {reason}")]
    BadCredentials { url: String, reason: String },
}

/// The cached answer.
struct Cached {
    creds: Credentials,
    expiration: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    /// The role, once given or discovered.
    role: Option<String>,
    cached: Option<Cached>,
}

/// Credentials of the instance's RAM role, cached and refreshed before they expire.
pub struct ImdsProvider {
    base: String,
    http: reqwest::Client,
    clock: SharedClock,
    allow_v1: bool,
    state: Mutex<State>,
}

impl fmt::Debug for ImdsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsProvider")
            .field("base", &self.base)
            .field("allow_v1", &self.allow_v1)
            .finish_non_exhaustive()
    }
}

impl ImdsProvider {
    /// A provider reading `base_url` (normally [`DEFAULT_IMDS_URL`]). `role_name` `None` means
    /// discover the role from the metadata service. The clock decides when to refresh.
    pub fn new(
        base_url: &str,
        role_name: Option<String>,
        clock: SharedClock,
    ) -> Result<Self, ImdsError> {
        let bad = |reason: &str| ImdsError::BadBaseUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(bad("it must be an http:// or https:// URL"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("it must not have a query or fragment"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(TIMEOUT)
            .read_timeout(TIMEOUT)
            // The metadata service is link-local to the instance: never through a proxy, and
            // never follow a redirect elsewhere with the token.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ecs-janitor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImdsError::Client(error_chain(&e)))?;
        Ok(ImdsProvider {
            base: format!("{}/", parsed.as_str().trim_end_matches('/')),
            http,
            clock,
            allow_v1: true,
            state: Mutex::new(State {
                role: role_name.filter(|r| !r.trim().is_empty()),
                cached: None,
            }),
        })
    }

    /// Whether reading without a token is allowed when the token endpoint is missing
    /// (default true; `ALIBABA_CLOUD_IMDSV1_DISABLED=true` turns it off in the chain).
    pub fn with_imdsv1_fallback(mut self, allowed: bool) -> Self {
        self.allow_v1 = allowed;
        self
    }

    /// The base URL, normalised to end in `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Cached credentials while more than [`REFRESH_BEFORE`] remains, fresh ones otherwise.
    pub async fn fetch(&self) -> Result<Credentials, ImdsError> {
        let mut st = self.state.lock().await;
        let now = self.clock.now();
        if let Some(c) = &st.cached {
            if c.expiration - now > REFRESH_BEFORE {
                return Ok(c.creds.clone());
            }
        }
        match self.refresh(&mut st).await {
            Ok(c) => {
                let creds = c.creds.clone();
                st.cached = Some(c);
                Ok(creds)
            }
            Err(e) => match &st.cached {
                Some(c) if c.expiration > now => {
                    tracing::warn!(
                        error = %e,
                        expiration = %c.expiration,
                        "refreshing the ECS RAM role credentials failed; using the cached ones until they expire"
                    );
                    Ok(c.creds.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn refresh(&self, st: &mut State) -> Result<Cached, ImdsError> {
        let token = self.session_token().await?;
        let role = match &st.role {
            Some(r) => r.clone(),
            None => {
                let r = self.discover_role(token.as_ref()).await?;
                st.role = Some(r.clone());
                r
            }
        };
        let mut url = Url::parse(&self.base).expect("checked in new");
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .extend(CREDENTIALS_PATH.trim_end_matches('/').split('/'))
            .push(&role);
        let body = self
            .get(
                url.as_str(),
                "reading the RAM role credentials",
                token.as_ref(),
            )
            .await?;
        parse_credentials(url.as_str(), &body)
    }

    /// An IMDSv2 token, or `None` to read with v1 (only when the endpoint is missing).
    async fn session_token(&self) -> Result<Option<Secret>, ImdsError> {
        const WHAT: &str = "the IMDSv2 token request (PUT)";
        let url = format!("{}{TOKEN_PATH}", self.base);
        let resp = self
            .http
            .put(&url)
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS.to_string())
            .send()
            .await
            .map_err(|e| unreachable(WHAT, &url, &e))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {
                let token = resp.text().await.map_err(|e| unreachable(WHAT, &url, &e))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(ImdsError::Status {
                        what: WHAT,
                        url,
                        status,
                        hint: " with an empty token",
                    });
                }
                Ok(Some(Secret::new(token)))
            }
            404 | 405 if self.allow_v1 => {
                tracing::debug!(%url, status, "no IMDSv2 token endpoint; reading metadata with IMDSv1");
                Ok(None)
            }
            404 | 405 => Err(ImdsError::V1Disabled { url, status }),
            _ => Err(ImdsError::Status {
                what: WHAT,
                url,
                status,
                hint: hint_for(status),
            }),
        }
    }

    async fn discover_role(&self, token: Option<&Secret>) -> Result<String, ImdsError> {
        let url = format!("{}{CREDENTIALS_PATH}", self.base);
        let body = self
            .get(&url, "discovering the RAM role name", token)
            .await?;
        // ECS attaches at most one role; the list is one name per line.
        body.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or(ImdsError::NoRole { url })
    }

    async fn get(
        &self,
        url: &str,
        what: &'static str,
        token: Option<&Secret>,
    ) -> Result<String, ImdsError> {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t.expose());
        }
        let resp = req.send().await.map_err(|e| unreachable(what, url, &e))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(ImdsError::Status {
                what,
                url: url.to_string(),
                status,
                hint: hint_for(status),
            });
        }
        resp.text().await.map_err(|e| unreachable(what, url, &e))
    }
}

impl CredentialsProvider for ImdsProvider {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        Box::pin(async move { self.fetch().await.map_err(CredentialsError::from) })
    }
}

impl From<ImdsError> for CredentialsError {
    fn from(e: ImdsError) -> Self {
        CredentialsError::Unusable {
            source_name: "the ECS RAM role (instance metadata service)",
            reason: e.to_string(),
        }
    }
}

fn hint_for(status: u16) -> &'static str {
    match status {
        401 | 403 => ": the metadata service refused the request (a missing or expired IMDSv2 token, or an X-Forwarded-For header)",
        404 => ": not found (is a RAM role attached to this instance, and is the role name right?)",
        500..=599 => ": the metadata service failed; it usually recovers, try again",
        _ => "",
    }
}

fn unreachable(what: &'static str, url: &str, e: &reqwest::Error) -> ImdsError {
    let reason = if e.is_timeout() {
        format!("no answer within {}s", TIMEOUT.as_secs())
    } else {
        // reqwest's own message only repeats the URL; the cause says what happened.
        e.source().map(error_chain).unwrap_or_else(|| e.to_string())
    };
    ImdsError::Unreachable {
        what,
        url: url.to_string(),
        reason,
    }
}

/// The error and its causes, innermost last (reqwest's Display alone hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// Reads the credentials document field by field, so no error ever quotes a value of it
/// (serde's type errors would, and the values are secrets).
fn parse_credentials(url: &str, body: &str) -> Result<Cached, ImdsError> {
    let bad = |reason: String| ImdsError::BadCredentials {
        url: url.to_string(),
        reason,
    };
    let doc: Value =
        serde_json::from_str(body).map_err(|e| bad(format!("not JSON (line {})", e.line())))?;
    let field = |name: &str| -> Result<String, ImdsError> {
        match doc.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                Err(bad(format!("{name} is missing")))
            }
            Some(_) => Err(bad(format!("{name} is not a string"))),
        }
    };
    let code = field("Code")?;
    if code != "Success" {
        return Err(bad(format!("Code is {code:?}, not \"Success\"")));
    }
    let expiration_text = field("Expiration")?;
    let expiration = NaiveDateTime::parse_from_str(&expiration_text, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc())
        .map_err(|_| {
            bad(format!(
                "Expiration {expiration_text:?} is not like 2006-01-02T15:04:05Z"
            ))
        })?;
    Ok(Cached {
        creds: Credentials {
            access_key_id: field("AccessKeyId")?,
            access_key_secret: Secret::new(field("AccessKeySecret")?),
            security_token: Some(Secret::new(field("SecurityToken")?)),
        },
        expiration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://100.100.100.200/latest/meta-data/ram/security-credentials/R";

    #[test]
    fn parses_a_success_document() {
        let c = parse_credentials(
            URL,
            r#"{"Code":"Success","AccessKeyId":"STS.id","AccessKeySecret":"sec-value",
                "SecurityToken":"tok-value","Expiration":"2030-01-02T03:04:05Z",
                "LastUpdated":"2030-01-02T02:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(c.creds.access_key_id, "STS.id");
        assert_eq!(c.creds.access_key_secret.expose(), "sec-value");
        assert_eq!(
            c.creds.security_token.as_ref().map(Secret::expose),
            Some("tok-value")
        );
        assert_eq!(c.expiration.to_rfc3339(), "2030-01-02T03:04:05+00:00");
    }

    #[test]
    fn bad_documents_are_named_without_their_values() {
        let cases = [
            (
                r#"{"Code":"Failed","AccessKeySecret":"sec-value"}"#,
                "Code is \"Failed\"",
            ),
            (
                r#"{"Code":"Success","AccessKeyId":"i","AccessKeySecret":"sec-value","SecurityToken":"tok-value","Expiration":"tomorrow"}"#,
                "Expiration \"tomorrow\"",
            ),
            (
                r#"{"Code":"Success","AccessKeyId":"i","AccessKeySecret":12345,"SecurityToken":"tok-value","Expiration":"2030-01-02T03:04:05Z"}"#,
                "AccessKeySecret is not a string",
            ),
            (
                r#"{"Code":"Success","AccessKeyId":"i","AccessKeySecret":"sec-value","Expiration":"2030-01-02T03:04:05Z"}"#,
                "SecurityToken is missing",
            ),
            ("sec-value tok-value", "not JSON"),
        ];
        for (body, want) in cases {
            let e = parse_credentials(URL, body).err().unwrap().to_string();
            assert!(e.contains(want), "{want} not in {e}");
            assert!(e.contains(URL), "{e}");
            for secret in ["sec-value", "tok-value", "12345"] {
                assert!(!e.contains(secret), "{secret} leaked: {e}");
            }
        }
    }

    #[test]
    fn base_url_is_checked_and_normalised() {
        let clock: SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
        let p = ImdsProvider::new("http://127.0.0.1:9", None, clock.clone()).unwrap();
        assert_eq!(p.base_url(), "http://127.0.0.1:9/");
        let p = ImdsProvider::new("http://h/prefix/", None, clock.clone()).unwrap();
        assert_eq!(p.base_url(), "http://h/prefix/");
        let e = ImdsProvider::new("100.100.100.200", None, clock.clone()).unwrap_err();
        assert!(e.to_string().contains("\"100.100.100.200\""), "{e}");
        let e = ImdsProvider::new("ftp://h/", None, clock).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }
}
