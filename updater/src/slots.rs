//! The A/B slots on this node's disk.

use herd_contract::cmdline::Cmdline;
use herd_contract::{partition, BootEntry, Slot};
use herd_node::disks::{self, Part};
use herd_node::os_release;

use crate::Error;

/// The running slot and version and where the other slot lives.
#[derive(Debug, Clone)]
pub struct Slots {
    /// The running slot.
    pub running: Slot,
    /// The other slot.
    pub other: Slot,
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
            .as_deref()
            .ok_or_else(|| Error::Disk("no herd.slot= on the kernel command line".into()))?;
        let running = Slot::parse(running).ok_or_else(|| {
            Error::Disk(format!(
                "herd.slot={running} on the kernel command line names no slot (a or b)"
            ))
        })?;
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
            other: running.other(),
            version: os_release::field("IMAGE_VERSION").unwrap_or_default(),
            image: os_release::field("IMAGE_ID").unwrap_or_else(|| "herd".into()),
            disk: usr.disk,
        })
    }

    /// A slot's /usr partition.
    pub fn usr(&self, slot: Slot) -> Result<Part, Error> {
        self.part(partition::usr(slot))
    }

    /// A slot's verity partition.
    pub fn usr_verity(&self, slot: Slot) -> Result<Part, Error> {
        self.part(partition::usr_verity(slot))
    }

    /// Whether `e` boots `slot` of this node's image.
    pub fn boots(&self, e: &BootEntry, slot: Slot) -> bool {
        e.boots(&self.image, slot)
    }

    /// The partition named `name` on the slots' disk.
    pub fn part(&self, name: &str) -> Result<Part, Error> {
        disks::scan()
            .into_iter()
            .find(|p| p.disk == self.disk && p.entry.name == name)
            .ok_or_else(|| Error::Disk(format!("no partition named {name} on {}", self.disk)))
    }
}
