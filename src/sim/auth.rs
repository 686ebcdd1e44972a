//! Who sent a request, and whether it is authentic: the two signatures ECS accepts.
//!
//! - **V1** (RPC, HMAC-SHA1): `AccessKeyId`, `Signature`, `SignatureNonce`, `Timestamp`, … among
//!   the parameters (query and form body), an STS token as `SecurityToken`.
//! - **V3** (`ACS3-HMAC-SHA256`, what today's official SDKs send): an `Authorization` header,
//!   `Action`, `Version`, date and nonce in `x-acs-*` headers, the canonical request built over
//!   the headers the client's own `SignedHeaders` lists, the body covered by
//!   `x-acs-content-sha256`, an STS token as `x-acs-security-token`. The API's parameters may
//!   still come in the query or in a form body.
//!
//! A request with an `Authorization` header is taken for V3, any other for V1. Both share the
//! keys, the clock-skew rule and the table of used nonces.
//!
//! Error codes are those of Alibaba's gateway (the public error centre's list: `IncompleteSignature`,
//! `InvalidSignatureMethod`, `SignatureDoesNotMatch`, `InvalidTimeStamp.*`, `SignatureNonceUsed`,
//! `InvalidAccessKeyId.NotFound`, `MissingSecurityToken`, `InvalidSecurityToken.*`). Which of them
//! the gateway picks for each V3-specific failure, and their HTTP statuses, are not documented;
//! the choices are marked below.

use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::{api_err, ApiError, SimConfig, SimState};
use crate::ecs::sign;

/// One request as it arrived, its parameters decoded but kept apart by origin.
pub(super) struct Incoming<'a> {
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    /// Parameters of the URL's query.
    pub query: Vec<(String, String)>,
    /// Parameters of a form body.
    pub form: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// An authentic request: whose it is, and the API parameters to act on.
pub(super) struct Authenticated {
    /// `""`: the default account.
    pub account: String,
    /// Query and form parameters; for V3 also `Action` and `Version` from their headers.
    pub params: Vec<(String, String)>,
    /// `v1` or `v3`.
    pub signature: &'static str,
}

/// A key the simulator knows.
struct Key<'a> {
    account: &'a str,
    secret: &'a str,
    /// For an STS key: the token that must come with it, and until when it is valid.
    sts: Option<(&'a str, DateTime<Utc>)>,
}

pub(super) fn authenticate(
    cfg: &SimConfig,
    st: &mut SimState,
    req: &Incoming<'_>,
) -> Result<Authenticated, ApiError> {
    match req.headers.get(axum::http::header::AUTHORIZATION) {
        Some(v) => v3(cfg, st, req, &String::from_utf8_lossy(v.as_bytes())),
        None => v1(cfg, st, req),
    }
}

fn missing(what: &str) -> ApiError {
    api_err(
        400,
        "MissingParameter",
        format!("The input parameter \"{what}\" that is mandatory for processing this request is not supplied."),
    )
}

fn incomplete(why: impl std::fmt::Display) -> ApiError {
    api_err(
        400,
        "IncompleteSignature",
        format!("The request signature does not conform to Aliyun standards: {why}."),
    )
}

fn find_key<'a>(cfg: &'a SimConfig, key_id: &str) -> Result<Key<'a>, ApiError> {
    if key_id == cfg.access_key_id {
        return Ok(Key {
            account: "",
            secret: &cfg.access_key_secret,
            sts: None,
        });
    }
    if let Some(a) = cfg.accounts.iter().find(|a| a.access_key_id == key_id) {
        return Ok(Key {
            account: &a.name,
            secret: &a.access_key_secret,
            sts: None,
        });
    }
    if let Some(k) = cfg.sts_keys.iter().find(|k| k.access_key_id == key_id) {
        return Ok(Key {
            account: &k.account,
            secret: &k.access_key_secret,
            sts: Some((&k.security_token, k.expires_at)),
        });
    }
    Err(api_err(
        404,
        "InvalidAccessKeyId.NotFound",
        "Specified access key is not found.",
    ))
}

/// An STS key needs its own, unexpired token. A token sent with a long-term key is ignored:
/// the simulator's metadata service hands out its own long-term pair with a token, and what
/// ECS does with such a pair is not documented (real STS keys are never long-term ones).
fn check_token(key: &Key<'_>, sent: Option<&str>, now: DateTime<Utc>) -> Result<(), ApiError> {
    let Some((token, expires_at)) = key.sts else {
        return Ok(());
    };
    let Some(sent) = sent.filter(|t| !t.is_empty()) else {
        return Err(api_err(
            400,
            "MissingSecurityToken",
            "The security token is required for an STS AccessKey.",
        ));
    };
    if !sign::signatures_equal(token, sent) {
        return Err(api_err(
            400,
            "InvalidSecurityToken.MismatchWithAccessKey",
            "The security token does not belong to the AccessKey.",
        ));
    }
    if now >= expires_at {
        return Err(api_err(
            400,
            "InvalidSecurityToken.Expired",
            "The security token has expired.",
        ));
    }
    Ok(())
}

/// `yyyy-MM-ddTHH:mm:ssZ`, within the allowed skew of the simulator's clock.
fn check_time(cfg: &SimConfig, ts: &str) -> Result<(), ApiError> {
    let Ok(t) = NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%SZ") else {
        return Err(api_err(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ));
    };
    if (cfg.clock.now() - t.and_utc()).abs() > cfg.max_clock_skew {
        return Err(api_err(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(())
}

/// Records a nonce; refused when it was used already (by either signature).
fn use_nonce(cfg: &SimConfig, st: &mut SimState, nonce: &str) -> Result<(), ApiError> {
    let now = cfg.clock.now();
    // Nonces older than the clock skew window cannot be replayed anyway: forget them.
    if st.nonces.len() > 100_000 {
        let horizon = now - cfg.max_clock_skew;
        st.nonces.retain(|_, seen| *seen >= horizon);
    }
    if st.nonces.insert(nonce.to_string(), now).is_some() {
        return Err(api_err(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        ));
    }
    Ok(())
}

fn mismatch(string_to_sign: &str) -> ApiError {
    api_err(
        400,
        "SignatureDoesNotMatch",
        format!("Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"),
    )
}

fn v1(cfg: &SimConfig, st: &mut SimState, req: &Incoming<'_>) -> Result<Authenticated, ApiError> {
    let params: Vec<(String, String)> = req.query.iter().chain(&req.form).cloned().collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for required in ["AccessKeyId", "Signature", "SignatureNonce", "Timestamp"] {
        if get(required).is_none() {
            return Err(missing(required));
        }
    }
    let key = find_key(cfg, get("AccessKeyId").unwrap_or_default())?;
    if get("SignatureMethod") != Some("HMAC-SHA1") || get("SignatureVersion") != Some("1.0") {
        return Err(api_err(
            400,
            "InvalidParameter",
            "This server accepts SignatureMethod HMAC-SHA1 with SignatureVersion 1.0.",
        ));
    }
    check_time(cfg, get("Timestamp").unwrap_or_default())?;
    let unsigned: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sts = sign::string_to_sign(req.method, &unsigned);
    let expected = sign::sign(key.secret, &sts);
    if !sign::signatures_equal(&expected, get("Signature").unwrap_or_default()) {
        return Err(mismatch(&sts));
    }
    check_token(&key, get("SecurityToken"), cfg.clock.now())?;
    use_nonce(cfg, st, get("SignatureNonce").unwrap_or_default())?;
    Ok(Authenticated {
        account: key.account.to_string(),
        params,
        signature: "v1",
    })
}

/// The headers V3 requires besides `Authorization`.
const V3_REQUIRED: [&str; 5] = [
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
];

fn v3(
    cfg: &SimConfig,
    st: &mut SimState,
    req: &Incoming<'_>,
    authorization: &str,
) -> Result<Authenticated, ApiError> {
    let sent: Vec<(&str, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let headers = sign::CanonicalHeaders::new(&sent);
    let auth = sign::parse_v3_authorization(authorization).map_err(incomplete)?;
    if auth.algorithm != sign::V3_ALGORITHM {
        // ECS also knows ACS3-HMAC-SM3 and ACS3-RSA-SHA256; the simulator verifies only this one.
        return Err(api_err(
            400,
            "InvalidSignatureMethod",
            format!(
                "The signature method {:?} is not supported here; use {}.",
                auth.algorithm,
                sign::V3_ALGORITHM
            ),
        ));
    }
    // Undocumented: the code for a missing V3 header; the one for a missing parameter is used.
    for h in V3_REQUIRED {
        if headers.get(h).is_none_or(str::is_empty) {
            return Err(missing(h));
        }
    }
    let key = find_key(cfg, &auth.credential)?;
    if let Some(id) = headers.get("x-acs-accesskey-id") {
        if id != auth.credential {
            // Undocumented: the code for an x-acs-accesskey-id other than the Credential.
            return Err(incomplete(format_args!(
                "x-acs-accesskey-id {id:?} is not the Credential's AccessKey"
            )));
        }
    }
    // Everything the signature must cover is among the client's SignedHeaders, and everything
    // listed was sent (undocumented which code the gateway answers for either).
    let signed: Vec<String> = auth
        .signed_headers
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    for name in headers.names() {
        let must = name == "host" || name == "content-type" || name.starts_with("x-acs-");
        if must && !signed.iter().any(|s| s == name) {
            return Err(incomplete(format_args!(
                "the header {name} is not in SignedHeaders"
            )));
        }
    }
    if !signed.iter().any(|s| s == "host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    if let Some(absent) = signed.iter().find(|s| headers.get(s).is_none()) {
        return Err(incomplete(format_args!(
            "SignedHeaders names {absent}, which the request does not carry"
        )));
    }
    check_time(cfg, headers.get("x-acs-date").unwrap_or_default())?;
    let payload_hash = headers.get("x-acs-content-sha256").unwrap_or_default();
    let signed_refs: Vec<&str> = signed.iter().map(String::as_str).collect();
    let canonical = sign::v3_canonical_request(
        req.method,
        "/",
        &req.query,
        &headers,
        &signed_refs,
        payload_hash,
    );
    let sts = sign::v3_string_to_sign(&canonical);
    let expected = sign::v3_sign(key.secret, &sts);
    if !sign::signatures_equal(&expected, &auth.signature.to_ascii_lowercase()) {
        return Err(mismatch(&sts));
    }
    if !payload_hash.eq_ignore_ascii_case(&sign::sha256_hex(req.body)) {
        // Undocumented: the code for a body whose hash is not the signed one.
        return Err(api_err(
            400,
            "SignatureDoesNotMatch",
            "The x-acs-content-sha256 header is not the SHA-256 of the request body.",
        ));
    }
    check_token(&key, headers.get("x-acs-security-token"), cfg.clock.now())?;
    use_nonce(
        cfg,
        st,
        headers.get("x-acs-signature-nonce").unwrap_or_default(),
    )?;
    let mut params: Vec<(String, String)> = req.query.iter().chain(&req.form).cloned().collect();
    // The headers name the action and version; they win over any such parameter.
    for (name, header) in [("Action", "x-acs-action"), ("Version", "x-acs-version")] {
        params.retain(|(k, _)| k != name);
        params.push((
            name.to_string(),
            headers.get(header).unwrap_or_default().to_string(),
        ));
    }
    Ok(Authenticated {
        account: key.account.to_string(),
        params,
        signature: "v3",
    })
}
