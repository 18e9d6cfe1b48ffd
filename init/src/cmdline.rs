//! The kernel command line: what herd-init needs from it. The words and
//! their parser are the node's contract ([`herd_contract::cmdline`]).

pub use herd_contract::cmdline::Cmdline;
