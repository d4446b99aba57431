//! The process group a run owns: stopping it gently then by force, knowing whether any of it
//! still runs, and killing it when the run is dropped. Everything platform-specific about
//! processes is here.

use super::KILL_GRACE;
#[cfg(not(unix))]
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Asks the group to stop, kills it after [`KILL_GRACE`], and reaps the command.
pub(super) async fn terminate(group: &mut ProcessGroup, child: &mut Child) {
    group.terminate();
    let give_up = Instant::now() + KILL_GRACE;
    loop {
        let leader_gone = !matches!(child.try_wait(), Ok(None));
        if leader_gone && !group.alive() {
            break;
        }
        if Instant::now() >= give_up {
            group.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After SIGKILL the leader goes at once unless stuck in the kernel; don't hang on it then.
    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
    group.disarm();
}

/// The command's process group; killed with SIGKILL when dropped while still armed.
pub(super) struct ProcessGroup {
    id: Option<u32>,
}

impl ProcessGroup {
    pub(super) fn of(child: &Child) -> ProcessGroup {
        ProcessGroup { id: child.id() }
    }

    /// Once the group is known to be gone, its id may be reused: stop signalling it.
    pub(super) fn disarm(&mut self) {
        self.id = None;
    }
}

#[cfg(unix)]
impl ProcessGroup {
    fn signal(&self, signal: libc::c_int) -> bool {
        let Some(pgid) = self.id.and_then(|id| libc::pid_t::try_from(id).ok()) else {
            return false;
        };
        // SAFETY: killpg only sends a signal; the group id is our own child's, which
        // `process_group(0)` made the leader of a new group.
        unsafe { libc::killpg(pgid, signal) == 0 }
    }

    /// Whether a process of the group still runs. Zombies do not count: where nothing reaps
    /// orphans (PID 1 of a container that is not an init), a killed grandchild stays a zombie
    /// in the group forever, and waiting for it would only delay every timeout and cancel.
    pub(super) fn alive(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(pgid) = self.id {
            return linux_group_runs(pgid);
        }
        self.signal(0)
    }

    fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}

/// Whether `/proc` lists a process of group `pgid` that is not a zombie.
#[cfg(target_os = "linux")]
fn linux_group_runs(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        group == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

#[cfg(not(unix))]
impl ProcessGroup {
    pub(super) fn alive(&self) -> bool {
        false
    }

    /// No gentle tree-wide stop on Windows: `taskkill /T /F` ends the whole tree.
    fn terminate(&self) {
        self.kill();
    }

    fn kill(&self) {
        if let Some(pid) = self.id {
            let _ = std::process::Command::new("taskkill")
                .args(["/PID", &pid.to_string(), "/T", "/F"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.id.is_some() {
            self.kill();
        }
    }
}
