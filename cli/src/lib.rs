//! The CLI's library half: benchmark runs and their JSON reports, used by `scalewise bench` and by
//! `cargo bench -p scalewise-cli`. The scalewise library itself carries only the data path.

pub mod bench;
pub mod demo;
pub mod peaks;
