#!/usr/bin/env python3
"""Generate miopd's container seccomp profiles: Docker's default plus io_uring.

    python3 deploy/seccomp/make-profile.py                 # downloads upstream
    python3 deploy/seccomp/make-profile.py --from default.json   # offline

Takes Docker Engine's default seccomp profile, moby/profiles
seccomp/default.json at a pinned commit (downloaded from GitHub, or read from
--from FILE), refuses it unless its sha256 is the pinned one, adds exactly one
entry allowing io_uring_setup, io_uring_enter and io_uring_register, and
writes into --out DIR (default: the directory of this script, deploy/seccomp/):

  miopd.json            moby's format, for docker run --security-opt
                        seccomp=..., Compose security_opt, Podman, CRI-O
  miopd-oci-amd64.json  the same rules resolved for a container with the
  miopd-oci-arm64.json  default capabilities, in the OCI runtime-spec format
                        that containerd reads for a Kubernetes Localhost profile

The outputs are moby's data (Apache License 2.0) and are not committed; see
README.md beside this script. Python 3 standard library only.

Exit status: 0 written; 1 refused (sha256 mismatch, download failure, an input
this script does not know how to resolve), nothing written; 2 usage error.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

# The pin. Changing it is a deliberate update: see "Updating to a newer
# upstream" in README.md.
UPSTREAM_TAG = "seccomp/v0.2.3"
UPSTREAM_COMMIT = "836ae4d37ef2ec995c77c99fc55f5b5f3af3a897"
UPSTREAM_URL = (
    "https://raw.githubusercontent.com/moby/profiles/"
    + UPSTREAM_COMMIT
    + "/seccomp/default.json"
)
UPSTREAM_SHA256 = "536529b665dd0972c37bfb569f5d4ac8a53592e7b00752bc39ff063ca9864c74"

IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]

# The one entry added, right after upstream's first (unconditional) allow-list
# entry. Nothing else is changed.
IO_URING_ENTRY = {
    "names": IO_URING,
    "action": "SCMP_ACT_ALLOW",
    "comment": "miop: the only change to moby/profiles " + UPSTREAM_TAG + " default.json."
    " miopd runs on io_uring; moby removed these three calls from its default"
    " in Docker 25 (moby/profiles 0e2acd4). See deploy/seccomp/README.md.",
}

# The bounding set of a container that neither adds nor drops capabilities:
# moby's daemon/pkg/oci/caps/defaults.go (containerd's default is the same
# list).
DEFAULT_CAPS = [
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
]

# miopd's minimum kernel; minKernel conditions at or below it always hold.
MIN_KERNEL = (5, 11)

# Go architecture name -> the seccomp architecture whose archMap entry applies.
NATIVE_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}

PROFILE = "miopd.json"


def oci_name(go_arch):
    return "miopd-oci-%s.json" % go_arch


OUTPUTS = [PROFILE] + [oci_name(a) for a in NATIVE_ARCH]

# Fields this script knows. Anything else stops it rather than being guessed at.
TOP_FIELDS = ("defaultAction", "defaultErrnoRet", "archMap", "syscalls")
SYSCALL_FIELDS = ("names", "action", "errnoRet", "args", "comment", "includes", "excludes")
CONDITION_FIELDS = ("arches", "caps", "minKernel")

MAX_UPSTREAM_BYTES = 4 << 20


class Refused(Exception):
    """The input cannot be turned into a profile; nothing is written."""


def download(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data = resp.read(MAX_UPSTREAM_BYTES + 1)
    except (urllib.error.URLError, OSError) as e:
        raise Refused(
            "cannot download %s: %s\n"
            "On a host without access to GitHub, get that file elsewhere (or from a\n"
            "clone of moby/profiles: git show %s:seccomp/default.json > default.json)\n"
            "and run: python3 %s --from default.json"
            % (url, getattr(e, "reason", e), UPSTREAM_COMMIT, sys.argv[0])
        )
    if len(data) > MAX_UPSTREAM_BYTES:
        raise Refused("%s is larger than %d bytes: not the expected file" % (url, MAX_UPSTREAM_BYTES))
    return data


def verify(data, source):
    digest = hashlib.sha256(data).hexdigest()
    if digest != UPSTREAM_SHA256:
        raise Refused(
            "sha256 mismatch: %s has sha256\n"
            "  %s\n"
            "but the pinned upstream (moby/profiles seccomp/default.json at tag %s,\n"
            "commit %s) has\n"
            "  %s\n"
            "Refusing to build a profile from it. If the file is a different upstream\n"
            "version, using it is a deliberate update: change UPSTREAM_TAG,\n"
            "UPSTREAM_COMMIT and UPSTREAM_SHA256 in this script and the pin in\n"
            "deploy/seccomp/README.md, then review the generated profiles."
            % (source, digest, UPSTREAM_TAG, UPSTREAM_COMMIT, UPSTREAM_SHA256)
        )
    return digest


def entry_names(entry):
    names = entry.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise Refused("a syscalls entry has no list of names: %s" % json.dumps(entry))
    return names


def unconditional(entry):
    return all(entry.get(k) in (None, [], {}) for k in ("args", "includes", "excludes"))


def add_io_uring(profile):
    """The profile with IO_URING_ENTRY inserted after the first allow-list entry."""
    if not isinstance(profile, dict) or not isinstance(profile.get("syscalls"), list):
        raise Refused("the input is not a seccomp profile in moby's format (no syscalls list)")
    calls = profile["syscalls"]
    for entry in calls:
        if not isinstance(entry, dict):
            raise Refused("a syscalls entry is not an object: %s" % json.dumps(entry))
        present = [n for n in entry_names(entry) if n in IO_URING]
        if present:
            raise Refused(
                "the input already has a rule for %s; adding another would be ambiguous:"
                " review that upstream change by hand" % ", ".join(present)
            )
    if not calls or calls[0].get("action") != "SCMP_ACT_ALLOW" or not unconditional(calls[0]):
        raise Refused(
            "the first syscalls entry is not an unconditional SCMP_ACT_ALLOW list;"
            " the io_uring entry goes right after it: review the input's layout"
        )
    out = dict(profile)
    out["syscalls"] = [calls[0], dict(IO_URING_ENTRY)] + calls[1:]
    return out


def kernel_condition_holds(version):
    """minKernel conditions at or below miopd's minimum always hold."""
    parts = str(version).split(".")
    try:
        v = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        raise Refused("minKernel %r is not a kernel version" % (version,))
    if v > MIN_KERNEL:
        raise Refused(
            "a rule depends on kernel %s, above miopd's minimum %d.%d: decide how to"
            " resolve it (resolve() in this script)" % (version, MIN_KERNEL[0], MIN_KERNEL[1])
        )
    return True


def condition(entry, which):
    c = entry.get(which)
    if c is None:
        return {}
    if not isinstance(c, dict):
        raise Refused("%s of %s is not an object" % (which, json.dumps(entry)))
    for k in c:
        if k not in CONDITION_FIELDS:
            raise Refused("unknown condition %s.%s: extend resolve() in this script" % (which, k))
    return c


def resolve(profile, go_arch):
    """The OCI LinuxSeccomp dockerd would hand to runc for a miopd container
    with the default capabilities on go_arch ("amd64" or "arm64"): moby's
    setupSeccomp (profiles seccomp/seccomp_linux.go), with every minKernel at
    or below miopd's minimum taken as satisfied. Comments are kept (the OCI
    structure ignores them)."""
    for k in profile:
        if k not in TOP_FIELDS:
            raise Refused("unknown top-level field %s: extend resolve() in this script" % k)
    native = NATIVE_ARCH[go_arch]
    architectures = []
    for a in profile.get("archMap") or []:
        if a.get("architecture") == native:
            architectures.append(a["architecture"])
            architectures.extend(a.get("subArchitectures") or [])
    if not architectures:
        raise Refused("archMap has no entry for %s" % native)

    def has_cap(c):
        return c in DEFAULT_CAPS

    syscalls = []
    for call in profile["syscalls"]:
        for k in call:
            if k not in SYSCALL_FIELDS:
                raise Refused("unknown syscall field %s: extend resolve() in this script" % k)
        exc = condition(call, "excludes")
        if (
            go_arch in (exc.get("arches") or [])
            or any(has_cap(c) for c in exc.get("caps") or [])
            or (exc.get("minKernel") is not None and kernel_condition_holds(exc["minKernel"]))
        ):
            continue
        inc = condition(call, "includes")
        arches = inc.get("arches") or []
        if (
            (arches and go_arch not in arches)
            or not all(has_cap(c) for c in inc.get("caps") or [])
            or (inc.get("minKernel") is not None and not kernel_condition_holds(inc["minKernel"]))
        ):
            continue
        syscalls.append({k: v for k, v in call.items() if k not in ("includes", "excludes")})
    return {
        "defaultAction": profile.get("defaultAction"),
        "defaultErrnoRet": profile.get("defaultErrnoRet"),
        "architectures": architectures,
        "syscalls": syscalls,
    }


def render(profile):
    """miopd.json in upstream's own layout (tabs, key order kept, no final
    newline), so that for the pinned input it is upstream's bytes plus the
    added entry."""
    return json.dumps(profile, indent="\t", ensure_ascii=False).encode()


def render_oci(profile):
    return (json.dumps(profile, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def generate(data):
    """{file name: bytes} for the upstream profile `data`."""
    try:
        upstream = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Refused("the input is not JSON: %s" % e)
    profile = add_io_uring(upstream)
    out = {PROFILE: render(profile)}
    for go_arch in NATIVE_ARCH:
        out[oci_name(go_arch)] = render_oci(resolve(profile, go_arch))
    return out


def write_all(out_dir, files):
    os.makedirs(out_dir, exist_ok=True)
    staged = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix="." + name + ".", dir=out_dir)
            staged.append((tmp, name))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
        for tmp, name in staged:
            os.replace(tmp, os.path.join(out_dir, name))
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(
        prog="make-profile.py",
        description="Write miopd's seccomp profiles: Docker's default profile"
        " (moby/profiles %s, sha256-pinned) plus io_uring_setup, io_uring_enter"
        " and io_uring_register." % UPSTREAM_TAG,
    )
    ap.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="read upstream seccomp/default.json from FILE instead of downloading %s" % UPSTREAM_URL,
    )
    ap.add_argument(
        "--out",
        metavar="DIR",
        default=here,
        help="directory to write %s into (default: %s)" % (", ".join(OUTPUTS), here),
    )
    ap.add_argument(
        "--no-verify",
        action="store_true",
        help="for tests with a synthetic fixture only: skip the sha256 pin (needs --from)",
    )
    args = ap.parse_args(argv)
    if args.no_verify and args.source is None:
        ap.error("--no-verify is only for a local test fixture given with --from")

    try:
        if args.source is None:
            source = UPSTREAM_URL
            data = download(UPSTREAM_URL)
        else:
            source = args.source
            try:
                with open(args.source, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise Refused("cannot read %s: %s" % (args.source, e))
        if args.no_verify:
            digest = hashlib.sha256(data).hexdigest()
            print("NOT verified (--no-verify): %s sha256 %s" % (source, digest))
        else:
            digest = verify(data, source)
            print("verified: %s sha256 %s (moby/profiles %s)" % (source, digest, UPSTREAM_TAG))
        files = generate(data)
        write_all(args.out, files)
    except Refused as e:
        print("make-profile.py: error: %s" % e, file=sys.stderr)
        return 1
    for name, content in files.items():
        print(
            "wrote %s (sha256 %s)"
            % (os.path.join(args.out, name), hashlib.sha256(content).hexdigest())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
