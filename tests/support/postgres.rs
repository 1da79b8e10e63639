//! A real PostgreSQL server from Debian's packages, initialised and started by the test on a
//! loopback address, with SCRAM authentication; removed with its data when dropped.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

/// The superuser's and the application role's passwords. The application role's is what
/// the gateway holds and the agent must never see.
pub const SUPERUSER_PASSWORD: &str = "super-secret-pw";
pub const APP_ROLE: &str = "billing_app";
pub const APP_PASSWORD: &str = "app-Pa55-only-the-daemon-knows";

pub struct PgServer {
    pub addr: SocketAddr,
    /// With TLS on (and plain TCP refused), the CA that signed the server's certificate.
    pub cert: Option<PathBuf>,
    dir: tempfile::TempDir,
    /// Server settings beyond the common ones (TLS), kept for restarts.
    extra: Vec<String>,
    child: Option<Child>,
}

/// The newest server installed from Debian's packages (`/usr/lib/postgresql/N/bin`).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server (Debian package postgresql)")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL server").1
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

impl PgServer {
    pub fn start(ip: &str) -> PgServer {
        Self::start_with(ip, false)
    }

    /// A server that accepts TLS connections only, with a certificate for `ip`.
    pub fn start_tls(ip: &str) -> PgServer {
        Self::start_with(ip, true)
    }

    /// A server that records every statement it receives (`log_statement = 'all'`) and the
    /// parse tree of each statement it goes on to analyze (`debug_print_parse`), as one JSON
    /// object a line in [`Self::statement_log`], for tests that hold the gateway's record
    /// against the server's own.
    pub fn start_logging(ip: &str) -> PgServer {
        let mut server = Self::start_with(ip, false);
        let dir = server.dir.path().join("log");
        for setting in [
            "logging_collector=on".to_owned(),
            "log_destination=jsonlog".to_owned(),
            format!("log_directory={}", dir.display()),
            "log_filename=postgresql.log".to_owned(),
            "log_rotation_age=0".to_owned(),
            "log_rotation_size=0".to_owned(),
            "log_statement=all".to_owned(),
            "debug_print_parse=on".to_owned(),
            "debug_pretty_print=off".to_owned(),
        ] {
            server.extra.extend(["-c".to_owned(), setting]);
        }
        server.restart();
        server
    }

    /// The JSON log of a server from [`Self::start_logging`].
    pub fn statement_log(&self) -> PathBuf {
        self.dir.path().join("log/postgresql.json")
    }

    fn start_with(ip: &str, tls: bool) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("gwtest-pg")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let data = dir.path().join("data");
        let bin = bin_dir();
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port(ip);
        let mut extra: Vec<String> = Vec::new();
        let cert = tls.then(|| {
            let ca = test_ca(dir.path(), ip);
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.0/8 scram-sha-256\nhostnossl all all all reject\n",
            )
            .unwrap();
            extra.extend([
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", cert.display()),
                "-c".into(),
                format!("ssl_key_file={}", key.display()),
            ]);
            ca
        });
        let mut server = PgServer {
            addr: SocketAddr::new(ip.parse().unwrap(), port),
            cert,
            dir,
            extra,
            child: None,
        };
        server.run();
        server.superuser_sql(&format!(
            "CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}'"
        ));
        server.superuser_sql(&format!("CREATE DATABASE billing OWNER {APP_ROLE}"));
        server
    }

    /// Starts the server on its data directory and address and waits until it serves.
    fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = as_postgres(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                &format!("listen_addresses={}", self.addr.ip()),
                "-p",
                &self.addr.port().to_string(),
            ])
            .args(["-c", "fsync=off", "-c", "log_min_messages=warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres on {} did not start",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_ready();
    }

    /// Stops the server (fast shutdown: sessions are ended with an error) and starts it again
    /// on the same address and data, as an upstream restart or failover looks to clients.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bin_dir().join("pg_isready"))
                .args([
                    "-h",
                    &self.addr.ip().to_string(),
                    "-p",
                    &self.addr.port().to_string(),
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "postgres never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A libpq connection string to this server, directly.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host={} port={} user={user} password={password} dbname={db} sslmode={}",
            self.addr.ip(),
            self.addr.port(),
            if self.cert.is_some() {
                "require"
            } else {
                "disable"
            }
        )
    }

    /// Runs SQL as the superuser (ungoverned: the test process itself).
    pub fn superuser_sql(&self, sql: &str) -> String {
        self.psql(&self.url("postgres", SUPERUSER_PASSWORD, "postgres"), sql)
    }

    /// Runs SQL as the application role in its database, directly.
    pub fn app_sql(&self, sql: &str) -> String {
        self.psql(&self.url(APP_ROLE, APP_PASSWORD, "billing"), sql)
    }

    fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                url,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes the application password where a policy's `password_file` can point.
    pub fn password_file(&self) -> PathBuf {
        let p = self.dir.path().join("app.pw");
        std::fs::write(&p, format!("{APP_PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }
}

/// A test CA in `dir` (`ca.crt`) and a server certificate for `ip` it signed
/// (`server.crt`, `server.key`, the key readable by the server only). Returns the CA.
pub fn test_ca(dir: &Path, ip: &str) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "1", "-subj", "/CN=gateway test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=gateway test server"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&key)
        .status();
    dir.join("ca.crt")
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `billing-db` target the PostgreSQL tests give the gateway: this server's address, the
/// daemon's login with its password file, TLS verified against the test CA when the server has
/// one. Rules are appended by each test.
pub fn billing_target(pg: &PgServer) -> String {
    let tls = match &pg.cert {
        Some(ca) => format!("tls = \"verify-full\"\nca_file = \"{}\"", ca.display()),
        None => "tls = \"disable\"".into(),
    };
    format!(
        r#"
[[targets]]
name = "billing-db"
address = "{addr}"
protocol = "postgres"

[targets.postgres]
user = "{APP_ROLE}"
database = "billing"
password_file = "{pw}"
{tls}
"#,
        addr = pg.addr,
        pw = pg.password_file().display(),
    )
}

impl PgServer {
    /// A connection string as an agent has it: its own user, no password, the real address.
    pub fn agent_url(&self) -> String {
        format!(
            "host={} port={} user=agent dbname=whatever sslmode=prefer",
            self.addr.ip(),
            self.addr.port()
        )
    }
}

/// A fresh ES256 (P-256) private key, PKCS#8 PEM, made with openssl at `dir/name`.
pub fn es256_key(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    crate::run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&path),
    );
    std::fs::read(path).unwrap()
}

/// An ES256 key pair made with openssl: (private PKCS#8 PEM, public PEM path).
pub fn es256_keys(dir: &Path) -> (Vec<u8>, PathBuf) {
    let private = es256_key(dir, "jwt.key");
    crate::run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["pkey", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]),
    );
    (private, dir.join("jwt.pub"))
}

/// A JWT with `claims`, signed ES256 with `key` (PEM).
pub fn es256_token(key: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key).expect("an EC key"),
    )
    .expect("encodes")
}
