//! The process groups of running build and deploy commands, written down so that a hub killed
//! with `kill -9` can stop them when it starts again: a Unity build left running would hold its
//! project's lock and fight the retried task.
//!
//! Each running command is one line of a JSON file (its process group id and its leader's start
//! time, with the boot it belongs to). At start, the groups of the same boot that are still ours
//! are killed: the leader is alive with the recorded start time, or the leader is gone but the
//! group still has members (Linux never hands out a group's id while the group exists). Only on
//! Linux, where `/proc` tells all this; elsewhere the ledger records nothing.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Running command groups, kept in a file.
#[derive(Debug)]
pub struct ProcessLedger {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    pgid: u32,
    /// The leader's start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
    start: u64,
    boot: String,
}

/// Removes its group from the ledger when the command is over.
#[derive(Debug)]
pub struct Recorded<'a> {
    ledger: &'a ProcessLedger,
    pgid: u32,
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        self.ledger
            .change(|entries| entries.retain(|e| e.pgid != self.pgid));
    }
}

impl ProcessLedger {
    /// Opens the ledger at `path`, killing the groups a previous run of the hub left running.
    pub fn open(path: PathBuf) -> ProcessLedger {
        let ledger = ProcessLedger {
            path,
            entries: Mutex::new(Vec::new()),
        };
        for entry in ledger.read() {
            if is_ours(&entry) {
                tracing::warn!(
                    pgid = entry.pgid,
                    "killing a build or deploy left running by a previous run"
                );
                kill_group(entry.pgid);
            }
        }
        ledger.write(&[]);
        ledger
    }

    /// Records the group `pgid` (its leader is the process `pgid`) until the guard is dropped.
    pub fn record(&self, pgid: u32) -> Recorded<'_> {
        if let (Some(start), Some(boot)) = (start_time(pgid), boot_id()) {
            self.change(|entries| entries.push(Entry { pgid, start, boot }));
        }
        Recorded { ledger: self, pgid }
    }

    fn change(&self, change: impl FnOnce(&mut Vec<Entry>)) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut entries);
        self.write(&entries);
    }

    fn read(&self) -> Vec<Entry> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Writes the whole list (a temporary file renamed over the old one); failures are logged:
    /// the ledger only helps after a crash, it never stops a command.
    fn write(&self, entries: &[Entry]) {
        let text: String = entries
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(|line| line + "\n")
            .collect();
        let temporary = self.path.with_extension("processes.tmp");
        let result =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the process ledger");
        }
    }
}

#[cfg(target_os = "linux")]
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

#[cfg(not(target_os = "linux"))]
fn boot_id() -> Option<String> {
    None
}

/// `(state, pgrp, start time)` of a process, from `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn stat(pid: &str) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3 of the line, pgrp field 5, starttime field 22.
    let state = fields.first()?.to_string();
    let pgrp = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, pgrp, start))
}

#[cfg(target_os = "linux")]
fn start_time(pid: u32) -> Option<u64> {
    stat(&pid.to_string()).map(|(_, _, start)| start)
}

#[cfg(not(target_os = "linux"))]
fn start_time(_pid: u32) -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn is_ours(entry: &Entry) -> bool {
    if boot_id().as_deref() != Some(entry.boot.as_str()) {
        return false;
    }
    match stat(&entry.pgid.to_string()) {
        Some((state, _, start)) => start == entry.start && state != "Z",
        // The leader is gone: the id is still the group's while it has members.
        None => group_has_members(entry.pgid),
    }
}

#[cfg(not(target_os = "linux"))]
fn is_ours(_entry: &Entry) -> bool {
    false
}

#[cfg(target_os = "linux")]
fn group_has_members(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        matches!(stat(pid), Some((state, pgrp, _)) if pgrp == pgid && state != "Z")
    })
}

#[cfg(unix)]
fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: killpg only sends a signal, to a group checked above to be a command's.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

#[cfg(not(unix))]
fn kill_group(_pgid: u32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Whether the child ended within a few seconds (reaped here, as its parent).
    fn ends(child: &mut std::process::Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ledger_path() -> PathBuf {
        std::env::temp_dir().join(format!("mcp-ledger-{}.jsonl", uuid::Uuid::new_v4()))
    }

    #[test]
    fn groups_left_by_a_crash_are_killed_at_the_next_start() {
        let path = ledger_path();
        let mut child = sleeper();
        let ledger = ProcessLedger::open(path.clone());
        // The hub dies without the command ending: its record stays.
        std::mem::forget(ledger.record(child.id()));
        drop(ledger);
        assert!(
            child.try_wait().unwrap().is_none(),
            "still running after the crash"
        );
        let _next = ProcessLedger::open(path.clone());
        assert!(ends(&mut child), "the leftover group was killed");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn finished_commands_leave_nothing_and_strangers_are_spared() {
        let path = ledger_path();
        let ledger = ProcessLedger::open(path.clone());
        let mut child = sleeper();
        drop(ledger.record(child.id()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // A record whose start time does not match names another process that got the id.
        let stranger = Entry {
            pgid: child.id(),
            start: start_time(child.id()).unwrap() + 1,
            boot: boot_id().unwrap(),
        };
        std::fs::write(&path, serde_json::to_string(&stranger).unwrap() + "\n").unwrap();
        let _next = ProcessLedger::open(path.clone());
        assert!(child.try_wait().unwrap().is_none(), "not ours: left alone");
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
