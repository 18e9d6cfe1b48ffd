//! File data: full blocks and packed tail fragments, compressed in parallel.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::cache::{self, BlockCache, Counters};
use crate::Error;

/// Bit set in a block size entry when the block is stored uncompressed.
pub const UNCOMPRESSED: u32 = 1 << 24;

/// Where one distinct file content ended up.
#[derive(Debug, Clone, Default)]
pub struct FileLayout {
    pub blocks_start: u64,
    pub block_sizes: Vec<u32>,
    /// Fragment index and offset inside the fragment block.
    pub fragment: Option<(u32, u32)>,
}

/// A fragment table entry.
pub struct Fragment {
    pub start: u64,
    pub size: u32,
}

/// File content as a map key: hashed by its length and a sample of its
/// bytes (hashing every byte of every file twice cost more than the rest
/// of the layout), compared in full, so equal keys are equal contents.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Content<'a>(pub &'a [u8]);

impl std::hash::Hash for Content<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        const SAMPLE: usize = 256;
        let b = self.0;
        state.write_usize(b.len());
        state.write(&b[..b.len().min(SAMPLE)]);
        state.write(&b[b.len().saturating_sub(SAMPLE)..]);
        if b.len() > 4 * SAMPLE {
            let mid = b.len() / 2;
            state.write(&b[mid - SAMPLE / 2..mid + SAMPLE / 2]);
        }
    }
}

/// The data region and where everything is in it.
pub struct Data<'a> {
    pub bytes: Vec<u8>,
    pub layouts: Vec<FileLayout>,
    pub fragments: Vec<Fragment>,
    /// Content → index into `layouts`.
    pub index: HashMap<Content<'a>, usize>,
    pub duplicates: u32,
}

enum Piece {
    Sparse,
    Job(usize),
}

/// Lays out `contents` (in order; repeats are stored once) starting at
/// absolute offset `base`, taking compressed blocks from `cache` when it
/// holds them.
pub fn layout<'a>(
    contents: &[&'a [u8]],
    base: u64,
    bs: usize,
    level: i32,
    cache: Option<(&dyn BlockCache, &Counters)>,
) -> Result<Data<'a>, Error> {
    let mut index: HashMap<Content<'a>, usize> = HashMap::new();
    let mut uniques: Vec<&'a [u8]> = Vec::new();
    let mut duplicates = 0;
    for &c in contents {
        if index.contains_key(&Content(c)) {
            duplicates += 1;
            continue;
        }
        index.insert(Content(c), uniques.len());
        uniques.push(c);
    }

    // Plan: which blocks to compress, which tails go to which fragment.
    let mut blocks: Vec<&[u8]> = Vec::new();
    let mut pieces: Vec<Vec<Piece>> = Vec::with_capacity(uniques.len());
    let mut frag_of: Vec<Option<(u32, u32)>> = Vec::with_capacity(uniques.len());
    let mut frags: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for u in &uniques {
        let full = u.len() / bs;
        let mut ps = Vec::with_capacity(full);
        for k in 0..full {
            let b = &u[k * bs..(k + 1) * bs];
            if b.iter().all(|&x| x == 0) {
                ps.push(Piece::Sparse);
            } else {
                ps.push(Piece::Job(blocks.len()));
                blocks.push(b);
            }
        }
        pieces.push(ps);
        let tail = &u[full * bs..];
        if tail.is_empty() {
            frag_of.push(None);
            continue;
        }
        if current.len() + tail.len() > bs {
            frags.push(std::mem::take(&mut current));
        }
        frag_of.push(Some((frags.len() as u32, current.len() as u32)));
        current.extend_from_slice(tail);
    }
    if !current.is_empty() {
        frags.push(current);
    }

    // Blocks and fragments in one parallel pass: no core waits at a barrier
    // between them.
    let mut done_blocks: Vec<(Vec<u8>, u32)> = blocks
        .par_iter()
        .copied()
        .chain(frags.par_iter().map(|f| f.as_slice()))
        .map(|b| cache::compress(b, level, cache))
        .collect::<Result<_, _>>()?;
    let done_frags = done_blocks.split_off(blocks.len());

    let mut bytes = Vec::with_capacity(
        done_blocks.iter().map(|b| b.0.len()).sum::<usize>()
            + done_frags.iter().map(|f| f.0.len()).sum::<usize>(),
    );
    let mut layouts = Vec::with_capacity(uniques.len());
    for (ps, fragment) in pieces.iter().zip(frag_of) {
        let mut l = FileLayout {
            blocks_start: base + bytes.len() as u64,
            block_sizes: Vec::new(),
            fragment,
        };
        for p in ps {
            match p {
                Piece::Sparse => l.block_sizes.push(0),
                Piece::Job(j) => {
                    let (c, size) = &done_blocks[*j];
                    bytes.extend_from_slice(c);
                    l.block_sizes.push(*size);
                }
            }
        }
        layouts.push(l);
    }
    let mut fragments = Vec::with_capacity(done_frags.len());
    for (c, size) in done_frags {
        fragments.push(Fragment {
            start: base + bytes.len() as u64,
            size,
        });
        bytes.extend_from_slice(&c);
    }
    Ok(Data {
        bytes,
        layouts,
        fragments,
        index,
        duplicates,
    })
}
