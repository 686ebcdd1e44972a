//! The default credentials lookup chain, as Alibaba's SDKs order it: the environment, then the
//! aliyun CLI profile file, then the ECS RAM role from the instance metadata service.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::credentials::{
    Credentials, CredentialsError, CredentialsProvider, EnvProvider, SharedProvider, StaticProvider,
};
use crate::ecs::imds::{ImdsProvider, DEFAULT_IMDS_URL};
use crate::ecs::profile::{default_config_path, ProfileError, ProfileFile, ProfileSource};

/// Looks up an environment variable; tests pass a map instead of the process environment.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What [`default_chain`] looks at.
#[derive(Clone)]
pub struct ChainOptions {
    /// A profile named by the caller (`--profile`, or a policy's account). When set, that
    /// profile is the only source: environment credentials are not consulted, so a policy meant
    /// for one account can never be carried out with another account's keys.
    pub profile: Option<String>,
    /// The CLI profile file; default `ALIBABA_CLOUD_CONFIG_FILE`, else `~/.aliyun/config.json`.
    pub config_file: Option<std::path::PathBuf>,
    /// The metadata service, normally [`DEFAULT_IMDS_URL`].
    pub imds_base_url: String,
    /// Use the instance's RAM role (discovering its name) even when `ALIBABA_CLOUD_ECS_METADATA`
    /// does not name one. Off by default: see [`ChainProvider`].
    pub imds_enabled: bool,
    /// The environment.
    pub env: EnvLookup,
    /// Decides when RAM role credentials are refreshed.
    pub clock: crate::clock::SharedClock,
}

impl Default for ChainOptions {
    /// The process environment, the system clock, the real metadata address, IMDS off unless
    /// `ALIBABA_CLOUD_ECS_METADATA` names a role.
    fn default() -> Self {
        ChainOptions {
            profile: None,
            config_file: None,
            imds_base_url: DEFAULT_IMDS_URL.to_string(),
            imds_enabled: false,
            env: Arc::new(|k| std::env::var(k).ok()),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }
}

impl fmt::Debug for ChainOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainOptions")
            .field("profile", &self.profile)
            .field("config_file", &self.config_file)
            .field("imds_base_url", &self.imds_base_url)
            .field("imds_enabled", &self.imds_enabled)
            .finish_non_exhaustive()
    }
}

/// The credentials source Alibaba's SDKs would pick, chosen once when built:
///
/// 1. the environment: `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET`,
///    optional `ALIBABA_CLOUD_SECURITY_TOKEN` (skipped when a profile is named explicitly);
/// 2. the aliyun CLI profile file: the profile named in the options, else
///    `ALIBABA_CLOUD_PROFILE`, else the file's `current` (`ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true`
///    skips it unless a profile is named explicitly); modes AK, StsToken and EcsRamRole;
/// 3. the ECS RAM role from the instance metadata service, only when
///    `ALIBABA_CLOUD_ECS_METADATA` names the role or [`ChainOptions::imds_enabled`] is set, and
///    never when `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`. `ALIBABA_CLOUD_IMDSV1_DISABLED=true`
///    forbids the IMDSv1 fallback.
///
/// Two choices differ from the SDKs, both because this program deletes things:
/// * A source that is present but broken (one of the two key variables set, an unreadable or
///   malformed profile file, a named profile that does not exist, an unsupported mode) is an
///   error, not a reason to try the next source: falling through could sign with another
///   identity, e.g. the instance's role, and act on the wrong account.
/// * The metadata service is not probed by default. Off ECS, 100.100.100.200 is an ordinary
///   carrier-grade-NAT address that may belong to someone else, and every probe would cost a
///   one-second timeout; on ECS, naming the role is one environment variable.
pub struct ChainProvider {
    chosen: Result<(String, SharedProvider), CredentialsError>,
    /// What was looked at before the chosen source, for messages.
    tried: Vec<String>,
}

impl fmt::Debug for ChainProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ChainProvider");
        match &self.chosen {
            Ok((source, provider)) => d.field("source", source).field("provider", provider),
            Err(e) => d.field("error", e),
        };
        d.field("tried", &self.tried).finish()
    }
}

/// The chain as a shared provider, ready for [`crate::ecs::client::EcsClient`].
pub fn default_chain(opts: ChainOptions) -> SharedProvider {
    Arc::new(ChainProvider::new(opts))
}

/// `true` for the spellings of "true" the SDKs accept.
fn env_flag(env: &EnvLookup, key: &str) -> bool {
    env(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A hard failure of one source.
fn unusable(source_name: &'static str, reason: impl fmt::Display) -> CredentialsError {
    CredentialsError::Unusable {
        source_name,
        reason: reason.to_string(),
    }
}

impl ChainProvider {
    /// Looks at the sources in order (reading the profile file, if any; no network).
    pub fn new(opts: ChainOptions) -> Self {
        let mut tried = Vec::new();
        let chosen = Self::choose(&opts, &mut tried);
        ChainProvider { chosen, tried }
    }

    /// What was chosen, e.g. `profile "prod" (AK) in /home/u/.aliyun/config.json`, or why
    /// nothing could be. For `config check` and start-up logs; holds no secret.
    pub fn source(&self) -> Result<&str, &CredentialsError> {
        self.chosen.as_ref().map(|(s, _)| s.as_str())
    }

    fn choose(
        opts: &ChainOptions,
        tried: &mut Vec<String>,
    ) -> Result<(String, SharedProvider), CredentialsError> {
        let env = &opts.env;
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let allow_v1 = !env_flag(env, "ALIBABA_CLOUD_IMDSV1_DISABLED");
        let imds = |role: Option<String>| -> Result<SharedProvider, CredentialsError> {
            let p = ImdsProvider::new(&opts.imds_base_url, role, opts.clock.clone())?;
            Ok(Arc::new(p.with_imdsv1_fallback(allow_v1)))
        };

        // 1. The environment.
        const ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
        const SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
        if let Some(name) = &opts.profile {
            tried.push(format!(
                "environment: skipped, because profile {name:?} was named explicitly"
            ));
        } else {
            match (get(ID), get(SECRET)) {
                (Some(_), Some(_)) => {
                    let p = EnvProvider::from_lookup(|k| env(k));
                    return Ok(("environment variables".into(), Arc::new(p)));
                }
                (Some(_), None) | (None, Some(_)) => {
                    let (set, unset) = if get(ID).is_some() {
                        (ID, SECRET)
                    } else {
                        (SECRET, ID)
                    };
                    return Err(unusable(
                        "the environment",
                        format!(
                            "{set} is set but {unset} is not: set both, or unset {set} to use \
                             the CLI profile or the ECS RAM role"
                        ),
                    ));
                }
                (None, None) => tried.push(format!("environment: {ID} and {SECRET} are not set")),
            }
        }

        // 2. The CLI profile file.
        let env_profile = get("ALIBABA_CLOUD_PROFILE");
        let name = opts.profile.clone().or(env_profile.clone());
        let explicit_file =
            opts.config_file.is_some() || get("ALIBABA_CLOUD_CONFIG_FILE").is_some();
        // Asked for by name or by file: its absence is an error, not a reason to move on.
        let asked = name.is_some() || explicit_file;
        let path = opts
            .config_file
            .clone()
            .or_else(|| default_config_path(&|k| env(k)));
        const PROFILE: &str = "the aliyun CLI profile";
        if opts.profile.is_none() && env_flag(env, "ALIBABA_CLOUD_CLI_PROFILE_DISABLED") {
            tried.push("CLI profile file: disabled by ALIBABA_CLOUD_CLI_PROFILE_DISABLED".into());
        } else if let Some(path) = path {
            match ProfileFile::load(&path) {
                Err(ProfileError::FileNotFound { .. }) if !asked => tried.push(format!(
                    "CLI profile file: {} does not exist",
                    path.display()
                )),
                Err(e) => return Err(unusable(PROFILE, e)),
                Ok(file) => match file.profile(name.as_deref()) {
                    Err(ProfileError::NoProfileSelected { .. }) if !asked => tried.push(format!(
                        "CLI profile file: {} names no current profile",
                        path.display()
                    )),
                    Err(e) => return Err(unusable(PROFILE, e)),
                    Ok(profile) => {
                        let source = format!(
                            "profile {:?} ({}) in {}",
                            profile.name,
                            profile.source.mode(),
                            path.display()
                        );
                        let provider: SharedProvider = match profile.source {
                            ProfileSource::AccessKey(c) | ProfileSource::StsToken(c) => {
                                Arc::new(StaticProvider(c))
                            }
                            ProfileSource::EcsRamRole { role_name } => imds(role_name)?,
                        };
                        return Ok((source, provider));
                    }
                },
            }
        } else if asked {
            return Err(unusable(
                PROFILE,
                "no profile file path: neither HOME nor ALIBABA_CLOUD_CONFIG_FILE is set",
            ));
        } else {
            tried.push("CLI profile file: no home directory (HOME is not set)".into());
        }

        // 3. The ECS RAM role.
        let role = get("ALIBABA_CLOUD_ECS_METADATA");
        if env_flag(env, "ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
            tried.push("ECS RAM role: disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED".into());
        } else if role.is_some() || opts.imds_enabled {
            let source = match &role {
                Some(r) => format!("ECS RAM role {r:?} via {}", opts.imds_base_url),
                None => format!("ECS RAM role (discovered) via {}", opts.imds_base_url),
            };
            return Ok((source, imds(role)?));
        } else {
            tried.push(
                "ECS RAM role: not enabled (ALIBABA_CLOUD_ECS_METADATA is not set)".to_string(),
            );
        }

        let file_hint = match opts
            .config_file
            .clone()
            .or_else(|| default_config_path(&|k| env(k)))
        {
            Some(p) => p.display().to_string(),
            None => "~/.aliyun/config.json".into(),
        };
        Err(CredentialsError::Missing {
            detail: format!(
                "; or add a profile to {file_hint} with `aliyun configure` and choose it with \
                 --profile or ALIBABA_CLOUD_PROFILE; or, on an ECS instance with a RAM role, set \
                 ALIBABA_CLOUD_ECS_METADATA to the role's name. Tried, in order: {}",
                tried
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("{}) {t}", i + 1))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
    }
}

impl CredentialsProvider for ChainProvider {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        match &self.chosen {
            Ok((_, provider)) => provider.credentials(),
            Err(e) => {
                let e = e.clone();
                Box::pin(async move { Err(e) })
            }
        }
    }
}
