//! Every `outreach` command but `worker`, `migrate` and `health` (thin, in
//! `main.rs`): what they do lives in the library; here are their arguments
//! and output. `bench` and `demo` are here too, so the library the worker
//! links carries neither.

pub mod bench;
pub mod demo;
pub mod dlq;
pub mod enqueue;
pub mod suppression;
pub mod tenant;
