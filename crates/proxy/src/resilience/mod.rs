//! What keeps a failing backend from taking its callers down with it: retries and their budget
//! ([`retry`], [`budget`]), deadlines ([`deadline`]), connection-pool limits ([`limits`]) and
//! outlier ejection ([`outlier`]), and active health checks ([`health`]). Each is a small state machine over plain data and explicit
//! time, tested without sockets; the forwarding code drives them.

pub mod budget;
pub mod deadline;
pub mod health;
pub mod limits;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod shed;
