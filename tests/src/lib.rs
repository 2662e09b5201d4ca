//! Test support for the load balancer: the network-namespace lab ([`lab`]),
//! frame building ([`frames`]), and where the built artifacts are ([`paths`]).

pub mod frames;
pub mod lab;
pub mod lbd;
pub mod paths;
