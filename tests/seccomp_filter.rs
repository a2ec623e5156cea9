//! The io_uring-denying seccomp filter of `tests/common/seccomp.rs`, checked on
//! real child processes: this test binary runs itself again (the `probe` test
//! only, selected with `--exact`), once as it is and once under
//! `deny_io_uring`, and the probe reports on stdout what the kernel answered.

mod common;

use std::io::{Read, Seek, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;

use common::seccomp;

/// Set in the child so that `probe` does its work (and only there).
const PROBE_ENV: &str = "MIOP_SECCOMP_PROBE";
const PROBE_LINE: &str = "seccomp-probe:";

/// A system call's outcome: Ok(return value) or Err(errno).
fn sys(ret: libc::c_long) -> Result<libc::c_long, i32> {
    if ret < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(ret)
    }
}

fn show(r: Result<libc::c_long, i32>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno{e}"),
    }
}

/// `io_uring_setup(4, &params)`; closes the ring if one was made.
fn io_uring_setup() -> Result<libc::c_long, i32> {
    // struct io_uring_params is 120 bytes; all of it zero asks for defaults.
    let mut params = [0u64; 15];
    let r = sys(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) });
    if let Ok(fd) = r {
        unsafe { libc::close(fd as i32) };
    }
    r
}

/// The `Seccomp:` and `NoNewPrivs:` fields of /proc/self/status.
fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "absent".into())
}

/// What miopd does besides io_uring, and what its epoll fallback needs: a
/// file, a loopback TCP connection, epoll readiness, a thread.
fn ordinary_syscalls() -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: std::io::Error| format!("{what}:{err}")
    };
    let path = std::env::temp_dir().join(format!("miop-seccomp-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(e("open"))?;
    f.write_all(b"probe").map_err(e("write"))?;
    f.rewind().map_err(e("seek"))?;
    let mut back = String::new();
    f.read_to_string(&mut back).map_err(e("read"))?;
    std::fs::remove_file(&path).map_err(e("unlink"))?;
    if back != "probe" {
        return Err(format!("file-read-back:{back:?}"));
    }

    let listener = TcpListener::bind("127.0.0.1:0").map_err(e("bind"))?;
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).map_err(e("connect"))?;
    let (mut server, _) = listener.accept().map_err(e("accept"))?;
    client.write_all(b"ping").map_err(e("send"))?;

    let ep = sys(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as libc::c_long)
        .map_err(|n| format!("epoll_create1:errno{n}"))? as i32;
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 7,
    };
    sys(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, server.as_raw_fd(), &mut ev) }
            as libc::c_long,
    )
    .map_err(|n| format!("epoll_ctl:errno{n}"))?;
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    let n = sys(unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 10_000) } as libc::c_long)
        .map_err(|n| format!("epoll_wait:errno{n}"))?;
    unsafe { libc::close(ep) };
    if n != 1 || { out[0].u64 } != 7 {
        return Err(format!("epoll_wait:{n}-events"));
    }
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).map_err(e("recv"))?;
    if &buf != b"ping" {
        return Err("recv:wrong-bytes".into());
    }

    let t = std::thread::spawn(|| 42)
        .join()
        .map_err(|_| "thread".to_string())?;
    if t != 42 {
        return Err("thread:wrong-result".into());
    }
    Ok(())
}

/// Not a test of its own: the body that the tests below run in a child
/// process (`--exact probe --ignored`). It prints one line:
/// `seccomp-probe: setup=ok|errnoN enter=.. register=.. thread_setup=..
/// seccomp=MODE no_new_privs=N ordinary=ok|WHAT`.
#[test]
#[ignore = "run by the other tests of this file in a child process"]
fn probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let setup = show(io_uring_setup());
    // fd -1: without a filter the kernel answers EBADF (or EINVAL); a filter
    // answers before the kernel looks at the arguments.
    let enter = show(sys(unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            -1,
            0u32,
            0u32,
            0u32,
            std::ptr::null::<u8>(),
            0usize,
        )
    }));
    let register = show(sys(unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            -1,
            0u32,
            std::ptr::null::<u8>(),
            0u32,
        )
    }));
    // Threads created after the filter was installed inherit it.
    let thread_setup = show(std::thread::spawn(io_uring_setup).join().unwrap());
    let ordinary = match ordinary_syscalls() {
        Ok(()) => "ok".to_string(),
        Err(what) => what.replace(' ', "_"),
    };
    println!(
        "{PROBE_LINE} setup={setup} enter={enter} register={register} thread_setup={thread_setup} \
         seccomp={} no_new_privs={} ordinary={ordinary}",
        status_field("Seccomp:"),
        status_field("NoNewPrivs:"),
    );
}

/// Runs `probe` in a child process, with or without the filter, and returns
/// its report as (key, value) pairs.
fn run_probe(filtered: bool) -> Vec<(String, String)> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "probe",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(PROBE_ENV, "1");
    if filtered {
        seccomp::deny_io_uring(&mut cmd);
    }
    let out = cmd.output().expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe child (filtered: {filtered}) failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        // libtest may print "test probe ... " on the same line first.
        .find_map(|l| l.split_once(PROBE_LINE).map(|(_, report)| report))
        .unwrap_or_else(|| panic!("no probe report in the child's stdout:\n{stdout}"));
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn get<'a>(report: &'a [(String, String)], key: &str) -> &'a str {
    report
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

#[test]
fn without_the_filter_io_uring_works_in_the_child() {
    let r = run_probe(false);
    assert_eq!(
        get(&r, "setup"),
        "ok",
        "io_uring_setup must succeed without the filter (is kernel.io_uring_disabled 0?): {r:?}"
    );
    assert_eq!(get(&r, "thread_setup"), "ok", "{r:?}");
    // The kernel itself rejects the bogus calls (fd -1), with EBADF or, for
    // io_uring_register on kernels with "blind" registration, EINVAL: any
    // error but the filter's EPERM.
    let eperm = format!("errno{}", libc::EPERM);
    for call in ["enter", "register"] {
        let got = get(&r, call);
        assert!(got.starts_with("errno") && got != eperm, "{call}: {r:?}");
    }
    assert_eq!(get(&r, "ordinary"), "ok", "{r:?}");
}

#[test]
fn with_the_filter_io_uring_fails_with_eperm_and_the_rest_works() {
    let r = run_probe(true);
    let eperm = format!("errno{}", libc::EPERM);
    assert_eq!(get(&r, "setup"), eperm, "{r:?}");
    assert_eq!(get(&r, "enter"), eperm, "{r:?}");
    assert_eq!(get(&r, "register"), eperm, "{r:?}");
    assert_eq!(
        get(&r, "thread_setup"),
        eperm,
        "threads inherit the filter: {r:?}"
    );
    assert_eq!(get(&r, "seccomp"), "2", "SECCOMP_MODE_FILTER: {r:?}");
    assert_eq!(get(&r, "no_new_privs"), "1", "{r:?}");
    assert_eq!(
        get(&r, "ordinary"),
        "ok",
        "files, TCP, epoll and threads must still work: {r:?}"
    );
    // The filter went to the child only.
    assert_eq!(
        io_uring_setup().map(|_| ()),
        Ok(()),
        "the parent keeps io_uring"
    );
}

#[test]
fn the_program_matches_the_io_uring_syscall_numbers() {
    assert_eq!(
        libc::SYS_io_uring_setup,
        seccomp::IO_URING_FIRST as libc::c_long
    );
    assert_eq!(
        libc::SYS_io_uring_enter,
        seccomp::IO_URING_FIRST as libc::c_long + 1
    );
    assert_eq!(
        libc::SYS_io_uring_register,
        seccomp::IO_URING_LAST as libc::c_long
    );
    assert_eq!(seccomp::DENY_ERRNO, libc::EPERM);
    // <linux/audit.h>: AUDIT_ARCH_X86_64 0xc000003e, AUDIT_ARCH_AARCH64 0xc00000b7.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(seccomp::AUDIT_ARCH_NATIVE, 0xc000_003e);
    #[cfg(target_arch = "aarch64")]
    assert_eq!(seccomp::AUDIT_ARCH_NATIVE, 0xc000_00b7);
    let program = seccomp::deny_io_uring_program();
    // Every jump lands inside the program (the kernel would refuse it
    // otherwise, but say where).
    for (i, insn) in program.iter().enumerate() {
        if u32::from(insn.code) & 0x07 == libc::BPF_JMP {
            for off in [insn.jt, insn.jf] {
                assert!(i + 1 + (off as usize) < program.len(), "jump at {i}");
            }
        }
    }
    assert!(program.len() <= 4096, "BPF_MAXINSNS");
}
