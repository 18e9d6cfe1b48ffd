//! A distribution-spec registry client: manifests and blobs, pulled with
//! their digests checked and sizes bounded, and pushed (for signatures).
//! HTTPS, or plain HTTP for a registry on this machine's loopback.

use std::io::{Read, Write};
use std::time::Duration;

use crate::digest::Hashing;
use crate::manifest::{
    Descriptor, DOCKER_LIST, DOCKER_MANIFEST, MAX_DOCUMENT, OCI_INDEX, OCI_MANIFEST,
};
use crate::{Digest, Error, Reference};

/// A registry.
pub struct Registry {
    base: String,
    agent: ureq::Agent,
}

fn err(url: &str, m: impl ToString) -> Error {
    Error::Registry {
        url: url.into(),
        message: m.to_string(),
    }
}

fn call(
    req: ureq::Request,
    url: &str,
    what: &str,
    body: Option<&[u8]>,
) -> Result<ureq::Response, Error> {
    let r = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match r {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(404, _)) => Err(Error::NotFound(what.into())),
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            Err(err(
                url,
                format!(
                    "status {code}: {}",
                    text.trim().chars().take(300).collect::<String>()
                ),
            ))
        }
        Err(e) => Err(err(url, e)),
    }
}

impl Registry {
    /// The registry `reference` names: HTTPS, or plain HTTP on loopback.
    pub fn for_reference(r: &Reference) -> Registry {
        Registry::with_plain_http(r, false)
    }

    /// The registry `reference` names, over plain HTTP when it is on
    /// loopback or `plain_http` says so (a node's policy may name
    /// registries it reaches without TLS; signatures are checked either way).
    pub fn with_plain_http(r: &Reference, plain_http: bool) -> Registry {
        let scheme = if plain_http || r.is_loopback() {
            "http"
        } else {
            "https"
        };
        Registry {
            base: format!("{scheme}://{}", r.registry),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(60))
                .redirects(5)
                .build(),
        }
    }

    /// Fetches a manifest or index by tag or digest: its bytes, media type
    /// and digest (checked when asked for by digest).
    pub fn manifest(&self, repo: &str, version: &str) -> Result<(Vec<u8>, String, Digest), Error> {
        let url = format!("{}/v2/{repo}/manifests/{version}", self.base);
        let what = format!("manifest {repo}:{version}");
        let resp = call(
            self.agent.get(&url).set(
                "Accept",
                &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", "),
            ),
            &url,
            &what,
            None,
        )?;
        let mt = resp.content_type().to_string();
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut body)
            .map_err(|e| err(&url, e))?;
        if body.len() as u64 > MAX_DOCUMENT {
            return Err(Error::TooLarge {
                what,
                limit: MAX_DOCUMENT,
            });
        }
        let digest = Digest::of(&body);
        if version.starts_with("sha256:") {
            Digest::parse(version)?.check(&body, &what)?;
        }
        Ok((body, mt, digest))
    }

    /// Streams a blob into `out`, checking its size and digest; returns the
    /// bytes written. On a mismatch the caller must discard `out`.
    pub fn blob(&self, repo: &str, d: &Descriptor, out: &mut dyn Write) -> Result<u64, Error> {
        let url = format!("{}/v2/{repo}/blobs/{}", self.base, d.digest);
        let what = format!("blob {}", d.digest);
        let resp = call(self.agent.get(&url), &url, &what, None)?;
        let mut h = Hashing::new(out);
        std::io::copy(&mut resp.into_reader().take(d.size + 1), &mut h)
            .map_err(|e| err(&url, e))?;
        if h.len() != d.size {
            return Err(Error::Malformed {
                what,
                message: format!("{} bytes, the manifest says {}", h.len(), d.size),
            });
        }
        let (got, _) = h.finish();
        if got != d.digest {
            return Err(Error::DigestMismatch {
                what,
                got: got.to_string(),
                expected: d.digest.to_string(),
            });
        }
        Ok(d.size)
    }

    /// Fetches a small blob (a config) into memory, checked.
    pub fn small_blob(&self, repo: &str, d: &Descriptor) -> Result<Vec<u8>, Error> {
        if d.size > MAX_DOCUMENT {
            return Err(Error::TooLarge {
                what: format!("blob {}", d.digest),
                limit: MAX_DOCUMENT,
            });
        }
        let mut v = Vec::with_capacity(d.size as usize);
        self.blob(repo, d, &mut v)?;
        Ok(v)
    }

    /// Uploads a blob (monolithic upload) unless the registry has it.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<Digest, Error> {
        let digest = Digest::of(bytes);
        let head = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        if self.agent.head(&head).call().is_ok() {
            return Ok(digest);
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = call(self.agent.post(&url), &url, "upload", Some(&[]))?;
        let loc = resp
            .header("Location")
            .ok_or_else(|| err(&url, "no Location in the upload answer"))?
            .to_string();
        let loc = if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        call(
            self.agent
                .put(&put)
                .set("Content-Type", "application/octet-stream"),
            &put,
            "upload",
            Some(bytes),
        )?;
        Ok(digest)
    }

    /// Uploads a manifest under `tag`.
    pub fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, Error> {
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.base);
        call(
            self.agent.put(&url).set("Content-Type", media_type),
            &url,
            "manifest upload",
            Some(bytes),
        )?;
        Ok(Digest::of(bytes))
    }
}
