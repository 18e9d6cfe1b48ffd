//! The seccomp profile of every container: an allow-list kept as data in
//! `seccomp/runtime-default.toml` (the RuntimeDefault profile of Docker
//! and containerd, written out), turned into the OCI `linux.seccomp`
//! object for a container's effective capabilities. Anything not allowed
//! fails with EPERM; `clone` only without namespace flags; `clone3` with
//! ENOSYS so C libraries fall back to `clone`.

use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};
use serde::Deserialize;

/// The profile as shipped (compiled in).
pub const RUNTIME_DEFAULT: &str = include_str!("seccomp/runtime-default.toml");

/// A parsed profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// errno of every syscall no rule allows.
    pub default_errno: u32,
    /// libseccomp architecture names the filter covers.
    pub architectures: Vec<String>,
    /// The rules, in order.
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

/// What a rule does to its syscalls.
#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// SCMP_ACT_ALLOW.
    #[default]
    Allow,
    /// SCMP_ACT_ERRNO with the rule's `errno`.
    Errno,
}

/// One rule: syscalls, an action, and when it applies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Syscall names.
    pub names: Vec<String>,
    /// What happens.
    #[serde(default)]
    pub action: Action,
    /// For `errno` rules.
    pub errno: Option<u32>,
    /// Applies only when the container has all of these (`CAP_…`).
    #[serde(default)]
    pub caps: Vec<String>,
    /// Applies only when the container has none of these.
    #[serde(default)]
    pub not_caps: Vec<String>,
    /// Argument conditions (all must hold).
    #[serde(default)]
    pub args: Vec<Arg>,
}

/// An argument condition, as in the OCI spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    /// Argument number.
    pub index: u32,
    /// Value compared (the mask for SCMP_CMP_MASKED_EQ).
    pub value: u64,
    /// Second value (the expected masked value for SCMP_CMP_MASKED_EQ).
    #[serde(default)]
    pub value_two: u64,
    /// libseccomp operator name (`SCMP_CMP_EQ`, `SCMP_CMP_MASKED_EQ`, …).
    pub op: String,
}

/// What is wrong with a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not TOML of the expected shape.
    #[error("the seccomp profile does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    /// An architecture name libseccomp (and so the OCI spec) does not know.
    #[error("the seccomp profile names an unknown architecture {0:?}; use libseccomp names such as SCMP_ARCH_X86_64")]
    Architecture(String),
    /// A rule that cannot be turned into a filter.
    #[error("seccomp profile rule {index} ({first}): {problem}")]
    Rule {
        /// 0-based rule number.
        index: usize,
        /// Its first syscall name.
        first: String,
        /// What is wrong.
        problem: String,
    },
}

impl Profile {
    /// Parses and checks a profile.
    pub fn parse(text: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text)?;
        if let Some(a) = p.architectures.iter().find(|a| a.parse::<Arch>().is_err()) {
            return Err(ProfileError::Architecture(a.clone()));
        }
        for (index, r) in p.rules.iter().enumerate() {
            let bad = |problem: &str| ProfileError::Rule {
                index,
                first: r.names.first().cloned().unwrap_or_default(),
                problem: problem.into(),
            };
            if r.names.is_empty() {
                return Err(bad("names is empty"));
            }
            if (r.action == Action::Errno) != r.errno.is_some() {
                return Err(bad("errno goes with action = \"errno\", and only with it"));
            }
            if let Some(a) = r
                .args
                .iter()
                .find(|a| a.op.parse::<LinuxSeccompOperator>().is_err())
            {
                return Err(bad(&format!("unknown op {:?}", a.op)));
            }
            if r.args.iter().any(|a| a.index > 5) {
                return Err(bad("argument index above 5"));
            }
        }
        Ok(p)
    }

    /// The OCI `linux.seccomp` object for a container whose effective
    /// capabilities are `caps` (`CAP_…` names).
    pub fn oci(&self, caps: &[String]) -> LinuxSeccomp {
        let has = |c: &String| caps.contains(c);
        let syscalls: Vec<LinuxSyscall> = self
            .rules
            .iter()
            .filter(|r| r.caps.iter().all(has) && !r.not_caps.iter().any(has))
            .map(Rule::oci)
            .collect();
        let mut s = LinuxSeccomp::default();
        s.set_default_action(LinuxSeccompAction::ScmpActErrno)
            .set_default_errno_ret(Some(self.default_errno))
            .set_architectures(Some(self.architectures.iter().map(|a| arch(a)).collect()))
            .set_syscalls(Some(syscalls));
        s
    }
}

/// The OCI architecture of a libseccomp name [`Profile::parse`] accepted.
fn arch(name: &str) -> Arch {
    name.parse()
        .expect("Profile::parse refuses unknown architectures")
}

/// The OCI operator of a libseccomp name [`Profile::parse`] accepted.
fn op(name: &str) -> LinuxSeccompOperator {
    name.parse()
        .expect("Profile::parse refuses unknown operators")
}

impl Rule {
    fn oci(&self) -> LinuxSyscall {
        let mut s = LinuxSyscall::default();
        s.set_names(self.names.clone());
        match self.action {
            Action::Allow => s.set_action(LinuxSeccompAction::ScmpActAllow),
            Action::Errno => s
                .set_action(LinuxSeccompAction::ScmpActErrno)
                .set_errno_ret(self.errno),
        };
        if !self.args.is_empty() {
            let args = self.args.iter().map(|a| {
                LinuxSeccompArgBuilder::default()
                    .index(a.index as usize)
                    .value(a.value)
                    .value_two(a.value_two)
                    .op(op(&a.op))
                    .build()
                    .expect("every field of a seccomp argument is set")
            });
            s.set_args(Some(args.collect()));
        }
        s
    }
}

/// The shipped profile, parsed once.
pub fn runtime_default() -> &'static Profile {
    static P: OnceLock<Profile> = OnceLock::new();
    P.get_or_init(|| {
        Profile::parse(RUNTIME_DEFAULT).expect("the shipped profile is checked by its unit test")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// (action, errno, args) of every rule naming `call`.
    fn rules_for<'a>(v: &'a Value, call: &str) -> Vec<&'a Value> {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["names"].as_array().unwrap().iter().any(|n| n == call))
            .collect()
    }

    #[test]
    fn the_shipped_profile_is_an_allow_list() {
        let p = Profile::parse(RUNTIME_DEFAULT).unwrap();
        let caps: Vec<String> = crate::spec::DEFAULT_CAPS
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
        let v = serde_json::to_value(p.oci(&caps)).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        for call in ["read", "execve", "openat", "socket", "futex", "wait4"] {
            let r = rules_for(&v, call);
            assert!(
                r.len() == 1 && r[0]["action"] == "SCMP_ACT_ALLOW" && r[0].get("args").is_none(),
                "{call}: {r:?}"
            );
        }
        // Refused by the default action: no rule names them.
        for call in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "keyctl",
            "add_key",
            "userfaultfd",
            "bpf",
            "kexec_load",
            "init_module",
            "reboot",
            "pivot_root",
        ] {
            assert!(rules_for(&v, call).is_empty(), "{call} is allowed");
        }
        let clone = rules_for(&v, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0]["args"],
            json!([{"index": 0, "value": 0x7E02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = rules_for(&v, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        // SYS_CHROOT is a default capability: chroot comes with it.
        assert_eq!(rules_for(&v, "chroot").len(), 1);
        let none = serde_json::to_value(p.oci(&[])).unwrap();
        assert!(rules_for(&none, "chroot").is_empty());
        // With CAP_SYS_ADMIN (herd's manifests refuse it) the mount family
        // and unfiltered clone come in, as in moby's profile.
        let admin = serde_json::to_value(p.oci(&["CAP_SYS_ADMIN".to_string()])).unwrap();
        assert_eq!(rules_for(&admin, "fsopen").len(), 1);
        let clone = rules_for(&admin, "clone");
        assert!(
            clone.len() == 1 && clone[0].get("args").is_none(),
            "{clone:?}"
        );
        assert!(rules_for(&admin, "clone3")
            .iter()
            .all(|r| r["action"] == "SCMP_ACT_ALLOW"));
    }

    #[test]
    fn a_broken_profile_is_refused_with_its_rule() {
        let e = Profile::parse(
            "default_errno = 1\narchitectures = []\n[[rule]]\nnames = [\"clone\"]\nargs = [{index = 0, value = 1, op = \"SCMP_CMP_MASKED\"}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("rule 0 (clone): unknown op"), "{e}");
        let e = Profile::parse(
            "default_errno = 1\narchitectures = []\n[[rule]]\nnames = [\"x\"]\nerrno = 38\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("errno goes with"), "{e}");
        let e = Profile::parse(
            "default_errno = 1\narchitectures = []\n[[rule]]\nnames = [\"x\"]\nwhat = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
