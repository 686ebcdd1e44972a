//! Credentials for signing: an AccessKey pair (with an STS token) behind a small provider trait,
//! so that other sources (the aliyun CLI profile, the ECS RAM role) can be added without touching
//! the client. Secrets are wrapped in [`Secret`], whose `Debug` and `Display` never show the
//! value. The default lookup chain over those sources is [`super::chain`].

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

/// A string that must never reach a log, an error or Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One set of credentials: an AccessKey pair and, for STS, a security token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub security_token: Option<Secret>,
}

impl Credentials {
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Credentials {
            access_key_id: id.into(),
            access_key_secret: Secret::new(secret),
            security_token: None,
        }
    }
}

/// Why no credentials could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and \
         ALIBABA_CLOUD_ACCESS_KEY_SECRET (and ALIBABA_CLOUD_SECURITY_TOKEN for STS credentials){detail}"
    )]
    Missing { detail: String },
    #[error("credentials from {source_name} are unusable: {reason}")]
    Unusable {
        source_name: &'static str,
        reason: String,
    },
}

/// A source of credentials. Called before every signed request, so a provider may refresh.
pub trait CredentialsProvider: Send + Sync + fmt::Debug {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>>;
}

/// Fixed credentials (tests, the demo).
#[derive(Debug, Clone)]
pub struct StaticProvider(pub Credentials);

impl CredentialsProvider for StaticProvider {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        let c = self.0.clone();
        Box::pin(async move { Ok(c) })
    }
}

/// `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and the optional
/// `ALIBABA_CLOUD_SECURITY_TOKEN`, read once when the provider is built.
#[derive(Debug, Clone)]
pub struct EnvProvider {
    creds: Result<Credentials, CredentialsError>,
}

impl EnvProvider {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let id = get("ALIBABA_CLOUD_ACCESS_KEY_ID");
        let secret = get("ALIBABA_CLOUD_ACCESS_KEY_SECRET");
        let token = get("ALIBABA_CLOUD_SECURITY_TOKEN");
        let creds = match (id, secret) {
            (Some(id), Some(secret)) => Ok(Credentials {
                access_key_id: id,
                access_key_secret: Secret::new(secret),
                security_token: token.map(Secret::new),
            }),
            (Some(_), None) => Err(CredentialsError::Missing {
                detail: " (ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set)".into(),
            }),
            (None, Some(_)) => Err(CredentialsError::Missing {
                detail: " (ALIBABA_CLOUD_ACCESS_KEY_ID is not set)".into(),
            }),
            (None, None) => Err(CredentialsError::Missing {
                detail: String::new(),
            }),
        };
        EnvProvider { creds }
    }
}

impl CredentialsProvider for EnvProvider {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        let c = self.creds.clone();
        Box::pin(async move { c })
    }
}

/// A shared provider.
pub type SharedProvider = Arc<dyn CredentialsProvider>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn env_provider_reads_all_three_variables() {
        let p = EnvProvider::from_lookup(|k| match k {
            "ALIBABA_CLOUD_ACCESS_KEY_ID" => Some("LTAIid".into()),
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET" => Some("s3cr3t-value".into()),
            "ALIBABA_CLOUD_SECURITY_TOKEN" => Some("tok3n-value".into()),
            _ => None,
        });
        let c = p.credentials().await.unwrap();
        assert_eq!(c.access_key_id, "LTAIid");
        assert_eq!(c.access_key_secret.expose(), "s3cr3t-value");
        assert_eq!(c.security_token.as_ref().unwrap().expose(), "tok3n-value");
        let debug = format!("{c:?} {p:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(!debug.contains("tok3n-value"), "{debug}");
    }

    #[tokio::test]
    async fn missing_credentials_name_the_variables() {
        let e = EnvProvider::from_lookup(|_| None)
            .credentials()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("ALIBABA_CLOUD_ACCESS_KEY_ID"), "{e}");
        assert!(e.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"), "{e}");
        let e = EnvProvider::from_lookup(|k| {
            (k == "ALIBABA_CLOUD_ACCESS_KEY_ID").then(|| "id".to_string())
        })
        .credentials()
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"),
            "{e}"
        );
    }
}
