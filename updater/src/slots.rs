//! The A/B slots on this node's disk.

use herd_init::cmdline::Cmdline;
use herd_init::disks::{self, Part};
use herd_init::os_release;

use crate::Error;

/// The running slot and version and where the other slot lives.
#[derive(Debug, Clone)]
pub struct Slots {
    /// Running slot name (`a` or `b`).
    pub running: String,
    /// The other slot.
    pub other: String,
    /// Running version (os-release IMAGE_VERSION).
    pub version: String,
    /// Image name (os-release IMAGE_ID).
    pub image: String,
    /// The disk holding the slots (e.g. `vda`).
    pub disk: String,
}

impl Slots {
    /// Reads the running system.
    pub fn detect() -> Result<Slots, Error> {
        let c = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        let running = c
            .slot
            .clone()
            .ok_or_else(|| Error::Disk("no herd.slot= on the kernel command line".into()))?;
        let other = if running == "a" { "b" } else { "a" }.to_string();
        let uuid = c
            .usr_partuuid
            .clone()
            .ok_or_else(|| Error::Disk("no mount.usr= on the kernel command line".into()))?;
        let usr = disks::scan()
            .into_iter()
            .find(|p| p.entry.part_guid.to_string() == uuid)
            .ok_or_else(|| {
                Error::Disk(format!("the running /usr partition {uuid} is not found"))
            })?;
        Ok(Slots {
            running,
            other,
            version: os_release::field("IMAGE_VERSION").unwrap_or_default(),
            image: os_release::field("IMAGE_ID").unwrap_or_else(|| "herd".into()),
            disk: usr.disk,
        })
    }

    /// The partition named `name` on the slots' disk.
    pub fn part(&self, name: &str) -> Result<Part, Error> {
        disks::scan()
            .into_iter()
            .find(|p| p.disk == self.disk && p.entry.name == name)
            .ok_or_else(|| Error::Disk(format!("no partition named {name} on {}", self.disk)))
    }
}
