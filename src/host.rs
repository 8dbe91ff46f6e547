//! Facts about the host this process runs on: its name, whether a process
//! is alive, free space of a filesystem, memory. A leaf: it knows nothing of
//! targets, snapshots or configuration, so any layer may ask it.

use std::path::Path;

/// This host's name, for attributing runs (the state file may be on shared
/// storage in an HA pair; a pid means nothing on another host).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether a process with this pid exists (signal 0 probes without sending).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Bytes available to an unprivileged user on the filesystem holding `dir`.
/// (`statvfs` directly: one syscall, where a system-information crate would
/// enumerate every disk.)
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Memory of the host in bytes: (available, total).
pub fn memory() -> (u64, u64) {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()));
    (sys.available_memory(), sys.total_memory())
}
