//! What the updater remembers on STATE (`/var/lib/herd/update/state.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io, Error};

/// A slot written and waiting for its first good boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The version written.
    pub version: String,
    /// Into which slot.
    pub slot: String,
    /// The boot (kernel boot_id) that wrote it.
    pub boot_id: String,
}

/// A download that can be resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// Version being downloaded.
    pub version: String,
    /// Payload role.
    pub role: String,
    /// Bytes already written to the slot.
    pub offset: u64,
    /// The payload's signed size.
    #[serde(default)]
    pub size: u64,
}

/// The persistent state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Highest channel sequence seen (rollback protection).
    pub highest_seq: u64,
    /// Versions that failed to boot here.
    pub bad: Vec<String>,
    /// A slot waiting for its first boot.
    pub pending: Option<Pending>,
    /// A download in progress.
    pub partial: Option<Partial>,
    /// The last error, for `status`.
    pub last_error: Option<String>,
    /// When the repository was last checked.
    pub last_check: u64,
    /// Root files (envelopes, exactly as signed) verified past the key set
    /// baked into the image, oldest first: the root chain starts from the
    /// newest of them, so a repository cannot undo a key rotation. Kept in
    /// this file so the newest root, the highest sequence and the trusted
    /// time are saved together by one atomic rename.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<herd_release::Envelope>,
    /// The newest signing time (unix seconds) of metadata verified here:
    /// this node's "now" never goes below it (see [`crate::trust`]).
    #[serde(default)]
    pub trusted_time: u64,
    /// Where the bytes of the last delta update came from (local slot or
    /// network), for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::delta::DeltaStats>,
    /// "rollout of X halted by the publisher: why" when the last check
    /// found the channel's release halted and this node not on it, for
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// The reboot slot (`reboot = "coordinated"`): waited for or held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockState>,
    /// This node's wave of the channel's phased rollout at the last check
    /// (index into its waves), for the fleet status record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
}

/// Where this node stands with its fleet's reboot slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// "etcd" or "fleetlock".
    pub backend: String,
    /// The group.
    pub group: String,
    /// Since when (unix seconds) this node waits for a slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<u64>,
    /// Since when (unix seconds) this node holds a slot; it keeps it across
    /// the reboot until the new boot is blessed or fell back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_since: Option<u64>,
    /// What keeps the slot across the reboot (the etcd lease id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Why the last try did not get a slot (busy or an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl State {
    /// Adds a payload's delta figures to those of its release (a new
    /// release starts over).
    pub fn count_delta(&mut self, st: crate::delta::DeltaStats) {
        match &mut self.delta {
            Some(d) if d.version == st.version => d.add(&st),
            d => *d = Some(st),
        }
    }

    /// The state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Loads the state (empty when there is none yet).
    pub fn load(dir: &Path) -> Result<State, Error> {
        match std::fs::read(Self::path(dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Config(format!("{}: {e}", Self::path(dir).display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(format!("reading {}", Self::path(dir).display()))(e)),
        }
    }

    /// Saves atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("state serialises");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, Self::path(dir)))
            // The rename is durable only once the directory is synced.
            .and_then(|_| std::fs::File::open(dir)?.sync_all())
            .map_err(io("saving the updater state"))
    }
}

/// This boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A stable per-node id for rollout waves (made once, kept on STATE).
pub fn node_id(dir: &Path) -> String {
    let p = dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&p) {
        if !id.trim().is_empty() {
            return id.trim().to_string();
        }
    }
    let id = boot_id().replace('-', "");
    let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&p, &id));
    id
}
