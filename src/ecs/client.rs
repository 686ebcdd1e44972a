//! The ECS RPC client: signs each attempt afresh, sends it the way Alibaba's SDKs do (POST with
//! every parameter in the query and an empty body), and reads answers and errors into types.
//!
//! Reads (`DescribeInstances`) are retried here, since they have no side effect. Releases
//! (`DeleteInstances`) are sent exactly once per call: their retries belong to the queue, which
//! owns the ClientToken.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::SecondsFormat;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::credentials::SharedProvider;
use super::error::{parse_time_left, EcsError, ErrorClass, InvalidRequest, TransportKind};
use super::pace::{PaceConfig, Pacer};
use super::sign;
use super::types::{
    format_ecs_time, ChargeType, Disk, Instance, InstanceStatus, PriceDetail, PriceQuote, WireDisk,
    WireInstance, WirePrice,
};
use crate::backoff::Backoff;
use crate::clock::{SharedClock, SystemClock};

/// The API version every call names.
pub const API_VERSION: &str = "2014-05-26";
/// The largest page and the largest id list ECS accepts.
pub const MAX_PAGE: usize = 100;
/// The largest page of DescribeDisks: `MaxResults` 10 to 500 (ECS-V2
/// `describe_disks_request_model.go`: "Valid values: 10 to 500").
pub const MAX_DISK_PAGE: usize = 500;
/// The largest page of DescribeDisks paged by number: `PageSize` at most 100.
pub const MAX_NUMBERED_DISK_PAGE: usize = 100;

/// Which disks a DescribeDisks call asks for: the filters left `None` are not sent. ECS ANDs
/// those sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskQuery<'a> {
    /// The disks attached to this instance.
    pub instance_id: Option<&'a str>,
    /// The system disks or the data disks (`DiskType`).
    pub kind: Option<crate::ecs::types::DiskKind>,
    /// Created after this minute (`Filter.1.Key` `CreationStartTime`; ECS takes minutes, so
    /// the seconds are dropped). Whether a disk created at that very minute is in the answer is
    /// not documented: a caller splitting a listing by time overlaps its ranges.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before this minute (`Filter.2.Key` `CreationEndTime`).
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
}

impl DiskQuery<'_> {
    /// Adds the filters set to a call's parameters.
    fn push_params(&self, params: &mut Vec<(String, String)>) {
        if let Some(id) = self.instance_id {
            params.push(("InstanceId".into(), id.to_string()));
        }
        if let Some(k) = self.kind {
            params.push(("DiskType".into(), k.as_str().to_string()));
        }
        let times = [
            (1, "CreationStartTime", self.created_after),
            (2, "CreationEndTime", self.created_before),
        ];
        for (n, key, at) in times {
            if let Some(t) = at {
                params.push((format!("Filter.{n}.Key"), key.into()));
                params.push((format!("Filter.{n}.Value"), format_ecs_time(t)));
            }
        }
    }
}

/// The most resources one TagResources or UntagResources names (`ResourceId.N`, N ≤ 50;
/// ecs-more.md 3.1).
pub const MAX_TAG_RESOURCES: usize = 50;
/// The most tags one TagResources writes (`Tag.N`) or UntagResources removes (`TagKey.N`).
pub const MAX_TAGS_PER_CALL: usize = 20;

/// Which request signature the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureVersion {
    /// RPC V1 (HMAC-SHA1): everything, the signature included, in the query.
    #[default]
    V1,
    /// ACS3-HMAC-SHA256: the API's parameters in the query, the action, version, date and nonce
    /// in `x-acs-*` headers, the signature in `Authorization`. Today's official SDKs send it.
    V3,
}

impl SignatureVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureVersion::V1 => "v1",
            SignatureVersion::V3 => "v3",
        }
    }
}

impl std::fmt::Display for SignatureVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SignatureVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" => Ok(SignatureVersion::V1),
            "v3" => Ok(SignatureVersion::V3),
            other => Err(format!(
                "unknown signature {other:?}: use v1 (HMAC-SHA1) or v3 (ACS3-HMAC-SHA256)"
            )),
        }
    }
}

/// How the client reaches ECS.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Replaces `https://ecs.<region>.aliyuncs.com/` for every region (plain http allowed).
    pub endpoint: Option<Url>,
    pub connect_timeout: Duration,
    /// The whole call, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Attempts of a read, the first included.
    pub read_attempts: u32,
    /// Backoff between read attempts.
    pub read_backoff: Backoff,
    /// A read gives up once this much time has passed since its first attempt.
    pub read_deadline: Duration,
    /// Seed of the jitter's random source.
    pub seed: u64,
    /// The request signature to send.
    pub signature: SignatureVersion,
    /// How calls are paced per (region, API); each account's client has its own pacer.
    pub pace: PaceConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            read_attempts: 4,
            read_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            read_deadline: Duration::from_secs(60),
            seed: 0x6563_735f_6a61_6e69,
            signature: SignatureVersion::V1,
            pace: PaceConfig::default(),
        }
    }
}

/// Server-side filters of `DescribeInstances`. All given filters must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeFilter {
    pub status: Option<InstanceStatus>,
    pub charge_type: Option<ChargeType>,
    /// `Tag.N.Key` / `Tag.N.Value`, N = 1..20. An empty value filters on the key alone.
    pub tags: Vec<(String, String)>,
    /// At most 100 ids per call; [`EcsClient::describe_instances`] splits longer lists.
    pub instance_ids: Option<Vec<String>>,
}

/// One page of `DescribeInstances`.
#[derive(Debug, Clone)]
pub struct DescribePage {
    pub instances: Vec<Instance>,
    pub next_token: Option<String>,
    /// How many instances the listing has in all (with `PageNumber` paging).
    pub total_count: Option<usize>,
    pub request_id: String,
}

/// How a `DescribeInstances` page is asked for.
#[derive(Debug, Clone, Copy)]
enum Paging<'a> {
    /// `NextToken`/`MaxResults`: in order, one page after the other.
    Token(Option<&'a str>),
    /// `PageNumber`/`PageSize`: any page, with the `TotalCount`, so pages can be fetched at once.
    Number(usize),
}

/// One `DeleteInstances` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub region: String,
    pub instance_ids: Vec<String>,
    pub force: bool,
    pub terminate_subscription: bool,
    pub dry_run: bool,
    pub client_token: String,
}

/// A successful `DeleteInstances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteAnswer {
    pub request_id: String,
}

/// What one call looked like, for metrics.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub action: &'static str,
    /// `OK`, an ECS code, or a local `Janitor.*` code.
    pub code: String,
    pub attempt: u32,
}

/// Receives a record of every HTTP attempt.
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// The signed ECS client. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct EcsClient {
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    creds: SharedProvider,
    clock: SharedClock,
    rng: Arc<Mutex<StdRng>>,
    observer: Option<CallObserver>,
    pacer: Pacer,
}

impl std::fmt::Debug for EcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsClient")
            .field("cfg", &self.cfg)
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeBody {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    next_token: Option<String>,
    /// A number or a string (the CLI accepts both); meaningful with PageNumber paging only.
    #[serde(default)]
    total_count: Option<serde_json::Value>,
    #[serde(default)]
    instances: InstancesBody,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InstancesBody {
    #[serde(default)]
    instance: Vec<WireInstance>,
}

/// One `CreateSnapshot`: the disk, the token stored before the first attempt, how long ECS keeps
/// the snapshot, and its name, description and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub disk_id: String,
    pub client_token: String,
    pub retention_days: u32,
    /// 2–128 characters, starting with a letter, not `auto`.
    pub name: String,
    pub description: String,
    pub tags: Vec<(String, String)>,
}

/// What one `DescribePrice` prices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PriceRequest {
    /// `ResourceType=instance`: the instance type's own price is the `instanceType` line of the
    /// breakdown.
    Instance { instance_type: String },
    /// `ResourceType=disk` (pay-as-you-go only): one disk of a category and size.
    Disk { category: String, size_gb: u32 },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DisksBody<'a> {
    request_id: String,
    next_token: Option<String>,
    /// A number or a string, and meaningful only when paged by number: read by
    /// [`count_of`] when wanted, never checked otherwise.
    total_count: Option<serde_json::Value>,
    #[serde(borrow)]
    disks: DiskList<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DiskList<'a> {
    #[serde(borrow)]
    disk: Vec<WireDisk<'a>>,
}

/// What a DescribeDisks answer says besides its disks.
struct DisksPaging {
    request_id: String,
    next_token: Option<String>,
    total_count: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct PriceBody {
    request_id: String,
    price_info: PriceInfoBody,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct PriceInfoBody {
    price: Option<WirePrice>,
}

/// A `TotalCount`, which ECS answers as a number or as a string.
fn count_of(v: serde_json::Value) -> Option<usize> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Which disks of a page to keep, by the instance each is attached to.
pub type KeepDisk<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// A DescribeDisks answer's disks that `keep` picks, and the rest of the answer (its paging).
/// The others are read without a copy of their text, and without being checked.
fn disks_answer(
    status: u16,
    body: &[u8],
    keep: KeepDisk<'_>,
) -> Result<(Vec<Disk>, DisksPaging), EcsError> {
    const ACTION: &str = "DescribeDisks";
    let b: DisksBody<'_> = decode(ACTION, status, body)?;
    let disks = b
        .disks
        .disk
        .into_iter()
        .filter(|d| keep(&d.instance_id))
        .map(WireDisk::into_disk)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EcsError::Decode {
            action: ACTION,
            status,
            request_id: b.request_id.clone(),
            detail: e.to_string(),
        })?;
    let paging = DisksPaging {
        request_id: b.request_id,
        next_token: b.next_token,
        total_count: b.total_count,
    };
    Ok((disks, paging))
}

fn decode<'a, T: Deserialize<'a>>(
    action: &'static str,
    status: u16,
    body: &'a [u8],
) -> Result<T, EcsError> {
    serde_json::from_slice(body).map_err(|e| EcsError::Decode {
        action,
        status,
        request_id: String::new(),
        detail: e.to_string(),
    })
}

/// Reads `PriceInfo.Price` into millionths; an answer without a currency or with a price that is
/// not a finite, non-negative number is a decode error.
fn quote(action: &'static str, status: u16, body: &[u8]) -> Result<PriceQuote, EcsError> {
    let b: PriceBody = decode(action, status, body)?;
    let bad = |detail: String| EcsError::Decode {
        action,
        status,
        request_id: b.request_id.clone(),
        detail,
    };
    let p = b
        .price_info
        .price
        .clone()
        .ok_or_else(|| bad("no PriceInfo.Price in the answer".into()))?;
    if p.currency.is_empty() {
        return Err(bad("PriceInfo.Price.Currency is empty".into()));
    }
    let original_micros = crate::money::micros_of(p.original_price)
        .ok_or_else(|| bad(format!("OriginalPrice {} is not a price", p.original_price)))?;
    let mut details = Vec::new();
    for d in p.detail_infos.detail_info {
        let micros = crate::money::micros_of(d.original_price).ok_or_else(|| {
            bad(format!(
                "OriginalPrice {} of {} is not a price",
                d.original_price, d.resource
            ))
        })?;
        details.push(PriceDetail {
            resource: d.resource,
            original_micros: micros,
        });
    }
    Ok(PriceQuote {
        currency: p.currency,
        original_micros,
        details,
        request_id: b.request_id.clone(),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// ECS echoes the string to sign in `SignatureDoesNotMatch`, and it holds the security token:
/// keep the explanation, drop the echo, and blank the token wherever else it appears.
fn redact_message(message: String, token: Option<&super::credentials::Secret>) -> String {
    const ECHO: &str = "server string to sign is:";
    let mut m = match message.find(ECHO) {
        Some(at) => format!("{}<omitted>", &message[..at + ECHO.len()]),
        None => message,
    };
    if let Some(t) = token.map(|t| t.expose()).filter(|t| !t.is_empty()) {
        for form in [t.to_string(), sign::percent_encode(t)] {
            m = m.replace(&form, "<redacted>");
        }
    }
    m
}

/// What went wrong on the wire, naming the host and the cause:
/// "cannot connect to ecs.cn-hangzhou.aliyuncs.com:443: connection refused",
/// "cannot resolve ecs.cn-hangzhuo.aliyuncs.com: ...", "no complete answer from HOST: ...".
fn transport_detail(kind: TransportKind, target: &str, e: reqwest::Error) -> String {
    use std::error::Error as _;
    let timed_out = e.is_timeout();
    // reqwest's Display includes the URL, which carries the security token: strip it.
    let e = e.without_url();
    let mut dns = false;
    let mut io_kind = None;
    let mut deepest = e.to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        dns |= text.starts_with("dns error");
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        if !text.is_empty() {
            deepest = text;
        }
        cur = c.source();
    }
    let cause = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset".to_string(),
        _ if timed_out => "timed out".to_string(),
        _ => deepest,
    };
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    match kind {
        TransportKind::Connect if dns => format!("cannot resolve {host}: {cause}"),
        TransportKind::Connect => format!("cannot connect to {target}: {cause}"),
        TransportKind::Timeout => format!("no complete answer from {target}: {cause}"),
        TransportKind::LostAnswer => format!("the answer from {target} was lost: {cause}"),
    }
}

/// Checks a region id before it becomes part of a host name.
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// Checks a ClientToken as ECS does: 1 to 64 ASCII characters.
pub fn check_client_token(token: &str) -> Result<(), InvalidRequest> {
    let len = token.chars().count();
    let non_ascii = !token.is_ascii();
    if len == 0 || len > 64 || non_ascii {
        return Err(InvalidRequest::ClientToken { len, non_ascii });
    }
    Ok(())
}

impl EcsClient {
    /// A client with the system clock.
    pub fn new(cfg: ClientConfig, creds: SharedProvider) -> Result<Self, reqwest::Error> {
        Self::with_clock(cfg, creds, Arc::new(SystemClock))
    }

    pub fn with_clock(
        cfg: ClientConfig,
        creds: SharedProvider,
        clock: SharedClock,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(32)
            .user_agent(concat!("ecs-janitor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(EcsClient {
            http,
            pacer: Pacer::new(cfg.pace.clone()),
            cfg: Arc::new(cfg),
            creds,
            clock,
            rng: Arc::new(Mutex::new(rng)),
            observer: None,
        })
    }

    /// Reports every attempt to `observer` (metrics).
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The same client (settings, connection pool, observer) signing as `creds`: another
    /// account's client.
    pub fn with_credentials(&self, creds: SharedProvider) -> EcsClient {
        EcsClient {
            creds,
            // ECS throttles each account on its own.
            pacer: Pacer::new(self.cfg.pace.clone()),
            ..self.clone()
        }
    }

    /// This client's pacer (one per account).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn endpoint(&self, region: &str) -> Result<Url, EcsError> {
        if let Some(u) = &self.cfg.endpoint {
            return Ok(u.clone());
        }
        Url::parse(&format!("https://ecs.{region}.aliyuncs.com/")).map_err(|_| EcsError::Invalid {
            action: "request",
            reason: InvalidRequest::Region(region.to_string()),
        })
    }

    /// Every instance matching `filter` in `region`, paging with NextToken/MaxResults=100 until
    /// the returned NextToken is empty. Id lists longer than 100 are split into several queries.
    pub async fn describe_instances(
        &self,
        region: &str,
        filter: &DescribeFilter,
    ) -> Result<Vec<Instance>, EcsError> {
        let chunks: Vec<Option<Vec<String>>> = match &filter.instance_ids {
            None => vec![None],
            Some(ids) if ids.is_empty() => return Ok(Vec::new()),
            Some(ids) => ids.chunks(MAX_PAGE).map(|c| Some(c.to_vec())).collect(),
        };
        let mut out = Vec::new();
        for ids in chunks {
            let f = DescribeFilter {
                instance_ids: ids,
                ..filter.clone()
            };
            let mut token: Option<String> = None;
            loop {
                let page = self.describe_page(region, &f, token.as_deref()).await?;
                out.extend(page.instances);
                match page.next_token {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// Every instance `filter` selects in `region`, each call holding a permit of `slots`
    /// (which other listings of the region may share): a first `PageNumber` page gives the
    /// `TotalCount`, then the other pages are asked for together, as permits allow. When the
    /// answer has no `TotalCount` (or ids are listed), pages are fetched in `NextToken` order
    /// instead, one at a time under one permit. An instance two pages both show is kept once;
    /// when a later page's `TotalCount` shows the fleet moved between pages (so offsets shifted
    /// and a page may have skipped instances), the region is listed again in `NextToken` order.
    pub async fn describe_instances_concurrently(
        &self,
        region: &str,
        filter: &DescribeFilter,
        slots: &tokio::sync::Semaphore,
    ) -> Result<Vec<Instance>, EcsError> {
        use futures::{StreamExt, TryStreamExt};
        let by_cursor = || async {
            let _slot = slots.acquire().await;
            self.describe_instances(region, filter).await
        };
        if filter.instance_ids.is_some() {
            return by_cursor().await;
        }
        let page = |n| async move {
            let _slot = slots.acquire().await;
            self.describe_page_with(region, filter, Paging::Number(n))
                .await
        };
        let first = page(1).await?;
        let Some(total) = first.total_count else {
            return by_cursor().await;
        };
        let pages = total.div_ceil(MAX_PAGE).max(1);
        // The permits bound the calls; this bounds the pages waiting for one (the semaphore
        // serves waiters in order, so a region's later listing waits behind these few) or
        // answered ahead of one still on its way, kept to be put in order.
        const AHEAD: usize = 24;
        let rest: Vec<DescribePage> = futures::stream::iter(2..=pages)
            .map(page)
            .buffered(AHEAD)
            .try_collect()
            .await?;
        // Pages by number are offsets: when the fleet moved between them (an instance ECS was
        // releasing stopped being listed), later pages shifted and may have skipped instances.
        // A page whose TotalCount differs shows it; the cursor (NextToken) is not shifted by
        // instances leaving, so the region is listed again that way.
        if let Some(moved) = rest
            .iter()
            .filter_map(|p| p.total_count)
            .find(|t| *t != total)
        {
            tracing::debug!(
                region,
                first = total,
                later = moved,
                "the fleet moved while it was listed by page number; listing again by NextToken"
            );
            return by_cursor().await;
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(total);
        for i in first
            .instances
            .into_iter()
            .chain(rest.into_iter().flat_map(|p| p.instances))
        {
            if seen.insert(i.instance_id.clone()) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// One page of `DescribeInstances` (at most 100 instances), retried on retryable errors.
    pub async fn describe_page(
        &self,
        region: &str,
        filter: &DescribeFilter,
        next_token: Option<&str>,
    ) -> Result<DescribePage, EcsError> {
        self.describe_page_with(region, filter, Paging::Token(next_token))
            .await
    }

    async fn describe_page_with(
        &self,
        region: &str,
        filter: &DescribeFilter,
        paging: Paging<'_>,
    ) -> Result<DescribePage, EcsError> {
        const ACTION: &str = "DescribeInstances";
        let invalid = |reason| EcsError::Invalid {
            action: ACTION,
            reason,
        };
        let mut params: Vec<(String, String)> = match paging {
            Paging::Token(next_token) => {
                let mut p = vec![("MaxResults".into(), MAX_PAGE.to_string())];
                if let Some(t) = next_token {
                    p.push(("NextToken".into(), t.to_string()));
                }
                p
            }
            Paging::Number(n) => vec![
                ("PageNumber".into(), n.to_string()),
                ("PageSize".into(), MAX_PAGE.to_string()),
            ],
        };
        if let Some(s) = filter.status {
            params.push(("Status".into(), s.as_str().into()));
        }
        if let Some(c) = filter.charge_type {
            params.push(("InstanceChargeType".into(), c.as_str().into()));
        }
        if filter.tags.len() > 20 {
            return Err(invalid(InvalidRequest::TooManyTags(filter.tags.len())));
        }
        for (i, (k, v)) in filter.tags.iter().enumerate() {
            params.push((format!("Tag.{}.Key", i + 1), k.clone()));
            if !v.is_empty() {
                params.push((format!("Tag.{}.Value", i + 1), v.clone()));
            }
        }
        if let Some(ids) = &filter.instance_ids {
            if ids.len() > MAX_PAGE {
                return Err(invalid(InvalidRequest::TooManyIdsToDescribe(ids.len())));
            }
            let json = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
            params.push(("InstanceIds".into(), json));
        }

        self.read(
            ACTION,
            region,
            &params,
            |status, body| match serde_json::from_slice::<DescribeBody>(body) {
                Ok(b) => Self::page_from(b, status),
                Err(e) => Err(EcsError::Decode {
                    action: ACTION,
                    status,
                    request_id: String::new(),
                    detail: e.to_string(),
                }),
            },
        )
        .await
    }

    /// Sends a read (an action without side effects, or a write whose repetition has no further
    /// effect, as tagging) and parses its answer with `parse`, retried
    /// on retryable errors within the read's attempts and deadline, with the seeded backoff.
    async fn read<T>(
        &self,
        action: &'static str,
        region: &str,
        params: &[(String, String)],
        parse: impl Fn(u16, &[u8]) -> Result<T, EcsError>,
    ) -> Result<T, EcsError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.call(action, region, params, attempt).await {
                Ok((status, body)) => match parse(status, &body) {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let elapsed = started.elapsed();
            let give_up = err.class() != ErrorClass::Retryable
                || attempt >= self.cfg.read_attempts
                || elapsed >= self.cfg.read_deadline;
            if give_up {
                return Err(err);
            }
            // At most the backoff's cap (a throttling TimeLeft included), and never past the
            // read's deadline.
            let delay = {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                self.cfg
                    .read_backoff
                    .delay(attempt - 1, err.retry_after(), &mut *rng)
            }
            .min(self.cfg.read_deadline.saturating_sub(elapsed));
            tracing::debug!(
                action,
                region,
                attempt,
                code = err.code(),
                ?delay,
                "retrying read"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The disks of `region` (all of them, or those attached to `instance_id`), paging with
    /// NextToken/MaxResults=500 until the returned NextToken is empty.
    pub async fn describe_disks(
        &self,
        region: &str,
        instance_id: Option<&str>,
    ) -> Result<Vec<Disk>, EcsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let query = DiskQuery {
            instance_id,
            ..DiskQuery::default()
        };
        loop {
            let (disks, next) = self
                .describe_disks_page(region, &query, token.as_deref())
                .await?;
            out.extend(disks);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(out)
    }

    /// One page of DescribeDisks (at most 500 disks) of the disks `query` asks for, and the
    /// next page's token, retried on retryable errors.
    pub async fn describe_disks_page(
        &self,
        region: &str,
        query: &DiskQuery<'_>,
        next_token: Option<&str>,
    ) -> Result<(Vec<Disk>, Option<String>), EcsError> {
        self.describe_disks_page_of(region, query, next_token, &|_| true)
            .await
    }

    /// The same page, of it only the disks `keep` picks by their instance (pricing's listing
    /// keeps the disks of the instances it prices, of every disk of a region).
    pub async fn describe_disks_page_of(
        &self,
        region: &str,
        query: &DiskQuery<'_>,
        next_token: Option<&str>,
        keep: KeepDisk<'_>,
    ) -> Result<(Vec<Disk>, Option<String>), EcsError> {
        const ACTION: &str = "DescribeDisks";
        let mut params: Vec<(String, String)> =
            vec![("MaxResults".into(), MAX_DISK_PAGE.to_string())];
        query.push_params(&mut params);
        if let Some(t) = next_token {
            params.push(("NextToken".into(), t.to_string()));
        }
        self.read(ACTION, region, &params, |status, body| {
            let (disks, b) = disks_answer(status, body, keep)?;
            Ok((disks, b.next_token.filter(|t| !t.is_empty())))
        })
        .await
    }

    /// The first page (of [`MAX_NUMBERED_DISK_PAGE`]) of the disks `query` matches in
    /// `region`, and how many it matches in all: DescribeDisks paged by number, the paging whose
    /// `TotalCount` is valid (DescribeDisks' API reference). Retried on retryable errors.
    pub async fn count_disks(
        &self,
        region: &str,
        query: &DiskQuery<'_>,
    ) -> Result<(Vec<Disk>, usize), EcsError> {
        const ACTION: &str = "DescribeDisks";
        let mut params: Vec<(String, String)> = vec![
            ("PageNumber".into(), "1".into()),
            ("PageSize".into(), MAX_NUMBERED_DISK_PAGE.to_string()),
        ];
        query.push_params(&mut params);
        self.read(ACTION, region, &params, |status, body| {
            let (disks, b) = disks_answer(status, body, &|_| true)?;
            let total = b
                .total_count
                .and_then(count_of)
                .ok_or_else(|| EcsError::Decode {
                    action: ACTION,
                    status,
                    request_id: b.request_id,
                    detail: "the answer has no TotalCount, or not a count".into(),
                })?;
            Ok((disks, total))
        })
        .await
    }

    /// `CreateSnapshot` of one disk with `ClientToken` `token` (stored by the caller before the
    /// first attempt: the same token answers the same SnapshotId), kept `retention_days` and
    /// tagged with `tags`. Retried on retryable errors, which the token makes safe.
    pub async fn create_snapshot(
        &self,
        region: &str,
        req: &SnapshotRequest,
    ) -> Result<String, EcsError> {
        const ACTION: &str = "CreateSnapshot";
        let mut params: Vec<(String, String)> = vec![
            ("DiskId".into(), req.disk_id.clone()),
            ("ClientToken".into(), req.client_token.clone()),
            ("RetentionDays".into(), req.retention_days.to_string()),
            ("SnapshotName".into(), req.name.clone()),
            ("Description".into(), req.description.clone()),
        ];
        for (n, (k, v)) in req.tags.iter().enumerate() {
            params.push((format!("Tag.{}.Key", n + 1), k.clone()));
            params.push((format!("Tag.{}.Value", n + 1), v.clone()));
        }
        self.read(ACTION, region, &params, |status, body| {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Body {
                snapshot_id: String,
            }
            let b: Body = decode(ACTION, status, body)?;
            Ok(b.snapshot_id)
        })
        .await
    }

    /// The status of up to 100 snapshots (`DescribeSnapshots` by `SnapshotIds`): id →
    /// `progressing`, `accomplished` or `failed`. A snapshot that does not exist is absent.
    pub async fn describe_snapshots(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, EcsError> {
        const ACTION: &str = "DescribeSnapshots";
        let params: Vec<(String, String)> = vec![
            (
                "SnapshotIds".into(),
                serde_json::to_string(&ids[..ids.len().min(100)]).unwrap_or_default(),
            ),
            ("PageSize".into(), "100".into()),
        ];
        self.read(ACTION, region, &params, |status, body| {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Snap {
                snapshot_id: String,
                status: String,
            }
            #[derive(serde::Deserialize, Default)]
            #[serde(rename_all = "PascalCase")]
            struct List {
                #[serde(default)]
                snapshot: Vec<Snap>,
            }
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Body {
                #[serde(default)]
                snapshots: List,
            }
            let b: Body = decode(ACTION, status, body)?;
            Ok(b.snapshots
                .snapshot
                .into_iter()
                .map(|s| (s.snapshot_id, s.status))
                .collect())
        })
        .await
    }

    /// The pay-as-you-go list price of one configuration (`DescribePrice`, price unit an hour).
    pub async fn describe_price(
        &self,
        region: &str,
        req: &PriceRequest,
    ) -> Result<PriceQuote, EcsError> {
        const ACTION: &str = "DescribePrice";
        let mut params: Vec<(String, String)> = vec![("PriceUnit".into(), "Hour".into())];
        match req {
            PriceRequest::Instance { instance_type } => {
                params.push(("ResourceType".into(), "instance".into()));
                params.push(("InstanceType".into(), instance_type.clone()));
            }
            PriceRequest::Disk { category, size_gb } => {
                params.push(("ResourceType".into(), "disk".into()));
                params.push(("DataDisk.1.Category".into(), category.clone()));
                params.push(("DataDisk.1.Size".into(), size_gb.to_string()));
            }
        }
        self.read(ACTION, region, &params, |status, body| {
            quote(ACTION, status, body)
        })
        .await
    }

    /// What renewing the subscription `instance_id` for one month would cost at list price
    /// (`DescribeRenewalPrice` with only its required parameters: one month).
    pub async fn describe_renewal_price(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<PriceQuote, EcsError> {
        const ACTION: &str = "DescribeRenewalPrice";
        let params: Vec<(String, String)> = vec![
            ("ResourceId".into(), instance_id.to_string()),
            ("ResourceType".into(), "instance".into()),
        ];
        self.read(ACTION, region, &params, |status, body| {
            quote(ACTION, status, body)
        })
        .await
    }

    /// Tags the instances `ids` of `region` with `tags` (TagResources, `ResourceType=instance`),
    /// overwriting keys they already hold: one call per 50 ids and 20 tags. Setting a tag twice
    /// has the effect of setting it once, so each call is retried as reads are. Returns each
    /// call's RequestId; stops at the first call refused (the calls before it took effect).
    pub async fn tag_resources(
        &self,
        region: &str,
        ids: &[String],
        tags: &[(String, String)],
    ) -> Result<Vec<String>, EcsError> {
        let items: Vec<Vec<(String, String)>> = tags
            .chunks(MAX_TAGS_PER_CALL)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .flat_map(|(i, (k, v))| {
                        [
                            (format!("Tag.{}.Key", i + 1), k.clone()),
                            (format!("Tag.{}.Value", i + 1), v.clone()),
                        ]
                    })
                    .collect()
            })
            .collect();
        self.tag_calls("TagResources", "tag", region, ids, items)
            .await
    }

    /// Removes the tags `keys` from the instances `ids` of `region` (UntagResources,
    /// `ResourceType=instance`): one call per 50 ids and 20 keys, retried as reads are (removing
    /// a tag twice removes it once). Keys an instance does not hold are no error.
    pub async fn untag_resources(
        &self,
        region: &str,
        ids: &[String],
        keys: &[String],
    ) -> Result<Vec<String>, EcsError> {
        let items: Vec<Vec<(String, String)>> = keys
            .chunks(MAX_TAGS_PER_CALL)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (format!("TagKey.{}", i + 1), k.clone()))
                    .collect()
            })
            .collect();
        self.tag_calls("UntagResources", "tag key", region, ids, items)
            .await
    }

    /// One call of `action` per 50 of `ids` and per item list (its own `Tag.N`/`TagKey.N`).
    async fn tag_calls(
        &self,
        action: &'static str,
        what: &'static str,
        region: &str,
        ids: &[String],
        items: Vec<Vec<(String, String)>>,
    ) -> Result<Vec<String>, EcsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if items.is_empty() {
            // UntagResources without TagKey.N removes nothing, or with All=true everything: never
            // sent by mistake.
            return Err(EcsError::Invalid {
                action,
                reason: InvalidRequest::NothingToTag { action, what },
            });
        }
        let mut request_ids = Vec::new();
        for chunk in ids.chunks(MAX_TAG_RESOURCES) {
            for item in &items {
                let mut params: Vec<(String, String)> =
                    vec![("ResourceType".into(), "instance".into())];
                params.extend(
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, id)| (format!("ResourceId.{}", i + 1), id.clone())),
                );
                params.extend(item.iter().cloned());
                let rid = self
                    .read(action, region, &params, |status, body| {
                        decode::<ErrorBody>(action, status, body).map(|b| b.request_id)
                    })
                    .await?;
                request_ids.push(rid);
            }
        }
        Ok(request_ids)
    }

    fn page_from(b: DescribeBody, status: u16) -> Result<DescribePage, EcsError> {
        let request_id = b.request_id;
        let instances = b
            .instances
            .instance
            .into_iter()
            .map(WireInstance::into_instance)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EcsError::Decode {
                action: "DescribeInstances",
                status,
                request_id: request_id.clone(),
                detail: e.to_string(),
            })?;
        let total_count = b.total_count.and_then(count_of);
        Ok(DescribePage {
            instances,
            next_token: b.next_token.filter(|t| !t.is_empty()),
            total_count,
            request_id,
        })
    }

    /// Sends one `DeleteInstances`, once. The caller retries, reusing the same ClientToken.
    pub async fn delete_instances(&self, req: &DeleteRequest) -> Result<DeleteAnswer, EcsError> {
        let answer = self.delete_instances_after(req, || async { true }).await?;
        // Admitted unconditionally, so an answer is always there.
        answer.ok_or(EcsError::Invalid {
            action: "DeleteInstances",
            reason: InvalidRequest::InstanceCount(0),
        })
    }

    /// `DeleteInstances`, sent only if `admit` (run once the pacer gives the call its turn, so
    /// a last check made then holds) answers true; `None` when it did not.
    pub async fn delete_instances_after<F, Fut>(
        &self,
        req: &DeleteRequest,
        admit: F,
    ) -> Result<Option<DeleteAnswer>, EcsError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        const ACTION: &str = "DeleteInstances";
        let invalid = |reason| EcsError::Invalid {
            action: ACTION,
            reason,
        };
        let n = req.instance_ids.len();
        if n == 0 || n > MAX_PAGE {
            return Err(invalid(InvalidRequest::InstanceCount(n)));
        }
        check_client_token(&req.client_token).map_err(invalid)?;
        let mut params: Vec<(String, String)> = req
            .instance_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("InstanceId.{}", i + 1), id.clone()))
            .collect();
        params.push(("Force".into(), req.force.to_string()));
        params.push((
            "TerminateSubscription".into(),
            req.terminate_subscription.to_string(),
        ));
        if req.dry_run {
            params.push(("DryRun".into(), "true".into()));
        }
        params.push(("ClientToken".into(), req.client_token.clone()));
        self.pacer.wait(&req.region, ACTION).await;
        if !admit().await {
            return Ok(None);
        }
        let (status, body) = self.send(ACTION, &req.region, &params, 1).await?;
        let b: ErrorBody = serde_json::from_slice(&body).map_err(|e| EcsError::Decode {
            action: ACTION,
            status,
            request_id: String::new(),
            detail: e.to_string(),
        })?;
        Ok(Some(DeleteAnswer {
            request_id: b.request_id,
        }))
    }

    /// Sends any action once, unchecked and unretried, and returns the answer's JSON. For tools
    /// and tests that need requests the typed methods refuse to build.
    pub async fn call_action(
        &self,
        action: &'static str,
        region: &str,
        params: &[(String, String)],
    ) -> Result<serde_json::Value, EcsError> {
        let (status, body) = self.call(action, region, params, 1).await?;
        serde_json::from_slice(&body).map_err(|e| EcsError::Decode {
            action,
            status,
            request_id: String::new(),
            detail: e.to_string(),
        })
    }

    /// Waits for the call's turn under the pacer, then signs and sends one attempt. Returns the
    /// status and body of a 2xx answer.
    async fn call(
        &self,
        action: &'static str,
        region: &str,
        api_params: &[(String, String)],
        attempt: u32,
    ) -> Result<(u16, bytes::Bytes), EcsError> {
        self.pacer.wait(region, action).await;
        self.send(action, region, api_params, attempt).await
    }

    /// Signs and sends one attempt, already paced, and tells the pacer how ECS answered.
    async fn send(
        &self,
        action: &'static str,
        region: &str,
        api_params: &[(String, String)],
        attempt: u32,
    ) -> Result<(u16, bytes::Bytes), EcsError> {
        let span = tracing::debug_span!(
            "ecs_call",
            action,
            region,
            attempt,
            code = tracing::field::Empty,
            request_id = tracing::field::Empty
        );
        let result = tracing::Instrument::instrument(
            self.call_inner(action, region, api_params),
            span.clone(),
        )
        .await;
        match &result {
            Ok((_, body)) => {
                // The RequestId of a success sits in the body; a cheap look without a full parse.
                let rid = serde_json::from_slice::<ErrorBody>(body)
                    .map(|b| b.request_id)
                    .unwrap_or_default();
                span.record("code", "OK");
                span.record("request_id", rid.as_str());
                tracing::debug!(parent: &span, "answered");
            }
            Err(e) => {
                span.record("code", e.code());
                if let Some(r) = e.request_id() {
                    span.record("request_id", r);
                }
                tracing::debug!(parent: &span, error = %e, "failed");
            }
        }
        match &result {
            Err(e) if e.is_throttling() => {
                self.pacer
                    .throttled(region, action, e.retry_after(), self.clock.now())
            }
            Err(_) => {}
            Ok(_) => self.pacer.succeeded(region, action),
        }
        if let Some(obs) = &self.observer {
            let code = match &result {
                Ok(_) => "OK".to_string(),
                Err(e) => e.code().to_string(),
            };
            obs(&CallRecord {
                action,
                code,
                attempt,
            });
        }
        result
    }

    /// Every parameter of a V1 request, `Signature` last.
    fn sign_v1(
        &self,
        action: &str,
        region: &str,
        creds: &super::credentials::Credentials,
        api_params: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = Vec::with_capacity(api_params.len() + 12);
        params.push(("Action".into(), action.into()));
        params.push(("Version".into(), API_VERSION.into()));
        params.push(("Format".into(), "JSON".into()));
        params.push(("RegionId".into(), region.into()));
        params.push(("AccessKeyId".into(), creds.access_key_id.clone()));
        params.push(("SignatureMethod".into(), "HMAC-SHA1".into()));
        params.push(("SignatureVersion".into(), "1.0".into()));
        params.push((
            "SignatureNonce".into(),
            uuid::Uuid::new_v4().hyphenated().to_string(),
        ));
        params.push((
            "Timestamp".into(),
            self.clock.now().to_rfc3339_opts(SecondsFormat::Secs, true),
        ));
        if let Some(t) = &creds.security_token {
            params.push(("SecurityToken".into(), t.expose().to_string()));
        }
        params.extend(api_params.iter().cloned());
        let signature = sign::sign(
            creds.access_key_secret.expose(),
            &sign::string_to_sign("POST", &params),
        );
        params.push(("Signature".into(), signature));
        params
    }

    /// The headers of a V3 request (`POST`, empty body) to `url` with `query`, `Authorization`
    /// included. Every header sent besides reqwest's own is signed.
    fn sign_v3(
        &self,
        action: &str,
        url: &Url,
        creds: &super::credentials::Credentials,
        query: &[(String, String)],
    ) -> Vec<(&'static str, String)> {
        // What reqwest sends as Host: the port only when it is not the scheme's default.
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut headers: Vec<(&'static str, String)> = vec![
            ("host", host),
            ("x-acs-action", action.to_string()),
            ("x-acs-version", API_VERSION.to_string()),
            (
                "x-acs-date",
                self.clock.now().to_rfc3339_opts(SecondsFormat::Secs, true),
            ),
            (
                "x-acs-signature-nonce",
                uuid::Uuid::new_v4().simple().to_string(),
            ),
            ("x-acs-content-sha256", sign::EMPTY_BODY_SHA256.to_string()),
        ];
        if let Some(t) = &creds.security_token {
            headers.push(("x-acs-accesskey-id", creds.access_key_id.clone()));
            headers.push(("x-acs-security-token", t.expose().to_string()));
        }
        let canonical = sign::CanonicalHeaders::new(&headers);
        let names: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        let request = sign::v3_canonical_request(
            "POST",
            "/",
            query,
            &canonical,
            &names,
            sign::EMPTY_BODY_SHA256,
        );
        let signature = sign::v3_sign(
            creds.access_key_secret.expose(),
            &sign::v3_string_to_sign(&request),
        );
        headers.push((
            "authorization",
            sign::v3_authorization(&creds.access_key_id, &names, &signature),
        ));
        headers
    }

    async fn call_inner(
        &self,
        action: &'static str,
        region: &str,
        api_params: &[(String, String)],
    ) -> Result<(u16, bytes::Bytes), EcsError> {
        if !valid_region(region) {
            return Err(EcsError::Invalid {
                action,
                reason: InvalidRequest::Region(region.to_string()),
            });
        }
        let creds = self.creds.credentials().await?;
        let mut url = self.endpoint(region)?;
        let mut extra_headers: Vec<(&'static str, String)> = Vec::new();
        match self.cfg.signature {
            SignatureVersion::V1 => {
                let params = self.sign_v1(action, region, &creds, api_params);
                let query: Vec<String> = params
                    .iter()
                    .map(|(k, v)| {
                        format!("{}={}", sign::percent_encode(k), sign::percent_encode(v))
                    })
                    .collect();
                url.set_query(Some(&query.join("&")));
            }
            SignatureVersion::V3 => {
                let mut query: Vec<(String, String)> = Vec::with_capacity(api_params.len() + 1);
                query.push(("RegionId".into(), region.into()));
                query.extend(api_params.iter().cloned());
                url.set_query(Some(&sign::canonical_query(&query)));
                extra_headers = self.sign_v3(action, &url, &creds, &query);
            }
        }
        // Named in errors: the URL itself carries the security token, so never the whole of it.
        let target = format!(
            "{}:{}",
            url.host_str().unwrap_or("?"),
            url.port_or_known_default().unwrap_or(0)
        );
        let transport = |kind, e: reqwest::Error| EcsError::Transport {
            action,
            kind,
            detail: transport_detail(kind, &target, e),
        };
        let mut request = self.http.post(url);
        for (k, v) in extra_headers {
            request = request.header(k, v);
        }
        let resp = request.send().await.map_err(|e| {
            let kind = if e.is_connect() {
                TransportKind::Connect
            } else if e.is_timeout() {
                TransportKind::Timeout
            } else {
                TransportKind::LostAnswer
            };
            transport(kind, e)
        })?;
        let status = resp.status().as_u16();
        let retry_after = ["x-ratelimit-user-api", "x-ratelimit-user"]
            .iter()
            .filter_map(|h| resp.headers().get(*h))
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_time_left);
        let body = resp.bytes().await.map_err(|e| {
            let kind = if e.is_timeout() {
                TransportKind::Timeout
            } else {
                TransportKind::LostAnswer
            };
            transport(kind, e)
        })?;
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        let err: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        let message = redact_message(err.message, creds.security_token.as_ref());
        let code = if err.code.is_empty() {
            // No ECS error document: a proxy or gateway answered. The status becomes the code;
            // `classify_code` retries the 5xx ones.
            format!("Janitor.Http{status}")
        } else {
            err.code
        };
        Err(EcsError::Api {
            action,
            status,
            code,
            message,
            request_id: err.request_id,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: &str = r#"{"DiskId":"d-1","InstanceId":"i-1","RegionId":"cn-hangzhou",
        "ZoneId":"cn-hangzhou-h","Category":"cloud_essd","Size":40,"Type":"system",
        "DeleteWithInstance":true,"DiskChargeType":"PostPaid","Status":"In_use"}"#;

    fn answer(total: &str) -> Vec<u8> {
        format!(r#"{{"RequestId":"r-1","TotalCount":{total},"Disks":{{"Disk":[{DISK}]}}}}"#)
            .into_bytes()
    }

    #[test]
    fn a_disks_answer_reads_its_count_as_a_number_or_a_string_and_its_disks_whatever_it() {
        for (total, count) in [("7", Some(7)), ("\"7\"", Some(7)), ("\"n/a\"", None)] {
            let (disks, rest) = disks_answer(200, &answer(total), &|_| true).expect(total);
            assert_eq!(
                disks.len(),
                1,
                "{total}: the disks, whatever the count says"
            );
            assert_eq!(rest.total_count.and_then(count_of), count, "{total}");
        }
    }

    /// Only the disks `keep` picks are made Disks, and only they are checked: a disk of an
    /// unknown kind attached to an instance not priced does not fail the page; one of an
    /// instance priced does, naming it. Escaped text is read as such.
    #[test]
    fn a_disks_answer_keeps_and_checks_only_the_disks_asked_for() {
        let odd = r#"{"DiskId":"d-2","InstanceId":"i-2","Type":"ephemeral","DiskChargeType":"PostPaid",
            "Category":"cloud\u005fauto","Size":20}"#;
        let body =
            format!(r#"{{"RequestId":"r-1","NextToken":"n","Disks":{{"Disk":[{DISK},{odd}]}}}}"#);
        let (disks, rest) = disks_answer(200, body.as_bytes(), &|id| id == "i-1").unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].disk_id, "d-1");
        assert_eq!(rest.next_token.as_deref(), Some("n"));
        let Err(e) = disks_answer(200, body.as_bytes(), &|_| true) else {
            panic!("a disk of an unknown kind, kept, fails the page");
        };
        assert!(
            e.to_string().contains("d-2") && e.to_string().contains("ephemeral"),
            "{e}"
        );
        let fixed = body.replace("ephemeral", "data");
        let (disks, _) = disks_answer(200, fixed.as_bytes(), &|id| id == "i-2").unwrap();
        assert_eq!(
            disks[0].category, "cloud_auto",
            "an escaped character read as itself"
        );
    }
}
