//! Pods outlive the agent: after a crash or a `kill -9`, the containers
//! keep running (nothing of them lives in the agent), crun's state under
//! its `--root` and the bundles stay on the `/run` tmpfs, and the agent
//! that starts next adopts them.
//!
//! Each container's bundle holds a [`Record`] (`herd.json`), written when
//! the agent started it: the SHA-256 of the pod's manifest file then, the
//! pod's start number, start time, and the image's digest and signing key.
//! On start the agent asks crun for every container it knows
//! ([`Survivors::scan`]); a pod whose manifest is read again gets the
//! containers named after it ([`Survivors::take`], IDs `POD_CONTAINER`),
//! and its worker adopts them when every container of the pod runs and its
//! record names the same manifest bytes; otherwise it stops them (SIGTERM,
//! the grace period, SIGKILL) and starts the pod afresh. Containers no
//! manifest claims are removed ([`Survivors::remove_rest`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rootfs;
use crate::runtime::{Runtime, State};

/// What the agent remembers of a container it started, in its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// SHA-256 (hex) of the pod's manifest file when the container started.
    pub manifest: String,
    /// The pod's start number (restarts + 1).
    pub start: u32,
    /// When the pod started (seconds since the epoch).
    pub started_at: u64,
    /// The image's manifest digest.
    pub digest: Option<String>,
    /// The key that signed the image.
    pub signed_by: Option<String>,
}

const RECORD: &str = "herd.json";

impl Record {
    /// Writes the record into `bundle`.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(".herd.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, bundle.join(RECORD))
    }

    /// The record in `bundle`, if there is a readable one.
    pub fn read(bundle: &Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(bundle.join(RECORD)).ok()?).ok()
    }
}

/// The hash a [`Record`] keeps of a manifest file's bytes.
pub fn manifest_hash(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

/// The containers crun still knows, by ID, until pods claim them.
#[derive(Debug, Default)]
pub struct Survivors(BTreeMap<String, State>);

impl Survivors {
    /// Everything under the runtime's `--root`.
    pub fn scan(runtime: &Runtime) -> Survivors {
        Survivors(
            runtime
                .list()
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect(),
        )
    }

    /// How many are left.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none are left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes the containers of pod `pod` whose names are `containers`:
    /// one entry per container, None where crun knows none.
    pub fn take<'a>(
        &mut self,
        pod: &str,
        containers: impl Iterator<Item = &'a str>,
    ) -> Vec<Option<State>> {
        containers
            .map(|c| self.0.remove(&container_id(pod, c)))
            .collect()
    }

    /// Kills and deletes every container no pod claimed; returns their IDs.
    pub fn remove_rest(&mut self, runtime: &Runtime) -> Vec<String> {
        let rest = std::mem::take(&mut self.0);
        for (id, s) in &rest {
            runtime.delete(id);
            rootfs::remove_bundle(&s.bundle);
        }
        rest.into_keys().collect()
    }
}

/// The runtime's ID of container `container` of pod `pod`.
pub fn container_id(pod: &str, container: &str) -> String {
    format!("{pod}_{container}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_the_manifest_bytes() {
        let t = tempfile::tempdir().unwrap();
        let r = Record {
            manifest: manifest_hash(b"kind: Pod\n"),
            start: 3,
            started_at: 1_700_000_000,
            digest: Some("sha256:ab".into()),
            signed_by: Some("k".into()),
        };
        assert!(Record::read(t.path()).is_none());
        r.write(t.path()).unwrap();
        assert_eq!(Record::read(t.path()), Some(r.clone()));
        assert_ne!(r.manifest, manifest_hash(b"kind: Pod\n\n"));
        assert_eq!(r.manifest.len(), 64);
    }

    #[test]
    fn pods_take_their_own_containers_only() {
        let st = |id: &str| State {
            id: id.into(),
            pid: 7,
            status: "running".into(),
            bundle: "/nonexistent".into(),
        };
        let mut s = Survivors(
            ["web_httpd", "web_old", "webx_httpd"]
                .into_iter()
                .map(|i| (i.to_string(), st(i)))
                .collect(),
        );
        let got = s.take("web", ["httpd", "sidecar"].into_iter());
        assert_eq!(got[0].as_ref().unwrap().id, "web_httpd");
        assert!(got[1].is_none());
        assert_eq!(
            s.len(),
            2,
            "web_old (no longer in the manifest) stays for remove_rest"
        );
    }
}
