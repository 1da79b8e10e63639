//! BPF LSM: a governed task may not use a socket made outside governed cgroups (one made
//! before it was moved in, or one passed to it over SCM_RIGHTS), nor attach to a process
//! outside (ptrace, pidfd_getfd), even as root. The same steps outside the cgroup, or with a
//! socket made inside it, work: the refusals are the gateway's.

use std::process::{Command, Stdio};

use gateway_tests::{Cgroup, EchoServer, Gateway, output_json, tcp_target};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/support/fd_agent.py");

fn fd_agent(args: &[&str]) -> Value {
    output_json(Command::new("python3").arg(SCRIPT).args(args))
}

#[test]
fn sockets_and_processes_from_outside_are_refused_to_governed_tasks() {
    let server = EchoServer::start("127.10.0.7");
    let (host, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
    let gw = Gateway::start("lsm", &tcp_target("echo", &server.addr.to_string()));
    let procs = gw.cgroup.dir().join("cgroup.procs");
    let procs = procs.to_str().unwrap();
    // Moving into this cgroup instead: nothing governs it.
    let free = Cgroup::create(&format!("gwtest-{}-lsm-free", std::process::id()));
    let free_procs = free.dir().join("cgroup.procs");

    let status = gw.status();
    if status["lsm"]["state"] != "enforced" {
        return degraded(&gw, &status, procs, &host, &port);
    }

    // The control: a socket made inside is redirected and relayed.
    let out = fd_agent(&["fresh", procs, &host, &port]);
    assert_eq!(
        (&out["connect"], &out["send"]),
        (&"ok".into(), &"ok".into()),
        "{out}"
    );
    let accepted = server.accepted();

    let out = fd_agent(&["premove", procs, &host, &port]);
    assert_eq!(
        out["connect"], "EPERM",
        "a socket made before the move: {out}"
    );
    assert_eq!(out["sendto"], "EPERM", "{out}");

    let out = fd_agent(&["passed", procs, &host, &port]);
    assert_eq!(out["send"], "EPERM", "a connection passed in: {out}");

    // A process of the same uid outside the cgroup.
    let mut outside = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = outside.id().to_string();
    let out = fd_agent(&["ptrace", procs, &pid]);
    assert_eq!(out["ptrace"], "EPERM", "{out}");
    assert_eq!(out["pidfd_getfd"], "EPERM", "{out}");
    // The passed-in connection reached the server from outside; nothing else did.
    assert_eq!(server.accepted(), accepted + 1);
    let sessions = gw.ended_sessions(1);
    assert_eq!(
        sessions.len(),
        1,
        "only the control went through the gateway: {sessions:#?}"
    );

    // The same steps in a cgroup nothing governs: the kernel allows them.
    let free_procs = free_procs.to_str().unwrap();
    let out = fd_agent(&["premove", free_procs, &host, &port]);
    assert_eq!(out["connect"], "ok", "{out}");
    let out = fd_agent(&["ptrace", free_procs, &pid]);
    assert_eq!(
        (&out["ptrace"], &out["pidfd_getfd"]),
        (&"ok".into(), &"ok".into()),
        "{out}"
    );
    let _ = outside.kill();
    let _ = outside.wait();
}

/// A kernel that refuses BPF LSM programs (these test machines' sandbox kernel does for any
/// process but PID 1, see the README): the daemon says so, names what it cannot guarantee, and
/// serves; the gap it names is real, so the status is the truth.
fn degraded(gw: &Gateway, status: &Value, procs: &str, host: &str, port: &str) {
    let detail = status["lsm"]["detail"].as_str().unwrap_or_default();
    eprintln!("BPF LSM unavailable here: {detail}");
    assert_eq!(status["lsm"]["state"], "unavailable", "{status}");
    assert!(detail.contains("without BPF LSM"), "{detail}");
    assert!(gw.log().contains("running with the cgroup hooks alone"));
    let out = fd_agent(&["premove", procs, host, port]);
    assert_eq!(out["connect"], "ok", "{out}");
    let out = fd_agent(&["fresh", procs, host, port]);
    assert_eq!(out["send"], "ok", "the cgroup hooks still work: {out}");
}
