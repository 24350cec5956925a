//! cartat-rules turns WhatsApp chats served by the Cartat gateway into automations.
//!
//! The layout, in a paragraph: [`config`] compiles `cartat.yaml`; [`rules`] compiles rule
//! files into one [`rules::RuleSet`] (keyword automaton from [`text`], regexes, templates);
//! the [`engine`] polls each watched chat through [`gateway::client`] within one API budget,
//! diffs the page against the watermark ([`engine::watermark`], pure), decides what fires
//! ([`engine::decide`], pure), and commits the watermark and the queued deliveries in one
//! [`store`] transaction; the [`outbox::dispatcher`] then signs and sends them, retrying
//! on a schedule ([`outbox::schedule`], pure) and refusing private targets
//! ([`outbox::ssrf`]). [`daemon`] wires them together; [`commands`] are the CLI.
//!
//! Visibility: a module is `pub` only when the binary, the integration tests, the benches or
//! the load example use it; the rest (`diag`, `events`, `metrics`, `model`, `net`, `reload`,
//! `server`) is `pub(crate)`, and `unreachable_pub` warns (clippy in CI fails) on a `pub`
//! item that nothing outside its module tree can reach: write `pub(crate)` for those.

#![warn(unreachable_pub)]

pub mod cluster;
pub mod commands;
pub mod config;
mod console;
pub mod daemon;
pub(crate) mod diag;
pub mod duration;
pub mod engine;
pub(crate) mod events;
pub mod failpoint;
pub mod gateway;
pub(crate) mod metrics;
pub mod mock;
pub(crate) mod model;
pub(crate) mod net;
pub mod outbox;
pub mod pgtest;
pub mod receiver;
pub(crate) mod reload;
pub(crate) mod resident;
pub mod rules;
pub(crate) mod server;
pub mod store;
pub mod text;

/// Installs the TLS crypto provider once (ring); harmless when already installed.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
