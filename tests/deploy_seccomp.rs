//! The container seccomp profiles in deploy/seccomp/ (see its README.md):
//!
//! - `miopd.json`: Docker's default profile (moby/profiles seccomp/v0.2.3
//!   `default.json`, the one Docker Engine 29.x builds in) plus one entry that
//!   allows `io_uring_setup`, `io_uring_enter` and `io_uring_register`, in
//!   moby's format (`archMap`, `includes`/`excludes`), for Docker, Compose and
//!   Podman.
//! - `miopd-oci-amd64.json`, `miopd-oci-arm64.json`: the same profile resolved
//!   the way dockerd resolves it for a container with the default capabilities,
//!   in the OCI runtime-spec format that containerd reads for a Kubernetes
//!   `Localhost` profile (containerd ignores moby's `includes`/`excludes`,
//!   which would turn every capability-gated rule into an unconditional one).
//!
//! `MIOP_BLESS_SECCOMP=1 cargo test --test deploy_seccomp` rewrites the two
//! OCI files from `miopd.json`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/seccomp");

/// sha256 of moby/profiles `seccomp/default.json` at tag seccomp/v0.2.3
/// (commit 836ae4d37ef2ec995c77c99fc55f5b5f3af3a897), byte for byte.
const UPSTREAM_SHA256: &str = "536529b665dd0972c37bfb569f5d4ac8a53592e7b00752bc39ff063ca9864c74";

const IO_URING: [&str; 3] = ["io_uring_enter", "io_uring_register", "io_uring_setup"];

/// The bounding set of a container that neither adds nor drops capabilities:
/// moby's daemon/pkg/oci/caps/defaults.go (containerd's default is the same
/// list).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// miopd's minimum kernel; `minKernel` conditions at or below it always hold.
const MIN_KERNEL: (u32, u32) = (5, 11);

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn syscalls(profile: &Value) -> &Vec<Value> {
    profile["syscalls"].as_array().expect("syscalls")
}

fn names(entry: &Value) -> Vec<&str> {
    entry["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

/// An entry that applies whatever the arguments, capabilities, architecture
/// and kernel.
fn unconditional(entry: &Value) -> bool {
    let empty = |k: &str| entry.get(k).is_none_or(|v| v.is_null() || v == &json!([]));
    empty("args") && empty("includes") && empty("excludes")
}

/// Is `name` allowed by an unconditional ALLOW entry?
fn allowed_unconditionally(profile: &Value, name: &str) -> bool {
    syscalls(profile)
        .iter()
        .any(|e| e["action"] == "SCMP_ACT_ALLOW" && unconditional(e) && names(e).contains(&name))
}

/// Does any entry (conditional or not) mention `name`?
fn mentioned(profile: &Value, name: &str) -> bool {
    syscalls(profile).iter().any(|e| names(e).contains(&name))
}

/// Calls every container needs and miopd uses with or without io_uring.
const ORDINARY: [&str; 12] = [
    "read",
    "write",
    "close",
    "accept4",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "futex",
    "mmap",
    "setsockopt",
    "exit_group",
];

/// Calls the default profile never allows to a default container.
const DENIED: [&str; 8] = [
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "mount",
    "unshare",
    "setns",
    "reboot",
    "init_module",
];

#[test]
fn the_profile_denies_by_default_with_eperm() {
    let p = parse("miopd.json");
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO", "an allow-list");
    assert_eq!(p["defaultErrnoRet"], 1, "EPERM, as Docker's default");
}

#[test]
fn the_profile_allows_io_uring_unconditionally() {
    let p = parse("miopd.json");
    for name in IO_URING {
        assert!(allowed_unconditionally(&p, name), "{name} not allowed");
    }
}

#[test]
fn the_profile_keeps_the_upstream_default_rules() {
    let p = parse("miopd.json");
    for name in ORDINARY {
        assert!(allowed_unconditionally(&p, name), "{name} not allowed");
    }
    for name in DENIED {
        assert!(
            !allowed_unconditionally(&p, name),
            "{name} must not be allowed unconditionally"
        );
    }
    assert!(!mentioned(&p, "kexec_load"), "kexec_load is never allowed");
    // Capability-gated rules are still gated.
    let gated = syscalls(&p)
        .iter()
        .find(|e| e["includes"]["caps"] == json!(["CAP_SYS_ADMIN"]))
        .expect("the CAP_SYS_ADMIN rule");
    for name in ["bpf", "mount", "unshare", "setns"] {
        assert!(names(gated).contains(&name), "{name}");
    }
    // clone3 answers ENOSYS (so libc falls back to clone) without CAP_SYS_ADMIN.
    assert!(syscalls(&p).iter().any(|e| names(e) == ["clone3"]
        && e["action"] == "SCMP_ACT_ERRNO"
        && e["errnoRet"] == 38
        && e["excludes"]["caps"] == json!(["CAP_SYS_ADMIN"])));
    let arches: Vec<&str> = p["archMap"]
        .as_array()
        .expect("archMap")
        .iter()
        .map(|a| a["architecture"].as_str().unwrap())
        .collect();
    assert!(arches.contains(&"SCMP_ARCH_X86_64") && arches.contains(&"SCMP_ARCH_AARCH64"));
}

/// The bytes of the one entry miop added, as they appear in miopd.json.
fn added_entry(text: &str) -> &str {
    let start = text
        .find("\t\t{\n\t\t\t\"names\": [\n\t\t\t\t\"io_uring_enter\"")
        .expect("the io_uring entry");
    let len = text[start..].find("\n\t\t},\n").expect("its end") + "\n\t\t},\n".len();
    &text[start..start + len]
}

#[test]
fn the_profile_is_upstream_plus_exactly_the_io_uring_entry() {
    let text = read("miopd.json");
    let added = added_entry(&text);
    let entry: Value = serde_json::from_str(added.trim_end().trim_end_matches(',')).unwrap();
    let keys: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), 3, "names, action, comment: {entry}");
    assert_eq!(names(&entry), IO_URING);
    assert_eq!(entry["action"], "SCMP_ACT_ALLOW");
    assert!(entry["comment"].as_str().unwrap().starts_with("miop:"));
    // Everything else is moby's file, byte for byte.
    let upstream = text.replacen(added, "", 1);
    let digest = hex::encode(Sha256::digest(upstream.as_bytes()));
    assert_eq!(
        digest, UPSTREAM_SHA256,
        "miopd.json without the io_uring entry is not moby/profiles seccomp/v0.2.3 default.json"
    );
    // And upstream itself does not allow io_uring (Docker >= 25).
    let upstream: Value = serde_json::from_str(&upstream).unwrap();
    for name in IO_URING {
        assert!(!mentioned(&upstream, name), "{name}");
    }
}

fn kernel_condition_holds(v: &Value) -> bool {
    let v = v.as_str().expect("minKernel is a string");
    let mut parts = v.split('.').map(|n| n.parse::<u32>().expect("minKernel"));
    let version = (parts.next().unwrap(), parts.next().unwrap_or(0));
    assert!(
        version <= MIN_KERNEL,
        "a rule depends on kernel {v}, above miopd's minimum: decide how to resolve it"
    );
    true
}

/// The OCI `LinuxSeccomp` dockerd would hand to runc for a miopd container with
/// the default capabilities on `go_arch` ("amd64" or "arm64"): moby/profiles'
/// `setupSeccomp` (seccomp_linux.go), with every `minKernel` at or below
/// miopd's minimum taken as satisfied.
fn resolve(profile: &Value, go_arch: &str) -> Value {
    let top: Vec<&str> = profile
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in &top {
        assert!(
            ["defaultAction", "defaultErrnoRet", "archMap", "syscalls"].contains(k),
            "unknown top-level field {k}: extend resolve()"
        );
    }
    let native = match go_arch {
        "amd64" => "SCMP_ARCH_X86_64",
        "arm64" => "SCMP_ARCH_AARCH64",
        other => panic!("{other}"),
    };
    let mut architectures = Vec::new();
    for a in profile["archMap"].as_array().unwrap() {
        if a["architecture"] == native {
            architectures.push(a["architecture"].clone());
            if let Some(sub) = a["subArchitectures"].as_array() {
                architectures.extend(sub.iter().cloned());
            }
        }
    }
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let has_cap = |c: &String| DEFAULT_CAPS.contains(&c.as_str());
    let mut out = Vec::new();
    'calls: for call in syscalls(profile) {
        let obj = call.as_object().unwrap();
        for k in obj.keys() {
            assert!(
                ["names", "action", "errnoRet", "args", "comment", "includes", "excludes"]
                    .contains(&k.as_str()),
                "unknown syscall field {k}: extend resolve()"
            );
        }
        for cond in ["includes", "excludes"] {
            if let Some(c) = obj.get(cond).and_then(|c| c.as_object()) {
                for k in c.keys() {
                    assert!(
                        ["arches", "caps", "minKernel"].contains(&k.as_str()),
                        "unknown condition {cond}.{k}: extend resolve()"
                    );
                }
            }
        }
        let exc = &call["excludes"];
        if list(&exc["arches"]).iter().any(|a| a == go_arch)
            || list(&exc["caps"]).iter().any(has_cap)
            || (!exc["minKernel"].is_null() && kernel_condition_holds(&exc["minKernel"]))
        {
            continue 'calls;
        }
        let inc = &call["includes"];
        let arches = list(&inc["arches"]);
        if (!arches.is_empty() && !arches.iter().any(|a| a == go_arch))
            || !list(&inc["caps"]).iter().all(has_cap)
            || (!inc["minKernel"].is_null() && !kernel_condition_holds(&inc["minKernel"]))
        {
            continue 'calls;
        }
        let mut kept = Map::new();
        for (k, v) in obj {
            if k != "includes" && k != "excludes" {
                kept.insert(k.clone(), v.clone());
            }
        }
        out.push(Value::Object(kept));
    }
    json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": architectures,
        "syscalls": out,
    })
}

#[test]
fn the_oci_profiles_are_the_profile_resolved_for_default_capabilities() {
    let p = parse("miopd.json");
    let bless = std::env::var_os("MIOP_BLESS_SECCOMP").is_some();
    for arch in ["amd64", "arm64"] {
        let name = format!("miopd-oci-{arch}.json");
        let want = resolve(&p, arch);
        if bless {
            let text = serde_json::to_string_pretty(&want).unwrap() + "\n";
            std::fs::write(format!("{DIR}/{name}"), text).unwrap();
        }
        assert_eq!(
            parse(&name),
            want,
            "{name} is stale: MIOP_BLESS_SECCOMP=1 cargo test --test deploy_seccomp"
        );
    }
}

#[test]
fn the_oci_profiles_allow_io_uring_and_keep_the_default_restrictions() {
    for (arch, architectures, arch_only, other_arch) in [
        (
            "amd64",
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
            "arch_prctl",
            "arm_fadvise64_64",
        ),
        (
            "arm64",
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
            "arm_fadvise64_64",
            "arch_prctl",
        ),
    ] {
        let p = parse(&format!("miopd-oci-{arch}.json"));
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(p["architectures"], architectures, "{arch}");
        assert!(p.get("archMap").is_none(), "OCI format has no archMap");
        for e in syscalls(&p) {
            assert!(
                e.get("includes").is_none() && e.get("excludes").is_none(),
                "OCI format has no conditions: {e}"
            );
        }
        for name in IO_URING.iter().chain(ORDINARY.iter()) {
            assert!(allowed_unconditionally(&p, name), "{arch}: {name}");
        }
        for name in DENIED {
            assert!(!mentioned(&p, name), "{arch}: {name} must not be allowed");
        }
        assert!(
            allowed_unconditionally(&p, "chroot"),
            "CAP_SYS_CHROOT is a default cap"
        );
        assert!(
            allowed_unconditionally(&p, arch_only),
            "{arch}: {arch_only}"
        );
        assert!(!mentioned(&p, other_arch), "{arch}: {other_arch}");
        // clone only without namespace flags; clone3 answers ENOSYS.
        assert!(!allowed_unconditionally(&p, "clone"), "{arch}: clone");
        assert!(syscalls(&p)
            .iter()
            .any(|e| names(e) == ["clone"] && e["args"].is_array()));
        assert!(syscalls(&p).iter().any(|e| names(e) == ["clone3"]
            && e["action"] == "SCMP_ACT_ERRNO"
            && e["errnoRet"] == 38));
        // No call gets two different unconditional actions.
        let mut seen = std::collections::HashMap::new();
        for e in syscalls(&p).iter().filter(|e| unconditional(e)) {
            for n in names(e) {
                let action = (e["action"].clone(), e["errnoRet"].clone());
                if let Some(prev) = seen.insert(n, action.clone()) {
                    assert_eq!(prev, action, "{arch}: {n} has conflicting rules");
                }
            }
        }
    }
}

#[test]
fn compose_runs_the_gateways_with_the_profile_not_unconfined() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    compose.apply_merge().unwrap(); // the gateways share `<<: *gateway`
    for gw in ["gateway-1", "gateway-2"] {
        let opts: Vec<&str> = compose["services"][gw]["security_opt"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{gw} has no security_opt"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(opts, ["seccomp=./seccomp/miopd.json"], "{gw}");
    }
    // Compose reads the file relative to the compose file's directory.
    assert!(std::path::Path::new(&format!("{root}/deploy/seccomp/miopd.json")).is_file());
    for file in [
        "deploy/docker-compose.yml",
        "deploy/Dockerfile",
        "deploy/README.md",
        "docs/DEPLOY.md",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for bad in ["seccomp:unconfined", "seccomp=unconfined"] {
            assert!(!text.contains(bad), "{file} still says {bad}");
        }
    }
}
