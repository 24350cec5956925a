//! Delivery: the envelope, signing, the retry schedule, and the dispatcher that moves outbox
//! rows through them (the SSRF guard they apply is `crate::net`'s).

pub mod dispatcher;
pub mod envelope;
pub mod lifecycle;
pub mod schedule;
pub mod sign;

/// The network policy lives in `crate::net`; this path stays for the delivery side's callers.
pub use crate::net::ssrf;
