//! A distribution-spec registry client: manifests and blobs, pulled with
//! their digests checked and sizes bounded, and pushed (for signatures).
//! HTTPS, or plain HTTP for a registry on this machine's loopback; anonymous
//! Bearer tokens where the registry asks for them ([`crate::auth`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::{token_from_answer, Challenge};

use crate::digest::Hashing;
use crate::manifest::{
    Descriptor, DOCKER_LIST, DOCKER_MANIFEST, MAX_DOCUMENT, OCI_INDEX, OCI_MANIFEST,
};
use crate::{Digest, Error, Reference};

/// A registry.
pub struct Registry {
    base: String,
    agent: ureq::Agent,
    /// Bearer tokens by scope (`repository:NAME:pull`).
    tokens: Mutex<BTreeMap<String, String>>,
}

fn err(url: &str, m: impl ToString) -> Error {
    Error::Registry {
        url: url.into(),
        message: m.to_string(),
    }
}

// ureq's own error type, passed straight on to `outcome`.
#[allow(clippy::result_large_err)]
fn send_raw(req: ureq::Request, body: Option<&[u8]>) -> Result<ureq::Response, ureq::Error> {
    match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    }
}

fn outcome(
    r: Result<ureq::Response, ureq::Error>,
    url: &str,
    what: &str,
) -> Result<ureq::Response, Error> {
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

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
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
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sends a request (made afresh by `make` for a retry) with the token
    /// held for `scope`; on a 401 with a Bearer challenge, fetches a token
    /// from the challenge's realm and tries once more.
    fn call(
        &self,
        make: &dyn Fn() -> ureq::Request,
        url: &str,
        what: &str,
        body: Option<&[u8]>,
        scope: &str,
    ) -> Result<ureq::Response, Error> {
        let with_token = |t: Option<&String>| match t {
            Some(t) => make().set("Authorization", &format!("Bearer {t}")),
            None => make(),
        };
        let held = self.tokens.lock().expect("lock").get(scope).cloned();
        match send_raw(with_token(held.as_ref()), body) {
            Err(ureq::Error::Status(401, resp)) => {
                let challenge = resp.header("WWW-Authenticate").map(str::to_string);
                let challenge = challenge.ok_or_else(|| {
                    err(url, "status 401 without a WWW-Authenticate challenge: the registry wants credentials herd does not have")
                })?;
                let c = Challenge::parse(&challenge).map_err(|e| err(url, e))?;
                let token = self.fetch_token(&c, scope)?;
                self.tokens
                    .lock()
                    .expect("lock")
                    .insert(scope.to_string(), token.clone());
                outcome(send_raw(with_token(Some(&token)), body), url, what)
            }
            r => outcome(r, url, what),
        }
    }

    /// An anonymous token for `scope` from the challenge's realm.
    fn fetch_token(&self, c: &Challenge, scope: &str) -> Result<String, Error> {
        let url = c.token_url(scope);
        tracing::debug!("fetching a registry token from {url}");
        let resp = outcome(self.agent.get(&url).call(), &c.realm, "token")?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut body)
            .map_err(|e| err(&c.realm, e))?;
        if body.len() as u64 > MAX_DOCUMENT {
            return Err(Error::TooLarge {
                what: format!("token answer from {}", c.realm),
                limit: MAX_DOCUMENT,
            });
        }
        token_from_answer(&body).map_err(|e| err(&c.realm, e))
    }

    /// Fetches a manifest or index by tag or digest: its bytes, media type
    /// and digest (checked when asked for by digest).
    pub fn manifest(&self, repo: &str, version: &str) -> Result<(Vec<u8>, String, Digest), Error> {
        let url = format!("{}/v2/{repo}/manifests/{version}", self.base);
        let what = format!("manifest {repo}:{version}");
        let resp = self.call(
            &|| {
                self.agent.get(&url).set(
                    "Accept",
                    &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", "),
                )
            },
            &url,
            &what,
            None,
            &pull_scope(repo),
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
        let resp = self.call(
            &|| self.agent.get(&url),
            &url,
            &what,
            None,
            &pull_scope(repo),
        )?;
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
        let scope = push_scope(repo);
        if self
            .call(&|| self.agent.head(&head), &head, "blob", None, &scope)
            .is_ok()
        {
            return Ok(digest);
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self.call(&|| self.agent.post(&url), &url, "upload", Some(&[]), &scope)?;
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
        self.call(
            &|| {
                self.agent
                    .put(&put)
                    .set("Content-Type", "application/octet-stream")
            },
            &put,
            "upload",
            Some(bytes),
            &scope,
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
        self.call(
            &|| self.agent.put(&url).set("Content-Type", media_type),
            &url,
            "manifest upload",
            Some(bytes),
            &push_scope(repo),
        )?;
        Ok(Digest::of(bytes))
    }
}
