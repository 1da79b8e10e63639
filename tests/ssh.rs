//! SSH through the gateway, with Debian's OpenSSH on both ends: an unprivileged `ssh` inside
//! the governed cgroup trusting only the gateway's host CA line, a real sshd whose
//! ForceCommand logs what it ran. Exec allowed, denied and held, exit status carried, shell
//! syntax refused, forwarding refused, a PTY shell recorded and exported as asciicast, the
//! upstream's changed host key refused, and the agent never sees the daemon's key.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use gateway_tests::{
    es256_keys,
    ssh_agent::{PORT, assert_logged_in_as, assert_refused, ctl, decide, events, fixture, text},
};

const IP: &str = "127.10.0.20";

const RULES: &str = r#"
[[targets.ssh.rules]]
name = "tools"
action = "allow"
kinds = ["exec"]
programs = ["echo", "ls", "cat", "id", "rsync"]

[[targets.ssh.rules]]
name = "mask-mail"
action = "mask"
programs = ["echo"]
args = ["*@*"]
detectors = ["email"]

[[targets.ssh.rules]]
name = "no-rm"
action = "deny"
programs = ["rm"]

[[targets.ssh.rules]]
name = "hold-touch"
action = "hold"
programs = ["touch"]
timeout_secs = 60

[[targets.ssh.rules]]
name = "hold-mkdir"
action = "hold"
programs = ["mkdir"]
timeout_secs = 1

[[targets.ssh.rules]]
name = "shell"
action = "allow"
kinds = ["shell"]

[[targets.ssh.rules]]
name = "files"
action = "allow"
kinds = ["subsystem"]
targets = ["sftp"]
"#;

/// SFTP reads under the user's home, writes only under its `drop` directory.
fn file_rules(home: &std::path::Path) -> String {
    let h = home.display();
    format!(
        "\n[[targets.ssh.rules]]\nname = \"home-read\"\naction = \"allow\"\nkinds = [\"sftp_read\"]\n\
         paths = [\"{h}\", \"{h}/*\"]\n\
         \n[[targets.ssh.rules]]\nname = \"drop-write\"\naction = \"allow\"\nkinds = [\"sftp_write\"]\n\
         paths = [\"{h}/drop/*\"]\n"
    )
}

#[test]
fn ssh_commands_judged_recorded_and_proved_against_sshd() {
    let (srv, gw, agent) = fixture(IP, "ssh", |srv| {
        srv.target("web", &format!("{RULES}{}", file_rules(&srv.path("home"))))
    });
    let host = format!("agent@{IP}");
    let home = srv.path("home");

    // Allowed, output and exit status carried.
    let out = agent.ssh(&gw, &[&host, "echo hello 'from gw'"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello from gw\n"),
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
    let out = agent.ssh(&gw, &[&host, "ls /nonexistent-gw"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // A mask rule's detectors narrow what comes back.
    let out = agent.ssh(&gw, &[&host, "echo mail ana@example.com"], b"");
    assert_eq!(text(&out.stdout), "mail [redacted:email]\n");
    // stdin reaches the command.
    let out = agent.ssh(&gw, &[&host, "cat"], b"piped in\n");
    assert_eq!(text(&out.stdout), "piped in\n");

    // Denied by rule: stderr names the rule, exit status 1, nothing ran.
    let out = agent.ssh(&gw, &[&host, "rm -rf /tmp/gw-nothing"], b"");
    assert_refused(&out, "denies this command (rule no-rm)");
    // A pipeline with a part no rule allows: refused as shell syntax.
    let out = agent.ssh(&gw, &[&host, "echo hi | rm -f /tmp/gw-x"], b"");
    assert_refused(&out, "not plain words");
    let out = agent.ssh(&gw, &[&host, "echo $(id)"], b"");
    assert_eq!(out.status.code(), Some(1));
    // Forwarding refused although the host allows it.
    let out = agent.ssh(&gw, &["-W", "127.0.0.1:22", &host], b"");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("administratively prohibited"),
        "{}",
        text(&out.stderr)
    );

    // Held, then approved: it runs; held, then denied: it does not.
    let approved = home.join("approved");
    let run = {
        let line = format!("touch {}", approved.display());
        let agent = &agent;
        let gw = &gw;
        let host = host.clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || agent.ssh(gw, &[&host, &line], b""));
            let req = decide(gw, &["approve", "--note", "ok"]);
            assert_eq!(req["rule"], "hold-touch");
            assert!(req["command"].as_str().unwrap().starts_with("touch "));
            h.join().unwrap()
        })
    };
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(approved.exists(), "approved touch ran");
    let refused = home.join("refused");
    let run = {
        let line = format!("touch {}", refused.display());
        let (agent, gw, host) = (&agent, &gw, host.clone());
        std::thread::scope(|s| {
            let h = s.spawn(move || agent.ssh(gw, &[&host, &line], b""));
            decide(gw, &["deny", "--reason", "not today"]);
            h.join().unwrap()
        })
    };
    assert_refused(&run, "not today");
    assert!(!refused.exists());

    // Nobody decides within the rule's timeout: refused, and it did not run.
    let expired = home.join("expired");
    let line = format!("mkdir {}", expired.display());
    let out = agent.ssh(&gw, &[&host, &line], b"");
    assert_refused(&out, "no approver decided within 1s");
    assert!(!expired.exists());

    // A PTY shell, recorded, exported as asciicast that asciinema plays.
    let marker = format!("gw-marker-{}", std::process::id());
    let script = format!("echo {marker}\nexit\n");
    let out = agent.ssh(&gw, &["-tt", &host], script.as_bytes());
    assert!(text(&out.stdout).contains(&marker), "{}", text(&out.stderr));

    // sshd ran exactly the commands the audit allowed, nothing it refused.
    let sessions = gw.ended_sessions(12);
    let mut allowed = Vec::new();
    let mut shell_session = None;
    for s in sessions
        .iter()
        .filter(|s| s.target.as_deref() == Some("web"))
    {
        for e in events(&gw, s.id) {
            if e["detail"] == "ssh" && e["exit_status"].is_null() && e["verdict"] != "deny" {
                if e["request"] == "shell" {
                    shell_session = Some(s.id);
                } else if e["verdict"] == "allow"
                    || e["verdict"] == "mask"
                    || e["approval"]["outcome"] == "approved"
                {
                    allowed.push(e["command"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    let mut ran: Vec<String> = srv
        .commands()
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    ran.sort();
    allowed.sort();
    allowed.dedup();
    assert_eq!(ran, allowed, "sshd's log vs the audit's allowed commands");
    assert!(
        !ran.iter()
            .any(|c| c.contains("rm ") || c.contains("refused"))
    );

    let id = shell_session.expect("the shell session");
    let typed: Vec<String> = events(&gw, id)
        .iter()
        .filter(|e| e["stream"] == "typed")
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect();
    assert!(typed.contains(&format!("echo {marker}")), "{typed:?}");
    let cast = ctl(&gw, &["export", &id.to_string(), "--format", "asciicast"]);
    assert!(cast.status.success(), "{}", text(&cast.stderr));
    let file = srv.path("session.cast");
    std::fs::write(&file, &cast.stdout).unwrap();
    // asciinema reads keys from a terminal even when it only prints: give it one.
    let played = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("asciinema cat {}", file.display()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(played.status.success(), "{}", text(&played.stderr));
    assert!(
        text(&played.stdout).contains(&marker),
        "{}",
        text(&played.stdout)
    );

    // SFTP and scp (OpenSSH 9 runs scp over SFTP): each request judged by path.
    let local = agent.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    std::os::unix::fs::chown(&local, Some(65534), Some(65534)).unwrap();
    std::fs::write(local.join("up.txt"), "payload\n").unwrap();
    std::fs::create_dir(home.join("drop")).unwrap();
    std::fs::write(home.join("keep.txt"), "keep\n").unwrap();
    let u = srv.user.clone();
    for p in [home.join("drop"), home.join("keep.txt")] {
        assert!(
            Command::new("chown")
                .arg(&u)
                .arg(&p)
                .status()
                .unwrap()
                .success()
        );
    }
    let batch = local.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {l}/up.txt {h}/drop/up.txt\nget {h}/drop/up.txt {l}/down.txt\n-rm {h}/keep.txt\n-put {l}/up.txt {h}/notdrop.txt\nls {h}\n",
            l = local.display(),
            h = home.display()
        ),
    )
    .unwrap();
    let out = agent.sftp(&gw, &["-b", batch.to_str().unwrap(), &host]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), gw.log());
    assert_eq!(
        std::fs::read_to_string(home.join("drop/up.txt")).unwrap(),
        "payload\n"
    );
    assert_eq!(
        std::fs::read_to_string(local.join("down.txt")).unwrap(),
        "payload\n"
    );
    assert!(
        home.join("keep.txt").exists(),
        "the denied remove did not run"
    );
    assert!(
        !home.join("notdrop.txt").exists(),
        "the denied put did not run"
    );
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    // rsync runs `rsync --server ...` over ssh: an exec like any other.
    let remote_shell = format!(
        "ssh {} -p {PORT}",
        agent.options(&["-oBatchMode=yes"]).join(" ")
    );
    let mut rsync = Command::new("setpriv");
    rsync
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["timeout", "60", "rsync", "-e", &remote_shell])
        .arg(local.join("up.txt"))
        .arg(format!("{host}:{}/drop/rsync.txt", home.display()))
        .env("HOME", agent.dir.path());
    let out = gw.cgroup.command(rsync).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(home.join("drop/rsync.txt")).unwrap(),
        "payload\n"
    );
    let target = format!("{host}:{}/drop/scp.txt", home.display());
    let out = agent.scp(&gw, &[local.join("up.txt").to_str().unwrap(), &target]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(home.join("drop/scp.txt").exists());
    let target = format!("{host}:{}/scp.txt", home.display());
    let out = agent.scp(&gw, &[local.join("up.txt").to_str().unwrap(), &target]);
    assert!(!out.status.success());
    assert!(!home.join("scp.txt").exists());
    let sessions = gw.ended_sessions(16);
    let mut sftp_events = Vec::new();
    for s in &sessions[12..] {
        sftp_events.extend(
            events(&gw, s.id)
                .into_iter()
                .filter(|e| e["request"].as_str().is_some_and(|r| r.starts_with("sftp"))),
        );
    }
    let find = |verdict: &str, command: &str| {
        sftp_events
            .iter()
            .find(|e| {
                e["verdict"] == verdict
                    && e["command"].as_str().is_some_and(|c| c.contains(command))
            })
            .cloned()
    };
    assert!(find("allow", "/drop/up.txt").is_some(), "{sftp_events:#?}");
    let removed = find("deny", "remove ").expect("the refused remove is audited");
    assert_eq!(removed["request"], "sftp_write");
    let closed = find("allow", "close ").expect("a closed file with its byte count");
    assert!(
        closed["bytes_in"].as_u64().unwrap() + closed["bytes_out"].as_u64().unwrap() >= 8,
        "{closed}"
    );

    // The agent never saw the daemon's key or the host's own key: only the gateway's.
    let verbose = agent.ssh(&gw, &["-vvv", &host, "id"], b"");
    let seen = [verbose.stdout, verbose.stderr].concat();
    for secret in ["daemon_key.pub", "host_key.pub"] {
        let public = std::fs::read_to_string(srv.path(secret)).unwrap();
        let body = public.split_whitespace().nth(1).unwrap();
        assert!(!text(&seen).contains(body), "{secret} leaked to the agent");
    }
    assert!(
        text(&seen).contains("cert"),
        "the agent was shown a host certificate"
    );

    // The upstream's key changes: the session is refused, and the agent hears why.
    let other = srv.path("other_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let key = std::fs::read_to_string(srv.path("other_key.pub")).unwrap();
    let mut k = key.split_whitespace();
    std::fs::write(
        srv.path("known_hosts"),
        format!(
            "[{IP}]:{PORT} {} {}\n",
            k.next().unwrap(),
            k.next().unwrap()
        ),
    )
    .unwrap();
    let out = agent.ssh(&gw, &[&host, "id"], b"");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("CHANGED"),
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
    let last = gw.ended_sessions(18).into_iter().last().unwrap();
    let end = serde_json::to_value(&last.end).unwrap();
    assert_eq!(end["kind"], "upstream_unreachable", "{end}");
}

#[test]
fn kill_9_mid_session_leaves_a_verifiable_audit() {
    let (srv, mut gw, agent) = fixture("127.10.0.21", "sshkill", |srv| srv.target("web", RULES));
    // A command that runs until its input ends; its input stays open.
    let mut cmd = agent.command("ssh", "-p", &["-oBatchMode=yes"]);
    cmd.args(["agent@127.10.0.21", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = gw.cgroup.command(cmd).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"before the kill\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.commands().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the command never started:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Past sled's periodic flush: what was written is what a crash leaves.
    std::thread::sleep(Duration::from_millis(1500));
    gw.kill9();
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    gw.spawn();
    let verify = ctl(&gw, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
    let sessions = gw.sessions();
    let end = serde_json::to_value(&sessions[0].end).unwrap();
    assert_eq!(end["kind"], "interrupted", "{sessions:#?}");
    let evs = events(&gw, sessions[0].id);
    assert!(
        evs.iter()
            .any(|e| e["detail"] == "ssh" && e["command"] == "cat"),
        "the command's event was kept: {evs:#?}"
    );
}

#[test]
fn user_ca_certificate_upstream_and_pinned_host_key() {
    let (srv, gw, agent) = fixture("127.10.0.22", "sshca", |srv| {
        let fingerprint = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(srv.path("host_key.pub"))
            .output()
            .unwrap();
        let fingerprint = text(&fingerprint.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        format!(
            "\n[[targets]]\nname = \"ca\"\naddress = \"{}\"\nprotocol = \"ssh\"\n[targets.ssh]\n\
             user = \"{}\"\nuser_ca_file = \"{}\"\ncertificate_lifetime = \"2m\"\nhost_keys = [\"{fingerprint}\"]\n{RULES}",
            srv.addr,
            srv.user,
            srv.path("user_ca").display()
        )
    });
    let out = agent.ssh(&gw, &["agent@127.10.0.22", "id -un"], b"");
    assert_logged_in_as(&out, &srv, &gw);
    // sshd says how the daemon logged in: a certificate its user CA signed.
    assert!(srv.log().contains("ED25519-CERT"), "{}", srv.log());
}

fn token(key: &[u8], sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.test", "aud": "web", "sub": sub, "groups": ["ops"], "exp": now + 600,
    });
    gateway_tests::es256_token(key, &claims)
}

#[test]
fn agent_tokens_over_ssh_passwords_feed_the_rules() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = es256_keys(keys.path());
    let rules = format!(
        "\n[targets.ssh.agent_jwt]\nissuer = \"https://idp.test\"\naudience = \"web\"\n\
         key_file = \"{}\"\nalgorithms = [\"ES256\"]\n\n[[targets.ssh.rules]]\nname = \"ops-id\"\n\
         action = \"allow\"\nprograms = [\"id\"]\nsubjects = [\"ops-*\"]\n",
        public.display()
    );
    let (srv, gw, agent) = fixture("127.10.0.23", "sshjwt", |srv| srv.target("web", &rules));
    // OpenSSH's askpass hands the token over as the password (or the answer to the
    // keyboard-interactive prompt), with no terminal.
    let ask_by = |method: &str, subject: &str| {
        let file = agent.dir.path().join(format!("askpass-{subject}"));
        let token = if subject == "forged" {
            let forger = tempfile::tempdir().unwrap();
            let (other, _) = es256_keys(forger.path());
            token(&other, "ops-bot")
        } else {
            token(&private, subject)
        };
        std::fs::write(&file, format!("#!/bin/sh\necho '{token}'\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = agent.command(
            "ssh",
            "-p",
            &[
                &format!("-oPreferredAuthentications={method}"),
                "-oNumberOfPasswordPrompts=1",
            ],
        );
        cmd.args(["agent@127.10.0.23", "id -un"])
            .env("SSH_ASKPASS", &file)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .stdin(Stdio::null());
        gw.cgroup.command(cmd).output().unwrap()
    };
    let ask = |subject: &str| ask_by("password", subject);
    let out = ask("ops-bot");
    assert_logged_in_as(&out, &srv, &gw);
    // A verified subject the rule does not name: logged in, the command refused.
    let out = ask("intern");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // A token signed by anyone else: not let in at all.
    let out = ask("forged");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    // The same token as the answer to the gateway's keyboard-interactive prompt.
    let out = ask_by("keyboard-interactive", "ops-kbd");
    assert_logged_in_as(&out, &srv, &gw);
    let out = ask_by("keyboard-interactive", "forged");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let sessions = gw.ended_sessions(5);
    let subjects: Vec<Option<String>> = sessions
        .iter()
        .map(|s| s.token.as_ref().map(|t| t.subject.clone()))
        .collect();
    assert_eq!(
        subjects,
        [
            Some("ops-bot".into()),
            Some("intern".into()),
            None,
            Some("ops-kbd".into()),
            None
        ]
    );
}

#[test]
fn one_agent_cannot_hold_unbounded_channels() {
    let (srv, gw, agent) = fixture("127.10.0.24", "sshchan", |srv| srv.target("web", RULES));
    // A connection that does not speak SSH costs the host nothing: no login upstream (the
    // fixture's own readiness check is the one connection sshd has seen).
    let connections = || srv.log().matches("Connection from").count();
    let before = connections();
    let mut probe = Command::new("bash");
    probe.args([
        "-c",
        "exec 3<>/dev/tcp/127.10.0.24/2222 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3 >/dev/null",
    ]);
    let out = gw.cgroup.command(probe).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    gw.ended_sessions(1);
    assert_eq!(connections(), before, "{}", srv.log());
    // One connection (OpenSSH's multiplexing master), then session channels on it, each a
    // `cat` that keeps its channel open.
    let dir = agent.dir.path().join("mux");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let sock = dir.join("m").display().to_string();
    let master_opts = ["-oBatchMode=yes", "-oControlMaster=yes"];
    let mut master = agent.command("ssh", "-p", &master_opts);
    master
        .args(["-S", &sock, "-N", "agent@127.10.0.24"])
        .stdin(Stdio::null());
    let mut master = gw.cgroup.command(master).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(&sock).exists() {
        assert!(Instant::now() < deadline, "no mux master:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let open = |i: usize| {
        let mut c = agent.command("ssh", "-p", &["-oBatchMode=yes"]);
        c.args(["-S", &sock, "agent@127.10.0.24", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = gw.cgroup.command(c).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("line {i}\n").as_bytes()).unwrap();
        (child, stdin)
    };
    let mut held: Vec<_> = (0..32).map(open).collect();
    // All 32 running on the host (sshd runs one `cat` per channel) before the next one asks.
    let running = || {
        let out = Command::new("pgrep")
            .args(["-c", "-x", "-u", &srv.user, "cat"])
            .output()
            .unwrap();
        text(&out.stdout).trim().parse::<usize>().unwrap_or(0)
    };
    while running() < 32 {
        assert!(
            Instant::now() < deadline,
            "{} of 32 channels running:\n{}",
            running(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        gw.status()["active_sessions"],
        1,
        "every channel on the one connection"
    );
    // The gateway's bound: the next channel is refused, the session and its channels go on.
    let (extra, stdin) = open(32);
    drop(stdin);
    let out = extra.wait_with_output().unwrap();
    // (OpenSSH's mux client then falls back to a connection of its own, a new session.)
    assert!(
        text(&out.stderr).contains("Session open refused by peer"),
        "{}",
        text(&out.stderr)
    );
    for (i, (child, stdin)) in held.drain(..).enumerate() {
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("line {i}\n"),
            "{}",
            text(&out.stderr)
        );
    }
    let _ = master.kill();
    let _ = master.wait();
}

#[test]
fn held_sftp_writes_wait_for_an_approver() {
    let (srv, gw, agent) = fixture("127.10.0.39", "sshsftphold", |srv| {
        let h = srv.path("home");
        let hold = format!(
            "\n[[targets.ssh.rules]]\nname = \"hold-held\"\naction = \"hold\"\n\
             kinds = [\"sftp_write\"]\npaths = [\"{}/held/*\"]\ntimeout_secs = 60\n",
            h.display()
        );
        srv.target("web", &format!("{RULES}{}{hold}", file_rules(&h)))
    });
    let home = srv.path("home");
    let held = home.join("held");
    std::fs::create_dir(&held).unwrap();
    assert!(
        Command::new("chown")
            .arg(&srv.user)
            .arg(&held)
            .status()
            .unwrap()
            .success()
    );
    let local = agent.dir.path().join("files");
    std::fs::create_dir(&local).unwrap();
    std::os::unix::fs::chown(&local, Some(65534), Some(65534)).unwrap();
    std::fs::write(local.join("up.txt"), "payload\n").unwrap();
    let put = |name: &str| {
        let batch = local.join(format!("batch-{name}"));
        let line = format!("put {}/up.txt {}/{name}\n", local.display(), held.display());
        std::fs::write(&batch, line).unwrap();
        agent.sftp(&gw, &["-b", batch.to_str().unwrap(), "agent@127.10.0.39"])
    };
    // The write waits for an approver, who sees the path; approved, it runs.
    std::thread::scope(|s| {
        let h = s.spawn(|| put("yes.txt"));
        let req = decide(&gw, &["approve", "--note", "ok"]);
        assert_eq!(req["rule"], "hold-held");
        assert!(
            req["command"].as_str().unwrap().contains("held/yes.txt"),
            "{req}"
        );
        let out = h.join().unwrap();
        assert!(out.status.success(), "{}\n{}", text(&out.stderr), gw.log());
    });
    assert_eq!(
        std::fs::read_to_string(held.join("yes.txt")).unwrap(),
        "payload\n"
    );
    // Denied: SFTP's permission denied, nothing written, and the session went on to say so.
    std::thread::scope(|s| {
        let h = s.spawn(|| put("no.txt"));
        decide(&gw, &["deny", "--reason", "not today"]);
        let out = h.join().unwrap();
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out.stderr)
        );
    });
    assert!(!held.join("no.txt").exists());
    let holds: Vec<Value> = gw
        .ended_sessions(2)
        .iter()
        .flat_map(|s| events(&gw, s.id))
        .filter(|e| e["verdict"] == "hold")
        .collect();
    let outcomes: Vec<&Value> = holds.iter().map(|e| &e["approval"]["outcome"]).collect();
    assert_eq!(outcomes, ["approved", "denied"], "{holds:#?}");
}

#[test]
fn a_command_echoing_bulk_input_streams_both_ways() {
    let (_srv, gw, agent) = fixture("127.10.0.40", "sshbulk", |srv| srv.target("web", RULES));
    // `cat` sends back what it reads while the agent is still sending: a relay that stopped
    // reading the host while it waited to write to it would stall both ways.
    const MIB: usize = 16;
    let mut cmd = agent.command("ssh", "-p", &["-oBatchMode=yes"]);
    cmd.args(["agent@127.10.0.40", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = gw.cgroup.command(cmd).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..MIB {
            stdin.write_all(&chunk).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(
        (out.status.code(), out.stdout.len()),
        (Some(0), MIB << 20),
        "{}\n{}",
        text(&out.stderr),
        gw.log()
    );
}

#[test]
fn masking_sees_a_secret_the_host_writes_in_pieces() {
    let rules = format!(
        "{RULES}\n[[targets.ssh.rules]]\nname = \"mask-cat\"\naction = \"mask\"\n\
         programs = [\"cat\"]\ndetectors = [\"email\"]\n"
    );
    let (_srv, gw, agent) = fixture("127.10.0.41", "sshsplit", |srv| srv.target("web", &rules));
    // `cat` writes what it reads as it reads it: the address reaches the gateway in two
    // packets, a moment apart, and neither half is an address a detector would know.
    let mut cmd = agent.command("ssh", "-p", &["-oBatchMode=yes"]);
    cmd.args(["agent@127.10.0.41", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = gw.cgroup.command(cmd).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"to ana@exa").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"mple.com\nbye").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "to [redacted:email]\nbye",
        "{}",
        text(&out.stderr)
    );
}
