//! Registry token authentication (the distribution spec's "token" flow, which
//! Docker Hub, GHCR, Quay and most others use even for anonymous pulls): a
//! request answered 401 with `WWW-Authenticate: Bearer realm=..,service=..,
//! scope=..` is retried with a token fetched from the realm, anonymously or
//! with the registry's credentials ([`crate::credentials`]).

use std::collections::BTreeMap;

/// A `Bearer` challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Where tokens come from (an http or https URL).
    pub realm: String,
    /// The `service` parameter to pass back, if any.
    pub service: Option<String>,
    /// The `scope` the registry asked for, if any.
    pub scope: Option<String>,
}

/// Why a challenge or token answer was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a Bearer challenge (e.g. Basic: the registry wants a password).
    #[error("the registry asks for {0:?} authentication; herd understands Basic and Bearer only")]
    NotBearer(String),
    /// A malformed header.
    #[error("malformed WWW-Authenticate header: {0}")]
    Malformed(String),
    /// The token endpoint's answer.
    #[error("token answer: {0}")]
    Token(String),
}

/// Parses `auth-param` pairs: `k="v", k2=v2` (quoted values may hold commas
/// and backslash escapes).
fn params(s: &str) -> Result<BTreeMap<String, String>, AuthError> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(AuthError::Malformed(format!(
                "expected key=value near {key:?}"
            )));
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(AuthError::Malformed("unterminated quoted value".into()))
                        }
                    },
                    Some(c) => value.push(c),
                    None => return Err(AuthError::Malformed("unterminated quoted value".into())),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.to_ascii_lowercase(), value);
    }
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value.
    pub fn parse(header: &str) -> Result<Challenge, AuthError> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer(scheme.chars().take(40).collect()));
        }
        let mut p = params(rest)?;
        let realm = p
            .remove("realm")
            .ok_or_else(|| AuthError::Malformed("a Bearer challenge without realm".into()))?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(AuthError::Malformed(format!(
                "realm {realm:?} is not an http(s) URL"
            )));
        }
        Ok(Challenge {
            realm,
            service: p.remove("service"),
            scope: p.remove("scope"),
        })
    }

    /// The token URL for `scope` (the challenge's own scope wins: the
    /// registry knows what the request needs).
    pub fn token_url(&self, scope: &str) -> String {
        let mut q = Vec::new();
        if let Some(s) = &self.service {
            q.push(format!("service={}", encode(s)));
        }
        q.push(format!(
            "scope={}",
            encode(self.scope.as_deref().unwrap_or(scope))
        ));
        let sep = if self.realm.contains('?') { '&' } else { '?' };
        format!("{}{sep}{}", self.realm, q.join("&"))
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The token in a token endpoint's JSON answer (`token`, or OAuth2's
/// `access_token`).
pub fn token_from_answer(body: &[u8]) -> Result<String, AuthError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| AuthError::Token(format!("not JSON: {e}")))?;
    let t = a
        .token
        .or(a.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthError::Token("no token in it".into()))?;
    if t.len() > 16 * 1024 || t.chars().any(|c| c.is_control() || c == ' ') {
        return Err(AuthError::Token(
            "the token is not a plain header value".into(),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_style_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:library/busybox:pull,push")
        );
        assert_eq!(
            c.token_url("ignored"),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fbusybox%3Apull%2Cpush"
        );
        let bare = Challenge::parse("bearer realm=http://127.0.0.1:1/t?x=1").unwrap();
        assert_eq!(
            bare.token_url("repository:a/b:pull"),
            "http://127.0.0.1:1/t?x=1&scope=repository%3Aa%2Fb%3Apull"
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(matches!(
            Challenge::parse(r#"Basic realm="x""#),
            Err(AuthError::NotBearer(s)) if s == "Basic"
        ));
        for bad in [
            "Bearer service=x",
            r#"Bearer realm="file:///etc/passwd""#,
            r#"Bearer realm="https://x"#,
            "Bearer =x",
        ] {
            assert!(
                matches!(Challenge::parse(bad), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_prefix_and_byte_flip_parses_or_fails_cleanly() {
        let h = r#"Bearer realm="https://a.example/t?x=\"1\"",service="s, t" , scope=repository:a/b:pull,error="invalid_token""#;
        for i in 0..=h.len() {
            if let Some(p) = h.get(..i) {
                let _ = Challenge::parse(p).map(|c| c.token_url("x"));
            }
        }
        let bytes = h.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'"', b'\\', b',', b'=', b' ', 0xff] {
                let mut v = bytes.to_vec();
                v[i] = b;
                if let Ok(s) = std::str::from_utf8(&v) {
                    let _ = Challenge::parse(s);
                }
                let _ = token_from_answer(&v);
            }
        }
        let c = Challenge::parse(h).unwrap();
        assert_eq!(c.realm, r#"https://a.example/t?x="1""#);
        assert_eq!(c.service.as_deref(), Some("s, t"));
        // An unquoted value ends at a comma: `error` is a parameter of its own.
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull"));
    }

    #[test]
    fn token_answers() {
        assert_eq!(token_from_answer(br#"{"token":"abc"}"#).unwrap(), "abc");
        assert_eq!(
            token_from_answer(br#"{"access_token":"xyz","expires_in":300}"#).unwrap(),
            "xyz"
        );
        assert!(token_from_answer(b"{}").is_err());
        assert!(token_from_answer(br#"{"token":"a\nb"}"#).is_err());
        assert!(token_from_answer(b"<html>").is_err());
    }
}
