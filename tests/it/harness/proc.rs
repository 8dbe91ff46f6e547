//! Looking at processes through `/proc`: finding the `pg_dump` that
//! pgrehearse spawned, how much it has written, and every process's argv.
//! Used to kill a child mid-stream and to prove no secret is on a command line.

use std::path::Path;

/// `(pid, ppid, comm)` of every process visible now.
pub fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we scan: skip the ones that vanished.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may itself contain spaces or ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let Some(ppid) = rest.get(1).and_then(|s| s.parse().ok()) else {
            continue;
        };
        out.push((pid, ppid, comm));
    }
    out
}

/// Pids of processes named `comm` that descend from `ancestor`.
pub fn descendants_named(ancestor: u32, comm: &str) -> Vec<u32> {
    let procs = processes();
    let parent = |pid: u32| procs.iter().find(|p| p.0 == pid).map(|p| p.1);
    procs
        .iter()
        .filter(|p| p.2 == comm)
        .filter(|p| {
            let mut cur = p.1;
            for _ in 0..64 {
                if cur == ancestor {
                    return true;
                }
                match parent(cur) {
                    Some(pp) if pp != 0 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .map(|p| p.0)
        .collect()
}

/// Bytes a process has written so far (`wchar` in `/proc/PID/io`), if alive.
pub fn bytes_written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok())
}

/// The one-letter state of a process (`R`, `S`, `T`, `Z` for a zombie …).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The argv of a process joined by spaces, if it is still there.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Sends a signal to one process by pid; panics if it is gone.
pub fn signal(pid: u32, sig: libc::c_int) {
    assert!(try_signal(pid, sig), "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
}

/// Sends a signal to one process by pid; false if it is gone.
pub fn try_signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) with a specific pid we found as our own descendant.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Whether `/proc/PID` exists (zombies included).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
