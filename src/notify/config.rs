//! A webhook's settings: its URL, format, name and DingTalk signing secret, read from YAML and
//! checked; the DingTalk robot signature; and the URL redaction every log and error uses.

use std::fmt;

use serde::Deserialize;
use url::Url;

/// The message format a webhook expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{source, title, text, events: [...]}`, for programs.
    #[default]
    Generic,
    /// A DingTalk custom robot: `{msgtype: "markdown", markdown: {title, text}}`.
    DingTalk,
    /// A Slack incoming webhook: `{text}` in Slack's mrkdwn.
    Slack,
}

/// One webhook. From YAML: `{url: https://…, format: generic|dingtalk|slack, name: ops}`;
/// `format` defaults to `generic`. `Debug` hides everything after the host.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawWebhook")]
pub struct WebhookConfig {
    /// The full URL, secrets included; never log it, use [`WebhookConfig::label`].
    pub url: Url,
    pub format: WebhookFormat,
    /// A name for logs, such as `ops-dingtalk`.
    pub name: Option<String>,
    /// A DingTalk robot's signing secret (`SEC…`, the robot's "additional signature" security
    /// setting): each message then carries `timestamp` and `sign`.
    pub secret: Option<crate::ecs::Secret>,
}

impl WebhookConfig {
    /// Checks that `url` is an absolute http(s) URL with a host.
    pub fn new(
        url: Url,
        format: WebhookFormat,
        name: Option<String>,
    ) -> Result<Self, WebhookConfigError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(WebhookConfigError::Scheme(url.scheme().to_string()));
        }
        if url.host_str().is_none() {
            return Err(WebhookConfigError::NoHost);
        }
        Ok(WebhookConfig {
            url,
            format,
            name,
            secret: None,
        })
    }

    /// Signs every message with a DingTalk robot's secret.
    pub fn with_secret(mut self, secret: crate::ecs::Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Where a message goes at `now_ms`: the URL, plus for a DingTalk robot with a secret
    /// `timestamp=now_ms` and `sign=base64(HMAC-SHA256(secret, "now_ms\nsecret"))`, as
    /// DingTalk's signed robots require (the timestamp must be within an hour of DingTalk's).
    pub fn url_at(&self, now_ms: i64) -> Url {
        let mut url = self.url.clone();
        if let (WebhookFormat::DingTalk, Some(secret)) = (self.format, &self.secret) {
            url.query_pairs_mut()
                .append_pair("timestamp", &now_ms.to_string())
                .append_pair("sign", &dingtalk_sign(secret.expose(), now_ms));
        }
        url
    }

    /// What logs call this webhook: its name and its origin, such as
    /// `ops (https://oapi.dingtalk.com)`, or only the origin when it has no name.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", redacted_url(&self.url)),
            None => redacted_url(&self.url),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field("format", &self.format)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// DingTalk's robot signature of `timestamp_ms`.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `scheme://host[:port]`, with `/…` when the URL has anything after the host. User info, path,
/// query and fragment, where webhook secrets live, are left out.
pub fn redacted_url(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?"));
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        s.push_str("/…");
    }
    s
}

/// Why a webhook's configuration was rejected. The URL itself is never repeated, since it
/// usually holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("webhook `url` is not a valid URL ({0}); write the full address, such as https://oapi.dingtalk.com/robot/send?access_token=…")]
    Url(String),
    #[error("webhook `url` uses the scheme {0:?}; only http and https webhooks are supported")]
    Scheme(String),
    #[error("webhook `url` has no host; write the full address, such as https://hooks.slack.com/services/…")]
    NoHost,
    #[error("webhook `secret` signs DingTalk robots only; remove it, or set `format: dingtalk`")]
    Secret,
}

impl WebhookConfigError {
    /// The webhook key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            WebhookConfigError::Url(_)
            | WebhookConfigError::Scheme(_)
            | WebhookConfigError::NoHost => "url",
            WebhookConfigError::Secret => "secret",
        }
    }
}

/// Where a webhook entry is wrong: one of its keys (an unknown one, or a known one with a bad
/// value), or the entry as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookFault {
    Entry,
    UnknownKey(String),
    Value(&'static str),
}

/// Reads one webhook entry (a configuration file's `webhooks:` item), saying which of its keys
/// is at fault and why. A secret's value never appears in the message.
pub fn parse_webhook(v: &serde_json::Value) -> Result<WebhookConfig, (WebhookFault, String)> {
    let raw: RawWebhook = serde_json::from_value(v.clone()).map_err(|e| {
        let fault = fault_of(v);
        // serde quotes a bad value: never a secret's.
        let message = match &fault {
            WebhookFault::Value("secret") => "webhook `secret` must be text".to_string(),
            _ => e.to_string(),
        };
        (fault, message)
    })?;
    WebhookConfig::try_from(raw).map_err(|e| (WebhookFault::Value(e.key()), e.to_string()))
}

/// Which key of entry `v` does not read (serde names neither the field of a bad value nor,
/// with `from_value`, its place): an unknown key first, then each known key on its own.
fn fault_of(v: &serde_json::Value) -> WebhookFault {
    const KEYS: [&str; 4] = ["url", "format", "name", "secret"];
    let Some(entry) = v.as_object() else {
        return WebhookFault::Entry;
    };
    if let Some(k) = entry.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return WebhookFault::UnknownKey(k.clone());
    }
    for key in KEYS {
        let Some(value) = entry.get(key) else {
            continue;
        };
        let reads = match key {
            "format" => serde_json::from_value::<WebhookFormat>(value.clone()).is_ok(),
            "url" => value.is_string(),
            _ => value.is_string() || value.is_null(),
        };
        if !reads {
            return WebhookFault::Value(key);
        }
    }
    WebhookFault::Entry
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    format: WebhookFormat,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    secret: Option<String>,
}

impl TryFrom<RawWebhook> for WebhookConfig {
    type Error = WebhookConfigError;

    fn try_from(raw: RawWebhook) -> Result<Self, WebhookConfigError> {
        let url = Url::parse(raw.url.trim()).map_err(|e| WebhookConfigError::Url(e.to_string()))?;
        let hook = WebhookConfig::new(url, raw.format, raw.name)?;
        match raw.secret {
            None => Ok(hook),
            Some(_) if raw.format != WebhookFormat::DingTalk => Err(WebhookConfigError::Secret),
            Some(s) => Ok(hook.with_secret(crate::ecs::Secret::new(s.trim()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_the_origin() {
        let cases = [
            (
                "https://oapi.dingtalk.com/robot/send?access_token=abc123",
                "https://oapi.dingtalk.com/…",
            ),
            (
                "https://hooks.slack.com/services/T0/B0/XYZ",
                "https://hooks.slack.com/…",
            ),
            (
                "http://user:pw@127.0.0.1:8080/hook#frag",
                "http://127.0.0.1:8080/…",
            ),
            ("https://example.com/", "https://example.com"),
            ("https://example.com?k=v", "https://example.com/…"),
        ];
        for (url, want) in cases {
            assert_eq!(redacted_url(&Url::parse(url).unwrap()), want);
        }
    }
}
