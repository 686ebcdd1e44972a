//! The signed ECS OpenAPI client (RPC style, version 2014-05-26): signing, the two actions
//! ecs-janitor uses (`DescribeInstances`, `DeleteInstances`; for savings `DescribeDisks`,
//! `DescribePrice`, `DescribeRenewalPrice`; for marks `TagResources`, `UntagResources`), error
//! classification and credentials.

pub mod accounts;
pub mod chain;
pub mod client;
pub mod credentials;
pub mod error;
pub mod imds;
pub mod pace;
pub mod profile;
pub mod regions;
pub mod sign;
pub mod types;

pub use accounts::{AccountError, AccountUse, Accounts, DEFAULT_ACCOUNT};
pub use client::{
    ClientConfig, DeleteAnswer, DeleteRequest, DescribeFilter, DescribePage, EcsClient,
    PriceRequest, SignatureVersion,
};
pub use credentials::{Credentials, CredentialsProvider, EnvProvider, Secret, StaticProvider};
pub use error::{classify_code, is_account_wide, EcsError, ErrorClass};
pub use types::{ChargeType, Disk, DiskKind, Instance, InstanceStatus, PriceQuote, Tags};
