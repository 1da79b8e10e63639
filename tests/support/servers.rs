//! Servers the agents dial, always on loopback addresses (127.0.0.0/8, ::1).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Answers each connection with `echo:` and everything the client sent before its FIN.
pub struct EchoServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start(ip: &str) -> EchoServer {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    if conn.read_to_end(&mut buf).is_ok() {
                        let _ = conn.write_all(b"echo:");
                        let _ = conn.write_all(&buf);
                    }
                });
            }
        });
        EchoServer {
            addr,
            accepted,
            stop,
        }
    }

    /// Connections this server accepted, directly or from the gateway.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Python's http.server serving one directory, the HTTP server every host has.
pub struct HttpServer {
    pub addr: SocketAddr,
    child: Child,
}

impl HttpServer {
    pub fn start(ip: &str, root: &Path) -> HttpServer {
        let port = free_port(ip);
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                ip,
                "--directory",
            ])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "http.server on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpServer { addr, child }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on at `ip` right now.
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// An IPv4 address of this host outside 127.0.0.0/8, to bind agent sockets to (never to dial).
pub fn non_loopback_v4() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .next()
}
