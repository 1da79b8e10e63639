//! Who an agent is: what the kernel attests at connect (pid, uid, gid, cgroup), the names
//! /proc adds for an auditor (user, executable, command line, cgroup path), and, when a
//! protocol carries one, the subject and groups of a verified token ([`token`]).

pub mod token;

use gateway_common::Origin;
use serde::{Deserialize, Serialize};

use crate::cgroup;

pub use token::{TokenError, TokenIdentity};

/// Who opened a connection: attested by the kernel (pid, uid, cgroup) and read from /proc at
/// accept time (names, executable, command line), since the process may be gone later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// cgroup2 path of the process (`/agents/bot/job-1`).
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
}

/// Who the agent proved to be with a token, as rules match it. Empty when it presented none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    pub subject: Option<String>,
    pub groups: Vec<String>,
}

/// [`capture`] on the blocking pool: /proc reads and the NSS user lookup (which may ask a
/// directory service) must not stall the async workers on every accept.
pub async fn capture_off_workers(origin: Origin) -> Option<Agent> {
    tokio::task::spawn_blocking(move || capture(&origin))
        .await
        .ok()
}

/// A command line longer than this is cut: the audit is not a place for megabytes of argv.
const MAX_CMDLINE: usize = 4096;

pub fn capture(origin: &Origin) -> Agent {
    let pid = origin.pid;
    Agent {
        pid,
        tid: origin.tid,
        uid: origin.uid,
        gid: origin.gid,
        user: user_name(origin.uid),
        exe: std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string()),
        cmdline: cmdline(pid),
        cgroup: cgroup::of_process(pid),
        cgroup_id: origin.cgroup_id,
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        return None;
    }
    let mut line = std::mem::take(&mut args).join(" ");
    if line.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_this_process() {
        let me = std::process::id();
        let origin = Origin {
            dst_addr: [0; 4],
            dst_port: 1,
            family: 2,
            pid: me,
            tid: me,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            _pad: 0,
            cgroup_id: 1,
            governed_cgroup_id: 1,
        };
        let agent = capture(&origin);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(agent.exe.as_deref(), exe.to_str());
        assert!(agent.cmdline.is_some());
        assert!(agent.cgroup.as_deref().is_some_and(|c| c.starts_with('/')));
        if agent.uid == 0 {
            assert_eq!(agent.user.as_deref(), Some("root"));
        }
    }
}
