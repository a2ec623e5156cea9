//! The container seccomp kit in deploy/seccomp/ (see its README.md).
//!
//! The profiles themselves are not in the repository: they are moby's data,
//! generated on the operator's machine by `deploy/seccomp/make-profile.py`
//! from Docker's default profile (moby/profiles `seccomp/default.json` at a
//! pinned commit, checked against a pinned sha256) plus one entry allowing
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register`:
//!
//! - `miopd.json`: moby's format (`archMap`, `includes`/`excludes`), for
//!   Docker, Compose and Podman;
//! - `miopd-oci-amd64.json`, `miopd-oci-arm64.json`: the same profile resolved
//!   the way dockerd resolves it for a container with the default
//!   capabilities, in the OCI runtime-spec format that containerd reads for a
//!   Kubernetes `Localhost` profile.
//!
//! These tests run the generator (with `python3`) on a small synthetic profile
//! in moby's format that they write themselves, with `--no-verify` to skip the
//! pin, and check what it adds, keeps and resolves, and what it refuses.
//! With `MIOP_SECCOMP_UPSTREAM=/path/to/default.json` (the real upstream file)
//! one more test runs the pinned file through it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/seccomp/make-profile.py"
);

/// The pin: moby/profiles `seccomp/default.json` at tag seccomp/v0.2.3.
/// The script and deploy/seccomp/README.md must say the same (checked below).
const UPSTREAM_COMMIT: &str = "836ae4d37ef2ec995c77c99fc55f5b5f3af3a897";
const UPSTREAM_SHA256: &str = "536529b665dd0972c37bfb569f5d4ac8a53592e7b00752bc39ff063ca9864c74";

const IO_URING: [&str; 3] = ["io_uring_enter", "io_uring_register", "io_uring_setup"];
const OUTPUTS: [&str; 3] = ["miopd.json", "miopd-oci-amd64.json", "miopd-oci-arm64.json"];

/// A directory of its own for one test, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("miop-seccomp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `python3 deploy/seccomp/make-profile.py ARGS...`
fn make_profile<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e} (.ci/test installs it: apt-get install python3)"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `input` to `tmp/input.json` and runs the generator on it with
/// `extra` arguments, output into `tmp/out`.
fn run_on(tmp: &TempDir, input: &str, extra: &[&str]) -> Output {
    let from = tmp.path("input.json");
    std::fs::write(&from, input).unwrap();
    let out_dir = tmp.path("out");
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--from"),
        from.as_os_str(),
        OsStr::new("--out"),
        out_dir.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    make_profile(&args)
}

/// Runs the generator on `fixture` with `--no-verify` and returns the parsed
/// outputs, in the order of `OUTPUTS`.
fn generate_from_fixture(name: &str, fixture: &Value) -> Vec<Value> {
    let tmp = TempDir::new(name);
    let input = serde_json::to_string_pretty(fixture).unwrap();
    let out = run_on(&tmp, &input, &["--no-verify"]);
    assert!(
        out.status.success(),
        "make-profile.py failed:\n{}",
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT verified (--no-verify)"),
        "the run says it skipped the pin"
    );
    OUTPUTS
        .iter()
        .map(|f| parse_file(&tmp.path("out").join(f)))
        .collect()
}

fn parse_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// The index of the one entry that mentions any io_uring call; panics unless
/// there is exactly one.
fn io_uring_entry(profile: &Value) -> usize {
    let found: Vec<usize> = syscalls(profile)
        .iter()
        .enumerate()
        .filter(|(_, e)| names(e).iter().any(|n| IO_URING.contains(n)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "entries mentioning io_uring: {found:?}");
    found[0]
}

/// The profile without the entry at `index`.
fn without_entry(profile: &Value, index: usize) -> Value {
    let mut p = profile.clone();
    p["syscalls"].as_array_mut().unwrap().remove(index);
    p
}

/// clone's argument condition in the fixture: no namespace flags.
fn clone_arg() -> Value {
    json!({"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"})
}

fn personality_arg() -> Value {
    json!({"index": 0, "value": 0, "valueTwo": 0, "op": "SCMP_CMP_EQ"})
}

/// Our own small profile in moby's format (not moby's data): an unconditional
/// allow-list first, as upstream has, then one rule for each kind of
/// condition the generator has to resolve.
fn fixture() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
        ],
        "syscalls": [
            {"names": ["accept4", "epoll_wait", "read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [personality_arg()]},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
            {
                "names": ["bpf", "mount", "unshare"],
                "action": "SCMP_ACT_ALLOW",
                "comment": "fixture: only with CAP_SYS_ADMIN",
                "includes": {"caps": ["CAP_SYS_ADMIN"]}
            },
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_BOOT"]}},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [clone_arg()],
                "comment": "fixture: no namespace flags without CAP_SYS_ADMIN",
                "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_NET_RAW"]}},
            {"names": ["uselib"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "4.8"}}
        ]
    })
}

#[test]
fn the_generator_adds_exactly_the_io_uring_entry_after_the_first_allow_list() {
    let out = generate_from_fixture("adds", &fixture());
    let p = &out[0];
    let i = io_uring_entry(p);
    assert_eq!(
        i, 1,
        "right after the first (unconditional) allow-list entry"
    );
    let entry = &syscalls(p)[i];
    let mut keys: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["action", "comment", "names"],
        "no conditions: {entry}"
    );
    assert_eq!(names(entry), IO_URING);
    assert_eq!(entry["action"], "SCMP_ACT_ALLOW");
    assert!(unconditional(entry));
    assert!(entry["comment"].as_str().unwrap().starts_with("miop:"));
    for name in IO_URING {
        assert!(allowed_unconditionally(p, name), "{name}");
    }
}

#[test]
fn the_generator_keeps_everything_else() {
    let fixture = fixture();
    let out = generate_from_fixture("keeps", &fixture);
    let p = &out[0];
    assert_eq!(without_entry(p, io_uring_entry(p)), fixture);
    // The order of the entries is kept too (serde_json's Value compares
    // arrays in order).
    assert_eq!(syscalls(p).len(), syscalls(&fixture).len() + 1);
}

/// An entry of the fixture as resolved: without its conditions.
fn call(names: &[&str], action: &str) -> Value {
    json!({"names": names, "action": action})
}

#[test]
fn the_oci_profiles_resolve_conditions_for_the_default_capabilities_per_arch() {
    let out = generate_from_fixture("oci", &fixture());
    let added = syscalls(&out[0])[1].clone();
    let mut personality = call(&["personality"], "SCMP_ACT_ALLOW");
    personality["args"] = json!([personality_arg()]);
    let mut clone = call(&["clone"], "SCMP_ACT_ALLOW");
    clone["args"] = json!([clone_arg()]);
    clone["comment"] = json!("fixture: no namespace flags without CAP_SYS_ADMIN");
    let mut clone3 = call(&["clone3"], "SCMP_ACT_ERRNO");
    clone3["errnoRet"] = json!(38);
    for (p, arch_only, architectures) in [
        (
            &out[1],
            "arch_prctl",
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ),
        (
            &out[2],
            "arm_fadvise64_64",
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ),
    ] {
        // Kept, without conditions: minKernel 4.8 (at or below miopd's 5.11),
        // this arch's rule, CAP_SYS_CHROOT (a default capability), and the
        // rules that exclude CAP_SYS_ADMIN (not a default one). Dropped:
        // CAP_SYS_ADMIN and CAP_SYS_BOOT rules, the other arch's rule, the
        // rule excluding CAP_NET_RAW (a default one) and the one excluding
        // kernels from 4.8 on.
        let want = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": architectures,
            "syscalls": [
                call(&["accept4", "epoll_wait", "read", "write"], "SCMP_ACT_ALLOW"),
                added.clone(),
                call(&["ptrace"], "SCMP_ACT_ALLOW"),
                personality.clone(),
                call(&[arch_only], "SCMP_ACT_ALLOW"),
                call(&["chroot"], "SCMP_ACT_ALLOW"),
                clone.clone(),
                clone3.clone(),
            ]
        });
        assert_eq!(p, &want, "{arch_only}");
    }
}

#[test]
fn a_wrong_sha256_is_refused_and_nothing_is_written() {
    let tmp = TempDir::new("pin");
    let input = serde_json::to_string_pretty(&fixture()).unwrap();
    let digest = hex::encode(Sha256::digest(input.as_bytes()));
    let out = run_on(&tmp, &input, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(&digest), "names the file's sha256: {err}");
    assert!(err.contains(UPSTREAM_SHA256), "names the pin: {err}");
    assert!(err.contains("deliberate update"), "{err}");
    assert!(!tmp.path("out").exists(), "nothing written");
}

#[test]
fn no_verify_needs_a_local_file() {
    let tmp = TempDir::new("noverify");
    let out = make_profile(&[
        OsStr::new("--no-verify"),
        OsStr::new("--out"),
        tmp.path("out").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-verify is only for a local test fixture"));
    assert!(!tmp.path("out").exists());
}

#[test]
fn inputs_the_generator_cannot_resolve_are_refused() {
    let mut above_min_kernel = fixture();
    above_min_kernel["syscalls"][1]["includes"]["minKernel"] = json!("6.1");
    let mut unknown_field = fixture();
    unknown_field["syscalls"][2]["future"] = json!(true);
    let mut unknown_condition = fixture();
    unknown_condition["syscalls"][5]["includes"]["future"] = json!(["x"]);
    let mut unknown_top = fixture();
    unknown_top["listenerPath"] = json!("/run/agent.sock");
    let mut has_io_uring = fixture();
    has_io_uring["syscalls"][0]["names"]
        .as_array_mut()
        .unwrap()
        .push(json!("io_uring_setup"));
    let mut conditional_first = fixture();
    conditional_first["syscalls"][0]["includes"] = json!({"caps": ["CAP_SYS_ADMIN"]});
    for (name, input, why) in [
        ("kernel", above_min_kernel, "above miopd's minimum 5.11"),
        ("field", unknown_field, "unknown syscall field future"),
        (
            "cond",
            unknown_condition,
            "unknown condition includes.future",
        ),
        ("top", unknown_top, "unknown top-level field listenerPath"),
        ("has", has_io_uring, "already has a rule for io_uring_setup"),
        (
            "first",
            conditional_first,
            "not an unconditional SCMP_ACT_ALLOW",
        ),
    ] {
        let tmp = TempDir::new(&format!("refuse-{name}"));
        let out = run_on(
            &tmp,
            &serde_json::to_string(&input).unwrap(),
            &["--no-verify"],
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{name}: {}", stderr(&out));
        assert!(!tmp.path("out").exists(), "{name}: nothing written");
    }
}

#[test]
fn the_pin_is_the_same_in_the_script_the_readme_and_this_test() {
    let script = std::fs::read_to_string(SCRIPT).unwrap();
    assert!(script.contains(&format!("UPSTREAM_SHA256 = \"{UPSTREAM_SHA256}\"")));
    assert!(script.contains(&format!("UPSTREAM_COMMIT = \"{UPSTREAM_COMMIT}\"")));
    let readme = std::fs::read_to_string(format!("{ROOT}/deploy/seccomp/README.md")).unwrap();
    assert!(readme.contains(UPSTREAM_SHA256) && readme.contains(UPSTREAM_COMMIT));
}

/// The bytes of the entry the generator added, as they appear in miopd.json.
fn added_entry(text: &str) -> &str {
    let start = text
        .find("\t\t{\n\t\t\t\"names\": [\n\t\t\t\t\"io_uring_enter\"")
        .expect("the io_uring entry");
    let len = text[start..].find("\n\t\t},\n").expect("its end") + "\n\t\t},\n".len();
    &text[start..start + len]
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

/// Optional: runs only with `MIOP_SECCOMP_UPSTREAM=/path/to/default.json`
/// (moby/profiles `seccomp/default.json` at the pinned commit, e.g. from
/// `git show 836ae4d...:seccomp/default.json` in a clone); without it, it
/// prints a note and passes, since CI has no copy of moby's file and cannot
/// download it. With it, it runs the real file through the generator with
/// the pin checked, and checks the outputs the way an operator gets them:
/// Docker's rules kept (ordinary calls allowed, dangerous ones not, capability
/// rules still gated), miopd.json byte for byte upstream's file plus the
/// added entry, and the OCI files resolved for the default capabilities.
#[test]
fn optional_the_real_pinned_upstream_verifies_and_keeps_dockers_rules() {
    let Some(upstream) = std::env::var_os("MIOP_SECCOMP_UPSTREAM") else {
        println!(
            "note: skipped, set MIOP_SECCOMP_UPSTREAM=/path/to/moby/profiles/seccomp/default.json \
             (commit {UPSTREAM_COMMIT}) to run the real upstream file through the generator"
        );
        return;
    };
    let tmp = TempDir::new("real");
    let out = make_profile(&[
        OsStr::new("--from"),
        upstream.as_os_str(),
        OsStr::new("--out"),
        tmp.path("out").as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verified: ") && stdout.contains(UPSTREAM_SHA256),
        "{stdout}"
    );

    // miopd.json: upstream's bytes plus exactly the added entry.
    let text = std::fs::read_to_string(tmp.path("out").join("miopd.json")).unwrap();
    let upstream_text = text.replacen(added_entry(&text), "", 1);
    assert_eq!(
        hex::encode(Sha256::digest(upstream_text.as_bytes())),
        UPSTREAM_SHA256
    );
    let p: Value = serde_json::from_str(&text).unwrap();
    let upstream: Value = serde_json::from_str(&upstream_text).unwrap();
    assert_eq!(without_entry(&p, io_uring_entry(&p)), upstream);
    for name in IO_URING {
        assert!(
            !mentioned(&upstream, name),
            "upstream has no {name} (Docker >= 25)"
        );
        assert!(allowed_unconditionally(&p, name), "{name} not allowed");
    }
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO", "an allow-list");
    assert_eq!(p["defaultErrnoRet"], 1, "EPERM, as Docker's default");
    for name in ORDINARY {
        assert!(allowed_unconditionally(&p, name), "{name} not allowed");
    }
    for name in DENIED {
        assert!(!allowed_unconditionally(&p, name), "{name} allowed");
    }
    assert!(!mentioned(&p, "kexec_load"), "kexec_load is never allowed");
    let gated = syscalls(&p)
        .iter()
        .find(|e| e["includes"]["caps"] == json!(["CAP_SYS_ADMIN"]))
        .expect("the CAP_SYS_ADMIN rule");
    for name in ["bpf", "mount", "unshare", "setns"] {
        assert!(names(gated).contains(&name), "{name}");
    }

    // The OCI files.
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
        let p = parse_file(&tmp.path("out").join(format!("miopd-oci-{arch}.json")));
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
        assert!(allowed_unconditionally(&p, "chroot"), "CAP_SYS_CHROOT");
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
fn compose_runs_the_gateways_with_the_generated_profile_not_unconfined() {
    let mut compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/docker-compose.yml")).unwrap(),
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
    // Compose reads the file relative to the compose file's directory:
    // deploy/seccomp/, the generator's default output directory, where the
    // generated files are ignored by git.
    let ignore = std::fs::read_to_string(format!("{ROOT}/deploy/seccomp/.gitignore")).unwrap();
    for f in OUTPUTS {
        assert!(ignore.lines().any(|l| l == format!("/{f}")), "{f}");
    }
    for file in ["deploy/README.md", "docs/DEPLOY.md"] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        assert!(
            text.contains("python3 deploy/seccomp/make-profile.py"),
            "{file} says to generate the profile"
        );
    }
    for file in [
        "deploy/docker-compose.yml",
        "deploy/Dockerfile",
        "deploy/README.md",
        "docs/DEPLOY.md",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        for bad in ["seccomp:unconfined", "seccomp=unconfined"] {
            assert!(!text.contains(bad), "{file} still says {bad}");
        }
    }
}
