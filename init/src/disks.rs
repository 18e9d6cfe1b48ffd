//! Finding partitions by GPT fields. The kernel's sysfs does not show
//! PARTUUIDs, so herd-init reads the GPT of each disk itself.

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

/// `major:minor` of a partition device.
pub fn devno(p: &Part) -> Option<String> {
    read(&Path::new("/sys/class/block").join(&p.name).join("dev"))
}
