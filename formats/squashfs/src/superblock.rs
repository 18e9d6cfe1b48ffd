//! The 96-byte squashfs 4.0 superblock.

pub const MAGIC: u32 = 0x7371_7368;
pub const SIZE: usize = 96;
pub const ZSTD: u16 = 6;
/// No xattrs are stored.
pub const FLAG_NO_XATTRS: u16 = 1 << 9;
/// Duplicate files were detected and stored once.
pub const FLAG_DUPLICATES: u16 = 1 << 6;
pub const INVALID: u64 = u64::MAX;

/// Field values of the superblock.
pub struct Superblock {
    pub inodes: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragments: u32,
    pub flags: u16,
    pub ids: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        let mut w = 0;
        let mut put = |bytes: &[u8]| {
            b[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
        };
        put(&MAGIC.to_le_bytes());
        put(&self.inodes.to_le_bytes());
        put(&self.mkfs_time.to_le_bytes());
        put(&self.block_size.to_le_bytes());
        put(&self.fragments.to_le_bytes());
        put(&ZSTD.to_le_bytes());
        put(&(self.block_size.trailing_zeros() as u16).to_le_bytes());
        put(&self.flags.to_le_bytes());
        put(&self.ids.to_le_bytes());
        put(&4u16.to_le_bytes());
        put(&0u16.to_le_bytes());
        put(&self.root_inode.to_le_bytes());
        put(&self.bytes_used.to_le_bytes());
        put(&self.id_table.to_le_bytes());
        put(&INVALID.to_le_bytes()); // xattr id table
        put(&self.inode_table.to_le_bytes());
        put(&self.directory_table.to_le_bytes());
        put(&self.fragment_table.to_le_bytes());
        put(&INVALID.to_le_bytes()); // export table
        b
    }
}
