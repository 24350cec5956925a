//! The Cartat side: the reply model, the HTTP client, and the mock gateway used by the
//! tests, the demo and the load tests.

pub mod client;
pub mod http1;
pub mod memo;
pub mod mock;
pub mod model;
mod tick_io;
mod wire;
