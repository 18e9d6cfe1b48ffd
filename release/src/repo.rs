//! A static release repository on disk: what `herd release` writes and any
//! HTTP server can serve.
//!
//! ```text
//! root/1.json, root/2.json, ...   key sets (envelopes)
//! channels/<channel>.json         the channel's current release (envelope)
//! payloads/<sha256>               payload files, content-addressed
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{
    verify_root_chain, Channel, ChunkIndex, Envelope, Error, IndexRef, Payload, Release, Root,
    SigningKey,
};

/// A repository directory.
pub struct Repo {
    dir: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {} into place", path.display())))
}

impl Repo {
    /// The repository at `dir` (not checked yet).
    pub fn at(dir: &Path) -> Repo {
        Repo {
            dir: dir.to_path_buf(),
        }
    }

    fn root_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("root/{n}.json"))
    }

    /// Path of a channel's metadata.
    pub fn channel_path(&self, channel: &str) -> PathBuf {
        self.dir.join(format!("channels/{channel}.json"))
    }

    /// Creates a new repository whose first key set is `keys` (all sign),
    /// signed at `now`.
    pub fn init(
        &self,
        keys: &[&SigningKey],
        threshold: u32,
        now: u64,
        expires: u64,
    ) -> Result<Root, Error> {
        if self.root_path(1).exists() {
            return Err(Error::Mismatch(format!(
                "{} already holds a repository (root/1.json exists)",
                self.dir.display()
            )));
        }
        let root = Root {
            kind: "root".into(),
            version: 1,
            expires,
            threshold,
            keys: keys.iter().map(|k| (k.public().id(), k.public())).collect(),
            spec: crate::BASE_SPEC,
            signed_at: Some(now),
        };
        if threshold == 0 || threshold as usize > root.keys.len() {
            return Err(Error::Mismatch(format!(
                "threshold {threshold} is not between 1 and {} keys",
                root.keys.len()
            )));
        }
        write_atomic(&self.root_path(1), &Envelope::sign(&root, keys).to_bytes())?;
        Ok(root)
    }

    /// Every root file's bytes, 1.json first.
    pub fn root_files(&self) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        for n in 1.. {
            match std::fs::read(self.root_path(n)) {
                Ok(b) => out.push(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io(format!("reading {}", self.root_path(n).display()))(e)),
            }
        }
        if out.is_empty() {
            return Err(Error::Mismatch(format!(
                "{} is not a release repository (no root/1.json): run `herd release init` first",
                self.dir.display()
            )));
        }
        Ok(out)
    }

    /// The current key set, verified from root 1 (trusted as the repository's own start).
    pub fn current_root(&self, now: u64) -> Result<Root, Error> {
        let files = self.root_files()?;
        let env = Envelope::parse(&files[0], "root")?;
        let first: Root = env.document("root")?;
        env.check(&first.keys, first.threshold, "root 1 (self-signed)")?;
        verify_root_chain(&first, &files[1..], now)
    }

    /// Adds a key set signed by the current one and by itself.
    pub fn rotate(
        &self,
        old: &[&SigningKey],
        new: &[&SigningKey],
        threshold: u32,
        now: u64,
        expires: u64,
    ) -> Result<Root, Error> {
        let cur = self.current_root(now)?;
        let root = Root {
            kind: "root".into(),
            version: cur.version + 1,
            expires,
            threshold,
            keys: new.iter().map(|k| (k.public().id(), k.public())).collect(),
            spec: crate::BASE_SPEC,
            signed_at: Some(now),
        };
        let mut signers: Vec<&SigningKey> = old.to_vec();
        signers.extend_from_slice(new);
        let env = Envelope::sign(&root, &signers);
        env.check(
            &cur.keys,
            cur.threshold,
            "new root (by the current key set)",
        )?;
        write_atomic(&self.root_path(root.version), &env.to_bytes())?;
        Ok(root)
    }

    /// Copies a payload file into `payloads/<sha256>`, hashing as it goes.
    pub fn add_payload(&self, file: &Path) -> Result<Payload, Error> {
        let mut f = std::fs::File::open(file).map_err(io(format!("reading {}", file.display())))?;
        let dir = self.dir.join("payloads");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = tempfile_in(&dir)?;
        let mut out =
            std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io(format!("reading {}", file.display())))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io(format!("writing {}", tmp.display())))?;
            size += n as u64;
        }
        out.sync_all()
            .map_err(io(format!("writing {}", tmp.display())))?;
        let sha256 = hex::encode(h.finalize());
        std::fs::rename(&tmp, dir.join(&sha256)).map_err(io("storing the payload"))?;
        Ok(Payload {
            sha256,
            size,
            chunks: None,
        })
    }

    /// Chunks `file` (see [`crate::ChunkIndex`]) and stores its index as a
    /// content-addressed file under `payloads/`; returns where it is.
    pub fn add_chunk_index(&self, file: &Path) -> Result<(IndexRef, ChunkIndex), Error> {
        let f = std::fs::File::open(file).map_err(io(format!("reading {}", file.display())))?;
        let idx = ChunkIndex::of_reader(std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(io(format!("chunking {}", file.display())))?;
        let bytes = idx.to_bytes();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        write_atomic(&self.dir.join("payloads").join(&sha256), &bytes)?;
        Ok((
            IndexRef {
                sha256,
                size: bytes.len() as u64,
            },
            idx,
        ))
    }

    /// A chunk index stored in the repository, checked against its
    /// reference (size and sha256). `Ok(None)`: not there.
    pub fn chunk_index(&self, r: &IndexRef) -> Result<Option<ChunkIndex>, Error> {
        let p = self.dir.join("payloads").join(&r.sha256);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading {}", p.display()))(e)),
        };
        if bytes.len() as u64 != r.size || hex::encode(Sha256::digest(&bytes)) != r.sha256 {
            return Err(Error::Mismatch(format!(
                "{} is not the chunk index the channel names (size or sha256 differ): the repository is damaged",
                p.display()
            )));
        }
        ChunkIndex::parse(&bytes).map(Some)
    }

    /// The current channel document, verified against the current root.
    pub fn channel(&self, channel: &str, now: u64) -> Result<Option<Channel>, Error> {
        let p = self.channel_path(channel);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading {}", p.display()))(e)),
        };
        let root = self.current_root(now)?;
        let env = Envelope::parse(&bytes, "channel metadata")?;
        env.check(&root.keys, root.threshold, "channel metadata")?;
        env.document("channel metadata").map(Some)
    }

    /// Publishes `release` on `channel` with the next sequence number.
    pub fn publish(
        &self,
        channel: &str,
        release: Release,
        keys: &[&SigningKey],
        now: u64,
        expires: u64,
    ) -> Result<Channel, Error> {
        self.current_root(now)?;
        let seq = match self.channel(channel, now) {
            Ok(Some(c)) => c.seq + 1,
            Ok(None) => 1,
            // Metadata from a rotated-out key set: still move forward.
            Err(Error::Signatures { .. }) => self.unverified_seq(channel)? + 1,
            Err(e) => return Err(e),
        };
        let c = Channel {
            kind: "channel".into(),
            channel: channel.into(),
            seq,
            expires,
            release,
            spec: crate::BASE_SPEC,
            signed_at: Some(now),
            halted: None,
        };
        self.write_channel(c, keys, now)
    }

    /// Signs `c` (with the spec it needs) with `keys`, checks that they
    /// are enough for the current key set, and makes it the channel's
    /// document.
    fn write_channel(
        &self,
        mut c: Channel,
        keys: &[&SigningKey],
        now: u64,
    ) -> Result<Channel, Error> {
        let root = self.current_root(now)?;
        c.spec = c.needed_spec();
        let env = Envelope::sign(&c, keys);
        env.check(
            &root.keys,
            root.threshold,
            "the new channel metadata (with the keys given)",
        )?;
        write_atomic(&self.channel_path(&c.channel), &env.to_bytes())?;
        Ok(c)
    }

    /// The channel's current document, verified, for a re-signed successor.
    fn current_channel(&self, channel: &str, now: u64) -> Result<Channel, Error> {
        self.channel(channel, now)?.ok_or_else(|| {
            Error::Mismatch(format!(
                "channel {channel} has no release in {}: publish one first with `herd release publish`",
                self.dir.display()
            ))
        })
    }

    /// Halts the channel's rollout: the same release in a new document
    /// (next sequence, so it replaces the old one and nodes refuse the old
    /// one as a rollback) marked [`Channel::halted`].
    pub fn halt(
        &self,
        channel: &str,
        reason: &str,
        keys: &[&SigningKey],
        now: u64,
        expires: u64,
    ) -> Result<Channel, Error> {
        let mut c = self.current_channel(channel, now)?;
        if let Some(h) = &c.halted {
            return Err(Error::AlreadyHalted {
                channel: channel.into(),
                version: c.release.version.clone(),
                reason: h.reason.clone(),
            });
        }
        c.halted = Some(crate::Halt {
            reason: reason.into(),
            at: now,
        });
        c.seq += 1;
        c.expires = expires;
        c.signed_at = Some(now);
        self.write_channel(c, keys, now)
    }

    /// Resumes a halted rollout: the same release and waves (their
    /// original schedule: waves whose time came during the halt open at
    /// once) in a new document without the halt.
    pub fn resume(
        &self,
        channel: &str,
        keys: &[&SigningKey],
        now: u64,
        expires: u64,
    ) -> Result<Channel, Error> {
        let mut c = self.current_channel(channel, now)?;
        if c.halted.is_none() {
            return Err(Error::NotHalted {
                channel: channel.into(),
                version: c.release.version.clone(),
            });
        }
        c.halted = None;
        c.seq += 1;
        c.expires = expires;
        c.signed_at = Some(now);
        self.write_channel(c, keys, now)
    }

    fn unverified_seq(&self, channel: &str) -> Result<u64, Error> {
        let bytes = std::fs::read(self.channel_path(channel)).map_err(io("reading the channel"))?;
        let c: Channel =
            Envelope::parse(&bytes, "channel metadata")?.document("channel metadata")?;
        Ok(c.seq)
    }
}

fn tempfile_in(dir: &Path) -> Result<PathBuf, Error> {
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).map_err(|e| Error::Io {
        what: "random".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(dir.join(format!(".incoming-{}", hex::encode(seed))))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{verify_channel, NodeState, Rollout, Wave};

    const NOW: u64 = 1_800_000_000;

    fn release(version: &str) -> Release {
        let mut payloads = BTreeMap::new();
        for role in herd_contract::payload::REQUIRED {
            payloads.insert(
                role.to_string(),
                Payload {
                    sha256: "cd".repeat(32),
                    size: 1,
                    chunks: None,
                },
            );
        }
        Release {
            image: "herd".into(),
            version: version.into(),
            usrhash: "ab".repeat(32),
            cmdline: vec![],
            payloads,
            rollout: Some(Rollout {
                start: NOW - 100,
                waves: vec![Wave {
                    after_secs: 0,
                    percent: 100,
                }],
            }),
            pcrs: BTreeMap::new(),
        }
    }

    fn node(installed: &str) -> NodeState {
        NodeState {
            highest_seq: 0,
            installed: installed.into(),
            bad: vec![],
        }
    }

    #[test]
    fn halt_and_resume_are_new_signed_documents_that_stop_and_restart_the_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::at(dir.path());
        let k = SigningKey::generate().unwrap();
        let root = repo.init(&[&k], 1, NOW - 1000, NOW + 86_400).unwrap();
        let e = repo.halt("stable", "x", &[&k], NOW, NOW + 60).unwrap_err();
        assert!(e.to_string().contains("publish one first"), "{e}");
        repo.publish("stable", release("0.2.0"), &[&k], NOW - 50, NOW + 60)
            .unwrap();
        let bytes = || std::fs::read(repo.channel_path("stable")).unwrap();
        let (_, take) =
            verify_channel(&root, &bytes(), "stable", &node("0.1.0"), "n", NOW).unwrap();
        assert!(take);

        let e = repo.resume("stable", &[&k], NOW, NOW + 60).unwrap_err();
        assert!(matches!(e, Error::NotHalted { .. }), "{e}");
        let c = repo
            .halt("stable", "disks fill up", &[&k], NOW, NOW + 120)
            .unwrap();
        assert_eq!((c.seq, c.spec, c.expires), (2, crate::SPEC_HALT, NOW + 120));
        assert_eq!(c.release, release("0.2.0"));
        let (got, take) =
            verify_channel(&root, &bytes(), "stable", &node("0.1.0"), "n", NOW).unwrap();
        assert!(!take);
        assert_eq!(got.halted.unwrap().reason, "disks fill up");
        // A node already on 0.2.0 is unaffected: nothing to take, no error.
        let (_, take) =
            verify_channel(&root, &bytes(), "stable", &node("0.2.0"), "n", NOW).unwrap();
        assert!(!take);
        let e = repo
            .halt("stable", "again", &[&k], NOW, NOW + 60)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("already halted (rollout of 0.2.0: disks fill up)"),
            "{e}"
        );

        // A key the key set does not hold cannot halt or resume.
        let other = SigningKey::generate().unwrap();
        let e = repo.resume("stable", &[&other], NOW, NOW + 60).unwrap_err();
        assert!(matches!(e, Error::Signatures { valid: 0, .. }), "{e}");
        assert_eq!(repo.channel("stable", NOW).unwrap().unwrap().seq, 2);

        let c = repo.resume("stable", &[&k], NOW + 1, NOW + 60).unwrap();
        assert_eq!((c.seq, c.spec, c.halted), (3, crate::BASE_SPEC, None));
        assert_eq!(c.release.rollout, release("0.2.0").rollout);
        assert!(!String::from_utf8(bytes()).unwrap().contains("halted"));
        let (_, take) =
            verify_channel(&root, &bytes(), "stable", &node("0.1.0"), "n", NOW).unwrap();
        assert!(take);
        // Publishing after a halt starts the new release un-halted.
        repo.halt("stable", "bad", &[&k], NOW, NOW + 60).unwrap();
        let c = repo
            .publish("stable", release("0.2.1"), &[&k], NOW, NOW + 60)
            .unwrap();
        assert_eq!((c.seq, c.halted), (5, None));
    }
}
