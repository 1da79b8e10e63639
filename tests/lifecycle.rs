//! The daemon's life: killed, restarted, reloaded with good and bad policies, stopped and
//! uninstalled. Governed agents are never let through directly while it is down.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{Cgroup, EchoServer, Gateway, bin, probe, tcp_target, wait_for};
use gateway_user::audit::VerdictKind;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Program ids attached to a cgroup, as bpftool sees them.
fn attached(cgroup: &Path) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.trim_ascii().is_empty() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let mut ids: Vec<u64> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["id"].as_u64().expect("id"))
        .collect();
    ids.sort();
    ids
}

/// Link pins under the fixture's pin directory.
fn pinned_links(gw: &Gateway) -> usize {
    let links = gw.pin_dir.join("links");
    std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|cgroup| std::fs::read_dir(cgroup.path()).unwrap().count())
        .sum()
}

#[test]
fn kill9_fails_closed_and_a_restart_adopts_the_pins() {
    let server = EchoServer::start("127.10.0.5");
    let addr = server.addr.to_string();
    let mut gw = Gateway::start("kill9", &tcp_target("echo", &addr));
    assert_eq!(gw.agent(&["tcp", &addr, "--send", "a"])["reply"], "echo:a");
    let programs = attached(gw.cgroup.dir());
    assert_eq!(
        programs.len(),
        12,
        "connect, getpeername, sendmsg, bind x2, sock_create, sockops, setsockopt, egress"
    );

    gw.kill9();
    for flags in [&[][..], &["--nonblocking"], &["--mapped"]] {
        let out = gw.agent(&[&["tcp", addr.as_str()][..], flags].concat());
        assert_eq!(out["connect"], "ECONNREFUSED", "{flags:?}: {out}");
    }
    assert_eq!(server.accepted(), 1, "no governed connection may go direct");
    assert_eq!(probe(&["tcp", &addr, "--send", "b"])["reply"], "echo:b");
    assert_eq!(
        attached(gw.cgroup.dir()),
        programs,
        "links stay while the daemon is dead"
    );
    assert_eq!(pinned_links(&gw), programs.len());

    gw.spawn();
    assert_eq!(gw.agent(&["tcp", &addr, "--send", "c"])["reply"], "echo:c");
    // The restart reuses the pinned maps and hands over to its own programs, attached before
    // the old links are unpinned: one set, never none and never two.
    assert_eq!(attached(gw.cgroup.dir()).len(), programs.len());
    assert_eq!(pinned_links(&gw), programs.len());
    let sessions = gw.ended_sessions(2);
    assert_eq!(
        sessions.len(),
        2,
        "the store kept the session from before the kill"
    );
    assert!(sessions.iter().all(|s| s.verdict == VerdictKind::Allow));
}

#[test]
fn reload_applies_good_policies_keeps_live_sessions_and_rejects_bad_ones() {
    let first = EchoServer::start("127.10.0.5");
    let second = EchoServer::start("127.10.0.6");
    let (a, b) = (first.addr.to_string(), second.addr.to_string());
    let gw = Gateway::start("reload", &tcp_target("first", &a));
    // Governed the way a systemd unit is: a nested cgroup path.
    let other_root = Cgroup::create(&format!("{}-other", gw.name));
    let other = other_root.child("system.slice/agent.service");

    // A session that is open while the policy changes under it.
    let live = gw
        .cgroup
        .command({
            let mut c = Command::new(bin("agent-probe"));
            c.args(["tcp", &a, "--delay-ms", "1500", "--send", "live"]);
            c
        })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the live session", || gw.status()["active_sessions"] == 1);

    // Good reload: a second target, and a second policy that governs another cgroup.
    gw.write_policy(&(tcp_target("first", &a) + &tcp_target("second", &b)));
    let second_policy = format!(
        "name = \"{}-other\"\ncgroup = \"{}\"\n{}",
        gw.name,
        other.rel(),
        tcp_target("first", &a)
    );
    std::fs::write(gw.policy_dir().join("other.toml"), second_policy).unwrap();
    gw.signal(Signal::SIGHUP);
    wait_for("the reload", || {
        gw.status()["policies"].as_array().unwrap().len() == 2
    });
    assert_eq!(gw.agent(&["tcp", &b, "--send", "2"])["reply"], "echo:2");
    assert_eq!(other.probe(&["tcp", &a, "--send", "o"])["reply"], "echo:o");
    assert_eq!(
        other.probe(&["tcp", &b])["reply"],
        "",
        "the new policy governs it"
    );
    let out = live.wait_with_output().unwrap();
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        live["reply"], "echo:live",
        "the reload dropped a live session: {live}"
    );

    // Bad reload: the file is named with its line and field; the last good set stays.
    let bad = gw.policy_dir().join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\ncgroup = \"/x\"\ncolour = \"red\"\n").unwrap();
    gw.signal(Signal::SIGHUP);
    wait_for("the reload error", || {
        !gw.status()["last_reload_error"].is_null()
    });
    let error = gw.status()["last_reload_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("bad.toml") && error.contains("line 3") && error.contains("colour"),
        "{error}"
    );
    assert_eq!(gw.status()["policies"].as_array().unwrap().len(), 2);
    assert_eq!(gw.agent(&["tcp", &b, "--send", "3"])["reply"], "echo:3");
    assert_eq!(other.probe(&["tcp", &b])["reply"], "");

    // The operator's offline check says the same before any daemon sees the file.
    let check = Command::new(bin("gatewayctl"))
        .args(["policy", "check"])
        .arg(gw.policy_dir())
        .output()
        .unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("colour"),
        "{stderr}"
    );

    // Fixed: the second policy goes away, its cgroup is no longer governed.
    std::fs::remove_file(bad).unwrap();
    std::fs::remove_file(gw.policy_dir().join("other.toml")).unwrap();
    gw.signal(Signal::SIGHUP);
    wait_for("the fixed reload", || {
        let s = gw.status();
        s["last_reload_error"].is_null() && s["policies"].as_array().unwrap().len() == 1
    });
    assert!(
        attached(other.dir()).is_empty(),
        "detached from the cgroup no policy names"
    );
    assert_eq!(other.probe(&["tcp", &b, "--send", "d"])["reply"], "echo:d");
}

#[test]
fn stop_keeps_agents_refused_and_uninstall_removes_everything() {
    let server = EchoServer::start("127.10.0.5");
    let addr = server.addr.to_string();
    let mut gw = Gateway::start("uninstall", &tcp_target("echo", &addr));
    assert_eq!(gw.agent(&["tcp", &addr, "--send", "a"])["reply"], "echo:a");
    gw.stop();
    assert_eq!(gw.agent(&["tcp", &addr])["connect"], "ECONNREFUSED");

    // An auditor reads the store directly once no daemon holds it.
    let list = Command::new(bin("gatewayctl"))
        .arg("--store")
        .arg(gw.store())
        .args(["sessions", "list", "--verdict", "allow"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        table.contains(&addr) && table.contains("targets.echo"),
        "{table}"
    );

    let out = Command::new(bin("gatewayd"))
        .args(gw.args())
        .arg("uninstall")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!gw.pin_dir.exists());
    assert!(attached(gw.cgroup.dir()).is_empty());
    assert_eq!(gw.agent(&["tcp", &addr, "--send", "b"])["reply"], "echo:b");

    // The fixture leaves nothing behind.
    let (cgroup, dir) = (gw.cgroup.dir().to_path_buf(), gw.dir.path().to_path_buf());
    drop(gw);
    assert!(!cgroup.exists() && !dir.exists());
}

#[test]
fn a_burst_of_short_connections_is_served_and_audited_with_its_origins() {
    let server = EchoServer::start("127.10.0.5");
    let addr = server.addr.to_string();
    let gw = Gateway::start("burst", &tcp_target("echo", &addr));
    // 10 agents with 60 connections each, all at once, each closed right after its byte.
    let agents: Vec<_> = (0..10)
        .map(|_| {
            let mut c = Command::new(bin("agent-probe"));
            c.args(["burst", &addr, "60"]).stdout(Stdio::piped());
            gw.cgroup.command(c).spawn().unwrap()
        })
        .collect();
    let connected: u64 = agents
        .into_iter()
        .map(|a| {
            let out = a.wait_with_output().unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v["connected"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(connected, 600);
    let deadline = Instant::now() + Duration::from_secs(60);
    let sessions = loop {
        let all = gw.sessions();
        if all.iter().filter(|s| s.end.is_some()).count() >= 600 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 600 sessions ended:\n{}",
            all.len(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let without_origin = sessions.iter().filter(|s| s.agent.is_none()).count();
    assert_eq!(
        without_origin, 0,
        "connections closed before accept lost their origin"
    );
    assert!(sessions.iter().all(|s| s.verdict == VerdictKind::Allow));
    // And the daemon goes on serving.
    assert_eq!(
        gw.agent(&["tcp", &addr, "--send", "after"])["reply"],
        "echo:after"
    );
}
