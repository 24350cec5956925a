//! The engine: the watermark diff and the rule decisions (pure), and the poller that drives
//! them against the gateway and the store.

pub mod board;
pub mod decide;
pub mod digest;
pub mod history;
pub mod poller;
pub mod schedule;
pub mod silence;
pub mod snapshot;
pub mod step;
pub mod watermark;
