//! What a node trusts between checks, kept in its state: the newest key
//! set it verified (so a repository cannot undo a key rotation) and the
//! newest signing time it saw (so a clock that is behind, e.g. 1970 on a
//! machine without a battery, cannot make expired metadata look fresh).

use herd_release::{
    check_channel_keys, update_root, verify_channel, walk_root_chain, Channel, Envelope, NodeState,
    Root,
};

use crate::config::UpdateConfig;
use crate::state::State;
use crate::Error;

/// The key set to verify with: the baked root followed by the roots kept
/// in `state`, re-verified link by link (kept roots not newer than the
/// baked one are skipped: an image built after a rotation bakes the new
/// root). Expiry is checked later, against the repository.
pub fn current_root(baked: &Root, state: &State) -> Result<Root, Error> {
    let mut newer = Vec::new();
    for env in &state.roots {
        let doc: Root = env
            .document("kept root")
            .map_err(|cause| Error::KeptRoots { cause })?;
        if doc.version > baked.version {
            newer.push(env.to_bytes());
        }
    }
    walk_root_chain(baked, &newer).map_err(|cause| Error::KeptRoots { cause })
}

/// When the running image was built: the mtime of `/usr/lib/os-release`,
/// which the builder stamps (like every file in `/usr`) with
/// `SOURCE_DATE_EPOCH`; 0 when unknown.
pub fn image_build_time() -> u64 {
    std::fs::metadata("/usr/lib/os-release")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The node's "now" for expiry and rollout waves: the latest of the clock,
/// the build time of the running image, and the newest signing time of
/// metadata already verified (kept in `state`, and the baked root's).
pub fn trusted_now(clock: u64, build_time: u64, state: &State, baked: &Root) -> u64 {
    clock
        .max(build_time)
        .max(state.trusted_time)
        .max(baked.signed_at.unwrap_or(0))
}

/// GETs a path below the repository: its bytes, `None` on 404.
pub type Fetch<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, Error> + 'a;

/// Fetches and verifies the repository's root chain and channel metadata,
/// starting from the newest key set this node trusts; records newly
/// verified roots and signing times in `state` (the caller saves it).
#[allow(clippy::too_many_arguments)]
pub fn verify_repository(
    cfg: &UpdateConfig,
    baked: &Root,
    state: &mut State,
    ns: &NodeState,
    node_id: &str,
    clock: u64,
    build_time: u64,
    fetch: &mut Fetch,
) -> Result<(Channel, bool), Error> {
    let trusted = current_root(baked, state)?;
    let now = trusted_now(clock, build_time, state, baked);
    let (root, newer) = update_root(&trusted, now, &mut |n| fetch(&format!("root/{n}.json")))?;
    // Kept before the channel is even read: the rotation holds whatever
    // the channel turns out to be.
    for bytes in &newer {
        state.roots.push(Envelope::parse(bytes, "root")?);
    }
    state.trusted_time = state.trusted_time.max(root.signed_at.unwrap_or(0));
    let now = now.max(state.trusted_time);
    let path = format!("channels/{}.json", cfg.channel);
    let bytes = fetch(&path)?.ok_or_else(|| Error::Http {
        url: format!("{}/{path}", cfg.repository.trim_end_matches('/')),
        message: format!(
            "the repository has no channel {:?} (404): check `channel` in the update configuration",
            cfg.channel
        ),
    })?;
    check_channel_keys(&root, &bytes, &mut |n| fetch(&format!("root/{n}.json")))?;
    let (c, take) = verify_channel(&root, &bytes, &cfg.channel, ns, node_id, now)?;
    state.trusted_time = state.trusted_time.max(c.signed_at.unwrap_or(0));
    Ok((c, take))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use herd_release::{Payload, Release, Repo, SigningKey};

    use super::*;

    const T: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn release(version: &str) -> Release {
        let payloads = herd_contract::payload::REQUIRED
            .iter()
            .map(|r| {
                let p = Payload {
                    sha256: "ab".repeat(32),
                    size: 1,
                    chunks: None,
                };
                (r.to_string(), p)
            })
            .collect();
        Release {
            image: "herd".into(),
            version: version.into(),
            usrhash: "cd".repeat(32),
            cmdline: vec![],
            payloads,
            rollout: None,
            pcrs: BTreeMap::new(),
        }
    }

    /// A copy of the repository's metadata (what an attacker replays).
    fn snapshot(from: &Path, to: &Path) {
        for sub in ["root", "channels"] {
            std::fs::create_dir_all(to.join(sub)).unwrap();
            for f in std::fs::read_dir(from.join(sub)).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(sub).join(f.file_name())).unwrap();
            }
        }
    }

    fn cfg() -> UpdateConfig {
        UpdateConfig::parse("repository = \"http://repo.invalid\"\n").unwrap()
    }

    fn ns(state: &State) -> NodeState {
        NodeState {
            highest_seq: state.highest_seq,
            installed: "0.1.0".into(),
            bad: state.bad.clone(),
        }
    }

    /// One check against the repository in `dir`, as the updater makes it,
    /// with the clock at `clock` and an image built at `build_time`.
    fn check(
        dir: &Path,
        baked: &Root,
        state: &mut State,
        clock: u64,
        build_time: u64,
    ) -> Result<Channel, Error> {
        let ns = ns(state);
        let (c, _) = verify_repository(
            &cfg(),
            baked,
            state,
            &ns,
            "node",
            clock,
            build_time,
            &mut |path| match std::fs::read(dir.join(path)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => panic!("{e}"),
            },
        )?;
        state.highest_seq = state.highest_seq.max(c.seq);
        Ok(c)
    }

    #[test]
    fn a_rotation_is_kept_and_cannot_be_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, old_dir, state_dir) = (
            tmp.path().join("repo"),
            tmp.path().join("old"),
            tmp.path().join("state"),
        );
        let (k1, k2) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let repo = Repo::at(&dir);
        let baked = repo.init(&[&k1], 1, T, T + 365 * DAY).unwrap();
        repo.publish("stable", release("0.2.0"), &[&k1], T, T + 30 * DAY)
            .unwrap();
        snapshot(&dir, &old_dir);
        repo.rotate(&[&k1], &[&k2], 1, T + 10, T + 365 * DAY)
            .unwrap();
        repo.publish("stable", release("0.3.0"), &[&k2], T + 20, T + 30 * DAY)
            .unwrap();

        // The node follows the rotation and keeps root 2 in its state file.
        let mut state = State::default();
        let c = check(&dir, &baked, &mut state, T + 30, 0).unwrap();
        assert_eq!((c.seq, state.roots.len()), (2, 1));
        state.save(&state_dir).unwrap();
        let mut state = State::load(&state_dir).unwrap();
        assert_eq!(current_root(&baked, &state).unwrap().version, 2);

        // The leaked key 1 signs a higher sequence in a repository that
        // answers 404 for root/2.json: refused as a rollback of keys.
        let old = Repo::at(&old_dir);
        for v in ["0.4.0", "0.5.0"] {
            old.publish("stable", release(v), &[&k1], T + 40, T + 30 * DAY)
                .unwrap();
        }
        let refused = |state: &mut State| {
            let e = check(&old_dir, &baked, state, T + 50, 0).unwrap_err();
            let rollback = herd_release::Error::KeyRollback {
                trusted: 2,
                served: 1,
            };
            assert_eq!(e.to_string(), rollback.to_string());
        };
        refused(&mut state);
        // ... and when it does serve root/2.json (public anyway).
        std::fs::copy(dir.join("root/2.json"), old_dir.join("root/2.json")).unwrap();
        refused(&mut state);
        // A node that never saw root 2 would take it: the kept root is what refuses.
        std::fs::remove_file(old_dir.join("root/2.json")).unwrap();
        assert_eq!(
            check(&old_dir, &baked, &mut State::default(), T + 50, 0)
                .unwrap()
                .seq,
            3
        );

        // A kept root that does not chain from the baked one is an error
        // that says what to do, not silently replaced by the baked root.
        let stranger = SigningKey::generate().unwrap();
        let other = Repo::at(&tmp.path().join("other"));
        other.init(&[&stranger], 1, T, T + DAY).unwrap();
        other
            .rotate(&[&stranger], &[&stranger], 1, T, T + DAY)
            .unwrap();
        let forged = std::fs::read(tmp.path().join("other/root/2.json")).unwrap();
        state.roots = vec![Envelope::parse(&forged, "root").unwrap()];
        let e = check(&dir, &baked, &mut state, T + 50, 0).unwrap_err();
        assert!(matches!(e, Error::KeptRoots { .. }), "{e}");
        assert!(e.to_string().contains("remove \"roots\""), "{e}");
        // An image that bakes root 2 itself skips the kept copy of it.
        state.roots =
            vec![
                Envelope::parse(&std::fs::read(dir.join("root/2.json")).unwrap(), "root").unwrap(),
            ];
        let baked2 = current_root(&baked, &state).unwrap();
        assert_eq!(current_root(&baked2, &state).unwrap(), baked2);
    }

    #[test]
    fn a_clock_in_1970_still_refuses_expired_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, old_dir) = (tmp.path().join("repo"), tmp.path().join("old"));
        let k = SigningKey::generate().unwrap();
        let repo = Repo::at(&dir);
        let baked = repo.init(&[&k], 1, T, T + 365 * DAY).unwrap();
        // Metadata that expired at T + 1 day, kept by an attacker.
        repo.publish("stable", release("0.2.0"), &[&k], T, T + DAY)
            .unwrap();
        snapshot(&dir, &old_dir);
        // The clock alone (1970) would take it: that is the hole.
        assert!(check(&old_dir, &baked, &mut State::default(), 0, 0).is_ok());

        // The image was built after it expired: refused even with the clock at 0.
        let e = check(&old_dir, &baked, &mut State::default(), 0, T + 2 * DAY).unwrap_err();
        assert!(
            matches!(e, Error::Release(herd_release::Error::Expired { now, .. }) if now == T + 2 * DAY),
            "{e}"
        );

        // The node verified metadata signed at T + 5 days; then its clock
        // fell back to 1970. The replayed metadata stays expired.
        repo.publish("stable", release("0.3.0"), &[&k], T + 5 * DAY, T + 30 * DAY)
            .unwrap();
        let mut state = State::default();
        check(&dir, &baked, &mut state, T + 5 * DAY, 0).unwrap();
        assert_eq!(state.trusted_time, T + 5 * DAY);
        state.highest_seq = 0; // so only the time can refuse it
        let e = check(&old_dir, &baked, &mut state, 0, 0).unwrap_err();
        assert!(
            matches!(e, Error::Release(herd_release::Error::Expired { now, .. }) if now == T + 5 * DAY),
            "{e}"
        );
        assert_eq!(trusted_now(0, 0, &state, &baked), T + 5 * DAY);
        assert_eq!(trusted_now(T + 9 * DAY, 0, &state, &baked), T + 9 * DAY);
    }
}
