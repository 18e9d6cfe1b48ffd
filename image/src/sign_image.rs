//! `herd sign-image`: signs a container image in a registry or an OCI
//! layout with a herd key, in cosign's format (see herd-oci's cosign
//! module), so herd-agent on a node that trusts the key will run it; with
//! `--bundle`, in cosign v3's format instead (a Sigstore bundle attached as
//! an OCI referrer, herd-oci's bundle module).

use std::path::Path;

use anyhow::{bail, Context, Result};
use herd_oci::layout::Layout;
use herd_oci::manifest::Document;
use herd_oci::registry::Registry;
use herd_oci::{cosign, Digest, Reference};
use herd_release::SigningKey;

/// Signs `target` (`REGISTRY/REPO[:TAG|@DIGEST]`, or `oci:DIR[:NAME]` with
/// `as_name` the registry/repository it will be pulled as); returns the
/// signed manifest digest. `bundle` signs in cosign v3's bundle format
/// (registry images only).
pub fn sign_image(
    target: &str,
    as_name: Option<&str>,
    key: &SigningKey,
    bundle: bool,
) -> Result<Digest> {
    if let Some(rest) = target.strip_prefix("oci:") {
        if bundle {
            bail!("--bundle signs registry images only: a layout's signature is the classic one, which herd-agent checks there");
        }
        let (dir, name) = match rest.rsplit_once(':') {
            Some((d, n)) if !n.contains('/') => (d, n),
            _ => (rest, ""),
        };
        let Some(as_name) = as_name else {
            bail!("signing an OCI layout needs --name REGISTRY/REPOSITORY: the name nodes will pull the image as");
        };
        let layout = Layout::open(Path::new(dir))?;
        let (_, digest) = layout
            .manifest(name)
            .with_context(|| format!("finding image {name:?} in {dir}"))?;
        cosign::sign_layout(&layout, as_name, &digest, key)?;
        return Ok(digest);
    }
    if as_name.is_some() {
        bail!("--name is only for oci: layouts; a registry image is signed under its own name");
    }
    let r = Reference::parse(target)?;
    let reg = Registry::for_reference(&r);
    let (bytes, mt, digest) = reg
        .manifest(&r.repository, &r.version())
        .with_context(|| format!("looking up {r}"))?;
    // A multi-platform index is signed as such (what cosign does).
    Document::parse(&bytes, &mt, &format!("manifest of {r}"))?;
    if bundle {
        herd_oci::bundle::sign(&reg, &r, &digest, &mt, bytes.len() as u64, key)
            .with_context(|| format!("storing the bundle of {r}"))?;
    } else {
        cosign::sign(&reg, &r, &digest, key)
            .with_context(|| format!("storing the signature of {r}"))?;
    }
    Ok(digest)
}
