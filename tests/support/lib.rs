//! Fixtures of the integration tests: a governed cgroup, a real gatewayd on its own port, pin
//! directory, store and admin socket, loopback servers, and the probe agent. Every fixture
//! removes what it created when dropped, even when the test fails.
//!
//! The tests need root, the eBPF toolchain and the binaries built (`cargo xtask test` does
//! all of it).

mod cgroup;
mod postgres;
mod servers;
mod ssh;
pub mod ssh_agent;

use std::{
    net::TcpListener,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use gateway_user::{
    admin::{Request, client},
    audit::SessionRecord,
};
use serde_json::Value;

pub use cgroup::Cgroup;
pub use postgres::{
    APP_PASSWORD, APP_ROLE, PgServer, billing_target, es256_key, es256_keys, es256_token, test_ca,
};
pub use servers::{EchoServer, HttpServer, free_port, non_loopback_v4};
pub use ssh::SshServer;

/// A built binary of the workspace (`target/debug/NAME`, next to this test's own executable).
/// Polls `ok` every 20 ms for up to 10 s; fails the test naming `what` if it never holds.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, which `cargo xtask test` runs)",
        path.display()
    );
    path
}

/// Runs the probe agent with `args` outside any governed cgroup.
pub fn probe(args: &[&str]) -> Value {
    output_json(Command::new(bin("agent-probe")).args(args))
}

pub fn output_json(cmd: &mut Command) -> Value {
    let stdout = run_ok(cmd);
    serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {}", String::from_utf8_lossy(&stdout)))
}

/// Runs `cmd` to its end, fails the test with its stderr unless it succeeded; its stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A `[[targets]]` table of a policy for a plain TCP destination.
pub fn tcp_target(name: &str, addr: &str) -> String {
    format!("\n[[targets]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"tcp\"\n")
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(900);

/// A listener port below 1024 that nothing holds right now.
fn listen_port() -> u16 {
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 1024, "ran out of privileged ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
}

/// One gatewayd with its own governed cgroup, policy directory, port, pins, store and socket.
pub struct Gateway {
    pub name: String,
    pub cgroup: Cgroup,
    pub port: u16,
    pub pin_dir: PathBuf,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Gateway {
    /// Starts a daemon whose one policy governs a fresh cgroup; `body` is the rest of the
    /// policy file (resolvers, targets).
    pub fn start(test: &str, body: &str) -> Gateway {
        Self::start_with_config(test, body, "")
    }

    /// [`Self::start`] with a daemon config file holding `config` (TOML: approvers, webhook...).
    pub fn start_with_config(test: &str, body: &str, config: &str) -> Gateway {
        let mut gw = Self::prepare(test, body, config);
        gw.spawn();
        gw
    }

    /// Everything of [`Self::start_with_config`] but the daemon, for a test to prepare the
    /// host before it starts.
    pub fn prepare(test: &str, body: &str, config: &str) -> Gateway {
        let name = format!("gwtest-{}-{test}", std::process::id());
        let cgroup = Cgroup::create(&name);
        let dir = tempfile::Builder::new()
            .prefix(&name)
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("policies")).expect("policies dir");
        let gw = Gateway {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
            port: listen_port(),
            name,
            cgroup,
            dir,
            child: None,
        };
        gw.write_policy(body);
        if !config.is_empty() {
            std::fs::write(gw.config_path(), config).expect("write config");
        }
        gw
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("gatewayd.toml")
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("gatewayd.log")
    }

    /// The daemon's log so far (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// (Re)writes this test's policy file.
    pub fn write_policy(&self, body: &str) {
        let text = format!(
            "name = \"{}\"\ncgroup = \"{}\"\n{body}",
            self.name,
            self.cgroup.rel()
        );
        std::fs::write(self.policy_dir().join("test.toml"), text).expect("write policy");
    }

    /// The flags that point a gatewayd command at this fixture's files.
    pub fn args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        let mut args = vec![
            "--policies".into(),
            path(self.policy_dir()),
            "--listen-port".into(),
            self.port.to_string(),
            "--pin-dir".into(),
            path(self.pin_dir.clone()),
            "--store".into(),
            path(self.store()),
            "--admin-socket".into(),
            path(self.socket()),
        ];
        if self.config_path().exists() {
            args.extend(["--config".into(), path(self.config_path())]);
        }
        args
    }

    /// Starts the daemon and waits until its admin socket answers.
    pub fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!(
                "gatewayd exited with {status} during start:\n{}",
                self.log()
            );
        }
    }

    /// [`Self::spawn`], or how the daemon exited when it refused to start.
    pub fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(bin("gatewayd"))
            .args(self.args())
            .env("GATEWAYD_LOG", "info,gateway_user=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn gatewayd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(status);
            }
            if client::call(&self.socket(), &Request::Status).is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "gatewayd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal gatewayd");
    }

    /// SIGKILL: no cleanup of any kind runs in the daemon.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let status = self.child.take().expect("running").wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    pub fn status(&self) -> Value {
        client::call(&self.socket(), &Request::Status).expect("status")
    }

    pub fn sessions(&self) -> Vec<SessionRecord> {
        let v = client::call(
            &self.socket(),
            &Request::SessionsList {
                filter: Default::default(),
                limit: Some(10_000),
            },
        )
        .expect("sessions list");
        serde_json::from_value(v).expect("session records")
    }

    /// Waits until `n` sessions have ended and returns all sessions.
    pub fn ended_sessions(&self, n: usize) -> Vec<SessionRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.sessions();
            if all.iter().filter(|s| s.end.is_some()).count() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "want {n} ended sessions, have {all:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the probe agent inside the governed cgroup.
    pub fn agent(&self, args: &[&str]) -> Value {
        self.cgroup.probe(args)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        // What a host operator would run; then make sure nothing of ours is left in bpffs.
        let _ = Command::new(bin("gatewayd"))
            .args(self.args())
            .arg("uninstall")
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if std::thread::panicking() {
            eprintln!("--- gatewayd log of {} ---\n{}", self.name, self.log());
        }
    }
}
