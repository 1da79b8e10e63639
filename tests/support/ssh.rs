//! A real OpenSSH server (Debian's sshd) on a loopback address with its own config, host key,
//! a user made for the test (removed when dropped), the daemon's key and a user CA in its
//! authorized keys, and a ForceCommand that logs `$SSH_ORIGINAL_COMMAND` before running it:
//! the server's own record of what it ran.

use crate::run_ok;
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// sshd's cap on channels per connection: above the gateway's own (32), so that the
/// gateway's is the one a test meets.
const MAX_SESSIONS: u32 = 64;

pub struct SshServer {
    pub addr: String,
    pub user: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

fn keygen(path: &Path, kind: &str) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", "gwtest", "-f"])
            .arg(path),
    );
}

impl SshServer {
    /// Starts sshd on `ip:port`, as root, for a user of its own.
    pub fn start(ip: &str, port: u16) -> SshServer {
        let dir = tempfile::Builder::new()
            .prefix("gwtest-sshd")
            .tempdir()
            .expect("temp dir");
        // sshd and the test user read their files here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = |name: &str| dir.path().join(name);
        // One user per server: the tests of a binary run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = format!("gwssh{}x{n}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg("-r").arg(&user).output();
        std::fs::create_dir(p("home")).unwrap();
        run_ok(
            Command::new("useradd")
                .args(["-M", "-s", "/bin/sh", "-d"])
                .arg(p("home"))
                .arg(&user),
        );
        run_ok(Command::new("chown").arg(&user).arg(p("home")));
        // useradd leaves the account locked, which sshd refuses even for keys; `*` unlocks it
        // with no password that could ever match.
        run_ok(Command::new("usermod").args(["-p", "*"]).arg(&user));
        keygen(&p("host_key"), "ed25519");
        keygen(&p("daemon_key"), "ed25519");
        keygen(&p("user_ca"), "ed25519");
        std::fs::copy(p("daemon_key.pub"), p("authorized_keys")).unwrap();
        std::fs::write(p("commands.log"), "").unwrap();
        std::fs::set_permissions(p("commands.log"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let logger = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> {log}\n\
             if [ -z \"$SSH_ORIGINAL_COMMAND\" ]; then exec /bin/sh -i; fi\n\
             exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
            log = p("commands.log").display()
        );
        std::fs::write(p("logcmd.sh"), logger).unwrap();
        std::fs::set_permissions(p("logcmd.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            "ListenAddress {ip}:{port}\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
             TrustedUserCAKeys {ca}.pub\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nForceCommand {force}\nSubsystem sftp /usr/lib/openssh/sftp-server\n\
             AllowTcpForwarding yes\nAllowAgentForwarding yes\nX11Forwarding yes\nAcceptEnv GW_*\nMaxSessions {max}\nLogLevel VERBOSE\n",
            max = MAX_SESSIONS,
            hk = p("host_key").display(),
            pid = p("sshd.pid").display(),
            ak = p("authorized_keys").display(),
            ca = p("user_ca").display(),
            force = p("logcmd.sh").display(),
        );
        std::fs::write(p("sshd_config"), config).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(p("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(p("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sshd");
        let addr = format!("{ip}:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The host as the daemon must know it.
        let host_pub = std::fs::read_to_string(p("host_key.pub")).unwrap();
        let mut kh = host_pub.split_whitespace();
        std::fs::write(
            p("known_hosts"),
            format!(
                "[{ip}]:{port} {} {}\n",
                kh.next().unwrap(),
                kh.next().unwrap()
            ),
        )
        .unwrap();
        SshServer {
            addr,
            user,
            dir,
            child: Some(child),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The commands sshd ran, in order, as its ForceCommand logged them.
    pub fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("commands.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// The `[targets.ssh]` table that logs in with the daemon's key and checks the host
    /// against its known_hosts; `rules` are appended.
    pub fn target(&self, name: &str, rules: &str) -> String {
        format!(
            "\n[[targets]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"ssh\"\n\
             [targets.ssh]\nuser = \"{user}\"\nkey_file = \"{key}\"\nknown_hosts = \"{kh}\"\n{rules}",
            addr = self.addr,
            user = self.user,
            key = self.path("daemon_key").display(),
            kh = self.path("known_hosts").display(),
        )
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Sessions sshd forked for the user go with the user.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.user])
            .output();
        let _ = Command::new("userdel").arg(&self.user).output();
        if std::thread::panicking() {
            eprintln!("--- sshd log ---\n{}", self.log());
        }
    }
}
