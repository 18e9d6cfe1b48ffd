//! Reboot slots for a fleet of herd nodes: before a node reboots into a new
//! release it takes one of a group's slots, and gives it back once the new
//! boot is blessed (or fell back). Two backends, both spoken over plain
//! HTTP/1.1 with JSON so the node carries no gRPC stack (no protobuf code,
//! no HTTP/2 client, no extra TLS library beyond what it already has):
//!
//! - [`etcd::Etcd`]: a counting semaphore in etcd v3 through its JSON
//!   gateway (the locksmith design on leases and transactions; see that
//!   module for why two nodes can never take the last slot together);
//! - [`fleetlock::FleetLock`]: the FleetLock protocol Zincati speaks, so an
//!   operator's existing FleetLock server (e.g. airlock) hands out slots.
//!
//! [`status`] holds the fleet status records nodes on etcd publish.

pub mod b64;
pub mod etcd;
pub mod fleetlock;
pub mod status;
pub mod tls;

/// What went wrong talking to a lock backend; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint answered.
    #[error("reboot lock {backend} at {endpoint}: {message}: check that it runs and that this node reaches it ([lock] in the update configuration); the node does not reboot until it can take a slot, it keeps running and tries again")]
    Unreachable {
        /// "etcd" or "fleetlock"
        backend: &'static str,
        /// the endpoint tried last
        endpoint: String,
        /// the transport error
        message: String,
    },
    /// The backend answered something this client does not understand.
    #[error("reboot lock {backend}: {what}: {message}: is this an etcd v3.4+ JSON gateway / a FleetLock server? Check the endpoint in [lock]")]
    Protocol {
        /// "etcd" or "fleetlock"
        backend: &'static str,
        /// which request
        what: String,
        /// what was wrong with the answer
        message: String,
    },
    /// The TLS settings cannot be used: a file missing or not PEM, a key
    /// that is not the certificate's.
    #[error("reboot lock {backend}: {message}; the node does not reboot until it can take a slot")]
    TlsSetup {
        /// "etcd"
        backend: &'static str,
        /// what is wrong and what to put where
        message: String,
    },
    /// The endpoint refused the TLS connection, or this node refused the
    /// endpoint's certificate, or TLS and plain HTTP met.
    #[error("reboot lock {backend} at {endpoint}: {message}; the node does not reboot until it can take a slot, it keeps running and tries again")]
    Tls {
        /// "etcd"
        backend: &'static str,
        /// the endpoint
        endpoint: String,
        /// what happened and what to do
        message: String,
    },
    /// The backend refused a request (e.g. FleetLock steady-state).
    #[error("reboot lock {backend}: {what} refused: {message}; it is tried again next round")]
    Refused {
        /// "etcd" or "fleetlock"
        backend: &'static str,
        /// which request
        what: String,
        /// the server's reason
        message: String,
    },
}

/// The outcome of one try to take a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// This node holds a slot now (or held it already).
    Granted,
    /// All slots are taken.
    Busy {
        /// Why, for the log and `herd-update status`.
        why: String,
        /// How many slots must be freed before it is this node's turn (a
        /// queue position: 1 = the next freed slot), when the backend keeps
        /// a queue; callers poll sooner the nearer the turn.
        ahead: Option<u32>,
    },
}

/// A reboot-slot backend.
pub trait RebootLock: Send {
    /// "etcd" or "fleetlock".
    fn backend(&self) -> &'static str;
    /// One try to take a slot (an etcd client retries its own lost races).
    fn acquire(&mut self) -> Result<Acquire, Error>;
    /// Gives the slot back; releasing a slot not held is not an error.
    fn release(&mut self) -> Result<(), Error>;
    /// Puts this node's place in the backend's queue (if it keeps one) on
    /// `lease`, a lease the caller keeps alive anyway (the node's fleet
    /// status record's): a waiting node then refreshes one lease, not two.
    fn queue_on_lease(&mut self, _lease: i64) {}
    /// Stops waiting for a slot (the node no longer wants to reboot now,
    /// e.g. its maintenance window closed): leaves the queue, if any.
    fn withdraw(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// What must survive a reboot to keep holding the slot (the etcd lease).
    fn token(&self) -> Option<String>;
    /// Keeps holding the slot taken before a reboot (`token` from then).
    /// Returns false when the backend says the slot is gone already.
    fn resume(&mut self, token: Option<&str>) -> Result<bool, Error>;
}
