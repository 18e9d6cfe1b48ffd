//! Deterministic FAT32 EFI system partitions.
//!
//! The file system is laid out in memory (a 64 MiB ESP is cheap to hold):
//! contiguous clusters in tree order, long file names, every timestamp set
//! to one given time; then written to the partition in one pass. [`Window`] lets a caller treat a byte
//! range of a disk image as the partition, for writing and for reading
//! files back (the updater needs to).

mod clock;
mod fat32;
mod window;

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use herd_fstree::Tree;

pub use window::Window;

/// How to make the file system.
#[derive(Debug, Clone)]
pub struct EspOptions {
    /// Partition size in bytes.
    pub size_bytes: u64,
    /// FAT volume serial number.
    pub volume_id: u32,
    /// Volume label, space padded.
    pub label: [u8; 11],
    /// Every timestamp, as Unix seconds (clamped to FAT's 1980–2107 range).
    pub mtime: u32,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too small for FAT32's minimum cluster count.
    #[error("an ESP of {size} bytes is too small for FAT32 (at least {min} bytes with 512-byte clusters): raise partitions.esp")]
    TooSmall {
        /// requested size
        size: u64,
        /// minimum size
        min: u64,
    },
    /// The files do not fit.
    #[error("the ESP files ({files} bytes) do not fit a {size}-byte FAT32 file system: raise partitions.esp")]
    Full {
        /// bytes of file data
        files: u64,
        /// partition size
        size: u64,
    },
    /// Something else failed in the FAT layer or the device.
    #[error("{what}: {source}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        source: std::io::Error,
    },
    /// Symlinks and devices cannot be stored on FAT.
    #[error("{0}: FAT cannot store symlinks or device nodes")]
    Unsupported(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A FAT32 file system holding `tree`, as the partition's bytes
/// (`opts.size_bytes` of them; the free clusters are zeros).
pub fn fat32_image(tree: &Tree, opts: &EspOptions) -> Result<Vec<u8>, Error> {
    fat32::image(tree, opts)
}

/// Formats a FAT32 file system holding `tree` and writes it to `dev`
/// (positioned over exactly the partition, e.g. a [`Window`]).
pub fn write_fat32<F: Read + Write + Seek>(
    tree: &Tree,
    opts: &EspOptions,
    dev: &mut F,
) -> Result<(), Error> {
    let img = fat32::image(tree, opts)?;
    dev.seek(SeekFrom::Start(0))
        .map_err(io("writing the ESP"))?;
    dev.write_all(&img).map_err(io("writing the ESP"))?;
    dev.flush().map_err(io("writing the ESP"))?;
    Ok(())
}

fn open_fs<F: Read + Seek>(dev: &mut F) -> Result<fatfs::FileSystem<Cursor<Vec<u8>>>, Error> {
    let mut buf = Vec::new();
    dev.seek(SeekFrom::Start(0))
        .map_err(io("reading the ESP"))?;
    dev.read_to_end(&mut buf).map_err(io("reading the ESP"))?;
    fatfs::FileSystem::new(
        Cursor::new(buf),
        fatfs::FsOptions::new().update_accessed_date(false),
    )
    .map_err(io("opening the ESP as FAT"))
}

/// Reads one file (path with `/` separators) from an existing ESP.
pub fn read_file<F: Read + Seek>(dev: &mut F, path: &str) -> Result<Vec<u8>, Error> {
    let fs = open_fs(dev)?;
    let mut f = fs
        .root_dir()
        .open_file(path)
        .map_err(io(format!("opening {path} on the ESP")))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)
        .map_err(io(format!("reading {path} on the ESP")))?;
    Ok(out)
}

/// Names in one directory of an existing ESP (long names), sorted.
pub fn list<F: Read + Seek>(dev: &mut F, dir: &str) -> Result<Vec<String>, Error> {
    let fs = open_fs(dev)?;
    let root = fs.root_dir();
    let d = if dir.is_empty() || dir == "/" {
        root
    } else {
        root.open_dir(dir)
            .map_err(io(format!("opening {dir} on the ESP")))?
    };
    let mut names = Vec::new();
    for e in d.iter() {
        let name = e.map_err(io(format!("listing {dir}")))?.file_name();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
