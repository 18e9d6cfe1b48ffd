//! disk.raw: its partition table (the layout depends only on the configured
//! sizes, so the file and STATE's ext4 are made before /usr is compressed),
//! then the ESP, USR-A and USR-A-verity written into it while its sha256 is
//! taken from the same bytes in memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use herd_contract::partition;
use herd_gpt::{attrs, guid_from_name, types, Guid};

use super::inputs::BootParts;
use super::usr_image::UsrSlot;
use super::{named_guid, names, round_up, MIB, VERITY_BLOCK};
use crate::boot::{EspContent, Slot};
use crate::config::{human_bytes, ImageConfig};
use crate::manifest::{OutputInfo, PartitionInfo};
use crate::output::Staging;
use crate::progress::Progress;
use crate::state::MakeExt4;

/// Partition indexes in the table [`table`] makes.
const ESP_INDEX: usize = 0;
const USR_A_INDEX: usize = 1;
const STATE_INDEX: usize = 5;

/// The partition table: ESP, USR-A and its verity partition (their UUIDs
/// from the root hash, `usrhash` also naming the disk), USR-B and its
/// verity partition, STATE. The offsets depend only on the configured sizes.
pub(super) fn table(
    cfg: &ImageConfig,
    usr_a: (Guid, Guid),
    usrhash: &str,
) -> Result<herd_gpt::Table> {
    let name = cfg.image.name.as_str();
    let slot_size = cfg.partitions.usr.0;
    let sizes = herd_verity::Params {
        salt: [0; 32],
        uuid: [0; 16],
        data_block_size: VERITY_BLOCK,
        hash_block_size: VERITY_BLOCK,
    };
    let verity_size = round_up(herd_verity::hash_area_size(slot_size, &sizes), MIB);
    let state_size = round_up(cfg.partitions.state.0, MIB);
    let ro = attrs::READ_ONLY;
    let specs = vec![
        spec(
            types::ESP,
            named_guid(name, partition::ESP),
            partition::ESP,
            cfg.partitions.esp.0,
            0,
        ),
        spec(
            types::USR_X86_64,
            usr_a.0,
            partition::usr(Slot::A),
            slot_size,
            ro,
        ),
        spec(
            types::USR_VERITY_X86_64,
            usr_a.1,
            partition::usr_verity(Slot::A),
            verity_size,
            ro,
        ),
        spec(
            types::USR_X86_64,
            named_guid(name, partition::usr(Slot::B)),
            partition::usr(Slot::B),
            slot_size,
            ro,
        ),
        spec(
            types::USR_VERITY_X86_64,
            named_guid(name, partition::usr_verity(Slot::B)),
            partition::usr_verity(Slot::B),
            verity_size,
            ro,
        ),
        spec(
            types::VAR,
            named_guid(name, partition::STATE),
            partition::STATE,
            state_size,
            attrs::GROWFS,
        ),
    ];
    let disk_bytes = MIB
        + specs
            .iter()
            .map(|s| round_up(s.size_bytes, MIB))
            .sum::<u64>()
        + MIB;
    let disk_guid = guid_from_name(&format!("herd-image:{name}"), &format!("disk:{usrhash}"));
    Ok(herd_gpt::Table::layout(disk_guid, disk_bytes, specs)?)
}

fn spec(
    type_guid: Guid,
    part_guid: Guid,
    name: &str,
    size_bytes: u64,
    attributes: u64,
) -> herd_gpt::PartitionSpec {
    herd_gpt::PartitionSpec {
        type_guid,
        part_guid,
        name: name.to_string(),
        size_bytes,
        attributes,
    }
}

/// The manifest's view of the table.
pub(super) fn partition_infos(table: &herd_gpt::Table) -> Vec<PartitionInfo> {
    table
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (offset, size) = table.partition_offset(i);
            PartitionInfo {
                number: i as u32 + 1,
                name: p.name.clone(),
                type_guid: p.type_guid.to_string(),
                uuid: p.part_guid.to_string(),
                offset,
                size,
                attributes: p.attributes,
            }
        })
        .collect()
}

/// disk.raw sized, with mke2fs making STATE in it.
pub(super) struct EarlyDisk {
    file: File,
    bytes: u64,
    state: (u64, u64),
    state_fs: MakeExt4,
}

impl EarlyDisk {
    /// Creates disk.raw in `staging` at its final size (the layout needs
    /// only the configured sizes: the root hash only names USR-A's
    /// partitions) and starts mke2fs on its STATE partition.
    pub(super) fn create(cfg: &ImageConfig, staging: &Staging, epoch: u64) -> Result<EarlyDisk> {
        let early = table(cfg, (Guid([0; 16]), Guid([0; 16])), "")?;
        let bytes = early.disk_bytes();
        let (state_off, state_len) = early.partition_offset(STATE_INDEX);
        let path: PathBuf = staging.path(names::DISK)?;
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.set_len(bytes)
            .with_context(|| format!("sizing {} to {bytes} bytes", path.display()))?;
        let state_fs = crate::state::start_ext4(
            &path,
            state_off,
            state_len,
            &named_guid(&cfg.image.name, "state-fs").to_string(),
            epoch,
        )?;
        Ok(EarlyDisk {
            file,
            bytes,
            state: (state_off, state_len),
            state_fs,
        })
    }

    /// The final table must keep the early one's layout.
    pub(super) fn check_layout(&self, table: &herd_gpt::Table) -> Result<()> {
        if table.partition_offset(STATE_INDEX) != self.state || table.disk_bytes() != self.bytes {
            anyhow::bail!(
                "internal: the disk layout changed once USR-A's partition UUIDs were known"
            );
        }
        Ok(())
    }
}

/// What goes into disk.raw besides the table and STATE.
pub(super) struct DiskContent<'a> {
    pub esp: EspContent<'a>,
    pub squashfs: Arc<Vec<u8>>,
    pub hash_area: Arc<Vec<u8>>,
    pub mtime: u32,
}

impl<'a> DiskContent<'a> {
    /// The ESP with systemd-boot and slot A's UKI, and slot A's /usr.
    pub(super) fn new(
        cfg: &'a ImageConfig,
        boot: &'a BootParts,
        uki_a: &'a [u8],
        slot: &UsrSlot,
        mtime: u32,
    ) -> DiskContent<'a> {
        DiskContent {
            esp: EspContent {
                image: &cfg.image.name,
                systemd_boot: &boot.systemd_boot,
                uki_a,
                tries: cfg.bootloader.tries,
                timeout: cfg.bootloader.timeout,
            },
            squashfs: slot.squashfs.clone(),
            hash_area: slot.hash_area.clone(),
            mtime,
        }
    }
}

/// disk.raw being hashed and flushed on threads of their own.
pub(super) struct WrittenDisk {
    bytes: u64,
    hash: JoinHandle<std::io::Result<String>>,
    flush: JoinHandle<std::io::Result<()>>,
}

/// Writes the table, the ESP, USR-A and USR-A-verity into `disk` (once
/// mke2fs is done with STATE). Its sha256 (the longest hash: hundreds of
/// MiB, mostly zeros) is taken from the pieces in memory on a thread of its
/// own, while the same pieces are written into the file.
pub(super) fn write(
    disk: EarlyDisk,
    table: &herd_gpt::Table,
    c: DiskContent,
    progress: &Progress,
) -> Result<WrittenDisk> {
    let step = progress.step(&format!(
        "writing {} ({})",
        names::DISK,
        human_bytes(disk.bytes)
    ));
    let part = |i: usize| table.partition_offset(i);
    let (usr_off, _) = part(USR_A_INDEX);
    let (vy_off, vy_len) = part(USR_A_INDEX + 1);
    if c.hash_area.len() as u64 > vy_len {
        anyhow::bail!(
            "internal: verity data ({} bytes) larger than its partition ({vy_len})",
            c.hash_area.len()
        );
    }
    let mut esp_tree = c.esp.tree()?;
    esp_tree.set_mtime_all(c.mtime);
    let (esp_off, esp_len) = part(ESP_INDEX);
    let esp_id = u32::from_le_bytes(named_guid(c.esp.image, "esp-volume-id").0[..4].try_into()?);
    let esp_bytes = Arc::new(herd_esp::fat32_image(
        &esp_tree,
        &herd_esp::EspOptions {
            size_bytes: esp_len,
            volume_id: esp_id,
            label: *b"ESP        ",
            mtime: c.mtime,
        },
    )?);
    let EarlyDisk {
        file,
        bytes: disk_bytes,
        state: (state_off, state_len),
        state_fs,
    } = disk;
    state_fs.wait()?;
    let gpt = table.pieces()?;

    let hash = {
        let (file, gpt, esp_bytes, squashfs, hash_area) = (
            file.try_clone().context("reopening disk.raw for hashing")?,
            gpt.clone(),
            esp_bytes.clone(),
            c.squashfs.clone(),
            c.hash_area.clone(),
        );
        std::thread::spawn(move || -> std::io::Result<String> {
            use crate::sparse::Region;
            let mut regions: Vec<Region> = gpt.iter().map(|(o, b)| Region::Bytes(*o, b)).collect();
            regions.push(Region::Bytes(esp_off, &esp_bytes));
            regions.push(Region::Bytes(usr_off, &squashfs));
            regions.push(Region::Bytes(vy_off, &hash_area));
            regions.push(Region::File(state_off, state_len));
            crate::sparse::sha256_regions(&file, disk_bytes, &mut regions)
        })
    };
    for (offset, bytes) in &gpt {
        file.write_all_at(bytes, *offset)
            .context("writing the partition table into the disk image")?;
    }
    file.write_all_at(&c.squashfs, usr_off)
        .context("writing USR-A into the disk image")?;
    file.write_all_at(&c.hash_area, vy_off)
        .context("writing USR-A-verity into the disk image")?;
    write_nonzero_at(&file, &esp_bytes, esp_off).context("writing the ESP into the disk image")?;
    drop(esp_bytes);
    let flush = std::thread::spawn(move || file.sync_all());
    step.done(&format!("{} partitions", table.partitions.len()));
    Ok(WrittenDisk {
        bytes: disk_bytes,
        hash,
        flush,
    })
}

impl WrittenDisk {
    /// Waits for the hash and the flush: disk.raw's output line.
    pub(super) fn finish(self) -> Result<OutputInfo> {
        let sha256 = self
            .hash
            .join()
            .map_err(|_| anyhow::anyhow!("the thread hashing {} panicked", names::DISK))?
            .with_context(|| format!("hashing {}", names::DISK))?;
        self.flush
            .join()
            .map_err(|_| anyhow::anyhow!("the thread flushing {} panicked", names::DISK))?
            .with_context(|| format!("flushing {}", names::DISK))?;
        Ok(OutputInfo {
            path: names::DISK.to_string(),
            sha256,
            size: self.bytes,
        })
    }
}

/// Writes `bytes` at `offset` of `file`, skipping the 64 KiB chunks that
/// are all zeros: the file reads as zeros there already (a fresh, sized
/// disk image), and holes cost neither page cache nor hashing reads.
fn write_nonzero_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + CHUNK).min(bytes.len());
        if bytes[at..end].iter().any(|&b| b != 0) {
            // Coalesce a run of non-zero chunks into one write.
            let mut run_end = end;
            while run_end < bytes.len() {
                let next = (run_end + CHUNK).min(bytes.len());
                if bytes[run_end..next].iter().all(|&b| b == 0) {
                    break;
                }
                run_end = next;
            }
            file.write_all_at(&bytes[at..run_end], offset + at as u64)?;
            at = run_end;
        } else {
            at = end;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_writes_give_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[5] = 1;
        bytes[200_000..300_000].fill(7);
        bytes[(1 << 20) - 1] = 9;
        let f = File::create(&p).unwrap();
        f.set_len(3 << 20).unwrap();
        write_nonzero_at(&f, &bytes, 1 << 20).unwrap();
        drop(f);
        let all = std::fs::read(&p).unwrap();
        assert_eq!(&all[1 << 20..2 << 20], &bytes[..]);
        assert!(all[..1 << 20]
            .iter()
            .chain(&all[2 << 20..])
            .all(|&b| b == 0));
        // The zero chunks stayed holes: less than the whole MiB was written.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&p).unwrap());
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks allocated");
    }
}
