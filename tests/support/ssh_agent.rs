//! The agent's side of the SSH tests: OpenSSH's clients as an unprivileged uid inside the
//! governed cgroup, trusting only the line `gatewayctl ssh known-hosts` prints, and the
//! helpers the SSH test binaries share (a gateway in front of a test sshd, approvals, events).

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Gateway, SshServer, bin};

/// The port every test sshd listens on (each on its own loopback address).
pub const PORT: u16 = 2222;

pub struct Agent {
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// A home for the agent's ssh (readable by the unprivileged uid) whose known_hosts holds
    /// only the line `gatewayctl ssh known-hosts` prints.
    pub fn new(config: &std::path::Path) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("gwtest-ssh-agent")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new(bin("gatewayctl"))
            .args(["ssh", "known-hosts", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(line.starts_with("@cert-authority * ssh-ed25519 "), "{line}");
        std::fs::write(dir.path().join("known_hosts"), &line).unwrap();
        Agent { dir }
    }

    /// `ssh` as nobody in the governed cgroup, strict host key checking, no keys of its own.
    pub fn ssh(&self, gw: &Gateway, args: &[&str], stdin: &[u8]) -> Output {
        self.run(gw, "ssh", "-p", args, stdin)
    }

    pub fn sftp(&self, gw: &Gateway, args: &[&str]) -> Output {
        self.run(gw, "sftp", "-P", args, b"")
    }

    pub fn scp(&self, gw: &Gateway, args: &[&str]) -> Output {
        self.run(gw, "scp", "-P", args, b"")
    }

    pub fn run(
        &self,
        gw: &Gateway,
        tool: &str,
        port_flag: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Output {
        let mut cmd = self.command(tool, port_flag, &["-oBatchMode=yes"]);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = gw.cgroup.command(cmd).spawn().expect("ssh");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The OpenSSH `tool` as nobody, trusting only the CA line, with `opts` first (ssh keeps
    /// the first value it reads of an option), up to the port.
    pub fn command(&self, tool: &str, port_flag: &str, opts: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["timeout", "60", tool])
            .args(self.options(opts))
            .args([port_flag, &PORT.to_string()])
            .env("HOME", self.dir.path());
        cmd
    }

    pub fn options(&self, opts: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = opts.iter().map(|o| (*o).to_owned()).collect();
        all.extend([
            "-F".into(),
            "/dev/null".into(),
            format!(
                "-oUserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ),
            "-oGlobalKnownHostsFile=/dev/null".into(),
            "-oStrictHostKeyChecking=yes".into(),
            "-oConnectTimeout=10".into(),
        ]);
        all
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `id -un` ran on the host as the target's user.
pub fn assert_logged_in_as(out: &Output, srv: &SshServer, gw: &Gateway) {
    assert_eq!(
        (out.status.code(), text(&out.stdout).trim()),
        (Some(0), srv.user.as_str()),
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
}

/// The channel was refused: exit status 1 and `why` on stderr.
pub fn assert_refused(out: &Output, why: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
}

pub fn ctl(gw: &Gateway, args: &[&str]) -> Output {
    Command::new(bin("gatewayctl"))
        .arg("--socket")
        .arg(gw.socket())
        .args(args)
        .output()
        .unwrap()
}

/// Waits for one pending approval and decides it.
pub fn decide(gw: &Gateway, verb: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(gw, &["--json", "approvals", "list"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(r) = list.as_array().and_then(|a| a.first()).cloned() {
            let id = r["id"].as_u64().unwrap().to_string();
            let mut args = verb.to_vec();
            args.insert(1, &id);
            let out = ctl(gw, &args);
            assert!(out.status.success(), "{}", text(&out.stderr));
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no approval request:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn events(gw: &Gateway, id: u64) -> Vec<Value> {
    let out = ctl(gw, &["--json", "sessions", "show", &id.to_string()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["events"].as_array().cloned().unwrap_or_default()
}

/// sshd on `ip`, a gatewayd whose policy body `policy` makes from it, and an agent trusting
/// the gateway's CA.
pub fn fixture(
    ip: &str,
    test: &str,
    policy: impl FnOnce(&SshServer) -> String,
) -> (SshServer, Gateway, Agent) {
    let srv = SshServer::start(ip, PORT);
    let config = srv.path("gatewayd.toml");
    let config_text = format!("ssh_host_ca = \"{}\"\n", srv.path("gw_host_ca").display());
    std::fs::write(&config, &config_text).unwrap();
    let gw = Gateway::start_with_config(test, &policy(&srv), &config_text);
    let agent = Agent::new(&config);
    (srv, gw, agent)
}
