//! The network side: which addresses a webhook may reach (CIDR tables, url
//! vetting, the resolver that refuses private targets) and how urls are shown in logs.
//!
//! Owns: deciding whether a destination is allowed. Must not: send anything (the dispatcher
//! does) or know about rules, chats or deliveries.

pub(crate) mod http;
pub mod ssrf;
