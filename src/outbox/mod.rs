//! Delivery: the envelope, signing, the retry schedule, the SSRF guard (pure), and the
//! dispatcher that moves outbox rows through them.

pub mod dispatcher;
pub mod envelope;
pub mod lifecycle;
pub mod schedule;
pub mod sign;
pub mod ssrf;
