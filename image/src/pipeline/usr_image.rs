//! `/usr` as the slot's bytes: the squashfs (through the compressed-block
//! cache when it is on) and its dm-verity tree, whose root hash names the
//! release.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use herd_fstree::Tree;

use super::{BuildOptions, VERITY_BLOCK};
use crate::block_cache::DirCache;
use crate::config::{human_bytes, ImageConfig};
use crate::manifest::UsrInfo;
use crate::progress::Progress;

/// A slot's bytes: the squashfs and its dm-verity hash area, with what the
/// manifest says of them.
pub(super) struct UsrSlot {
    pub squashfs: Arc<Vec<u8>>,
    pub hash_area: Arc<Vec<u8>>,
    pub root_hash: [u8; 32],
    /// The root hash in hex: the `usrhash=` of the command line.
    pub usrhash: String,
    salt: [u8; 32],
    data_blocks: u64,
    files: u64,
    file_bytes: u64,
    /// The thread trimming the block cache, joined at the end of the build.
    pub prune: Option<JoinHandle<()>>,
}

impl UsrSlot {
    /// The manifest's view.
    pub(super) fn info(&self) -> UsrInfo {
        UsrInfo {
            usrhash: self.usrhash.clone(),
            verity_salt: hex::encode(self.salt),
            verity_data_blocks: self.data_blocks,
            squashfs_bytes: self.squashfs.len() as u64,
            verity_bytes: self.hash_area.len() as u64,
            files: self.files,
            file_bytes: self.file_bytes,
        }
    }
}

/// Compresses `usr` (through the package cache's block cache when `opts`
/// say so) and hashes it into its dm-verity tree.
pub(super) fn make(
    usr: Tree,
    cfg: &ImageConfig,
    opts: &BuildOptions,
    mtime: u32,
    progress: &Progress,
) -> Result<UsrSlot> {
    let cache = opts
        .block_cache
        .then(|| crate::block_cache::in_package_cache(&opts.cache_dir));
    let (files, file_bytes) = (usr.walk().len() as u64, usr.file_bytes());
    let Compressed { squashfs, prune } =
        compress(&usr, cfg, &opts.image_toml, cache, mtime, progress)?;
    drop(usr);
    let v = verity(&cfg.image.name, &squashfs, progress)?;
    Ok(UsrSlot {
        squashfs: Arc::new(squashfs),
        hash_area: Arc::new(v.hash_area),
        root_hash: v.root_hash,
        usrhash: v.usrhash,
        salt: v.salt,
        data_blocks: v.data_blocks,
        files,
        file_bytes,
        prune,
    })
}

/// The compressed `/usr`, and the thread trimming the block cache if this
/// build added to it (joined at the end of the build).
struct Compressed {
    pub squashfs: Vec<u8>,
    pub prune: Option<JoinHandle<()>>,
}

/// Compresses `usr` into a squashfs that must fit the slot.
fn compress(
    usr: &Tree,
    cfg: &ImageConfig,
    image_toml: &Path,
    cache: Option<DirCache>,
    mtime: u32,
    progress: &Progress,
) -> Result<Compressed> {
    let step = progress.step(&format!(
        "compressing /usr into squashfs (zstd level {}, {} threads)",
        cfg.usr.compression_level,
        rayon::current_num_threads()
    ));
    let mut squashfs = Vec::with_capacity(usr.file_bytes() as usize / 2);
    let summary = herd_squashfs::write_cached(
        usr,
        &herd_squashfs::Options {
            compression: herd_squashfs::Compression::Zstd {
                level: cfg.usr.compression_level,
            },
            block_size: 128 * 1024,
            mkfs_time: mtime,
        },
        cache.as_ref().map(|c| c as &dyn herd_squashfs::BlockCache),
        &mut squashfs,
    )?;
    if summary.cache_rejected > 0 {
        progress.info(&format!(
            "{} cached blocks did not match their content and were compressed again",
            summary.cache_rejected
        ));
    }
    step.done(&match &cache {
        Some(_) => format!(
            "{}; {} blocks compressed, {} from the block cache",
            human_bytes(squashfs.len() as u64),
            summary.cache_misses,
            summary.cache_hits
        ),
        None => human_bytes(squashfs.len() as u64),
    });
    // The block store is trimmed on a thread of its own while the rest of
    // the build goes on (every block this build used is marked recently
    // used already); only when this build added to it.
    let prune = cache.filter(|_| summary.cache_misses > 0).map(|c| {
        std::thread::spawn(move || {
            // Best effort: a store that cannot shrink only takes disk space.
            if let Err(e) = c.prune(crate::block_cache::DEFAULT_LIMIT) {
                tracing::warn!("cannot prune the compressed-block cache: {e}");
            }
        })
    });
    let slot_size = cfg.partitions.usr.0;
    if squashfs.len() as u64 > slot_size {
        bail!(
            "/usr does not fit its slot: the squashfs is {} ({} bytes) but partitions.usr is {} ({} bytes); \
             raise partitions.usr in {} or ship less in /usr",
            human_bytes(squashfs.len() as u64),
            squashfs.len(),
            cfg.partitions.usr,
            slot_size,
            image_toml.display()
        );
    }
    Ok(Compressed { squashfs, prune })
}

/// The dm-verity tree of a slot's squashfs.
struct UsrVerity {
    pub salt: [u8; 32],
    pub root_hash: [u8; 32],
    /// The root hash in hex: the `usrhash=` of the command line.
    pub usrhash: String,
    pub hash_area: Vec<u8>,
    pub data_blocks: u64,
}

/// Hashes `squashfs` into its dm-verity tree. The salt derives from the
/// image name alone, so the hash blocks of data blocks a release did not
/// change stay the same bytes and a delta update does not fetch them again
/// (a salt that changed with the content made every release's tree new);
/// the superblock's UUID derives from the name and the content, so the
/// same /usr gives the same tree and each release's tree has its own UUID.
fn verity(name: &str, squashfs: &[u8], progress: &Progress) -> Result<UsrVerity> {
    let step = progress.step("hashing /usr into a dm-verity tree (sha256, 4 KiB blocks)");
    let content_hash = Sha256::digest(squashfs);
    let salt: [u8; 32] = Sha256::new()
        .chain_update(b"herd verity salt\0")
        .chain_update(name.as_bytes())
        .finalize()
        .into();
    let mut vuuid = [0u8; 16];
    vuuid.copy_from_slice(
        &Sha256::new()
            .chain_update(salt)
            .chain_update(content_hash)
            .finalize()[..16],
    );
    vuuid[6] = (vuuid[6] & 0x0f) | 0x40;
    vuuid[8] = (vuuid[8] & 0x3f) | 0x80;
    let params = herd_verity::Params {
        salt,
        uuid: vuuid,
        data_block_size: VERITY_BLOCK,
        hash_block_size: VERITY_BLOCK,
    };
    let v = herd_verity::build(squashfs, &params)?;
    let usrhash = hex::encode(v.root_hash);
    step.done(&format!("root hash {usrhash}"));
    Ok(UsrVerity {
        salt,
        root_hash: v.root_hash,
        usrhash,
        hash_area: v.hash_area,
        data_blocks: v.data_blocks,
    })
}
