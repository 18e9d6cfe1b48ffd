//! A power cut while a live disk's partition table is rewritten (what
//! `herd-update` does when it gives the inactive slot the new release's
//! PARTUUIDs) must leave a valid table, the old one or the new one, never
//! none and never a mix.
//!
//! The writes are recorded, then every moment a cut can fall is played:
//! everything before the last completed sync is on the disk; of the writes
//! issued since, the page cache and the disk may have persisted any subset,
//! in any order, and each one may be torn at a sector boundary.

use std::io::{Cursor, Seek, SeekFrom, Write};

use herd_gpt::{types, Guid, Partition, PartitionSpec, SyncWrite, Table};

const DISK: u64 = 8 << 20;

/// One step of a write procedure.
#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Sync,
}

/// Records what is written and when it is synced; writes nothing.
#[derive(Default)]
struct Recorder {
    pos: u64,
    ops: Vec<Op>,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ops.push(Op::Write(self.pos, buf.to_vec()));
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Recorder {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match to {
            SeekFrom::Start(p) => self.pos = p,
            other => panic!("the table writer seeks only from the start, not {other:?}"),
        }
        Ok(self.pos)
    }
}

impl SyncWrite for Recorder {
    fn sync(&mut self) -> std::io::Result<()> {
        self.ops.push(Op::Sync);
        Ok(())
    }
}

fn old_table() -> Table {
    let specs = (0..6)
        .map(|i| PartitionSpec {
            type_guid: if i == 0 {
                types::ESP
            } else {
                types::USR_X86_64
            },
            part_guid: Guid([i as u8 + 1; 16]),
            name: format!("part-{i}"),
            size_bytes: 1 << 20,
            attributes: 0,
        })
        .collect();
    Table::layout(Guid([0xd1; 16]), DISK, specs).unwrap()
}

/// The update: new PARTUUIDs for entries 2 and 6, which lie in different
/// sectors of the entry array, so a torn array write can mix them.
fn new_table() -> Table {
    let mut t = old_table();
    t.partitions[1].part_guid = Guid([0xa2; 16]);
    t.partitions[5].part_guid = Guid([0xa6; 16]);
    t
}

/// Ways one write may have reached the disk at the cut: not at all, fully,
/// or torn (its first or last half of sectors only).
const STATES: [&str; 4] = ["absent", "full", "first half", "last half"];

fn apply(disk: &mut [u8], at: u64, bytes: &[u8], state: usize) {
    let sectors = bytes.len() / 512;
    let half = sectors.div_ceil(2) * 512;
    let range = match state {
        0 => return,
        1 => 0..bytes.len(),
        2 => 0..half.min(bytes.len()),
        _ => (bytes.len() - half.min(bytes.len()))..bytes.len(),
    };
    disk[at as usize + range.start..at as usize + range.end].copy_from_slice(&bytes[range]);
}

/// Plays every cut of `ops` over a disk holding `old`; returns the first cut
/// after which no table, or neither the old nor the new one, can be read.
fn first_bad_cut(ops: &[Op], old: &Table, new: &Table) -> Option<String> {
    let mut disk = Cursor::new(vec![0u8; DISK as usize]);
    old.write_to(&mut disk).unwrap();
    let mut synced = disk.into_inner();
    let epochs: Vec<Vec<(u64, Vec<u8>)>> = ops
        .split(|o| matches!(o, Op::Sync))
        .map(|e| {
            e.iter()
                .map(|o| match o {
                    Op::Write(at, b) => (*at, b.clone()),
                    Op::Sync => unreachable!(),
                })
                .collect()
        })
        .collect();
    let want = |p: &[Partition]| p == old.partitions.as_slice() || p == new.partitions.as_slice();
    for (n, pending) in epochs.iter().enumerate() {
        let combos = STATES.len().pow(pending.len() as u32);
        for c in 0..combos {
            let mut disk = synced.clone();
            let mut states = Vec::new();
            let mut k = c;
            for (at, bytes) in pending {
                apply(&mut disk, *at, bytes, k % STATES.len());
                states.push(format!("{} bytes at {at}: {}", bytes.len(), STATES[k % 4]));
                k /= STATES.len();
            }
            let cut = format!("after sync {n}, with [{}]", states.join(", "));
            match Table::read_detailed(&mut Cursor::new(&disk), 512) {
                Err(e) => return Some(format!("{cut}: {e}")),
                Ok((t, _)) if !want(&t.partitions) => {
                    return Some(format!("{cut}: a table that is neither old nor new"))
                }
                Ok(_) => {}
            }
        }
        for (at, bytes) in pending {
            apply(&mut synced, *at, bytes, 1);
        }
    }
    let (t, which) = Table::read_detailed(&mut Cursor::new(&synced), 512).unwrap();
    assert_eq!(which, herd_gpt::Which::Primary);
    assert_eq!(
        t.partitions, new.partitions,
        "the finished write is the new table"
    );
    None
}

#[test]
fn a_cut_at_any_moment_of_a_durable_write_leaves_the_old_or_the_new_table() {
    let (old, new) = (old_table(), new_table());
    let mut r = Recorder::default();
    new.write_durably(&mut r).unwrap();
    let syncs = r.ops.iter().filter(|o| matches!(o, Op::Sync)).count();
    assert_eq!(syncs, 2, "backup, sync, primary, sync: {:?}", r.ops.len());
    if let Some(bad) = first_bad_cut(&r.ops, &old, &new) {
        panic!("a cut {bad}");
    }
}

/// What `herd-update` did before: both copies in one batch, one sync. The
/// same model finds the cut that leaves no valid table (both headers new,
/// both arrays old), so the model can fail.
#[test]
fn the_one_batch_write_can_leave_no_valid_table() {
    let (old, new) = (old_table(), new_table());
    let mut r = Recorder::default();
    new.write_to(&mut r).unwrap();
    r.sync().unwrap();
    let bad = first_bad_cut(&r.ops, &old, &new).expect("the one-batch write survived every cut");
    assert!(bad.contains("no valid GPT"), "{bad}");
}

/// The durable write also serves a disk that grew: the new backup goes to
/// the new end first, where a reader looks when the primary is torn.
#[test]
fn a_cut_while_the_backup_moves_to_a_grown_end_leaves_a_table() {
    let new = old_table();
    let mut old = new.clone();
    old.grow_to(DISK / 512 - 1024).unwrap();
    let mut r = Recorder::default();
    new.write_durably(&mut r).unwrap();
    if let Some(bad) = first_bad_cut(&r.ops, &old, &new) {
        panic!("a cut {bad}");
    }
}
