//! OCI images for herd: image references, the distribution-spec registry
//! client (HTTPS or loopback HTTP, anonymous Bearer tokens), a content-addressed blob store, layer unpacking with
//! whiteouts, and image signatures in cosign's format (a simple-signing
//! payload naming the manifest digest, stored in the registry under the tag
//! `sha256-<hex>.sig`) or cosign v3's Sigstore bundles (OCI referrers),
//! signed with ed25519 or ECDSA P-256 keys; credentials for private
//! registries.

pub mod auth;
pub mod bundle;
pub mod cosign;
pub mod credentials;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use reference::{Reference, SignedIdentity};

/// What can go wrong; each says what and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image reference that does not parse.
    #[error("image reference {reference:?}: {message}")]
    Reference {
        /// the text
        reference: String,
        /// what is wrong
        message: String,
    },
    /// A digest that does not parse or is not sha256.
    #[error("digest {0:?}: expected sha256:<64 hex digits>")]
    BadDigest(String),
    /// Content whose hash is not the digest that named it.
    #[error("{what}: content has digest {got}, expected {expected} (tampered or corrupted)")]
    DigestMismatch {
        /// which content
        what: String,
        /// computed
        got: String,
        /// expected
        expected: String,
    },
    /// A document that is not what it should be.
    #[error("{what}: {message}")]
    Malformed {
        /// which document
        what: String,
        /// what is wrong
        message: String,
    },
    /// Content larger than allowed.
    #[error("{what}: more than {limit} bytes, refusing it")]
    TooLarge {
        /// which content
        what: String,
        /// the limit
        limit: u64,
    },
    /// The registry answered with an error or could not be reached.
    #[error("registry {url}: {message}")]
    Registry {
        /// the URL
        url: String,
        /// what happened
        message: String,
    },
    /// The registry wants credentials and the node has none for it.
    #[error("registry {registry} wants credentials (it answered 401) and the node has none for it: put `username` and `password`, or `token`, in {} (mode 0600, owned by root), e.g. with [[images.registry]] in the node configuration (docs/PODS.md)", file.display())]
    NeedsCredentials {
        /// `host[:port]`
        registry: String,
        /// the file to create
        file: std::path::PathBuf,
    },
    /// The registry (or its token service) refused the node's credentials.
    #[error("registry {registry} refused the credentials in {} ({kind}): they are wrong, expired, or do not give access to this repository; fix the file", file.display())]
    CredentialsRefused {
        /// `host[:port]`
        registry: String,
        /// the credentials file
        file: std::path::PathBuf,
        /// what kind they are
        kind: &'static str,
    },
    /// A credentials file that was refused.
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    /// Not found in the registry or layout.
    #[error("{0}: not found")]
    NotFound(String),
    /// The signature check refused the image.
    #[error("image {image} is not trusted: {message}")]
    Untrusted {
        /// the image
        image: String,
        /// why
        message: String,
    },
    /// A valid cosign v3 bundle by a trusted key that names no image (cosign
    /// signs the digest only), and the key's policy does not accept that.
    #[error("image {image} is not trusted: its cosign bundle by key {key} names no image (cosign v3 signs the manifest digest only), so it could have been made for any repository holding these bytes; sign it with `herd sign-image --bundle {image}` (which names it), or, if every image that key signs may run under any name, set bundle_without_identity = true for that key in policy.toml (docs/PODS.md)")]
    NoIdentity {
        /// the reference asked for
        image: String,
        /// the id of the key that signed
        key: String,
    },
    /// A valid signature by a trusted key, for an image of another name.
    #[error(transparent)]
    WrongIdentity(Box<WrongIdentity>),
    /// A key file or key text that does not parse.
    #[error("key {what}: {message}")]
    Key {
        /// which key
        what: String,
        /// what is wrong
        message: String,
    },
    /// A layer entry that would escape the root or is unsupported.
    #[error("layer {layer}: {message}")]
    Layer {
        /// the layer digest
        layer: String,
        /// what is wrong
        message: String,
    },
    /// A hard link whose target is outside the image root: it climbs with
    /// `..`, is absolute, or its way passes through a symlink or a file.
    #[error("layer {layer}: hard link {entry} -> {target}: {message}; refusing the image (rebuild it without that link)")]
    LayerHardLink {
        /// the layer digest
        layer: String,
        /// the link's path in the layer
        entry: String,
        /// the link's target as written in the layer
        target: String,
        /// why the target is refused
        message: String,
    },
    /// A whiteout that names no file of its directory (`.wh.`, `.wh..`,
    /// `.wh...`) or an unknown `.wh..wh.` special.
    #[error("layer {layer}: whiteout {entry} does not name a file of its directory (only `.wh.NAME` and `.wh..wh..opq` are whiteouts); refusing the image")]
    LayerWhiteout {
        /// the layer digest
        layer: String,
        /// the whiteout's path in the layer
        entry: String,
    },
    /// More decompressed bytes than the per-layer or per-image cap (a
    /// compression bomb, or an image too large for this node).
    #[error("layer {layer}: more than {limit} bytes once decompressed, over the {scope} cap; refusing the image (a compression bomb, or an image too large for this node)")]
    LayerTooLarge {
        /// the layer digest
        layer: String,
        /// `per-layer` or `per-image`
        scope: &'static str,
        /// the cap in bytes
        limit: u64,
    },
    /// More entries in one layer than the cap.
    #[error("layer {layer}: more than {limit} entries; refusing the image")]
    LayerTooManyEntries {
        /// the layer digest
        layer: String,
        /// the cap
        limit: u64,
    },
    /// An entry path (or link target) longer than the cap.
    #[error("layer {layer}: an entry path or link target of {len} bytes, longer than {limit}; refusing the image")]
    LayerPathTooLong {
        /// the layer digest
        layer: String,
        /// its length in bytes
        len: usize,
        /// the cap
        limit: usize,
    },
    /// I/O.
    #[error("{what}: {cause}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        cause: std::io::Error,
    },
}

/// Why [`Error::WrongIdentity`]: the only valid signatures name another
/// image than the one asked for.
#[derive(Debug, thiserror::Error)]
#[error(
    "image {asked} is not trusted: the signature by key {key} was made for {signed:?}, not for {asked}: {why} (signed_identity {rule}); re-sign the image as {asked} (`herd sign-image {asked}`), or, if this name is meant to serve that image (a mirror, a renamed copy), set signed_identity for that key in policy.toml (docs/PODS.md)"
)]
pub struct WrongIdentity {
    /// the reference asked for
    pub asked: String,
    /// the signature's `docker-reference`
    pub signed: String,
    /// the id of the key that signed
    pub key: String,
    /// the rule applied
    pub rule: &'static str,
    /// how they differ
    pub why: String,
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |cause| Error::Io { what, cause }
}
