//! Loopback servers and clients for the interception-layer benchmarks (`bench/run.sh`).
//!
//! std only. Every client prints one `name key=value ...` line per result on stdout, which
//! run.sh prefixes with the mode (`direct` or `governed`) and tabulates. A client that meets
//! an error (a refused or reset connection, a short read) exits non-zero, so a run that did not
//! really go through the gateway, or did not complete, never reports numbers.
//!
//! ```text
//! netbench serve [--echo ADDR]... [--bulk ADDR]... [--udp ADDR]... [--max-secs N]
//! netbench connect-rtt ADDR N [WARMUP]          connect, write 1 byte, read 1 byte, close
//! netbench rr ADDR N SIZE [WARMUP]              request/response on one kept-open connection
//! netbench bulk ADDR up|down BYTES [REPS]       one connection per rep, BYTES one way
//! netbench syscalls N TCP4 TCP6 UDP4 UDP6       getpeername, bind and sendto in a loop
//! ```
//!
//! The bulk server speaks a 9-byte header: `U` or `D`, then the length as u64 little-endian.
//! After `U` it reads that many bytes and answers with the count (8 bytes), so the client's
//! clock stops only once every byte has arrived at the far end; after `D` it writes that many
//! bytes.

use std::{
    env,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket},
    process::exit,
    thread,
    time::{Duration, Instant},
};

/// Size of the client's and the servers' buffers for bulk transfers.
const BULK_BUF: usize = 256 * 1024;
/// Accepting threads per TCP listener: enough that one kept-open connection never holds up
/// the next accept, with no thread spawned per connection (which would add to every sample).
const ACCEPTORS: usize = 6;

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        usage();
    };
    let result = match cmd.as_str() {
        "serve" => serve(rest),
        "connect-rtt" => connect_rtt(rest),
        "rr" => request_response(rest),
        "bulk" => bulk(rest),
        "syscalls" => syscalls(rest),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("netbench {cmd}: {e}");
        exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: netbench serve [--echo ADDR]... [--bulk ADDR]... [--udp ADDR]... [--max-secs N]\n\
         \x20      netbench connect-rtt ADDR N [WARMUP]\n\
         \x20      netbench rr ADDR N SIZE [WARMUP]\n\
         \x20      netbench bulk ADDR up|down BYTES [REPS]\n\
         \x20      netbench syscalls N TCP4 TCP6 UDP4 UDP6"
    );
    exit(2)
}

fn addr(s: &str) -> io::Result<SocketAddr> {
    s.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("no address for {s}")))
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: Option<T>) -> io::Result<T> {
    match args.get(i) {
        Some(s) => s
            .parse()
            .map_err(|_| io::Error::other(format!("bad argument {s:?}"))),
        None => default.ok_or_else(|| io::Error::other(format!("missing argument {}", i + 1))),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

fn serve(args: &[String]) -> io::Result<()> {
    let mut max_secs = 600u64;
    let mut threads = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| io::Error::other(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--echo" => threads.extend(listen(value, echo)?),
            "--bulk" => threads.extend(listen(value, bulk_server)?),
            "--udp" => {
                let sock = UdpSocket::bind(addr(value)?)?;
                threads.push(thread::spawn(move || udp_sink(sock)));
            }
            "--max-secs" => {
                max_secs = value
                    .parse()
                    .map_err(|_| io::Error::other("bad --max-secs"))?
            }
            _ => usage(),
        }
    }
    // Every socket is bound and listening: run.sh waits for this line.
    println!("ready");
    io::stdout().flush()?;
    // Bounded even if nobody stops it.
    thread::sleep(Duration::from_secs(max_secs));
    eprintln!("netbench serve: --max-secs {max_secs} reached, exiting");
    Ok(())
}

fn listen(
    at: &str,
    handler: fn(TcpStream) -> io::Result<()>,
) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let listener = TcpListener::bind(addr(at)?)?;
    let mut out = Vec::new();
    for _ in 0..ACCEPTORS {
        let l = listener.try_clone()?;
        out.push(thread::spawn(move || {
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = handler(s);
                    }
                    Err(e) => eprintln!("netbench serve: accept: {e}"),
                }
            }
        }));
    }
    Ok(out)
}

/// Writes back whatever arrives until the peer closes.
fn echo(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

fn bulk_server(mut s: TcpStream) -> io::Result<()> {
    let mut hdr = [0u8; 9];
    s.read_exact(&mut hdr)?;
    let len = u64::from_le_bytes(hdr[1..].try_into().expect("8 bytes"));
    let mut buf = vec![0u8; BULK_BUF];
    match hdr[0] {
        b'U' => {
            let mut got = 0u64;
            while got < len {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            s.write_all(&got.to_le_bytes())?;
        }
        b'D' => {
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n])?;
                left -= n as u64;
            }
            s.shutdown(Shutdown::Write)?;
        }
        op => return Err(io::Error::other(format!("bad bulk op {op}"))),
    }
    // Wait for the client to close, so the server is never the side left in TIME_WAIT.
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

fn udp_sink(sock: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        let _ = sock.recv_from(&mut buf);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

struct Stats {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let pct = |p: f64| {
        let i = ((ns.len() as f64 * p).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1e3
    };
    Stats {
        mean_us: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn connect_rtt(args: &[String]) -> io::Result<()> {
    let to = addr(&args.first().cloned().unwrap_or_default())?;
    let n: usize = arg(args, 1, None)?;
    let warmup: usize = arg(args, 2, Some(200))?;
    let name = if to.is_ipv4() { "connect_rtt_v4" } else { "connect_rtt_v6" };
    let mut ns = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..warmup + n {
        let t = Instant::now();
        let mut s = TcpStream::connect(to)?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        drop(s);
        let dt = t.elapsed().as_nanos() as u64;
        if b != *b"x" {
            return Err(io::Error::other("echo returned the wrong byte"));
        }
        if i >= warmup {
            ns.push(dt);
        }
    }
    let st = stats(ns);
    println!(
        "{name} n={n} mean_us={:.1} p50_us={:.1} p99_us={:.1} wall_s={:.2}",
        st.mean_us,
        st.p50_us,
        st.p99_us,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn request_response(args: &[String]) -> io::Result<()> {
    let to = addr(&args.first().cloned().unwrap_or_default())?;
    let n: usize = arg(args, 1, None)?;
    let size: usize = arg(args, 2, Some(64))?;
    let warmup: usize = arg(args, 3, Some(1000))?;
    let mut s = TcpStream::connect(to)?;
    s.set_nodelay(true)?;
    let req: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut resp = vec![0u8; size];
    let mut ns = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..warmup + n {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        let dt = t.elapsed().as_nanos() as u64;
        if i >= warmup {
            ns.push(dt);
        }
    }
    if resp != req {
        return Err(io::Error::other("echo returned other bytes"));
    }
    let st = stats(ns);
    // run.sh tags the variant it runs pinned to one CPU.
    let tag = env::var("NETBENCH_TAG").unwrap_or_default();
    println!(
        "rr_{size}b{tag} n={n} mean_us={:.1} p50_us={:.1} p99_us={:.1} wall_s={:.2}",
        st.mean_us,
        st.p50_us,
        st.p99_us,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bulk(args: &[String]) -> io::Result<()> {
    let to = addr(&args.first().cloned().unwrap_or_default())?;
    let dir: String = arg(args, 1, None)?;
    let bytes: u64 = arg(args, 2, None)?;
    let reps: usize = arg(args, 3, Some(3))?;
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        rates.push(bulk_once(to, &dir, bytes)?);
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let reps_list: Vec<String> = rates.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "bulk_{dir} bytes={bytes} reps={reps} median_gbps={:.3} min_gbps={:.3} max_gbps={:.3} all={}",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
        reps_list.join(",")
    );
    Ok(())
}

/// One transfer; returns GB/s (10^9 bytes per second), timed from connect to the last byte.
fn bulk_once(to: SocketAddr, dir: &str, bytes: u64) -> io::Result<f64> {
    let mut buf = vec![0x5au8; BULK_BUF];
    let t = Instant::now();
    let mut s = TcpStream::connect(to)?;
    let mut hdr = [0u8; 9];
    hdr[1..].copy_from_slice(&bytes.to_le_bytes());
    match dir {
        "up" => {
            hdr[0] = b'U';
            s.write_all(&hdr)?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n])?;
                left -= n as u64;
            }
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)?;
            if u64::from_le_bytes(ack) != bytes {
                return Err(io::Error::other("sink counted a different length"));
            }
        }
        "down" => {
            hdr[0] = b'D';
            s.write_all(&hdr)?;
            let mut got = 0u64;
            while got < bytes {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::other(format!("source ended after {got} bytes")));
                }
                got += n as u64;
            }
        }
        _ => return Err(io::Error::other("direction is up or down")),
    }
    let secs = t.elapsed().as_secs_f64();
    drop(s);
    Ok(bytes as f64 / secs / 1e9)
}

/// Batches each syscall loop is cut into; the fastest batch is reported, which keeps a
/// preemption or a stray wake-up on this 2-core machine out of a number of a few hundred ns.
const SYSCALL_BATCHES: usize = 5;

/// The syscalls the other programs hook, each N times: what they cost the caller, and work
/// for every hook so that its per-call cost can be read.
fn syscalls(args: &[String]) -> io::Result<()> {
    let n: usize = arg(args, 0, None)?;
    let tcp4 = addr(&args.get(1).cloned().unwrap_or_default())?;
    let tcp6 = addr(&args.get(2).cloned().unwrap_or_default())?;
    let udp4 = addr(&args.get(3).cloned().unwrap_or_default())?;
    let udp6 = addr(&args.get(4).cloned().unwrap_or_default())?;
    let batch = n.div_ceil(SYSCALL_BATCHES);
    let timed = |op: &str, f: &mut dyn FnMut() -> io::Result<()>| -> io::Result<()> {
        let mut best = f64::MAX;
        for _ in 0..SYSCALL_BATCHES {
            let t = Instant::now();
            for _ in 0..batch {
                f()?;
            }
            best = best.min(t.elapsed().as_nanos() as f64 / batch as f64);
        }
        println!("syscall_{op} n={} ns_per_op={best:.0}", batch * SYSCALL_BATCHES);
        Ok(())
    };

    for (op, to) in [("getpeername4", tcp4), ("getpeername6", tcp6)] {
        let mut s = TcpStream::connect(to)?;
        // One echo first: the connection is then relayed for sure. (A governed connection
        // closed before gatewayd has accepted it can be audited as "no-origin" instead.)
        s.write_all(b"x")?;
        s.read_exact(&mut [0u8; 1])?;
        // A governed socket must still see the address it dialled, not the gateway's.
        let seen = s.peer_addr()?;
        if seen != to {
            return Err(io::Error::other(format!("{op}: peer is {seen}, dialled {to}")));
        }
        timed(op, &mut || s.peer_addr().map(|a| {
            std::hint::black_box(a);
        }))?;
    }

    for (op, local) in [("udp_socket_bind_close4", "127.0.0.1:0"), ("udp_socket_bind_close6", "[::1]:0")] {
        let local = addr(local)?;
        timed(op, &mut || UdpSocket::bind(local).map(drop))?;
    }

    let payload = [0u8; 64];
    for (op, local, to) in [("sendto4", "127.0.0.1:0", udp4), ("sendto6", "[::1]:0", udp6)] {
        let sock = UdpSocket::bind(addr(local)?)?;
        timed(op, &mut || sock.send_to(&payload, to).map(drop))?;
    }
    Ok(())
}
