//! The hit-rate lab's modules, kept free of `crate::` paths so that
//! `tests/hit_rate_lab.rs` can include them with `#[path]` and run the lab end to end.
//!
//! - `access_log`: Common / Combined Log Format lines.
//! - `trace`: the requests to replay (from a log, or synthetic) and the ideal outcome.
//! - `memcached`: a private memcached per point.
//! - `replay`: one replay through `MemcacheLayer`.
//! - `sweep`: the axes and their points (where a new axis goes).
//! - `report`: table, CSV, JSON and the SVG chart.
//! - `cli`: the command line and the run.

pub mod access_log;
pub mod cli;
pub mod memcached;
pub mod replay;
pub mod report;
// The proxy's own parser, so that a size reads the same in the lab and in `--near-cache`.
#[path = "../../../src/bin/tower-memcache-proxy/size.rs"]
pub mod size;
pub mod sweep;
pub mod trace;
