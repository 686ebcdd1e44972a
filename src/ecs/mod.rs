//! The signed ECS OpenAPI client.
pub mod types;
pub use types::{ChargeType, Instance, InstanceStatus};
