//! Arbitrary bytes as one or more policy files, through the loading and validation that
//! `ecs-janitor validate` runs. See `harness/policy_loader.rs` for the input format and checks.
#![no_main]

#[path = "../harness/policy_loader.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
