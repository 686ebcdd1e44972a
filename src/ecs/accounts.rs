//! ECS clients by account. A policy without `account:` acts with the default credentials; a
//! policy naming `account: NAME` acts with the aliyun CLI profile that NAME maps to (the profile
//! of the same name, unless janitor.yaml's `accounts:` maps it to another). Each account's client
//! shares the default client's settings and connection pool and differs only in who it signs as.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::chain::{ChainOptions, ChainProvider};
use super::client::EcsClient;
use super::credentials::{Credentials, CredentialsError, CredentialsProvider, SharedProvider};

/// The default account: the credentials chain as configured (`--profile`, the environment, ...).
pub const DEFAULT_ACCOUNT: &str = "";

/// Builds the credentials of one profile, or says why it cannot.
pub type ProviderFactory = Arc<dyn Fn(&str) -> Result<SharedProvider, String> + Send + Sync>;

/// A named account that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "policy {policy:?} ({file}:{line}) names account {account:?}, which maps to the aliyun CLI \
     profile {profile:?}, and that profile cannot be used: {reason}. Add the profile \
     (`aliyun configure --profile {profile}`), or map the account to an existing profile under \
     `accounts:` in janitor.yaml"
)]
pub struct AccountError {
    pub policy: String,
    pub file: String,
    pub line: usize,
    pub account: String,
    pub profile: String,
    pub reason: String,
}

/// A policy that names an account, as [`Accounts::check`] needs it: plain data, so that this
/// layer knows accounts, not policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountUse<'a> {
    /// The policy's name.
    pub policy: &'a str,
    /// Where the policy was written: its file and the line its document starts on.
    pub file: &'a Path,
    pub line: usize,
    /// The account it names.
    pub account: &'a str,
}

/// ECS clients by account; cheap to clone, clones share the clients built so far.
#[derive(Clone)]
pub struct Accounts {
    default: EcsClient,
    /// Account name → profile name, from janitor.yaml (an unlisted account is its own profile).
    profiles: Arc<BTreeMap<String, String>>,
    /// `None`: only the default account exists.
    factory: Option<ProviderFactory>,
    built: Arc<Mutex<HashMap<String, EcsClient>>>,
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("default", &self.default)
            .field("profiles", &self.profiles)
            .field("named", &self.factory.is_some())
            .finish_non_exhaustive()
    }
}

/// Refuses every request: the account it stands for has no usable credentials.
#[derive(Debug)]
struct Unavailable(String);

impl CredentialsProvider for Unavailable {
    fn credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        let reason = self.0.clone();
        Box::pin(async move {
            Err(CredentialsError::Unusable {
                source_name: "account",
                reason,
            })
        })
    }
}

impl Accounts {
    /// Only the default account: a policy naming an account cannot be carried out.
    pub fn single(default: EcsClient) -> Accounts {
        Accounts {
            default,
            profiles: Arc::new(BTreeMap::new()),
            factory: None,
            built: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Named accounts map to profiles (through `profiles`, else by the same name), whose
    /// credentials `factory` builds.
    pub fn new(
        default: EcsClient,
        profiles: BTreeMap<String, String>,
        factory: ProviderFactory,
    ) -> Accounts {
        Accounts {
            default,
            profiles: Arc::new(profiles),
            factory: Some(factory),
            built: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Named accounts read from the aliyun CLI profile file, each profile the only source of
    /// its account's credentials (never the environment, so a policy meant for one account is
    /// never carried out with another's keys).
    pub fn from_profiles(default: EcsClient, profiles: BTreeMap<String, String>) -> Accounts {
        let factory: ProviderFactory =
            Arc::new(|profile: &str| profile_credentials(profile).map(|(_, p)| p));
        Accounts::new(default, profiles, factory)
    }

    /// The profile `account` signs with.
    pub fn profile_of<'a>(&'a self, account: &'a str) -> &'a str {
        self.profiles.get(account).map_or(account, String::as_str)
    }

    /// The default account's client.
    pub fn default_client(&self) -> &EcsClient {
        &self.default
    }

    fn provider(&self, account: &str) -> Result<SharedProvider, String> {
        match &self.factory {
            None => Err(format!(
                "this command was started without named accounts, so account {account:?} cannot be used"
            )),
            Some(make) => make(self.profile_of(account)),
        }
    }

    /// The client of `account` (`""` is the default account). An account whose credentials
    /// cannot be built gets a client that fails every call with the reason, so the failure is
    /// recorded where the call would have been.
    pub fn client(&self, account: &str) -> EcsClient {
        if account == DEFAULT_ACCOUNT {
            return self.default.clone();
        }
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = built.get(account) {
            return c.clone();
        }
        let creds = self
            .provider(account)
            .unwrap_or_else(|reason| Arc::new(Unavailable(reason)));
        let c = self.default.with_credentials(creds);
        built.insert(account.to_string(), c.clone());
        c
    }

    /// Checks that every account the policies name has usable credentials (reads profile files;
    /// no network), naming the first policy of each account that does not.
    pub fn check<'a>(
        &self,
        uses: impl IntoIterator<Item = AccountUse<'a>>,
    ) -> Result<(), Box<AccountError>> {
        let mut seen = BTreeSet::new();
        for u in uses {
            let account = u.account;
            if !seen.insert(account) {
                continue;
            }
            if let Err(reason) = self.provider(account) {
                return Err(Box::new(AccountError {
                    policy: u.policy.to_string(),
                    file: u.file.display().to_string(),
                    line: u.line,
                    account: account.to_string(),
                    profile: self.profile_of(account).to_string(),
                    reason,
                }));
            }
        }
        Ok(())
    }
}

/// The credentials of the aliyun CLI profile `profile` as the only source, with a description of
/// where they come from (no secret), or why they cannot be used.
pub fn profile_credentials(profile: &str) -> Result<(String, SharedProvider), String> {
    let chain = ChainProvider::new(ChainOptions {
        profile: Some(profile.to_string()),
        ..ChainOptions::default()
    });
    let source = chain.source().map_err(|e| e.to_string())?.to_string();
    Ok((source, Arc::new(chain)))
}
