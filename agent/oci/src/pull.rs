//! Pulling an image the way the agent must: resolve the reference to a
//! manifest digest, check its signature (the classic `.sig` tag or a cosign
//! v3 bundle referrer) against the node's trusted keys
//! *before* anything else is fetched, then fetch the config and the layers
//! into the store, each checked against its digest.

use std::path::Path;

use tracing::info;

use crate::cosign::{self, TrustedKey};
use crate::manifest::{Document, ImageConfig, Manifest};
use crate::registry::Registry;
use crate::store::Store;
use crate::{Digest, Error, Reference};

/// A pulled, verified image.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference, pinned to the manifest digest.
    pub reference: Reference,
    /// Id of the key whose signature was accepted.
    pub signed_by: String,
    /// The manifest.
    pub manifest: Manifest,
    /// The config.
    pub config: ImageConfig,
}

/// Pulls `r` into `store` if a signature by one of `keys` covers it.
pub fn pull(r: &Reference, store: &Store, keys: &[TrustedKey]) -> Result<Pulled, Error> {
    pull_from(&Registry::for_reference(r), r, store, keys)
}

/// [`pull`] through a given registry client (e.g. one allowed plain HTTP).
pub fn pull_from(
    reg: &Registry,
    r: &Reference,
    store: &Store,
    keys: &[TrustedKey],
) -> Result<Pulled, Error> {
    let (bytes, mt, digest) = reg.manifest(&r.repository, &r.version())?;
    let what = format!("manifest of {r}");
    let (bytes, digest, index) = match Document::parse(&bytes, &mt, &what)? {
        Document::Manifest(_) => (bytes, digest, None),
        Document::Index(i) => {
            let d = i.for_this_machine(&what)?.digest.clone();
            let (b, _, _) = reg.manifest(&r.repository, &d.to_string())?;
            (b, d, Some(digest))
        }
    };
    // The signature covers the platform manifest or, for a multi-platform
    // image, the index that names it (what `cosign sign` signs by default).
    let signed_by = match (cosign::verify_any(reg, r, &digest, keys), &index) {
        (Ok(k), _) => k,
        (Err(Error::Untrusted { .. }), Some(idx)) => cosign::verify_any(reg, r, idx, keys)?,
        (Err(e), _) => return Err(e),
    };
    info!("{r}: manifest {digest} signed by key {signed_by}");
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        what: what.clone(),
        message: e.to_string(),
    })?;
    store.put(&digest, &bytes)?;
    let config_bytes = match store.get(&manifest.config.digest) {
        Ok(b) => b,
        Err(_) => {
            let b = reg.small_blob(&r.repository, &manifest.config)?;
            store.put(&manifest.config.digest, &b)?;
            b
        }
    };
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| Error::Malformed {
            what: format!("config of {r}"),
            message: e.to_string(),
        })?;
    check_platform(&config, &format!("config of {r}"))?;
    for l in &manifest.layers {
        if !store.has(&l.digest) {
            store.put_with(&l.digest, |w| reg.blob(&r.repository, l, w))?;
        }
    }
    Ok(Pulled {
        reference: r.pinned(&digest),
        signed_by,
        manifest,
        config,
    })
}

fn check_platform(config: &ImageConfig, what: &str) -> Result<(), Error> {
    if !config.os.is_empty() && (config.os != "linux" || config.architecture != "amd64") {
        return Err(Error::Malformed {
            what: what.into(),
            message: format!(
                "image is for {}/{}, this node is linux/amd64",
                config.os, config.architecture
            ),
        });
    }
    Ok(())
}

/// How a pod names an image of an OCI layout on the node: `oci:NAME`,
/// NAME being the image's `org.opencontainers.image.ref.name` there.
pub const LAYOUT_PREFIX: &str = "oci:";

/// Whether `name` may name an image in a layout (`oci:NAME`).
pub fn valid_layout_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b))
}

/// Takes image `name` of an OCI layout on the node into `store`, if a
/// signature by one of `keys` stored in the layout (as `herd sign-image
/// oci:DIR:NAME` writes it) covers its manifest; every blob is checked
/// against its digest on the way.
pub fn pull_layout(
    layout: &crate::layout::Layout,
    name: &str,
    store: &Store,
    keys: &[TrustedKey],
) -> Result<Pulled, Error> {
    use crate::manifest::MAX_DOCUMENT;
    let (manifest, digest) = layout.manifest(name)?;
    let signed_by = cosign::verify_layout(layout, name, &digest, keys)?;
    info!("oci:{name}: manifest {digest} signed by key {signed_by}");
    store.put(&digest, &layout.get(&digest, MAX_DOCUMENT)?)?;
    let config_bytes = layout.get(&manifest.config.digest, MAX_DOCUMENT)?;
    store.put(&manifest.config.digest, &config_bytes)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| Error::Malformed {
            what: format!("config of oci:{name}"),
            message: e.to_string(),
        })?;
    check_platform(&config, &format!("config of oci:{name}"))?;
    for l in &manifest.layers {
        store.put_with(&l.digest, |w| {
            let src = layout.blob_path(&l.digest);
            let mut f = std::fs::File::open(&src)
                .map_err(crate::io(format!("opening {}", src.display())))?;
            let mut h = crate::digest::Hashing::new(w);
            std::io::copy(&mut f, &mut h)
                .map_err(crate::io(format!("copying {}", src.display())))?;
            let n = h.len();
            let (got, _) = h.finish();
            if got != l.digest || n != l.size {
                return Err(Error::DigestMismatch {
                    what: format!("layer {} of oci:{name}", l.digest),
                    got: format!("{got} ({n} bytes)"),
                    expected: format!("{} ({} bytes)", l.digest, l.size),
                });
            }
            Ok(n)
        })?;
    }
    Ok(Pulled {
        reference: Reference {
            registry: "oci".into(),
            repository: name.into(),
            tag: None,
            digest: Some(digest),
        },
        signed_by,
        manifest,
        config,
    })
}

impl Pulled {
    /// An image pulled and verified earlier, read back from `store`: the
    /// manifest by its digest, its config and its layers, each checked
    /// against its digest again (a missing or damaged blob is an error).
    pub fn from_store(
        store: &Store,
        reference: &Reference,
        digest: &Digest,
        signed_by: &str,
    ) -> Result<Pulled, Error> {
        let malformed = |what: String| {
            move |e: serde_json::Error| Error::Malformed {
                what,
                message: e.to_string(),
            }
        };
        let manifest: Manifest = serde_json::from_slice(&store.get(digest)?)
            .map_err(malformed(format!("cached manifest {digest}")))?;
        let config: ImageConfig = serde_json::from_slice(&store.get(&manifest.config.digest)?)
            .map_err(malformed(format!("cached config of {reference}")))?;
        if let Some(l) = manifest.layers.iter().find(|l| !store.has(&l.digest)) {
            return Err(Error::NotFound(format!("cached layer {}", l.digest)));
        }
        Ok(Pulled {
            reference: reference.pinned(digest),
            signed_by: signed_by.into(),
            manifest,
            config,
        })
    }

    /// Unpacks the layers, bottom first, into `root` (which should be empty).
    pub fn unpack(&self, store: &Store, root: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(root).map_err(crate::io(format!("creating {}", root.display())))?;
        let mut u = crate::unpack::Unpacker::new(crate::unpack::Limits::default());
        for l in &self.manifest.layers {
            let f = std::fs::File::open(store.path(&l.digest))
                .map_err(crate::io(format!("opening layer {}", l.digest)))?;
            u.apply(root, &l.digest, &l.media_type, std::io::BufReader::new(f))?;
        }
        Ok(())
    }

    /// Every blob this image uses (for garbage collection).
    pub fn blobs(&self) -> Vec<Digest> {
        let mut v = vec![self.manifest.config.digest.clone()];
        v.extend(self.manifest.layers.iter().map(|l| l.digest.clone()));
        if let Some(d) = &self.reference.digest {
            v.push(d.clone());
        }
        v
    }
}
