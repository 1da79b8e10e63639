//! What SSH carries besides commands, through the gateway with Debian's OpenSSH on both ends:
//! local forwards (`ssh -W`) reach only a plain TCP target of the agent's own connection
//! policy; a remote forward (`ssh -R`) listens only where a rule allows, and its connections
//! come back to the agent; the agent's SSH agent (`ssh -A`), X11 (`ssh -Y`) and variables
//! (`SetEnv`) reach the host only when a rule allows them. Each is audited, allowed or not.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    EchoServer, Gateway,
    ssh_agent::{Agent, assert_logged_in_as, events, fixture, text},
};
use serde_json::Value;

const RULES: &str = r#"
[[targets.ssh.rules]]
name = "tools"
action = "allow"
kinds = ["exec"]
programs = ["id", "printenv", "ssh-add"]

[[targets.ssh.rules]]
name = "x11-probe"
action = "allow"
kinds = ["exec"]
programs = ["bash"]
raw_shell = true

[[targets.ssh.rules]]
name = "tunnels"
action = "allow"
kinds = ["direct_tcpip"]
targets = ["127.10.0.3*"]

[[targets.ssh.rules]]
name = "listen"
action = "allow"
kinds = ["tcpip_forward"]
targets = ["127.0.0.1:47311"]

[[targets.ssh.rules]]
name = "agent"
action = "allow"
kinds = ["agent_forward"]

[[targets.ssh.rules]]
name = "x11"
action = "allow"
kinds = ["x11"]

[[targets.ssh.rules]]
name = "env"
action = "allow"
kinds = ["env"]
targets = ["GW_OK=*"]
"#;

/// The SSH target `web` on `ip` with [`RULES`], and plain TCP targets the agent may dial: an
/// echo server and a stand-in X server.
fn start(ip: &str, test: &str) -> (gateway_tests::SshServer, Gateway, Agent, EchoServer) {
    let echo = EchoServer::start("127.10.0.31");
    let tcp = format!(
        "\n[[targets]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         \n[[targets]]\nname = \"xserver\"\naddress = \"127.10.0.31:6000\"\nprotocol = \"tcp\"\n",
        echo.addr
    );
    // The echo server is on loopback: on the host itself, so the target lists it.
    let ssh = format!(
        "host_forwards = [\"{}\", \"127.0.0.1:7000\"]\n{RULES}",
        echo.addr
    );
    let (srv, gw, agent) = fixture(ip, test, |srv| format!("{tcp}{}", srv.target("web", &ssh)));
    (srv, gw, agent, echo)
}

/// Every SSH event of the gateway's sessions to `web`.
fn ssh_events(gw: &Gateway) -> Vec<Value> {
    gw.sessions()
        .iter()
        .filter(|s| s.target.as_deref() == Some("web"))
        .flat_map(|s| events(gw, s.id))
        .filter(|e| e["detail"] == "ssh")
        .collect()
}

fn find<'a>(events: &'a [Value], request: &str, verdict: &str, command: &str) -> Option<&'a Value> {
    events.iter().find(|e| {
        e["request"] == request
            && e["verdict"] == verdict
            && e["command"].as_str().is_some_and(|c| c.contains(command))
    })
}

#[test]
fn local_forwards_reach_only_what_the_agent_could_dial() {
    let (_srv, gw, agent, echo) = start("127.10.0.30", "sshfwd");
    let host = format!("agent@{}", "127.10.0.30");
    // Allowed by the rule, and the echo server (on the host itself: loopback) is one of the
    // target's host_forwards: the host connects to it, and what the agent sends comes back.
    let to = echo.addr.to_string();
    let out = agent.ssh(&gw, &["-W", &to, &host], b"through the host");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "echo:through the host".to_owned()),
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
    // The rule allows these too, host_forwards do not: another port on the host's loopback,
    // and the host's own sshd. (Addresses off the host go through the agent's own connection
    // policy instead: loopback is all a test may dial, so that is a unit test of forward.rs.)
    for to in ["127.10.0.32:7000", "127.10.0.30:2222"] {
        let out = agent.ssh(&gw, &["-W", to, &host], b"");
        assert_eq!(out.status.code(), Some(255), "{to}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("administratively prohibited"),
            "{}",
            text(&out.stderr)
        );
    }
    // Listed on the host, but no rule allows it.
    let out = agent.ssh(&gw, &["-W", "127.0.0.1:7000", &host], b"");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));

    let evs = ssh_events(&gw);
    let done = evs
        .iter()
        .find(|e| e["request"] == "direct_tcpip" && e["bytes_in"].as_u64() == Some(16))
        .unwrap_or_else(|| panic!("the forward's closing event: {evs:#?}"));
    assert_eq!(done["rule"], "tunnels");
    assert_eq!(done["bytes_out"], 21, "{done}");
    for to in ["127.10.0.32:7000", "127.10.0.30:2222"] {
        let e = find(&evs, "direct_tcpip", "deny", to).expect("refused");
        assert_eq!(e["rule"], "forward-destination");
        assert!(
            e["error"].as_str().unwrap().contains("on the host itself"),
            "{e}"
        );
    }
    let default = find(&evs, "direct_tcpip", "deny", "127.0.0.1:7000").expect("refused");
    assert_eq!(default["rule"], "default");
    // The forwarded bytes are in the recording, like a command's.
    let recorded: String = gw
        .sessions()
        .iter()
        .flat_map(|s| events(&gw, s.id))
        .filter(|e| e["stream"] == "input")
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(recorded.contains("through the host"), "{recorded}");
}

#[test]
fn remote_forwards_listen_only_where_allowed() {
    let (_srv, gw, agent, echo) = start("127.10.0.33", "sshrfwd");
    let host = "agent@127.10.0.33";
    // Refused by the rules: ssh gives up on the forward it was told it needs.
    let out = agent.ssh(
        &gw,
        &[
            "-oExitOnForwardFailure=yes",
            "-R",
            &format!("127.0.0.1:47312:{}", echo.addr),
            host,
            "id -un",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("remote port forwarding failed"),
        "{}",
        text(&out.stderr)
    );
    // Allowed: the host listens, and a connection to it comes back through the agent's ssh,
    // which dials the echo server (through the gateway again: a tcp target of its policy).
    let mut cmd = agent.command(
        "ssh",
        "-p",
        &["-oBatchMode=yes", "-oExitOnForwardFailure=yes"],
    );
    cmd.args(["-N", "-R", &format!("127.0.0.1:47311:{}", echo.addr), host])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut ssh = gw.cgroup.command(cmd).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        if let Ok(c) = TcpStream::connect("127.0.0.1:47311") {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the host never listened:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.write_all(b"back again").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "echo:back again", "{}", gw.log());
    let _ = ssh.kill();
    let _ = ssh.wait();

    let evs = ssh_events(&gw);
    let denied = find(&evs, "tcpip_forward", "deny", "127.0.0.1:47312").expect("refused");
    assert_eq!(denied["rule"], "default");
    assert!(
        find(&evs, "tcpip_forward", "allow", "127.0.0.1:47311").is_some(),
        "{evs:#?}"
    );
    // The connection that came back: from the host 10 bytes, from the agent 15.
    let conn_event = evs
        .iter()
        .find(|e| e["request"] == "tcpip_forward" && e["bytes_out"].as_u64() == Some(10))
        .unwrap_or_else(|| panic!("the connection's event: {evs:#?}"));
    assert_eq!(conn_event["rule"], "listen");
    assert_eq!(conn_event["bytes_in"], 15);
}

#[test]
fn agent_x11_and_env_pass_only_when_allowed() {
    let (srv, gw, agent, _echo) = start("127.10.0.36", "sshagent");
    let host = "agent@127.10.0.36";
    // The agent's own ssh-agent, holding a key the host must be able to list (not use).
    let dir = agent.dir.path().join("agent");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let key = dir.join("id");
    let run_as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args);
        c
    };
    let ok = run_as_nobody(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "agent-key",
        "-f",
        key.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(ok.success());
    let sock = dir.join("sock");
    let mut ssh_agent = run_as_nobody(&["ssh-agent", "-D", "-a", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no ssh-agent socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run_as_nobody(&["ssh-add", key.to_str().unwrap()])
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let ssh = |opts: &[&str], command: &str, env: &[(&str, &str)]| {
        let mut cmd = agent.command("ssh", "-p", &[&["-oBatchMode=yes"], opts].concat());
        cmd.args([host, command])
            .env("SSH_AUTH_SOCK", &sock)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        gw.cgroup.command(cmd).output().unwrap()
    };
    // -A: the host lists the agent's key through the forwarded agent.
    let out = ssh(&["-A"], "ssh-add -l", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
    assert!(
        text(&out.stdout).contains("agent-key (ED25519)"),
        "{}",
        text(&out.stdout)
    );
    // Variables: the one a rule allows reaches the command, the other does not.
    let out = ssh(
        &["-oSetEnv=GW_OK=yes GW_NO=no"],
        "printenv GW_OK GW_NO",
        &[],
    );
    assert_eq!(text(&out.stdout), "yes\n", "{}", text(&out.stderr));
    // X11: the host's X client reaches the agent's display (a stand-in server here, a tcp
    // target the agent's ssh dials through the gateway), through the cookie OpenSSH swaps.
    let x = TcpListener::bind("127.10.0.31:6000").unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = x.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut setup = [0u8; 12];
        c.read_exact(&mut setup).unwrap();
        // Connection accepted, protocol 11.0, no additional data.
        c.write_all(&[1, 0, 11, 0, 0, 0, 0, 0]).unwrap();
        setup
    });
    let probe = srv.path("x11probe.sh");
    std::fs::write(
        &probe,
        "set -e\nn=${DISPLAY#*:}; n=${n%%.*}\ncookie=$(xauth list \"$DISPLAY\" | awk '{print $3}' | sed 's/../\\\\x&/g')\n\
         exec 3<>/dev/tcp/127.0.0.1/$((6000 + n))\n\
         printf \"l\\0\\x0b\\0\\0\\0\\x12\\0\\x10\\0\\0\\0MIT-MAGIC-COOKIE-1\\0\\0$cookie\" >&3\n\
         head -c 1 <&3 | od -An -tx1\n",
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ssh(
        &["-Y"],
        &format!("bash {}", probe.display()),
        &[("DISPLAY", "127.10.0.31:0")],
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "01",
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
    let setup = server.join().unwrap();
    assert_eq!(
        &setup[..2],
        b"l\0",
        "an X11 setup request reached the display"
    );
    assert_logged_in_as(&ssh(&[], "id -un", &[]), &srv, &gw);
    let _ = ssh_agent.kill();
    let _ = ssh_agent.wait();

    let evs = ssh_events(&gw);
    assert!(
        find(&evs, "agent_forward", "allow", "").is_some(),
        "{evs:#?}"
    );
    assert!(find(&evs, "env", "allow", "GW_OK").is_some(), "{evs:#?}");
    let no = find(&evs, "env", "deny", "GW_NO").expect("GW_NO refused");
    assert_eq!(no["rule"], "default");
    // Values stay out of the audit.
    assert!(
        evs.iter()
            .all(|e| !e["command"].as_str().unwrap_or_default().contains("=yes"))
    );
    assert!(find(&evs, "x11", "allow", "").is_some(), "{evs:#?}");
}
