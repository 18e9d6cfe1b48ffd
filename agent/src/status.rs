//! What the agent knows about its pods, shared between the pod workers
//! (which write it) and the local API (which shows it), plus a bounded
//! list of recent events. Every event is also one log line.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::logs::now;

/// A pod's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Phase {
    /// Pulling and verifying images, making volumes.
    Pending,
    /// Every container started.
    Running,
    /// Waiting out the restart back-off.
    BackOff,
    /// Ended and will not restart: every container exited 0.
    Succeeded,
    /// Ended and will not restart: a container failed.
    Failed,
    /// Not started: the manifest is invalid or its image may not run.
    Refused,
    /// Being stopped.
    Terminating,
}

/// One container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Name in the pod.
    pub name: String,
    /// Image as the manifest names it.
    pub image: String,
    /// Manifest digest it runs.
    #[serde(default)]
    pub digest: Option<String>,
    /// Id of the key whose signature was accepted.
    #[serde(default)]
    pub signed_by: Option<String>,
    /// PID on the node while running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// "running", "exited", "waiting".
    pub state: String,
    /// How it last ended, e.g. "exit code 0" or "signal 9".
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// One pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodStatus {
    /// metadata.name.
    pub name: String,
    /// The manifest file.
    pub file: String,
    /// Phase.
    pub phase: Phase,
    /// Times the pod was started again.
    pub restarts: u32,
    /// Why it is refused, failed or backing off.
    #[serde(default)]
    pub message: Option<String>,
    /// When the pod last started (seconds since the epoch).
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Containers.
    pub containers: Vec<ContainerStatus>,
}

/// Something that happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the epoch.
    pub time: u64,
    /// The pod (or "" for the agent itself).
    pub pod: String,
    /// Short reason: Started, Exited, Refused, Pulled, BackOff, Unhealthy, …
    pub reason: String,
    /// Details.
    pub message: String,
}

/// Events kept for the API.
pub const MAX_EVENTS: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    pods: BTreeMap<String, PodStatus>,
    events: VecDeque<Event>,
}

/// The shared state.
#[derive(Debug, Clone, Default)]
pub struct Status(Arc<Mutex<Inner>>);

impl Status {
    /// Records an event and logs it.
    pub fn event(&self, pod: &str, reason: &str, message: impl Into<String>) {
        let message = message.into();
        if pod.is_empty() {
            println!("{reason}: {message}");
        } else {
            println!("pod {pod}: {reason}: {message}");
        }
        let mut g = self.0.lock().expect("status lock");
        if g.events.len() == MAX_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(Event {
            time: now(),
            pod: pod.into(),
            reason: reason.into(),
            message,
        });
    }

    /// Changes pod `name` (inserting `init()` if it is not there).
    pub fn update(
        &self,
        name: &str,
        init: impl FnOnce() -> PodStatus,
        f: impl FnOnce(&mut PodStatus),
    ) {
        let mut g = self.0.lock().expect("status lock");
        f(g.pods.entry(name.into()).or_insert_with(init));
    }

    /// Changes pod `name` if it is there.
    pub fn modify(&self, name: &str, f: impl FnOnce(&mut PodStatus)) {
        if let Some(p) = self.0.lock().expect("status lock").pods.get_mut(name) {
            f(p);
        }
    }

    /// Forgets pod `name`.
    pub fn remove(&self, name: &str) {
        self.0.lock().expect("status lock").pods.remove(name);
    }

    /// Every pod.
    pub fn pods(&self) -> Vec<PodStatus> {
        self.0
            .lock()
            .expect("status lock")
            .pods
            .values()
            .cloned()
            .collect()
    }

    /// One pod.
    pub fn pod(&self, name: &str) -> Option<PodStatus> {
        self.0.lock().expect("status lock").pods.get(name).cloned()
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .expect("status lock")
            .events
            .iter()
            .cloned()
            .collect()
    }
}
