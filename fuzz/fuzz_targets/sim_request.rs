//! Arbitrary bytes as requests to the ECS simulator: method, query and body through its
//! parsing, signature check and dispatch. See `harness/sim_request.rs` for the format and checks.
#![no_main]

#[path = "../harness/sim_request.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::check(data);
});
