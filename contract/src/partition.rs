//! GPT partition names (the `name` field of each entry) and the rule that
//! ties a slot's partitions to its dm-verity root hash.

use crate::Slot;

/// The EFI system partition.
pub const ESP: &str = "esp";
/// STATE: `/var` and `/etc`.
pub const STATE: &str = "state";

/// A slot's /usr partition: `usr-a`.
pub fn usr(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "usr-a",
        Slot::B => "usr-b",
    }
}

/// A slot's verity hash partition: `usr-a-verity`.
pub fn usr_verity(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "usr-a-verity",
        Slot::B => "usr-b-verity",
    }
}

/// The partition UUIDs of a slot that holds the /usr whose dm-verity root
/// hash is `root_hash` (the Discoverable Partitions Specification rule):
/// the first 16 bytes for the /usr partition, the last 16 for its verity
/// partition. So `usrhash=` on the command line also names the partitions.
pub fn uuids_from_root_hash(root_hash: &[u8; 32]) -> ([u8; 16], [u8; 16]) {
    let (mut usr, mut verity) = ([0u8; 16], [0u8; 16]);
    usr.copy_from_slice(&root_hash[..16]);
    verity.copy_from_slice(&root_hash[16..]);
    (usr, verity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_hash_splits_into_the_two_partition_uuids() {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = i as u8;
        }
        let (u, v) = uuids_from_root_hash(&h);
        assert_eq!(u[0], 0);
        assert_eq!(u[15], 15);
        assert_eq!(v[0], 16);
        assert_eq!(v[15], 31);
        assert_eq!(usr_verity(Slot::B), "usr-b-verity");
    }
}
