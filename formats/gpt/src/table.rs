//! The partition table: layout, serialisation, parsing.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::{Error, Guid};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ALIGN_BYTES: u64 = 1024 * 1024;
const NAME_UNITS: usize = 36;

/// One partition to lay out: [`Table::layout`] places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// Partition type (see [`crate::types`]).
    pub type_guid: Guid,
    /// Unique partition GUID (PARTUUID).
    pub part_guid: Guid,
    /// Partition label (PARTLABEL), at most 36 UTF-16 units.
    pub name: String,
    /// Size in bytes; rounded up to a whole MiB.
    pub size_bytes: u64,
    /// Attribute bits (see [`crate::attrs`]).
    pub attributes: u64,
}

/// A used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based entry number (the `N` of `/dev/vdaN`).
    pub number: u32,
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID (PARTUUID).
    pub part_guid: Guid,
    /// Label.
    pub name: String,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
}

/// A disk [`Table::write_durably`] can write to: `sync` returns once every
/// byte written so far is on stable storage.
pub trait SyncWrite: Write + Seek {
    /// Flushes what was written to stable storage (`fsync`).
    fn sync(&mut self) -> std::io::Result<()>;
}

impl SyncWrite for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }
}

/// Which header a table was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The primary header at LBA 1 was valid.
    Primary,
    /// The primary header was damaged (the reason); the backup was used.
    Backup(String),
}

/// A GPT partition table for a disk of `disk_sectors` sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Logical sector size in bytes (512).
    pub sector_size: u64,
    /// Disk size in sectors.
    pub disk_sectors: u64,
    /// Used entries, in entry order.
    pub partitions: Vec<Partition>,
}

fn entries_sectors(ss: u64) -> u64 {
    (ENTRIES as u64 * ENTRY_SIZE as u64).div_ceil(ss)
}

impl Table {
    /// The size of the disk in bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_sectors * self.sector_size
    }

    /// First sector partitions may use.
    pub fn first_usable(&self) -> u64 {
        2 + entries_sectors(self.sector_size)
    }

    /// Last sector partitions may use (before the backup entries).
    pub fn last_usable(&self) -> u64 {
        self.disk_sectors - 2 - entries_sectors(self.sector_size)
    }

    /// Lays partitions out one after another, each starting on a 1 MiB
    /// boundary, each size rounded up to 1 MiB, on a disk of `disk_bytes`.
    pub fn layout(
        disk_guid: Guid,
        disk_bytes: u64,
        parts: Vec<PartitionSpec>,
    ) -> Result<Table, Error> {
        let ss = 512u64;
        if parts.len() > ENTRIES as usize {
            return Err(Error::TooMany(parts.len()));
        }
        let mut t = Table {
            disk_guid,
            sector_size: ss,
            disk_sectors: disk_bytes / ss,
            partitions: Vec::new(),
        };
        let align = ALIGN_BYTES / ss;
        let mut next = t.first_usable().div_ceil(align) * align;
        for (i, p) in parts.into_iter().enumerate() {
            if p.name.encode_utf16().count() > NAME_UNITS {
                return Err(Error::NameTooLong(p.name));
            }
            let sectors = p.size_bytes.div_ceil(ALIGN_BYTES) * align;
            t.partitions.push(Partition {
                number: i as u32 + 1,
                type_guid: p.type_guid,
                part_guid: p.part_guid,
                name: p.name,
                first_lba: next,
                last_lba: next + sectors - 1,
                attributes: p.attributes,
            });
            next += sectors;
        }
        let needed = (next + 2 + entries_sectors(ss)) * ss;
        if t.disk_sectors < 2 + 2 * entries_sectors(ss) || next - 1 > t.last_usable() {
            return Err(Error::DoesNotFit {
                needed,
                available: disk_bytes,
            });
        }
        Ok(t)
    }

    /// Byte offset and length of the partition at `index` in [`Table::partitions`].
    pub fn partition_offset(&self, index: usize) -> (u64, u64) {
        let p = &self.partitions[index];
        (
            p.first_lba * self.sector_size,
            (p.last_lba - p.first_lba + 1) * self.sector_size,
        )
    }

    /// The partition with this PARTUUID.
    pub fn find(&self, part_guid: &Guid) -> Option<&Partition> {
        self.partitions.iter().find(|p| &p.part_guid == part_guid)
    }

    /// Moves the backup table to the end of a disk of `disk_sectors` (after
    /// the disk grew). Partitions are unchanged.
    pub fn grow_to(&mut self, disk_sectors: u64) -> Result<(), Error> {
        let old = self.disk_sectors;
        self.disk_sectors = disk_sectors;
        let end = self
            .partitions
            .iter()
            .map(|p| p.last_lba)
            .max()
            .unwrap_or(0);
        if disk_sectors < 2 + 2 * entries_sectors(self.sector_size) || end > self.last_usable() {
            self.disk_sectors = old;
            return Err(Error::CannotShrink(disk_sectors));
        }
        Ok(())
    }

    /// Extends the partition that ends last to the last usable sector
    /// (rounded down to a 1 MiB boundary). Returns its index and whether it
    /// changed.
    pub fn extend_last_partition(&mut self) -> Option<(usize, bool)> {
        let align = ALIGN_BYTES / self.sector_size;
        let limit = ((self.last_usable() + 1) / align) * align - 1;
        let (i, p) = self
            .partitions
            .iter_mut()
            .enumerate()
            .max_by_key(|(_, p)| p.last_lba)?;
        if limit > p.last_lba {
            p.last_lba = limit;
            Some((i, true))
        } else {
            Some((i, false))
        }
    }

    fn entries_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for p in &self.partitions {
            if p.number == 0 || p.number > ENTRIES {
                return Err(Error::TooMany(p.number as usize));
            }
            let e =
                &mut buf[(p.number as usize - 1) * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.to_gpt_bytes());
            e[16..32].copy_from_slice(&p.part_guid.to_gpt_bytes());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            let units: Vec<u16> = p.name.encode_utf16().collect();
            if units.len() > NAME_UNITS {
                return Err(Error::NameTooLong(p.name.clone()));
            }
            for (k, u) in units.iter().enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
            }
        }
        Ok(buf)
    }

    fn header(&self, my_lba: u64, alt_lba: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.sector_size as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_gpt_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn protective_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.sector_size as usize];
        let e = &mut m[446..462];
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        e[4] = 0xEE;
        e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(self.disk_sectors - 1).unwrap_or(u32::MAX);
        e[12..16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }

    /// Writes the protective MBR, both headers and both entry arrays. Only
    /// the table regions are touched.
    pub fn write_to<W: Write + Seek>(&self, w: &mut W) -> Result<(), Error> {
        for (offset, bytes) in self.pieces()? {
            w.seek(SeekFrom::Start(offset))?;
            w.write_all(&bytes)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Rewrites the table of a disk in use so that a power cut at any moment
    /// leaves a valid table, either the old one or this one: the backup
    /// entries and header are written and synced first, then the protective
    /// MBR and the primary entries and header, synced again. Until the second
    /// sync the old primary is intact or, once its rewrite has begun, its
    /// header and entries no longer agree (CRC), so readers (herd-init,
    /// [`Table::read_detailed`], the kernel, the firmware) take the new
    /// backup. [`Table::write_to`] writes everything in one batch, which the
    /// page cache and the disk may persist in any order: a cut could leave
    /// both headers new and both arrays old, no valid table at all.
    pub fn write_durably<W: SyncWrite>(&self, w: &mut W) -> Result<(), Error> {
        let pieces = self.pieces()?;
        let (primary, backup) = pieces.split_at(3);
        for batch in [backup, primary] {
            for (offset, bytes) in batch {
                w.seek(SeekFrom::Start(*offset))?;
                w.write_all(bytes)?;
            }
            w.sync()?;
        }
        Ok(())
    }

    /// What [`Table::write_to`] writes, as (byte offset, bytes) in offset
    /// order: the protective MBR, the primary header and entries, the
    /// backup entries and the backup header.
    pub fn pieces(&self) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let ss = self.sector_size;
        let entries = self.entries_bytes()?;
        let crc = crc32fast::hash(&entries);
        let last = self.disk_sectors - 1;
        let backup_entries = last - entries_sectors(ss);
        Ok(vec![
            (0, self.protective_mbr()),
            (ss, self.header(1, last, 2, crc)),
            (2 * ss, entries.clone()),
            (backup_entries * ss, entries),
            (last * ss, self.header(last, 1, backup_entries, crc)),
        ])
    }

    /// Reads and checks a table; see [`Table::read_detailed`].
    pub fn read_from<R: Read + Seek>(r: &mut R, sector_size: u64) -> Result<Table, Error> {
        Ok(Self::read_detailed(r, sector_size)?.0)
    }

    /// Reads a table: the primary header and its entries if their CRCs
    /// hold, else the backup at the last sector (saying why).
    pub fn read_detailed<R: Read + Seek>(
        r: &mut R,
        sector_size: u64,
    ) -> Result<(Table, Which), Error> {
        let size = r.seek(SeekFrom::End(0))?;
        let disk_sectors = size / sector_size;
        let primary = read_at(r, sector_size, 1, disk_sectors);
        match primary {
            Ok(t) => Ok((t, Which::Primary)),
            Err(p) => match read_at(r, sector_size, disk_sectors.saturating_sub(1), disk_sectors) {
                Ok(t) => Ok((t, Which::Backup(p))),
                Err(b) => Err(Error::NoValidTable {
                    primary: p,
                    backup: b,
                }),
            },
        }
    }
}

fn read_at<R: Read + Seek>(
    r: &mut R,
    ss: u64,
    lba: u64,
    disk_sectors: u64,
) -> Result<Table, String> {
    let io = |e: std::io::Error| format!("read error: {e}");
    if disk_sectors < 3 {
        return Err("disk too small".into());
    }
    let mut h = vec![0u8; ss as usize];
    r.seek(SeekFrom::Start(lba * ss)).map_err(io)?;
    r.read_exact(&mut h).map_err(io)?;
    if &h[0..8] != SIGNATURE {
        return Err(format!("no \"EFI PART\" signature at LBA {lba}"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let hsize = u32_at(12) as usize;
    if !(92..=ss as usize).contains(&hsize) {
        return Err(format!("header size {hsize} out of range"));
    }
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32fast::hash(&hc) != u32_at(16) {
        return Err(format!("header CRC mismatch at LBA {lba}"));
    }
    if u64_at(24) != lba {
        return Err(format!(
            "header at LBA {lba} says it is at LBA {}",
            u64_at(24)
        ));
    }
    let n = u32_at(80) as u64;
    let esz = u32_at(84) as u64;
    if !(128..=4096).contains(&esz) || n > 1024 || n == 0 {
        return Err(format!(
            "unsupported entry array ({n} entries of {esz} bytes)"
        ));
    }
    let elba = u64_at(72);
    if elba >= disk_sectors {
        return Err(format!("entry array at LBA {elba} is beyond the disk"));
    }
    let mut entries = vec![0u8; (n * esz) as usize];
    r.seek(SeekFrom::Start(elba * ss)).map_err(io)?;
    r.read_exact(&mut entries).map_err(io)?;
    if crc32fast::hash(&entries) != u32_at(88) {
        return Err(format!(
            "partition entry array CRC mismatch (array at LBA {elba})"
        ));
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(esz as usize).enumerate() {
        let t = Guid::from_gpt_bytes(e[0..16].try_into().unwrap());
        if t.is_nil() {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let first_lba = u64::from_le_bytes(e[32..40].try_into().unwrap());
        let last_lba = u64::from_le_bytes(e[40..48].try_into().unwrap());
        if last_lba < first_lba || last_lba >= disk_sectors {
            return Err(format!(
                "partition {} has an invalid extent {first_lba}..{last_lba}",
                i + 1
            ));
        }
        partitions.push(Partition {
            number: i as u32 + 1,
            type_guid: t,
            part_guid: Guid::from_gpt_bytes(e[16..32].try_into().unwrap()),
            name: String::from_utf16_lossy(&units),
            first_lba,
            last_lba,
            attributes: u64::from_le_bytes(e[48..56].try_into().unwrap()),
        });
    }
    Ok(Table {
        disk_guid: Guid::from_gpt_bytes(h[56..72].try_into().unwrap()),
        sector_size: ss,
        disk_sectors,
        partitions,
    })
}
