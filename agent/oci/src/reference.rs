//! Image references: `[registry/]repository[:tag][@sha256:...]`.

use std::fmt;

use crate::{Digest, Error};

/// Where an image lives and which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port), e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, when given (`latest` when neither tag nor digest is).
    pub tag: Option<String>,
    /// Digest, when given: it pins the manifest.
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

impl Reference {
    /// Parses a reference the way container tools do: a first component
    /// with a `.` or `:` or `localhost` is the registry (else `docker.io`,
    /// with `library/` for one-component names).
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let mut r = Reference::parse_as_written(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".into());
        }
        Ok(r)
    }

    /// [`Reference::parse`] without the implied `latest`: the tag is the
    /// one written, if any (how a signature's `docker-reference` is read).
    /// `index.docker.io` is read as `docker.io`, as container tools do.
    pub fn parse_as_written(s: &str) -> Result<Reference, Error> {
        let bad = |m: &str| Error::Reference {
            reference: s.into(),
            message: m.into(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path)
            }
            _ => ("docker.io".to_string(), rest),
        };
        // A tag is after the last ':' that follows the last '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t.to_string())),
            _ => (path.to_string(), None),
        };
        if repository.is_empty() {
            return Err(bad("no repository name"));
        }
        if !repository.split('/').all(valid_component) {
            return Err(bad(
                "repository names are lowercase letters, digits and . _ - separated by /",
            ));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && t.as_bytes()[0] != b'.'
                && t.as_bytes()[0] != b'-';
            if !ok {
                return Err(bad(
                    "a tag is up to 128 letters, digits, . _ - (not starting with . or -)",
                ));
            }
        }
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn version(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// `registry/repository` (what a cosign signature names).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned to `digest`.
    pub fn pinned(&self, digest: &Digest) -> Reference {
        Reference {
            digest: Some(digest.clone()),
            ..self.clone()
        }
    }

    /// Whether the registry is on this machine's loopback (plain HTTP is
    /// allowed only there).
    pub fn is_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(h, _)| h);
        matches!(host, "127.0.0.1" | "localhost" | "[::1]")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Which image names a key's signatures may vouch for: how a signature's
/// `critical.identity.docker-reference` must match the reference a pod asks
/// for (after containers-policy.json's `signedIdentity`). Both sides are
/// normalised first (`docker.io` for a bare name, `library/` for a
/// one-component Docker Hub name, `index.docker.io` read as `docker.io`);
/// a port is part of the registry; a digest in the signed identity must be
/// the manifest's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignedIdentity {
    /// Same registry and repository; a tag in the signature must be the
    /// tag asked for (cosign and `herd sign-image` sign the repository
    /// without a tag; containers/image signs with the tag). The default.
    #[default]
    MatchRepository,
    /// containers/image's default: asked for by digest only, the same
    /// repository; asked for by tag, the signature must name exactly that
    /// tag (so a tagless cosign signature does not do).
    MatchRepoDigestOrExact,
    /// The signature names exactly the reference asked for.
    MatchExact,
    /// A reference whose `registry/repository` starts with `prefix` (at a
    /// `/` boundary) is read with `prefix` replaced by `signed_prefix`, then
    /// matched as [`SignedIdentity::MatchRepository`]: images signed as
    /// `ghcr.io/acme/...` served by a mirror `10.0.2.100:5000/acme/...`.
    RemapIdentity {
        /// the prefix of the references asked for, e.g. `10.0.2.100:5000/acme`
        prefix: String,
        /// what it stands for in signatures, e.g. `ghcr.io/acme`
        signed_prefix: String,
    },
}

impl SignedIdentity {
    /// The rule's name in policy.toml (`signed_identity = "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            SignedIdentity::MatchRepository => "matchRepository",
            SignedIdentity::MatchRepoDigestOrExact => "matchRepoDigestOrExact",
            SignedIdentity::MatchExact => "matchExact",
            SignedIdentity::RemapIdentity { .. } => "remapIdentity",
        }
    }

    /// The rule named `rule`, with `prefix` and `signed_prefix` given for
    /// (and only for) `remapIdentity`; Err says what is wrong.
    pub fn from_parts(
        rule: &str,
        prefix: Option<String>,
        signed_prefix: Option<String>,
    ) -> Result<SignedIdentity, String> {
        let simple = match rule {
            "matchRepository" => SignedIdentity::MatchRepository,
            "matchRepoDigestOrExact" => SignedIdentity::MatchRepoDigestOrExact,
            "matchExact" => SignedIdentity::MatchExact,
            "remapIdentity" => {
                let (Some(prefix), Some(signed_prefix)) = (prefix, signed_prefix) else {
                    return Err("remapIdentity needs both prefix and signed_prefix".into());
                };
                for (field, p) in [("prefix", &prefix), ("signed_prefix", &signed_prefix)] {
                    if !valid_prefix(p) {
                        return Err(format!(
                            "{field} {p:?} is not HOST[:PORT][/PATH] written out in full (e.g. docker.io/library/busybox, without tag or digest)"
                        ));
                    }
                }
                return Ok(SignedIdentity::RemapIdentity {
                    prefix,
                    signed_prefix,
                });
            }
            other => {
                return Err(format!(
                    "signed_identity {other:?} is none of matchRepository (the default), matchRepoDigestOrExact, matchExact, remapIdentity"
                ))
            }
        };
        if prefix.is_some() || signed_prefix.is_some() {
            return Err(format!(
                "prefix and signed_prefix belong to remapIdentity, not {rule}"
            ));
        }
        Ok(simple)
    }

    /// Ok when a signature whose identity is `signed` may vouch for the
    /// image `asked` at manifest `digest`; Err says why not.
    pub fn check(&self, signed: &str, asked: &Reference, digest: &Digest) -> Result<(), String> {
        let s = Reference::parse_as_written(signed)
            .map_err(|e| format!("its identity is not an image reference ({e})"))?;
        if s.digest.as_ref().is_some_and(|d| d != digest) {
            return Err("it names another digest".into());
        }
        let same_repository = |a: &Reference| {
            a.registry.eq_ignore_ascii_case(&s.registry) && a.repository == s.repository
        };
        let repository_and_tag = |a: &Reference| {
            if !same_repository(a) {
                return Err("another repository".to_string());
            }
            match (&s.tag, &a.tag) {
                (Some(st), Some(at)) if st != at => Err(format!("tag {st}, not {at}")),
                _ => Ok(()),
            }
        };
        let exact = |a: &Reference| {
            if same_repository(a) && s.tag == a.tag && s.digest == a.digest {
                Ok(())
            } else {
                Err(format!("not exactly {a}"))
            }
        };
        match self {
            SignedIdentity::MatchRepository => repository_and_tag(asked),
            SignedIdentity::MatchRepoDigestOrExact if asked.tag.is_none() => {
                if same_repository(asked) {
                    Ok(())
                } else {
                    Err("another repository".into())
                }
            }
            SignedIdentity::MatchRepoDigestOrExact | SignedIdentity::MatchExact => exact(asked),
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let name = asked.name();
                let rest = match name.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                    _ => return repository_and_tag(asked),
                };
                let remapped = Reference::parse_as_written(&format!("{signed_prefix}{rest}"))
                    .map_err(|e| format!("{name} remapped to {signed_prefix}{rest}: {e}"))?;
                repository_and_tag(&Reference {
                    tag: asked.tag.clone(),
                    digest: asked.digest.clone(),
                    ..remapped
                })
                .map_err(|e| format!("{e} (remapIdentity reads {name} as {signed_prefix}{rest})"))
            }
        }
    }
}

/// `host[:port][/component...]`, lowercase path components, no tag or
/// digest.
fn valid_prefix(p: &str) -> bool {
    let mut parts = p.split('/');
    let host = parts.next().unwrap_or_default();
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && parts.all(valid_component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = Reference::parse("127.0.0.1:5000/herd/web:1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "herd/web", Some("1.2"))
        );
        assert!(r.is_loopback());
        let d = Digest::of(b"x");
        let r = Reference::parse(&format!("localhost/web@{d}")).unwrap();
        assert_eq!((r.tag, r.digest), (None, Some(d)));
        assert!(!Reference::parse("ghcr.io/a/b").unwrap().is_loopback());
    }

    #[test]
    fn refuses_bad_ones() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "web:",
            "web:-x",
            "web@sha256:12",
            "127.0.0.1:5000/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signed_identities_match_as_containers_policy_says() {
        use SignedIdentity::*;
        let d = Digest::of(b"manifest");
        let other = Digest::of(b"other");
        let remap = RemapIdentity {
            prefix: "10.0.2.100:5000/acme".into(),
            signed_prefix: "ghcr.io/acme".into(),
        };
        let hub = RemapIdentity {
            prefix: "10.0.2.100:5000".into(),
            signed_prefix: "docker.io".into(),
        };
        // (rule, signed identity, asked, matches)
        let by_digest = format!("127.0.0.1:5000/team/web@{d}");
        let signed_digest = format!("127.0.0.1:5000/team/web@{d}");
        let signed_other_digest = format!("127.0.0.1:5000/team/web@{other}");
        let cases: Vec<(&SignedIdentity, &str, &str, bool)> = vec![
            // cosign and herd sign the repository without a tag.
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                "127.0.0.1:5000/team/web:1",
                true,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                "127.0.0.1:5000/team/other:1",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                "127.0.0.1:5000/team/web/x:1",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                "127.0.0.1:5001/team/web:1",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                "127.0.0.1/team/web:1",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                "localhost:5000/team/web:1",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web",
                &by_digest,
                true,
            ),
            // containers/image signs with the tag: it must be the one asked for.
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web:1",
                "127.0.0.1:5000/team/web:1",
                true,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web:1",
                "127.0.0.1:5000/team/web:2",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web:1",
                "127.0.0.1:5000/team/web",
                false,
            ),
            (
                &MatchRepository,
                "127.0.0.1:5000/team/web:1",
                &by_digest,
                true,
            ),
            (
                &MatchRepository,
                &signed_digest,
                "127.0.0.1:5000/team/web:1",
                true,
            ),
            (
                &MatchRepository,
                &signed_other_digest,
                "127.0.0.1:5000/team/web:1",
                false,
            ),
            // Docker Hub's normalisation, on both sides.
            (
                &MatchRepository,
                "busybox",
                "docker.io/library/busybox:1",
                true,
            ),
            (&MatchRepository, "docker.io/busybox", "busybox:1", true),
            (
                &MatchRepository,
                "index.docker.io/library/busybox",
                "busybox",
                true,
            ),
            (
                &MatchRepository,
                "docker.io/library/busybox:latest",
                "busybox",
                true,
            ),
            (
                &MatchRepository,
                "busybox",
                "docker.io/team/busybox:1",
                false,
            ),
            (
                &MatchRepository,
                "DOCKER.IO/library/busybox",
                "busybox",
                true,
            ),
            (&MatchRepository, "not a reference", "busybox", false),
            (&MatchRepository, "", "busybox", false),
            // containers/image's default: by tag, exactly.
            (
                &MatchRepoDigestOrExact,
                "127.0.0.1:5000/team/web:1",
                "127.0.0.1:5000/team/web:1",
                true,
            ),
            (
                &MatchRepoDigestOrExact,
                "127.0.0.1:5000/team/web",
                "127.0.0.1:5000/team/web:1",
                false,
            ),
            (
                &MatchRepoDigestOrExact,
                "127.0.0.1:5000/team/web:2",
                &by_digest,
                true,
            ),
            (
                &MatchRepoDigestOrExact,
                "127.0.0.1:5000/team/other:1",
                &by_digest,
                false,
            ),
            (
                &MatchExact,
                "127.0.0.1:5000/team/web:1",
                "127.0.0.1:5000/team/web:1",
                true,
            ),
            (&MatchExact, "127.0.0.1:5000/team/web:1", &by_digest, false),
            (&MatchExact, &signed_digest, &by_digest, true),
            (
                &MatchExact,
                "127.0.0.1:5000/team/web",
                "127.0.0.1:5000/team/web:1",
                false,
            ),
            // A mirror.
            (
                &remap,
                "ghcr.io/acme/web",
                "10.0.2.100:5000/acme/web:1",
                true,
            ),
            (
                &remap,
                "ghcr.io/acme/web:1",
                "10.0.2.100:5000/acme/web:2",
                false,
            ),
            (
                &remap,
                "ghcr.io/acme/web",
                "10.0.2.100:5000/acme/other:1",
                false,
            ),
            (
                &remap,
                "ghcr.io/acme/web",
                "10.0.2.100:5000/acmeco/web:1",
                false,
            ),
            (
                &remap,
                "10.0.2.100:5000/acmeco/web",
                "10.0.2.100:5000/acmeco/web:1",
                true,
            ),
            (&remap, "ghcr.io/acme/web", "ghcr.io/acme/web:1", true),
            (
                &hub,
                "docker.io/library/busybox",
                "10.0.2.100:5000/busybox:1",
                true,
            ),
            (
                &hub,
                "docker.io/library/busybox",
                "10.0.2.100:5000/library/busybox:1",
                true,
            ),
            (
                &hub,
                "docker.io/library/busybox",
                "10.0.2.100:5000/other:1",
                false,
            ),
        ];
        for (rule, signed, asked, ok) in cases {
            let a = Reference::parse(asked).unwrap();
            let got = rule.check(signed, &a, &d);
            assert_eq!(
                got.is_ok(),
                ok,
                "{rule:?} signed {signed:?} asked {asked:?}: {got:?}"
            );
        }
    }

    #[test]
    fn signed_identity_rules_from_policy_parts() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            SignedIdentity::from_parts("matchRepository", None, None),
            Ok(SignedIdentity::MatchRepository)
        );
        assert_eq!(
            SignedIdentity::from_parts(
                "remapIdentity",
                s("10.0.2.100:5000/acme"),
                s("ghcr.io/acme")
            )
            .unwrap()
            .name(),
            "remapIdentity"
        );
        for (rule, p, sp, says) in [
            ("matchrepository", None, None, "none of"),
            ("remapIdentity", s("10.0.2.100"), None, "needs both"),
            (
                "remapIdentity",
                s("acme/web"),
                s("ghcr.io/acme"),
                "HOST[:PORT]",
            ),
            (
                "remapIdentity",
                s("ghcr.io/acme/web:1"),
                s("ghcr.io/acme"),
                "HOST[:PORT]",
            ),
            ("matchExact", s("ghcr.io"), None, "belong to remapIdentity"),
        ] {
            let e = SignedIdentity::from_parts(rule, p, sp).unwrap_err();
            assert!(e.contains(says), "{rule}: {e}");
        }
    }
}
