//! OCI image layout directories (`oci-layout`, `index.json`,
//! `blobs/sha256/`): images on the node's disk, and images made offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::{
    Descriptor, Document, Index, Manifest, MAX_DOCUMENT, OCI_INDEX, OCI_MANIFEST,
};
use crate::{io, Digest, Error};

/// The annotation naming an index entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Creates (or opens) a layout at `root`.
    pub fn create(root: &Path) -> Result<Layout, Error> {
        std::fs::create_dir_all(root.join("blobs/sha256"))
            .map_err(io(format!("creating {}", root.display())))?;
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(io("writing oci-layout"))?;
        let l = Layout { root: root.into() };
        if !root.join("index.json").exists() {
            l.write_index(&Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.into()),
                manifests: vec![],
            })?;
        }
        Ok(l)
    }

    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Layout, Error> {
        if !root.join("oci-layout").is_file() {
            return Err(Error::NotFound(format!(
                "OCI layout {} (no oci-layout file)",
                root.display()
            )));
        }
        Ok(Layout { root: root.into() })
    }

    fn write_index(&self, i: &Index) -> Result<(), Error> {
        std::fs::write(
            self.root.join("index.json"),
            serde_json::to_vec_pretty(i).expect("index serialises"),
        )
        .map_err(io("writing index.json"))
    }

    /// The index.
    pub fn index(&self) -> Result<Index, Error> {
        let p = self.root.join("index.json");
        let b = std::fs::read(&p).map_err(io(format!("reading {}", p.display())))?;
        serde_json::from_slice(&b).map_err(|e| Error::Malformed {
            what: p.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Path of a blob.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Adds a blob; returns its digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let d = Digest::of(bytes);
        std::fs::write(self.blob_path(&d), bytes).map_err(io(format!("writing blob {d}")))?;
        Ok(d)
    }

    /// Reads a blob, checked.
    pub fn get(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(d);
        let len = std::fs::metadata(&p)
            .map_err(io(format!("blob {d} in {}", self.root.display())))?
            .len();
        if len > limit {
            return Err(Error::TooLarge {
                what: format!("blob {d}"),
                limit,
            });
        }
        let b = std::fs::read(&p).map_err(io(format!("reading blob {d}")))?;
        d.check(&b, &format!("blob {d} in {}", self.root.display()))?;
        Ok(b)
    }

    /// Adds an image manifest and names it `name` in the index (replacing
    /// an entry of that name).
    pub fn add_image(&self, m: &Manifest, name: &str) -> Result<Digest, Error> {
        let bytes = serde_json::to_vec(m).expect("manifest serialises");
        let d = self.put(&bytes)?;
        let mut idx = self.index()?;
        idx.manifests
            .retain(|e| e.annotations.get(REF_NAME).map(String::as_str) != Some(name));
        idx.manifests.push(Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d.clone(),
            size: bytes.len() as u64,
            annotations: BTreeMap::from([(REF_NAME.to_string(), name.to_string())]),
            platform: None,
        });
        self.write_index(&idx)?;
        Ok(d)
    }

    /// The manifest named `name` (or the only one, when `name` is empty).
    pub fn manifest(&self, name: &str) -> Result<(Manifest, Digest), Error> {
        let idx = self.index()?;
        let found: Vec<&Descriptor> = idx
            .manifests
            .iter()
            .filter(|e| {
                name.is_empty() || e.annotations.get(REF_NAME).map(String::as_str) == Some(name)
            })
            .collect();
        let d = match found.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::NotFound(format!(
                    "image {name:?} in {}",
                    self.root.display()
                )))
            }
            _ => {
                return Err(Error::Malformed {
                    what: self.root.display().to_string(),
                    message: "several images; name one".into(),
                })
            }
        };
        let bytes = self.get(&d.digest, MAX_DOCUMENT)?;
        match Document::parse(&bytes, &d.media_type, &format!("manifest {}", d.digest))? {
            Document::Manifest(m) => Ok((m, d.digest)),
            Document::Index(i) => {
                let d = i.for_this_machine("image index")?.clone();
                let bytes = self.get(&d.digest, MAX_DOCUMENT)?;
                let m = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
                    what: format!("manifest {}", d.digest),
                    message: e.to_string(),
                })?;
                Ok((m, d.digest))
            }
        }
    }
}
