//! The ECS simulator.
