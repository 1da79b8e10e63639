//! A cgroup made for one test, removed with everything in it when dropped.

use std::{
    fs::OpenOptions,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use gateway_user::cgroup::Hierarchy;
use serde_json::Value;

pub struct Cgroup {
    dir: PathBuf,
    rel: String,
}

impl Cgroup {
    /// Creates `NAME` at the root of the host's cgroup2 hierarchy, wherever it is mounted.
    pub fn create(name: &str) -> Cgroup {
        let root = Hierarchy::discover().expect("cgroup2 mount");
        let dir = root.root().join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Cgroup {
            dir,
            rel: format!("/{name}"),
        }
    }

    /// A child cgroup, removed with its parent.
    pub fn child(&self, name: &str) -> Cgroup {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).expect("child cgroup");
        Cgroup {
            rel: format!("{}/{name}", self.rel),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path the policy and the audit use (`/gwtest-1-x`).
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Makes `cmd` start inside this cgroup: the child writes itself into cgroup.procs between
    /// fork and exec, so nothing it does runs outside.
    pub fn command(&self, mut cmd: Command) -> Command {
        let procs = OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .expect("cgroup.procs");
        // SAFETY: the closure only calls write(2) on a descriptor opened before the fork,
        // which is async-signal-safe; `procs` outlives the spawn because the closure owns it.
        unsafe {
            cmd.pre_exec(move || {
                let fd = procs.as_raw_fd();
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs the probe agent in this cgroup.
    pub fn probe(&self, args: &[&str]) -> Value {
        let mut cmd = Command::new(crate::bin("agent-probe"));
        cmd.args(args);
        crate::output_json(&mut self.command(cmd))
    }

    /// Kills whatever still runs in this cgroup and its children, then removes them.
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&e.path());
                }
            }
        }
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        Self::remove(&self.dir);
    }
}
