//! Reads the aliyun CLI profile file (`~/.aliyun/config.json`) and turns one named profile into
//! a credentials source: an AccessKey pair (`AK`), STS credentials (`StsToken`), or the ECS RAM
//! role of the instance (`EcsRamRole`, served by [`super::imds`]).
//!
//! The file is parsed into a JSON tree and read field by field rather than through typed serde,
//! because serde's type errors quote the offending value, and the offending value may be a secret.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::credentials::{Credentials, Secret};

/// The modes this crate can use, as the CLI spells them.
pub const SUPPORTED_MODES: &[&str] = &["AK", "StsToken", "EcsRamRole"];

/// The path of the profile file: `ALIBABA_CLOUD_CONFIG_FILE` if set, otherwise
/// `$HOME/.aliyun/config.json` (`%USERPROFILE%` on Windows). `None` when neither is known.
/// Reads through `lookup` so tests need not touch the process environment.
pub fn default_config_path(lookup: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
    if let Some(p) = get("ALIBABA_CLOUD_CONFIG_FILE") {
        return Some(PathBuf::from(p));
    }
    get("HOME")
        .or_else(|| get("USERPROFILE"))
        .map(|home| Path::new(&home).join(".aliyun").join("config.json"))
}

/// What went wrong reading a profile. Messages name the file and the profile, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "aliyun CLI profile file {} does not exist: create it with `aliyun configure`, \
         or point ALIBABA_CLOUD_CONFIG_FILE at the right file", path.display()
    )]
    FileNotFound { path: PathBuf },
    #[error("cannot read aliyun CLI profile file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "aliyun CLI profile file {}:{line}:{column} is not valid JSON: {reason}",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("aliyun CLI profile file {}: {what}", path.display())]
    BadShape { path: PathBuf, what: String },
    #[error(
        "aliyun CLI profile file {} names no current profile: choose one with --profile \
         or ALIBABA_CLOUD_PROFILE (profiles in the file: {})", path.display(), list(available)
    )]
    NoProfileSelected {
        path: PathBuf,
        available: Vec<String>,
    },
    #[error(
        "profile {name:?} is not in aliyun CLI profile file {} (profiles in the file: {}): \
         check --profile / ALIBABA_CLOUD_PROFILE, or add it with `aliyun configure --profile {name}`",
        path.display(), list(available)
    )]
    NoSuchProfile {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error(
        "profile {profile:?} in {} has mode {mode:?}, which ecs-janitor does not support \
         (supported: {}); use one of those modes, or provide credentials through \
         ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        path.display(), SUPPORTED_MODES.join(", ")
    )]
    UnsupportedMode {
        path: PathBuf,
        profile: String,
        mode: String,
    },
    #[error(
        "profile {profile:?} in {} has no mode: set \"mode\" to one of {} \
         (or run `aliyun configure --profile {profile}`)",
        path.display(), SUPPORTED_MODES.join(", ")
    )]
    MissingMode { path: PathBuf, profile: String },
    #[error(
        "profile {profile:?} in {} (mode {mode}) has no {field}: set \"{field}\" in that \
         profile, or run `aliyun configure --profile {profile} --mode {mode}`",
        path.display()
    )]
    MissingField {
        path: PathBuf,
        profile: String,
        mode: &'static str,
        field: &'static str,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Where a profile's credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// `AK`: a long-lived AccessKey pair.
    AccessKey(Credentials),
    /// `StsToken`: an AccessKey pair with its security token.
    StsToken(Credentials),
    /// `EcsRamRole`: the instance's RAM role; `None` means discover it from the metadata service.
    EcsRamRole { role_name: Option<String> },
}

impl ProfileSource {
    /// The mode as the CLI spells it.
    pub fn mode(&self) -> &'static str {
        match self {
            ProfileSource::AccessKey(_) => "AK",
            ProfileSource::StsToken(_) => "StsToken",
            ProfileSource::EcsRamRole { .. } => "EcsRamRole",
        }
    }
}

impl fmt::Debug for ProfileSource {
    // Credentials' own Debug redacts the secret; spelled out here so the mode name leads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSource::AccessKey(c) | ProfileSource::StsToken(c) => f
                .debug_struct(self.mode())
                .field("access_key_id", &c.access_key_id)
                .field("access_key_secret", &c.access_key_secret)
                .field("security_token", &c.security_token)
                .finish(),
            ProfileSource::EcsRamRole { role_name } => f
                .debug_struct("EcsRamRole")
                .field("role_name", role_name)
                .finish(),
        }
    }
}

/// One profile, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The profile's `region_id`, if set.
    pub region_id: Option<String>,
    pub source: ProfileSource,
}

/// A parsed profile file. Holds secrets; its Debug shows only names.
pub struct ProfileFile {
    path: PathBuf,
    current: Option<String>,
    profiles: Vec<Map<String, Value>>,
}

impl fmt::Debug for ProfileFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileFile")
            .field("path", &self.path)
            .field("current", &self.current)
            .field("profiles", &self.names())
            .finish()
    }
}

impl ProfileFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::FileNotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(ProfileError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path` (the path is only used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        let path = path.to_path_buf();
        let root: Value = serde_json::from_str(text).map_err(|e| ProfileError::Malformed {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            // A syntax error's message says what was expected, never what was found.
            reason: syntax_reason(&e),
        })?;
        let bad = |what: &str| ProfileError::BadShape {
            path: path.clone(),
            what: what.to_string(),
        };
        let Value::Object(root) = root else {
            return Err(bad(
                "the top level must be an object with \"current\" and \"profiles\"",
            ));
        };
        let current = match root.get("current") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("\"current\" must be a string")),
        };
        let profiles = match root.get("profiles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let Value::Object(p) = item else {
                        return Err(bad(&format!("profiles[{i}] must be an object")));
                    };
                    match p.get("name") {
                        Some(Value::String(n)) if !n.trim().is_empty() => {}
                        _ => return Err(bad(&format!("profiles[{i}] has no \"name\" string"))),
                    }
                    out.push(p.clone());
                }
                out
            }
            Some(_) => return Err(bad("\"profiles\" must be a list")),
        };
        Ok(ProfileFile {
            path,
            current,
            profiles,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's `current` profile, if it names one.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Every profile's name, in file order.
    pub fn names(&self) -> Vec<String> {
        self.profiles
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// The profile called `name`, or the file's `current` one when `name` is `None`.
    pub fn profile(&self, name: Option<&str>) -> Result<Profile, ProfileError> {
        let name = match name.or(self.current.as_deref()) {
            Some(n) => n,
            None => {
                return Err(ProfileError::NoProfileSelected {
                    path: self.path.clone(),
                    available: self.names(),
                })
            }
        };
        let raw = self
            .profiles
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| ProfileError::NoSuchProfile {
                path: self.path.clone(),
                name: name.to_string(),
                available: self.names(),
            })?;
        self.resolve(name, raw)
    }

    fn resolve(&self, name: &str, raw: &Map<String, Value>) -> Result<Profile, ProfileError> {
        let text = |field: &str| -> Result<Option<String>, ProfileError> {
            match raw.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                // Never quote the value: it may be a secret typed as a number.
                Some(_) => Err(ProfileError::BadShape {
                    path: self.path.clone(),
                    what: format!("profile {name:?}: \"{field}\" must be a string"),
                }),
            }
        };
        let required = |field: &'static str, mode: &'static str| {
            text(field)?.ok_or_else(|| ProfileError::MissingField {
                path: self.path.clone(),
                profile: name.to_string(),
                mode,
                field,
            })
        };
        let Some(mode) = text("mode")? else {
            return Err(ProfileError::MissingMode {
                path: self.path.clone(),
                profile: name.to_string(),
            });
        };
        let source = match mode.as_str() {
            "AK" => ProfileSource::AccessKey(Credentials {
                access_key_id: required("access_key_id", "AK")?,
                access_key_secret: Secret::new(required("access_key_secret", "AK")?),
                security_token: None,
            }),
            "StsToken" => ProfileSource::StsToken(Credentials {
                access_key_id: required("access_key_id", "StsToken")?,
                access_key_secret: Secret::new(required("access_key_secret", "StsToken")?),
                security_token: Some(Secret::new(required("sts_token", "StsToken")?)),
            }),
            "EcsRamRole" => ProfileSource::EcsRamRole {
                role_name: text("ram_role_name")?,
            },
            other => {
                return Err(ProfileError::UnsupportedMode {
                    path: self.path.clone(),
                    profile: name.to_string(),
                    mode: other.to_string(),
                })
            }
        };
        Ok(Profile {
            name: name.to_string(),
            path: self.path.clone(),
            region_id: text("region_id")?,
            source,
        })
    }
}

/// The part of a serde_json syntax error before its " at line L column C" suffix (which the
/// message repeats as file:line:column).
fn syntax_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(at) => full[..at].to_string(),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProfileFile, ProfileError> {
        ProfileFile::parse(Path::new("/home/u/.aliyun/config.json"), text)
    }

    const FILE: &str = r#"{
        "current": "main",
        "profiles": [
            {"name": "main", "mode": "AK", "access_key_id": "LTAImain",
             "access_key_secret": "main-secret-value", "region_id": "cn-hangzhou",
             "sts_token": "", "ram_role_name": "", "expired_seconds": 0},
            {"name": "sts", "mode": "StsToken", "access_key_id": "STS.id",
             "access_key_secret": "sts-secret-value", "sts_token": "sts-token-value"},
            {"name": "role", "mode": "EcsRamRole", "ram_role_name": "JanitorRole"},
            {"name": "role-discover", "mode": "EcsRamRole", "ram_role_name": ""},
            {"name": "arn", "mode": "RamRoleArn", "access_key_id": "x",
             "access_key_secret": "arn-secret-value", "ram_role_arn": "acs:ram::1:role/r"},
            {"name": "nomode", "access_key_id": "x", "access_key_secret": "y"},
            {"name": "halfak", "mode": "AK", "access_key_id": "LTAIhalf"},
            {"name": "numsecret", "mode": "AK", "access_key_id": "x", "access_key_secret": 987654321}
        ]
    }"#;

    #[test]
    fn each_supported_mode_resolves() {
        let f = parse(FILE).unwrap();
        let main = f.profile(None).unwrap();
        assert_eq!(main.name, "main");
        assert_eq!(main.region_id.as_deref(), Some("cn-hangzhou"));
        let ProfileSource::AccessKey(c) = &main.source else {
            panic!("{main:?}")
        };
        assert_eq!(c.access_key_id, "LTAImain");
        assert_eq!(c.access_key_secret.expose(), "main-secret-value");
        assert!(c.security_token.is_none());

        let sts = f.profile(Some("sts")).unwrap();
        let ProfileSource::StsToken(c) = &sts.source else {
            panic!("{sts:?}")
        };
        assert_eq!(
            c.security_token.as_ref().map(Secret::expose),
            Some("sts-token-value")
        );

        assert_eq!(
            f.profile(Some("role")).unwrap().source,
            ProfileSource::EcsRamRole {
                role_name: Some("JanitorRole".into())
            }
        );
        assert_eq!(
            f.profile(Some("role-discover")).unwrap().source,
            ProfileSource::EcsRamRole { role_name: None }
        );
    }

    #[test]
    fn errors_name_the_mode_profile_file_and_fix() {
        let f = parse(FILE).unwrap();
        let e = f.profile(Some("arn")).unwrap_err().to_string();
        for want in [
            "\"RamRoleArn\"",
            "\"arn\"",
            "/home/u/.aliyun/config.json",
            "AK, StsToken, EcsRamRole",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
        let e = f.profile(Some("nomode")).unwrap_err().to_string();
        assert!(e.contains("\"nomode\"") && e.contains("has no mode"), "{e}");
        let e = f.profile(Some("halfak")).unwrap_err().to_string();
        assert!(e.contains("has no access_key_secret"), "{e}");
        let e = f.profile(Some("nope")).unwrap_err().to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("main, sts, role"),
            "{e}"
        );
        let e = f.profile(Some("numsecret")).unwrap_err().to_string();
        assert!(e.contains("must be a string"), "{e}");
        assert!(!e.contains("987654321"), "{e}");
    }

    #[test]
    fn no_current_and_no_name_asks_for_one() {
        let f = parse(r#"{"profiles": [{"name": "a", "mode": "AK"}]}"#).unwrap();
        let e = f.profile(None).unwrap_err().to_string();
        assert!(
            e.contains("ALIBABA_CLOUD_PROFILE") && e.contains(": a)"),
            "{e}"
        );
    }

    #[test]
    fn malformed_json_names_file_line_and_column() {
        let e = parse("{\n  \"current\": \"a\",\n  \"profiles\": [\n}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("aliyun CLI profile file /home/u/.aliyun/config.json:4:1 "),
            "{e}"
        );
        let e = parse(r#"{"profiles": {"name": "a"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"profiles\" must be a list"), "{e}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let f = parse(FILE).unwrap();
        let mut out = format!("{f:?}");
        for n in ["main", "sts", "arn", "numsecret"] {
            out += &format!("{:?}", f.profile(Some(n)));
        }
        for secret in [
            "main-secret-value",
            "sts-secret-value",
            "sts-token-value",
            "arn-secret-value",
            "987654321",
        ] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
    }

    #[test]
    fn path_comes_from_the_override_or_home() {
        let p = default_config_path(&|k| (k == "HOME").then(|| "/home/u".to_string()));
        assert_eq!(p, Some(PathBuf::from("/home/u/.aliyun/config.json")));
        let p = default_config_path(&|k| match k {
            "HOME" => Some("/home/u".into()),
            "ALIBABA_CLOUD_CONFIG_FILE" => Some("/etc/aliyun.json".into()),
            _ => None,
        });
        assert_eq!(p, Some(PathBuf::from("/etc/aliyun.json")));
        assert_eq!(default_config_path(&|_| None), None);
    }
}
