//! Deny io_uring to a child process, the way a container runtime does.
//!
//! # What Docker and containerd do
//!
//! Docker >= 25 (moby/profiles commit 0e2acd4, "seccomp: block io_uring_*
//! syscalls in default profile") and containerd 2 removed `io_uring_setup`,
//! `io_uring_enter` and `io_uring_register` from the allow-list of their
//! default seccomp profiles. Those profiles are allow-lists: the default action
//! is `SCMP_ACT_ERRNO` and moby's `defaultErrnoRet` is 1, so every call not on
//! the list, io_uring's three included, returns -1 with `errno = EPERM`. For a
//! program the visible effect is that `io_uring_setup` fails with EPERM while
//! everything else it needs (read, write, epoll, sockets, threads) works. (A
//! host with `kernel.io_uring_disabled = 2` also answers EPERM; a kernel built
//! without io_uring answers ENOSYS.)
//!
//! # What this filter does
//!
//! [`deny_io_uring`] reproduces exactly that visible effect for one child
//! process, without a container: the three io_uring calls fail with EPERM,
//! every other call is allowed (the inverse of Docker's allow-list, so the
//! test exercises io_uring's absence and nothing else). It is a classic BPF
//! program over `struct seccomp_data { int nr; __u32 arch; __u64
//! instruction_pointer; __u64 args[6]; }`:
//!
//! ```text
//! 0: A = seccomp_data.arch
//! 1: if A != AUDIT_ARCH_<native> goto 8
//! 2: A = seccomp_data.nr
//! 3: A &= ~0x4000_0000            (x86_64's x32 ABI bit; no-op elsewhere)
//! 4: if A < 425 goto 7
//! 5: if A > 427 goto 7
//! 6: return SECCOMP_RET_ERRNO | EPERM      425, 426, 427: io_uring_*
//! 7: return SECCOMP_RET_ALLOW
//! 8: return SECCOMP_RET_KILL_PROCESS
//! ```
//!
//! Why this is correct:
//! - Syscall numbers are per architecture, so the program checks `arch`
//!   first (seccomp(2)'s own advice). The native value is `AUDIT_ARCH_X86_64`
//!   or `AUDIT_ARCH_AARCH64`; the helper does not compile elsewhere. A call
//!   through another ABI (i386 `int 0x80`, arm32 compat) kills the process:
//!   neither the test binaries nor miopd ever make one, and dying loudly beats
//!   letting io_uring slip through unfiltered.
//! - `io_uring_setup`, `io_uring_enter` and `io_uring_register` are 425, 426
//!   and 427 on every architecture since Linux 5.1 (the syscall tables were
//!   unified for new calls), as `libc::SYS_io_uring_*` says; the test in
//!   `tests/seccomp_filter.rs` checks these constants against the program.
//!   On x86_64 the x32 ABI uses the same arch value with bit 30 set in `nr`;
//!   clearing that bit denies the x32 entry points too. `nr` is compared
//!   unsigned, so -1 (0xffff_ffff, used by ptrace to skip a call) stays
//!   allowed.
//! - `PR_SET_NO_NEW_PRIVS` comes first because an unprivileged process may
//!   only install a filter with it set. Both the flag and the filter are kept
//!   across `execve` and inherited by every thread and child created later,
//!   and cannot be removed, so the whole miopd process (all its core threads)
//!   runs under the filter, as it would in a container.
//!
//! The program is built in the parent (it allocates); the `pre_exec` hook
//! only makes two `prctl` calls, which are async-signal-safe, on memory that
//! was allocated before `fork`.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `__AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE` from `<linux/audit.h>`; the
/// `libc` crate has the `EM_*` machine numbers but no `AUDIT_ARCH_*`.
const AUDIT_ARCH_64BIT_LE: u32 = 0x8000_0000 | 0x4000_0000;

/// The `seccomp_data.arch` value of this build's native ABI.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH_NATIVE: u32 = libc::EM_X86_64 as u32 | AUDIT_ARCH_64BIT_LE; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_NATIVE: u32 = libc::EM_AARCH64 as u32 | AUDIT_ARCH_64BIT_LE; // AUDIT_ARCH_AARCH64

/// First and last of the three io_uring system calls (425, 426, 427).
pub const IO_URING_FIRST: u32 = 425;
pub const IO_URING_LAST: u32 = 427;

/// x86_64's `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The errno the filtered calls fail with, as under Docker's default profile.
pub const DENY_ERRNO: i32 = libc::EPERM;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The classic-BPF program described in the module documentation.
/// (Jump offsets count instructions after the jump itself.)
pub fn deny_io_uring_program() -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_K, BPF_LD, BPF_RET,
        BPF_W,
    };
    let nr = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    let arch = std::mem::offset_of!(libc::seccomp_data, arch) as u32;
    let deny = libc::SECCOMP_RET_ERRNO | (DENY_ERRNO as u32 & libc::SECCOMP_RET_DATA);
    vec![
        /* 0 */ stmt(BPF_LD | BPF_W | BPF_ABS, arch),
        /* 1 */ jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_NATIVE, 0, 6), // else -> 8
        /* 2 */ stmt(BPF_LD | BPF_W | BPF_ABS, nr),
        /* 3 */ stmt(BPF_ALU | BPF_AND | BPF_K, !X32_SYSCALL_BIT),
        /* 4 */ jump(BPF_JMP | BPF_JGE | BPF_K, IO_URING_FIRST, 0, 2), // else -> 7
        /* 5 */ jump(BPF_JMP | BPF_JGT | BPF_K, IO_URING_LAST, 1, 0), // then -> 7
        /* 6 */ stmt(BPF_RET | BPF_K, deny),
        /* 7 */ stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
        /* 8 */ stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Makes `cmd`'s child run with `io_uring_setup`, `io_uring_enter` and
/// `io_uring_register` failing with EPERM (as in a Docker >= 25 or
/// containerd 2 container with the default seccomp profile) and every other
/// system call allowed. The filter is installed after `fork`, before `exec`,
/// and applies to the whole program `cmd` runs (all its threads and
/// children); the calling process is not affected. It composes with other
/// `pre_exec` hooks on the same `Command`. If the filter cannot be installed,
/// `spawn` fails with the `prctl` error.
pub fn deny_io_uring(cmd: &mut Command) -> &mut Command {
    // Allocated here, in the parent; the child only reads it.
    let program: Box<[libc::sock_filter]> = deny_io_uring_program().into_boxed_slice();
    // SAFETY: the hook only calls prctl(2) (a raw system call, async-signal-
    // safe) and builds a sock_fprog on the stack pointing into `program`,
    // which the closure owns and which lives until exec. No allocation, no
    // locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let prog = libc::sock_fprog {
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
