//! herd-init: herd's PID 1. The library holds what the image builder shares
//! with it (the configuration type) and the host-testable parts.

pub mod config;
