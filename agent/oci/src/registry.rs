//! A distribution-spec registry client: manifests and blobs, pulled with
//! their digests checked and sizes bounded, and pushed (for signatures).
//! HTTPS, or plain HTTP for a registry on this machine's loopback; Bearer
//! tokens where the registry asks for them ([`crate::auth`]), anonymous or
//! with the registry's credentials file ([`crate::credentials`]), and Basic
//! credentials for registries that want them. Credentials are sent only in
//! answer to a 401 challenge, never logged, and ureq drops the
//! `Authorization` header on redirects (to blob storage elsewhere).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::{token_from_answer, Challenge};
use crate::credentials::{self, Credentials};

use crate::digest::Hashing;
use crate::manifest::{
    Descriptor, DOCKER_LIST, DOCKER_MANIFEST, MAX_DOCUMENT, OCI_INDEX, OCI_MANIFEST,
};
use crate::{Digest, Error, Reference};

/// A registry.
pub struct Registry {
    base: String,
    /// `host[:port]`, as the reference names it.
    host: String,
    agent: ureq::Agent,
    /// `Authorization` values by scope (`repository:NAME:pull`).
    tokens: Mutex<BTreeMap<String, String>>,
    /// Where the registry's credentials file is looked for.
    credentials_dir: PathBuf,
}

/// Where nodes keep registry credentials (`<host[:port]>.toml`).
pub const CREDENTIALS_DIR: &str = "/etc/herd/registries";

/// Whether credentials may be sent to a token realm: over HTTPS, or over
/// plain HTTP to this machine's loopback only (a registry on the network
/// cannot make herd send a password in the clear to a host it names).
pub fn realm_may_get_credentials(realm: &str) -> bool {
    if realm.starts_with("https://") {
        return true;
    }
    let Some(rest) = realm.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn err(url: &str, m: impl ToString) -> Error {
    Error::Registry {
        url: url.into(),
        message: m.to_string(),
    }
}

/// A document's body (a manifest, an index, a token answer), read up to
/// [`MAX_DOCUMENT`] bytes: a larger one is refused as `TooLarge`, never
/// held in memory.
fn read_document(resp: ureq::Response, url: &str, what: &str) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut body)
        .map_err(|e| err(url, e))?;
    if body.len() as u64 > MAX_DOCUMENT {
        return Err(Error::TooLarge {
            what: what.to_string(),
            limit: MAX_DOCUMENT,
        });
    }
    Ok(body)
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
            host: r.registry.clone(),
            credentials_dir: PathBuf::from(CREDENTIALS_DIR),
        }
    }

    /// The same client, looking for the registry's credentials file in
    /// `dir` instead of [`CREDENTIALS_DIR`].
    pub fn with_credentials_dir(self, dir: &Path) -> Registry {
        Registry {
            credentials_dir: dir.to_path_buf(),
            ..self
        }
    }

    /// The credentials file this registry's credentials are read from.
    pub fn credentials_file(&self) -> PathBuf {
        credentials::file_for(&self.credentials_dir, &self.host)
    }

    fn credentials(&self) -> Result<Option<Credentials>, Error> {
        Ok(credentials::load(&self.credentials_dir, &self.host)?)
    }

    fn needs_credentials(&self) -> Error {
        Error::NeedsCredentials {
            registry: self.host.clone(),
            file: self.credentials_file(),
        }
    }

    fn refused(&self, c: &Credentials) -> Error {
        Error::CredentialsRefused {
            registry: self.host.clone(),
            file: self.credentials_file(),
            kind: c.kind(),
        }
    }

    /// The `Authorization` value answering `challenge` for `scope`.
    fn authorize(&self, challenge: &str, url: &str, scope: &str) -> Result<String, Error> {
        let creds = self.credentials()?;
        let scheme = challenge.split_whitespace().next().unwrap_or("");
        if scheme.eq_ignore_ascii_case("basic") {
            return match &creds {
                None => Err(self.needs_credentials()),
                Some(c) => c.basic_header().ok_or_else(|| {
                    err(
                        url,
                        format!(
                            "the registry asks for a username and password (Basic), {} holds a token",
                            self.credentials_file().display()
                        ),
                    )
                }),
            };
        }
        let c = Challenge::parse(challenge).map_err(|e| err(url, e))?;
        match &creds {
            Some(Credentials::Token(t)) => Ok(format!("Bearer {t}")),
            Some(p) => {
                if !realm_may_get_credentials(&c.realm) {
                    return Err(err(
                        url,
                        format!(
                            "the registry sends herd for a token to {}, over plain HTTP to another machine: herd does not send the password of {} there",
                            c.realm,
                            self.credentials_file().display()
                        ),
                    ));
                }
                let basic = p.basic_header().expect("a password");
                Ok(format!(
                    "Bearer {}",
                    self.fetch_token(&c, scope, Some(p), Some(&basic))?
                ))
            }
            None => Ok(format!(
                "Bearer {}",
                self.fetch_token(&c, scope, None, None)?
            )),
        }
    }

    /// Sends a request (made afresh by `make` for a retry) with the
    /// `Authorization` held for `scope`; on a 401, answers the challenge
    /// (Basic credentials, or a Bearer token: the credentials file's, or
    /// one fetched from the challenge's realm) and tries once more.
    fn call(
        &self,
        make: &dyn Fn() -> ureq::Request,
        url: &str,
        what: &str,
        body: Option<&[u8]>,
        scope: &str,
    ) -> Result<ureq::Response, Error> {
        let with_auth = |a: Option<&String>| match a {
            Some(a) => make().set("Authorization", a),
            None => make(),
        };
        let held = self.tokens.lock().expect("lock").get(scope).cloned();
        match send_raw(with_auth(held.as_ref()), body) {
            Err(ureq::Error::Status(401, resp)) => {
                let challenge = resp.header("WWW-Authenticate").map(str::to_string);
                let Some(challenge) = challenge else {
                    return Err(match self.credentials()? {
                        Some(c) => self.refused(&c),
                        None => self.needs_credentials(),
                    });
                };
                let auth = self.authorize(&challenge, url, scope)?;
                self.tokens
                    .lock()
                    .expect("lock")
                    .insert(scope.to_string(), auth.clone());
                match send_raw(with_auth(Some(&auth)), body) {
                    // Still refused: the credentials (or an anonymous
                    // token) do not give access.
                    Err(ureq::Error::Status(401 | 403, _)) => Err(match self.credentials()? {
                        Some(c) => self.refused(&c),
                        None => self.needs_credentials(),
                    }),
                    r => outcome(r, url, what),
                }
            }
            r => outcome(r, url, what),
        }
    }

    /// A token for `scope` from the challenge's realm, anonymous or with
    /// `creds` (sent as the Basic `authorization` value).
    fn fetch_token(
        &self,
        c: &Challenge,
        scope: &str,
        creds: Option<&Credentials>,
        authorization: Option<&str>,
    ) -> Result<String, Error> {
        let url = c.token_url(scope);
        tracing::debug!(
            "fetching a registry token from {url}{}",
            if creds.is_some() {
                " with the registry's credentials"
            } else {
                ""
            }
        );
        let req = self.agent.get(&url);
        let req = match authorization {
            Some(a) => req.set("Authorization", a),
            None => req,
        };
        let resp = match (req.call(), creds) {
            (Err(ureq::Error::Status(401, _)), Some(cr)) => return Err(self.refused(cr)),
            (Err(ureq::Error::Status(401, _)), None) => return Err(self.needs_credentials()),
            (r, _) => outcome(r, &c.realm, "token")?,
        };
        let body = read_document(resp, &c.realm, &format!("token answer from {}", c.realm))?;
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
        let body = read_document(resp, &url, &what)?;
        let digest = Digest::of(&body);
        if version.starts_with("sha256:") {
            Digest::parse(version)?.check(&body, &what)?;
        }
        Ok((body, mt, digest))
    }

    /// The referrers API's answer for `digest` (an OCI index), or None when
    /// the registry has no referrers API (then the referrers tag schema,
    /// `sha256-HEX`, stands in for it).
    pub fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        let url = format!("{}/v2/{repo}/referrers/{digest}", self.base);
        let what = format!("referrers of {digest}");
        let resp = match self.call(
            &|| self.agent.get(&url).set("Accept", OCI_INDEX),
            &url,
            &what,
            None,
            &pull_scope(repo),
        ) {
            Ok(r) => r,
            // No such route (distribution 2.x answers 404), or refused as
            // an unknown method or path.
            Err(Error::NotFound(_)) => return Ok(None),
            Err(Error::Registry { message, .. })
                if ["status 400", "status 405", "status 501"]
                    .iter()
                    .any(|s| message.starts_with(s)) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if !resp.content_type().starts_with(OCI_INDEX) {
            return Ok(None);
        }
        let body = read_document(resp, &url, &what)?;
        Ok(Some(body))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_go_to_token_realms_over_https_or_loopback_only() {
        for ok in [
            "https://auth.example/token",
            "http://127.0.0.1:5001/token",
            "http://localhost/token?x=1",
            "http://[::1]:8080/t",
        ] {
            assert!(realm_may_get_credentials(ok), "{ok}");
        }
        for bad in [
            "http://auth.example/token",
            "http://10.0.2.100:5001/token",
            "http://127.0.0.1@evil.example/token",
            "http://127.0.0.1.evil.example/t",
            "ftp://127.0.0.1/t",
            "http://[::2]/t",
        ] {
            assert!(!realm_may_get_credentials(bad), "{bad}");
        }
    }
}
