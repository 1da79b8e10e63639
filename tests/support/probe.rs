//! agent-probe: the stand-in agent of the integration tests. Each subcommand does one thing
//! with real sockets and prints what the kernel answered as one JSON object, errors as errno
//! names (`ECONNREFUSED`, `EPERM`) so that tests assert on the kernel's word, not on prose.
//!
//! ```text
//! agent-probe tcp ADDR [--bind IP] [--port N] [--nonblocking] [--mapped] [--delay-ms N]
//!                  [--send TEXT]      (--port: that local port, with SO_REUSEADDR)
//! agent-probe udp ADDR
//! agent-probe raw | packet
//! agent-probe socket inet|inet6 stream|dgram|raw PROTOCOL
//! agent-probe listen PORT
//! agent-probe child ARGS...      run another probe as a child process
//! agent-probe burst ADDR N        N connections at once, each closed right after one byte
//! ```

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, UdpSocket},
    process::ExitCode,
    time::Duration,
};

use serde_json::{Value, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.first().map(String::as_str) {
        Some("tcp") => tcp(&args[1..]),
        Some("udp") => udp(&args[1..]),
        Some("raw") => json!({ "socket": result(Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::ICMPV4)
        )) }),
        Some("packet") => json!({ "socket": result(Socket::new(
            Domain::PACKET,
            Type::RAW,
            None
        )) }),
        Some("socket") => socket(&args[1..]),
        Some("listen") => listen(&args[1..]),
        Some("child") => child(&args[1..]),
        Some("burst") => burst(&args[1..]),
        _ => {
            eprintln!("usage: agent-probe tcp|udp|raw|packet|listen|child ...");
            return ExitCode::from(2);
        }
    };
    println!("{out}");
    ExitCode::SUCCESS
}

fn tcp(args: &[String]) -> Value {
    let mut dst: SocketAddr = args[0].parse().expect("ADDR");
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    if flag("--mapped") {
        let SocketAddr::V4(v4) = dst else {
            panic!("--mapped needs an IPv4 ADDR")
        };
        dst = SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port());
    }
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None).expect("socket");
    let mut out = json!({});
    let port: u16 = value("--port").map_or(0, |p| p.parse().expect("--port N"));
    if port != 0 {
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
    }
    if let Some(ip) = value("--bind") {
        let ip: IpAddr = ip.parse().expect("--bind IP");
        let ip = match (ip, dst) {
            (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => ip,
        };
        out["bind"] = result(socket.bind(&SockAddr::from(SocketAddr::new(ip, port))));
    }
    let connected = if flag("--nonblocking") {
        connect_nonblocking(&socket, dst)
    } else {
        socket.connect(&SockAddr::from(dst))
    };
    let failed = connected.is_err();
    out["connect"] = result(connected);
    if failed {
        return out;
    }
    out["local"] = json!(
        socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.to_string())
    );
    out["peer"] = json!(
        socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.to_string())
    );
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    if let Some(ms) = value("--delay-ms") {
        std::thread::sleep(Duration::from_millis(ms.parse().expect("--delay-ms N")));
    }
    if let Some(text) = value("--send") {
        out["write"] = result(stream.write_all(text.as_bytes()));
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut reply = Vec::new();
    out["read"] = result(stream.read_to_end(&mut reply).map(|_| ()));
    out["reply"] = json!(String::from_utf8_lossy(&reply));
    out
}

/// connect() on a non-blocking socket: EINPROGRESS, then wait for writability and read the
/// outcome from SO_ERROR, as event-loop clients do.
fn connect_nonblocking(socket: &Socket, dst: SocketAddr) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(dst)) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(socket),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if n <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    match socket.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn udp(args: &[String]) -> Value {
    let dst: SocketAddr = args[0].parse().expect("ADDR");
    let bind: SocketAddr = match dst {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(bind).expect("udp bind");
    let sendto = socket.send_to(b"probe", dst).map(|_| ());
    let connect = socket.connect(dst);
    let send = socket.send(b"probe").map(|_| ());
    json!({ "sendto": result(sendto), "connect": result(connect), "send": result(send) })
}

/// `socket inet|inet6 stream|dgram|raw PROTOCOL`: only creates the socket.
fn socket(args: &[String]) -> Value {
    let domain = match args[0].as_str() {
        "inet" => Domain::IPV4,
        "inet6" => Domain::IPV6,
        other => panic!("family {other}"),
    };
    let ty = match args[1].as_str() {
        "stream" => Type::STREAM,
        "dgram" => Type::DGRAM,
        "raw" => Type::RAW,
        other => panic!("type {other}"),
    };
    let protocol: i32 = args[2].parse().expect("PROTOCOL number");
    json!({ "socket": result(Socket::new(domain, ty, Some(Protocol::from(protocol)))) })
}

fn listen(args: &[String]) -> Value {
    let port: u16 = args[0].parse().expect("PORT");
    let bound = std::net::TcpListener::bind(("127.0.0.1", port)).map(|_| ());
    json!({ "bind": result(bound) })
}

fn child(args: &[String]) -> Value {
    let exe = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(exe)
        .args(args)
        .output()
        .expect("spawn child probe");
    serde_json::from_slice(&out.stdout).expect("child probe output")
}

/// Many short connections at once, closed without waiting for an answer: the pattern that
/// races the agent's close against the daemon's accept.
fn burst(args: &[String]) -> Value {
    let dst: SocketAddr = args[0].parse().expect("ADDR");
    let n: usize = args[1].parse().expect("N");
    let threads: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(dst)?;
                s.write_all(b"x")
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().expect("thread").is_ok())
        .filter(|ok| *ok)
        .count();
    json!({ "connected": ok })
}

/// `"ok"` or the errno name.
fn result<T>(r: io::Result<T>) -> Value {
    match r {
        Ok(_) => json!("ok"),
        Err(e) => match e.raw_os_error() {
            Some(code) => json!(format!("{:?}", nix::errno::Errno::from_raw(code))),
            None => json!(e.to_string()),
        },
    }
}
