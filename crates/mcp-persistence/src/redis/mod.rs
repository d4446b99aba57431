//! The Redis side of the cluster: the shared rate limiter and event bus, and how both reach
//! Redis without ever making a caller wait for it.

pub(crate) mod bus;
pub(crate) mod limiter;
pub(crate) mod link;
