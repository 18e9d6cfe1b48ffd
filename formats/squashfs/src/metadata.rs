//! Metadata blocks: 8 KiB chunks, each compressed on its own behind a
//! two-byte header (bit 15 set = stored uncompressed).

use crate::Error;

pub const BLOCK: usize = 8192;

/// Accumulates a metadata table (inode, directory, ...).
pub struct MetaWriter {
    level: i32,
    /// Compressed blocks with headers, as they go on disk.
    pub out: Vec<u8>,
    pending: Vec<u8>,
    /// Offset (in `out`) of every block started, for lookup tables.
    pub block_starts: Vec<u64>,
}

/// A position in a metadata table: the block's offset from the table start
/// and the offset inside the uncompressed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRef {
    pub block: u32,
    pub offset: u16,
}

impl MetaRef {
    /// The 48-bit inode reference squashfs uses.
    pub fn inode_ref(self) -> u64 {
        (u64::from(self.block) << 16) | u64::from(self.offset)
    }
}

impl MetaWriter {
    pub fn new(level: i32) -> Self {
        MetaWriter {
            level,
            out: Vec::new(),
            pending: Vec::with_capacity(BLOCK),
            block_starts: Vec::new(),
        }
    }

    /// Where the next byte written will be.
    pub fn pos(&self) -> MetaRef {
        MetaRef {
            block: self.out.len() as u32,
            offset: self.pending.len() as u16,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= BLOCK {
            let rest = self.pending.split_off(BLOCK);
            self.flush()?;
            self.pending = rest;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.block_starts.push(self.out.len() as u64);
        let c = zstd::bulk::compress(&self.pending, self.level).map_err(Error::Compress)?;
        if c.len() < self.pending.len() {
            self.out.extend_from_slice(&(c.len() as u16).to_le_bytes());
            self.out.extend_from_slice(&c);
        } else {
            self.out
                .extend_from_slice(&(self.pending.len() as u16 | 0x8000).to_le_bytes());
            self.out.extend_from_slice(&self.pending);
        }
        self.pending.clear();
        Ok(())
    }

    /// Flushes the last partial block and returns the table bytes.
    pub fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>), Error> {
        self.flush()?;
        Ok((self.out, self.block_starts))
    }
}
