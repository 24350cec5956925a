//! Integration tests: the real binary against the project's mock gateway and a real webhook
//! receiver on 127.0.0.1, with a real SQLite file per test. One test binary (one link step).

mod accounts;
mod admin_api;
mod borders;
mod browser;
mod cli;
mod cluster;
mod console;
mod crash;
mod delivery;
mod deploy;
mod digest;
mod e2e;
mod faults;
mod fixtures;
mod metrics;
mod poller;
mod postgres;
mod resolved;
mod silence;
mod stateful;
mod support;
