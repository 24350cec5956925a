//! The Cartat side: the reply model and the HTTP client (the fake Cartat the tests, the demo
//! and the load tests use is [`crate::mock`]).

pub mod client;
pub mod http1;
pub mod memo;
pub mod model;
mod tick_io;
mod wire;
