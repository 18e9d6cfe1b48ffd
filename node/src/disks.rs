//! Finding partitions by GPT fields. The kernel's sysfs does not show
//! PARTUUIDs, so herd-init reads the GPT of each disk itself.
//!
//! [`boot_disk`] decides which disk /usr and STATE come from: the disk
//! holding the ESP the boot loader ran from (`LoaderDevicePartUUID`), or,
//! when the boot loader did not say, the only disk carrying this usrhash's
//! partitions. A second disk with the same partitions (a stick holding a
//! copy of a release and a STATE of its own) is never taken.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use herd_gpt::{Guid, Partition, Table};

/// A partition the kernel has made a device node for.
#[derive(Debug, Clone)]
pub struct Part {
    /// Whole-disk name, e.g. `vda`.
    pub disk: String,
    /// Partition device, e.g. `/dev/vda2`.
    pub dev: String,
    /// Partition kernel name, e.g. `vda2`.
    pub name: String,
    /// GPT entry.
    pub entry: Partition,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every GPT partition of every disk, as far as devices exist.
pub fn scan() -> Vec<Part> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    let mut disks: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    disks.sort();
    for disk in disks {
        if ["loop", "ram", "dm-", "sr", "zram"]
            .iter()
            .any(|p| disk.starts_with(p))
        {
            continue;
        }
        let ss = read(
            &Path::new("/sys/block")
                .join(&disk)
                .join("queue/logical_block_size"),
        )
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
        let Ok(mut f) = File::open(format!("/dev/{disk}")) else {
            continue;
        };
        let Ok(table) = Table::read_from(&mut f, ss) else {
            continue;
        };
        let children: Vec<(String, u32)> = std::fs::read_dir(Path::new("/sys/block").join(&disk))
            .map(|rd| {
                rd.filter_map(|e| {
                    let e = e.ok()?;
                    let n: u32 = read(&e.path().join("partition"))?.parse().ok()?;
                    Some((e.file_name().into_string().ok()?, n))
                })
                .collect()
            })
            .unwrap_or_default();
        for entry in table.partitions {
            if let Some((name, _)) = children.iter().find(|(_, n)| *n == entry.number) {
                if Path::new("/dev").join(name).exists() {
                    out.push(Part {
                        disk: disk.clone(),
                        dev: format!("/dev/{name}"),
                        name: name.clone(),
                        entry,
                    });
                }
            }
        }
    }
    out
}

/// Waits up to `timeout` for a partition matching `want`.
pub fn wait_for(want: &dyn Fn(&Part) -> bool, timeout: Duration) -> Option<Part> {
    let t0 = Instant::now();
    loop {
        if let Some(p) = scan().into_iter().find(|p| want(p)) {
            return Some(p);
        }
        if t0.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Matches a PARTUUID.
pub fn by_uuid(uuid: Guid) -> impl Fn(&Part) -> bool {
    move |p| p.entry.part_guid == uuid
}

/// Where /usr and STATE come from, and the other disks that carry the same
/// /usr partitions and are ignored.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// Whole-disk name, e.g. `vda`.
    pub disk: String,
    /// The USR data partition (PARTUUID = first half of usrhash).
    pub usr: Part,
    /// The USR-verity partition (PARTUUID = second half of usrhash).
    pub verity: Part,
    /// Other disks carrying either partition, not used.
    pub ignored: Vec<String>,
}

/// Why no boot disk was chosen. [`BootDiskError::is_final`] tells a refusal
/// from a state that may change while disks are still appearing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootDiskError {
    /// More than one disk holds the ESP the boot loader ran from (byte
    /// copies of one image share every PARTUUID).
    #[error(
        "the ESP the boot loader ran from (LoaderDevicePartUUID {esp}) is on more than one disk ({}): \
         herd-init cannot tell which one booted, and a copy would hand the node its /etc and /var; \
         refusing to boot: detach every disk but the boot disk and reboot",
        .disks.join(", ")
    )]
    EspOnSeveralDisks {
        /// The ESP's PARTUUID.
        esp: Guid,
        /// The disks holding it.
        disks: Vec<String>,
    },
    /// No boot loader variable, and more than one disk carries the /usr
    /// partitions.
    #[error(
        "the boot loader did not say which disk it ran from (no LoaderDevicePartUUID: direct kernel boot, \
         or a loader that does not set it) and more than one disk carries the /usr partitions of this \
         usrhash ({}): refusing to guess which disk is the node's; detach every disk but the boot disk and reboot",
        .disks.join(", ")
    )]
    SeveralCarriers {
        /// The disks carrying them.
        disks: Vec<String>,
    },
    /// The ESP the boot loader ran from is on no disk (yet).
    #[error("the ESP the boot loader ran from (LoaderDevicePartUUID {esp}) is on no disk herd-init can see")]
    NoEsp {
        /// The ESP's PARTUUID.
        esp: Guid,
    },
    /// The boot disk does not carry the /usr partitions, another disk does.
    #[error(
        "the boot loader ran from the ESP on {disk}, but {disk} has no USR partition {usr} for this usrhash \
         (found on: {}); refusing to take /usr and STATE from another disk",
        .carriers.join(", ")
    )]
    NotOnBootDisk {
        /// The boot disk.
        disk: String,
        /// The USR data PARTUUID.
        usr: Guid,
        /// The disks that carry it.
        carriers: Vec<String>,
    },
    /// No USR data partition (yet).
    #[error("no USR partition with PARTUUID {0}")]
    MissingUsr(Guid),
    /// No USR-verity partition on the boot disk (yet).
    #[error("no USR-verity partition with PARTUUID {0}")]
    MissingVerity(Guid),
}

impl BootDiskError {
    /// A refusal that waiting for more disks cannot undo.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            BootDiskError::EspOnSeveralDisks { .. } | BootDiskError::SeveralCarriers { .. }
        )
    }
}

fn disks_with(parts: &[Part], want: impl Fn(&Part) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in parts.iter().filter(|p| want(p)) {
        if !out.contains(&p.disk) {
            out.push(p.disk.clone());
        }
    }
    out
}

/// Chooses the disk /usr and STATE come from, among `parts` (as [`scan`]
/// lists them). `usr`/`verity` are the PARTUUIDs from usrhash; `esp` is the
/// boot loader's `LoaderDevicePartUUID`, if it set one. With it, only the
/// disk holding that ESP is used; without it, exactly one disk may carry
/// the /usr partitions.
pub fn boot_disk(
    parts: &[Part],
    usr: Guid,
    verity: Guid,
    esp: Option<Guid>,
) -> Result<BootDisk, BootDiskError> {
    let carriers = disks_with(parts, |p| {
        p.entry.part_guid == usr || p.entry.part_guid == verity
    });
    let disk = match esp {
        Some(esp) => {
            let holding = disks_with(parts, |p| p.entry.part_guid == esp);
            match holding.len() {
                0 => return Err(BootDiskError::NoEsp { esp }),
                1 => holding[0].clone(),
                _ => {
                    return Err(BootDiskError::EspOnSeveralDisks {
                        esp,
                        disks: holding,
                    })
                }
            }
        }
        None => match carriers.len() {
            0 => return Err(BootDiskError::MissingUsr(usr)),
            1 => carriers[0].clone(),
            _ => return Err(BootDiskError::SeveralCarriers { disks: carriers }),
        },
    };
    let on_disk = |g: Guid| {
        parts
            .iter()
            .find(|p| p.disk == disk && p.entry.part_guid == g)
            .cloned()
    };
    let Some(usr_part) = on_disk(usr) else {
        return Err(if carriers.iter().any(|c| *c != disk) {
            BootDiskError::NotOnBootDisk {
                disk,
                usr,
                carriers,
            }
        } else {
            BootDiskError::MissingUsr(usr)
        });
    };
    let verity = on_disk(verity).ok_or(BootDiskError::MissingVerity(verity))?;
    let ignored = carriers.into_iter().filter(|c| *c != disk).collect();
    Ok(BootDisk {
        disk,
        usr: usr_part,
        verity,
        ignored,
    })
}

/// `major:minor` of a partition device.
pub fn devno(p: &Part) -> Option<String> {
    read(&Path::new("/sys/class/block").join(&p.name).join("dev"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_gpt::types;

    const USR: Guid = Guid([1; 16]);
    const VERITY: Guid = Guid([2; 16]);
    const ESP: Guid = Guid([3; 16]);
    const STICK_ESP: Guid = Guid([4; 16]);

    fn part(disk: &str, number: u32, type_guid: Guid, part_guid: Guid) -> Part {
        Part {
            disk: disk.into(),
            dev: format!("/dev/{disk}{number}"),
            name: format!("{disk}{number}"),
            entry: Partition {
                number,
                type_guid,
                part_guid,
                name: String::new(),
                first_lba: 2048,
                last_lba: 4095,
                attributes: 0,
            },
        }
    }

    /// A herd disk: ESP, USR, USR-verity, STATE.
    fn herd_disk(disk: &str, esp: Guid) -> Vec<Part> {
        vec![
            part(disk, 1, types::ESP, esp),
            part(disk, 2, Guid([9; 16]), USR),
            part(disk, 3, Guid([9; 16]), VERITY),
            part(disk, 6, types::VAR, Guid([disk.as_bytes()[2]; 16])),
        ]
    }

    #[test]
    fn the_boot_loaders_disk_wins_over_a_copy_that_sorts_first() {
        // vda is the stick (sorts first, as scan() lists disks); vdb booted.
        let mut parts = herd_disk("vda", STICK_ESP);
        parts.extend(herd_disk("vdb", ESP));
        let b = boot_disk(&parts, USR, VERITY, Some(ESP)).unwrap();
        assert_eq!(b.disk, "vdb");
        assert_eq!(
            (b.usr.dev.as_str(), b.verity.dev.as_str()),
            ("/dev/vdb2", "/dev/vdb3")
        );
        assert_eq!(b.ignored, ["vda"]);
    }

    #[test]
    fn byte_copies_of_the_boot_disk_are_refused() {
        let mut parts = herd_disk("vda", ESP);
        parts.extend(herd_disk("vdb", ESP));
        let e = boot_disk(&parts, USR, VERITY, Some(ESP)).unwrap_err();
        assert_eq!(
            e,
            BootDiskError::EspOnSeveralDisks {
                esp: ESP,
                disks: vec!["vda".into(), "vdb".into()]
            }
        );
        assert!(e.is_final());
        assert!(
            e.to_string()
                .contains("is on more than one disk (vda, vdb)"),
            "{e}"
        );
    }

    #[test]
    fn without_the_variable_exactly_one_disk_may_carry_usr() {
        let one = herd_disk("vda", ESP);
        let b = boot_disk(&one, USR, VERITY, None).unwrap();
        assert_eq!((b.disk.as_str(), b.ignored.len()), ("vda", 0));
        let mut two = herd_disk("vda", STICK_ESP);
        two.extend(herd_disk("vdb", ESP));
        let e = boot_disk(&two, USR, VERITY, None).unwrap_err();
        assert_eq!(
            e,
            BootDiskError::SeveralCarriers {
                disks: vec!["vda".into(), "vdb".into()]
            }
        );
        assert!(e.is_final());
        // A disk with only one of the pair counts as carrying it.
        let mut half = herd_disk("vdb", ESP);
        half.push(part("sda", 3, Guid([9; 16]), VERITY));
        assert!(matches!(
            boot_disk(&half, USR, VERITY, None),
            Err(BootDiskError::SeveralCarriers { .. })
        ));
    }

    #[test]
    fn usr_only_on_another_disk_is_not_taken() {
        // The boot loader ran from sda's ESP; only the stick has /usr.
        let mut parts = vec![part("sda", 1, types::ESP, ESP)];
        parts.extend(herd_disk("vda", STICK_ESP));
        let e = boot_disk(&parts, USR, VERITY, Some(ESP)).unwrap_err();
        assert!(matches!(&e, BootDiskError::NotOnBootDisk { disk, .. } if disk == "sda"));
        assert!(!e.is_final(), "waits: the partitions may still appear");
        assert!(e
            .to_string()
            .contains("refusing to take /usr and STATE from another disk"));
    }

    #[test]
    fn waits_while_partitions_are_missing() {
        assert_eq!(
            boot_disk(&[], USR, VERITY, Some(ESP)).unwrap_err(),
            BootDiskError::NoEsp { esp: ESP }
        );
        assert_eq!(
            boot_disk(&[], USR, VERITY, None).unwrap_err(),
            BootDiskError::MissingUsr(USR)
        );
        let mut parts = herd_disk("vda", ESP);
        parts.retain(|p| p.entry.part_guid != VERITY);
        let e = boot_disk(&parts, USR, VERITY, Some(ESP)).unwrap_err();
        assert_eq!(e, BootDiskError::MissingVerity(VERITY));
        assert!(!e.is_final());
    }
}
