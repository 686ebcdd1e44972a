//! The ECS data model as ecs-janitor sees it: a typed [`Instance`] with the fields the facts file
//! lists, and its exact wire form (`DescribeInstances`' JSON) in both directions, so the client and
//! the simulator agree on one shape.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An instance's lifecycle state, as `DescribeInstances` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InstanceStatus {
    Pending,
    Running,
    Starting,
    Stopping,
    Stopped,
    /// A state this build does not know. Never matched by a policy.
    #[serde(other)]
    Unknown,
}

impl InstanceStatus {
    /// The five states ECS documents, in lifecycle order.
    pub const ALL: [InstanceStatus; 5] = [
        InstanceStatus::Pending,
        InstanceStatus::Running,
        InstanceStatus::Starting,
        InstanceStatus::Stopping,
        InstanceStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Pending => "Pending",
            InstanceStatus::Running => "Running",
            InstanceStatus::Starting => "Starting",
            InstanceStatus::Stopping => "Stopping",
            InstanceStatus::Stopped => "Stopped",
            InstanceStatus::Unknown => "Unknown",
        }
    }

    /// Parses one of the documented names exactly (ECS spells them capitalised).
    pub fn parse(s: &str) -> Option<InstanceStatus> {
        InstanceStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an instance is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChargeType {
    /// Subscription.
    PrePaid,
    /// Pay-as-you-go.
    PostPaid,
}

impl ChargeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeType::PrePaid => "PrePaid",
            ChargeType::PostPaid => "PostPaid",
        }
    }

    pub fn parse(s: &str) -> Option<ChargeType> {
        match s {
            "PrePaid" => Some(ChargeType::PrePaid),
            "PostPaid" => Some(ChargeType::PostPaid),
            _ => None,
        }
    }
}

impl fmt::Display for ChargeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance's tags, key → value. Kept as a vector sorted by key: an instance has a handful,
/// and a map's node per instance costs several times what its tags do (an inventory holds
/// 100,000 of them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    pub fn new() -> Tags {
        Tags(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning its previous value.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (key, value) pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl FromIterator<(String, String)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Tags {
        let mut t = Tags::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t.0.shrink_to_fit();
        t
    }
}

impl<const N: usize> From<[(String, String); N]> for Tags {
    fn from(pairs: [(String, String); N]) -> Tags {
        pairs.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Tags {
    type Output = String;

    /// The value of `key`; like a map's index, it panics when the key is absent, so use it
    /// only where the key is known to be set.
    fn index(&self, key: &str) -> &String {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no tag {key:?}"),
        }
    }
}

impl std::fmt::Debug for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tags, D::Error> {
        let m = BTreeMap::<String, String>::deserialize(d)?;
        Ok(m.into_iter().collect())
    }
}

/// One ECS instance, normalised from `DescribeInstances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    pub instance_name: String,
    pub region_id: String,
    pub zone_id: String,
    pub status: InstanceStatus,
    pub charge_type: ChargeType,
    pub instance_type: String,
    pub creation_time: Option<DateTime<Utc>>,
    /// For pay-as-you-go instances ECS reports a far-future date (2099-12-31T15:59Z).
    pub expired_time: Option<DateTime<Utc>>,
    /// `None` when ECS reports `""`.
    pub auto_release_time: Option<DateTime<Utc>>,
    pub deletion_protection: bool,
    /// The `LockReason` of each entry of `OperationLocks` (`security`, `financial`, ...).
    pub lock_reasons: Vec<String>,
    pub tags: Tags,
    pub resource_group_id: String,
    pub stopped_mode: String,
}

impl Instance {
    /// True when `OperationLocks` holds a `security` lock.
    pub fn security_locked(&self) -> bool {
        self.lock_reasons.iter().any(|r| r == "security")
    }

    /// The wire (DescribeInstances JSON) form of this instance.
    pub fn to_wire(&self) -> WireInstance {
        WireInstance {
            instance_id: self.instance_id.clone(),
            instance_name: self.instance_name.clone(),
            region_id: self.region_id.clone(),
            zone_id: self.zone_id.clone(),
            status: self.status.as_str().to_string(),
            instance_charge_type: self.charge_type.as_str().to_string(),
            instance_type: self.instance_type.clone(),
            creation_time: self.creation_time.map(format_ecs_time).unwrap_or_default(),
            expired_time: self.expired_time.map(format_ecs_time).unwrap_or_default(),
            auto_release_time: self
                .auto_release_time
                .map(format_ecs_time)
                .unwrap_or_default(),
            deletion_protection: self.deletion_protection,
            operation_locks: WireLocks {
                lock_reason: self
                    .lock_reasons
                    .iter()
                    .map(|r| WireLock {
                        lock_reason: r.clone(),
                        lock_msg: String::new(),
                    })
                    .collect(),
            },
            tags: WireTags {
                tag: self
                    .tags
                    .iter()
                    .map(|(k, v)| WireTag {
                        tag_key: k.clone(),
                        tag_value: v.clone(),
                    })
                    .collect(),
            },
            resource_group_id: self.resource_group_id.clone(),
            stopped_mode: self.stopped_mode.clone(),
        }
    }
}

/// Why a wire instance could not be turned into an [`Instance`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance {instance_id}: field {field} has value {value:?}, which is not {expected}")]
pub struct WireError {
    pub instance_id: String,
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// An instance exactly as `DescribeInstances` serialises it (field names and nesting are ECS's).
/// Unknown fields are ignored when reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireInstance {
    pub instance_id: String,
    pub instance_name: String,
    pub region_id: String,
    pub zone_id: String,
    pub status: String,
    pub instance_charge_type: String,
    pub instance_type: String,
    pub creation_time: String,
    pub expired_time: String,
    pub auto_release_time: String,
    pub deletion_protection: bool,
    pub operation_locks: WireLocks,
    pub tags: WireTags,
    pub resource_group_id: String,
    pub stopped_mode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireLocks {
    pub lock_reason: Vec<WireLock>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireLock {
    pub lock_reason: String,
    pub lock_msg: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireTags {
    pub tag: Vec<WireTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireTag {
    pub tag_key: String,
    pub tag_value: String,
}

impl WireInstance {
    /// Normalises the wire form. Times parse in minute and second precision; `""` is "none".
    pub fn into_instance(self) -> Result<Instance, WireError> {
        let id = self.instance_id.clone();
        let err = |field: &'static str, value: &str, expected: &'static str| WireError {
            instance_id: id.clone(),
            field,
            value: value.to_string(),
            expected,
        };
        let status = InstanceStatus::parse(&self.status).unwrap_or(InstanceStatus::Unknown);
        let charge_type = ChargeType::parse(&self.instance_charge_type).ok_or_else(|| {
            err(
                "InstanceChargeType",
                &self.instance_charge_type,
                "PrePaid or PostPaid",
            )
        })?;
        let time = |field: &'static str, v: &str| -> Result<Option<DateTime<Utc>>, WireError> {
            if v.is_empty() {
                return Ok(None);
            }
            parse_ecs_time(v)
                .map(Some)
                .ok_or_else(|| err(field, v, "a time like 2024-01-31T08:35Z"))
        };
        Ok(Instance {
            creation_time: time("CreationTime", &self.creation_time)?,
            expired_time: time("ExpiredTime", &self.expired_time)?,
            auto_release_time: time("AutoReleaseTime", &self.auto_release_time)?,
            status,
            charge_type,
            deletion_protection: self.deletion_protection,
            lock_reasons: self
                .operation_locks
                .lock_reason
                .into_iter()
                .map(|l| l.lock_reason)
                .collect(),
            tags: self
                .tags
                .tag
                .into_iter()
                .map(|t| (t.tag_key, t.tag_value))
                .collect(),
            instance_id: self.instance_id,
            instance_name: self.instance_name,
            region_id: self.region_id,
            zone_id: self.zone_id,
            instance_type: self.instance_type,
            resource_group_id: self.resource_group_id,
            stopped_mode: self.stopped_mode,
        })
    }
}

/// Whether a disk is an instance's system disk or one of its data disks (`Type` of
/// `DescribeDisks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DiskKind {
    System,
    Data,
}

impl DiskKind {
    /// ECS's spelling: `system` or `data`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskKind::System => "system",
            DiskKind::Data => "data",
        }
    }
}

/// One block storage disk, normalised from `DescribeDisks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub disk_id: String,
    /// The instance it is attached to; empty when it is not attached.
    pub instance_id: String,
    pub region_id: String,
    pub zone_id: String,
    /// `cloud`, `cloud_efficiency`, `cloud_ssd`, `cloud_essd`, `cloud_auto`, ...
    pub category: String,
    /// GiB.
    pub size_gb: u32,
    pub kind: DiskKind,
    /// Released with its instance (`true`), or kept as a pay-as-you-go disk (`false`).
    pub delete_with_instance: bool,
    /// `PrePaid` or `PostPaid`.
    pub charge_type: ChargeType,
    /// `In_use`, `Available`, ...
    pub status: String,
    /// When it was created (`CreationTime`); `None` when the answer gave none or one that does
    /// not parse (pricing never reads it: it only asks for disks by creation time).
    pub creation_time: Option<DateTime<Utc>>,
}

impl Disk {
    /// The wire (`DescribeDisks` JSON) form of this disk.
    pub fn to_wire(&self) -> WireDisk<'_> {
        WireDisk {
            disk_id: Cow::Borrowed(&self.disk_id),
            instance_id: Cow::Borrowed(&self.instance_id),
            region_id: Cow::Borrowed(&self.region_id),
            zone_id: Cow::Borrowed(&self.zone_id),
            category: Cow::Borrowed(&self.category),
            size: self.size_gb,
            r#type: Cow::Borrowed(self.kind.as_str()),
            delete_with_instance: self.delete_with_instance,
            disk_charge_type: Cow::Borrowed(self.charge_type.as_str()),
            status: Cow::Borrowed(&self.status),
            // DescribeDisks gives seconds (its reference's example: `2021-06-07T06:08:56Z`).
            creation_time: self
                .creation_time
                .map(|t| Cow::Owned(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                .unwrap_or_default(),
        }
    }
}

/// A disk exactly as `DescribeDisks` serialises it, its text borrowed from the answer (or from
/// the simulator's [`Disk`]): a listing reads tens of thousands of disks to keep a few, and
/// only those kept are copied. Unknown fields are ignored when reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireDisk<'a> {
    #[serde(borrow)]
    pub disk_id: Cow<'a, str>,
    #[serde(borrow)]
    pub instance_id: Cow<'a, str>,
    #[serde(borrow)]
    pub region_id: Cow<'a, str>,
    #[serde(borrow)]
    pub zone_id: Cow<'a, str>,
    #[serde(borrow)]
    pub category: Cow<'a, str>,
    pub size: u32,
    #[serde(borrow)]
    pub r#type: Cow<'a, str>,
    pub delete_with_instance: bool,
    #[serde(borrow)]
    pub disk_charge_type: Cow<'a, str>,
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    #[serde(borrow)]
    pub creation_time: Cow<'a, str>,
}

impl WireDisk<'_> {
    /// Normalises the wire form; a disk with an unknown `Type` or `DiskChargeType` is an error
    /// naming it.
    pub fn into_disk(self) -> Result<Disk, WireError> {
        let err = |field: &'static str, value: &str, expected: &'static str| WireError {
            instance_id: format!("{} (disk {})", self.instance_id, self.disk_id),
            field,
            value: value.to_string(),
            expected,
        };
        let kind = match self.r#type.as_ref() {
            "system" => DiskKind::System,
            "data" => DiskKind::Data,
            other => return Err(err("Type", other, "system or data")),
        };
        let charge_type = ChargeType::parse(&self.disk_charge_type).ok_or_else(|| {
            err(
                "DiskChargeType",
                &self.disk_charge_type,
                "PrePaid or PostPaid",
            )
        })?;
        Ok(Disk {
            creation_time: parse_ecs_time(&self.creation_time),
            disk_id: self.disk_id.into_owned(),
            instance_id: self.instance_id.into_owned(),
            region_id: self.region_id.into_owned(),
            zone_id: self.zone_id.into_owned(),
            category: self.category.into_owned(),
            size_gb: self.size,
            kind,
            delete_with_instance: self.delete_with_instance,
            charge_type,
            status: self.status.into_owned(),
        })
    }
}

/// One line of a price's breakdown (`DetailInfos.DetailInfo[]`): `instanceType`, `systemDisk`,
/// `dataDisk`, `bandwidth`, `image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceDetail {
    pub resource: String,
    /// The list price (`OriginalPrice`), in millionths of the currency's unit, per price unit.
    pub original_micros: i64,
}

/// A price answer (`PriceInfo.Price` of `DescribePrice` or `DescribeRenewalPrice`): list prices
/// only; discounts are not ecs-janitor's to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceQuote {
    pub currency: String,
    /// `OriginalPrice`, in millionths of the unit, per price unit (an hour, or a month).
    pub original_micros: i64,
    pub details: Vec<PriceDetail>,
    pub request_id: String,
}

impl PriceQuote {
    /// The list price of one resource of the breakdown.
    pub fn detail(&self, resource: &str) -> Option<i64> {
        self.details
            .iter()
            .find(|d| d.resource == resource)
            .map(|d| d.original_micros)
    }
}

/// `PriceInfo.Price` exactly as ECS serialises it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WirePrice {
    pub currency: String,
    pub original_price: f64,
    pub discount_price: f64,
    pub trade_price: f64,
    pub detail_infos: WireDetailInfos,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireDetailInfos {
    pub detail_info: Vec<WireDetailInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WireDetailInfo {
    pub resource: String,
    pub original_price: f64,
    pub discount_price: f64,
    pub trade_price: f64,
}

/// Parses an ECS time: `yyyy-MM-ddTHH:mmZ` (what the API really returns) or `yyyy-MM-ddTHH:mm:ssZ`
/// (what its documentation says), zero-padded as ECS writes them. Read for every instance and
/// disk of a listing, so by RFC 3339's fixed-width parser, not a format string (which was a
/// twentieth of `apply`'s time, and also took unpadded fields ECS never sends).
pub fn parse_ecs_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if !s.ends_with('Z') || b.get(10) != Some(&b'T') {
        return None;
    }
    let parsed = match b.len() {
        // The minute form, given its seconds.
        17 => {
            let mut full = [0u8; 20];
            full[..16].copy_from_slice(&b[..16]);
            full[16..].copy_from_slice(b":00Z");
            DateTime::parse_from_rfc3339(std::str::from_utf8(&full).ok()?)
        }
        20 => DateTime::parse_from_rfc3339(s),
        _ => return None,
    };
    parsed.ok().map(|t| t.with_timezone(&Utc))
}

/// Formats a time the way `DescribeInstances` does: minute precision, `yyyy-MM-ddTHH:mmZ`.
pub fn format_ecs_time(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_behave_as_a_map_in_key_order() {
        let mut t = Tags::new();
        assert_eq!(t.insert("team".into(), "a".into()), None);
        assert_eq!(t.insert("env".into(), "dev".into()), None);
        assert_eq!(t.insert("team".into(), "b".into()), Some("a".into()));
        assert_eq!(t.get("team").map(String::as_str), Some("b"));
        assert!(t.contains_key("env") && !t.contains_key("owner"));
        let keys: Vec<&String> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["env", "team"]);
        assert_eq!(format!("{t:?}"), r#"{"env": "dev", "team": "b"}"#);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"env":"dev","team":"b"}"#);
        assert_eq!(serde_json::from_str::<Tags>(&json).unwrap(), t);
        assert_eq!(t.remove("env"), Some("dev".into()));
        assert_eq!(t.len(), 1);
        let from: Tags = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(from.iter().next().map(|(k, _)| k.as_str()), Some("a"));
    }

    #[test]
    fn times_parse_in_minute_and_second_form() {
        let m = parse_ecs_time("2019-11-11T08:35Z").unwrap();
        let s = parse_ecs_time("2019-11-11T08:35:00Z").unwrap();
        assert_eq!(m, s);
        assert_eq!(format_ecs_time(m), "2019-11-11T08:35Z");
        assert!(parse_ecs_time("yesterday").is_none());
        // Only the two forms, in UTC.
        for bad in [
            "2019-11-11 08:35Z",
            "2019-11-11T08:35",
            "2019-11-11T08:35:00+08:00",
            "2019-11-11T08:35:00.5Z",
            "2019-13-11T08:35Z",
            "",
        ] {
            assert!(parse_ecs_time(bad).is_none(), "{bad}");
        }
        let t = parse_ecs_time("2021-06-07T06:08:56Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2021-06-07T06:08:56+00:00");
        assert_eq!(format_ecs_time(t), "2021-06-07T06:08Z");
    }

    #[test]
    fn the_documented_example_instance_parses() {
        let json = r#"{
            "ImageId": "centos_7_06_64_20G_alibase_20190711.vhd",
            "ZoneId": "cn-hangzhou-f", "AutoReleaseTime": "", "ResourceGroupId": "",
            "CreationTime": "2019-11-11T08:35Z",
            "Tags": {"Tag": [{"TagValue": "ESS", "TagKey": "ESS"}]},
            "RegionId": "cn-hangzhou", "DeletionProtection": false,
            "OperationLocks": {"LockReason": []}, "ExpiredTime": "2099-12-31T15:59Z",
            "InstanceId": "i-bp1j4i2jdf3owlhe****", "SpotStrategy": "NoSpot",
            "InstanceName": "ECS-asg-MyFirstScalingGroup", "InstanceType": "ecs.mn4.large",
            "Status": "Running", "InstanceChargeType": "PostPaid"
        }"#;
        let wire: WireInstance = serde_json::from_str(json).unwrap();
        let inst = wire.into_instance().unwrap();
        assert_eq!(inst.status, InstanceStatus::Running);
        assert_eq!(inst.charge_type, ChargeType::PostPaid);
        assert_eq!(inst.auto_release_time, None);
        assert_eq!(inst.tags.get("ESS").map(String::as_str), Some("ESS"));
        assert!(!inst.security_locked());
        // The round trip through the wire form keeps every field.
        assert_eq!(inst.to_wire().into_instance().unwrap(), inst);
    }

    #[test]
    fn a_bad_charge_type_names_the_instance_and_field() {
        let wire = WireInstance {
            instance_id: "i-1".into(),
            instance_charge_type: "Free".into(),
            ..Default::default()
        };
        let e = wire.into_instance().unwrap_err();
        assert!(e.to_string().contains("i-1"));
        assert!(e.to_string().contains("InstanceChargeType"));
    }
}
