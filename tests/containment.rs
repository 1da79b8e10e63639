//! What would let governed agents out without touching the programs: a pin directory another
//! user made or may write (its owner can unpin the links), and a cgroup below one delegated to
//! a user (who can make a sibling cgroup there and move into it). The daemon refuses both.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::Command,
};

use gateway_tests::{Cgroup, EchoServer, Gateway, bin, tcp_target, wait_for};
use nix::sys::signal::Signal;

const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Owner uid and permission bits of `path`.
fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    assert!(m.is_dir(), "{}", path.display());
    (m.uid(), m.mode() & 0o7777)
}

/// Starts the daemon expecting a refusal; what it logged this time.
fn refused(gw: &mut Gateway) -> String {
    let before = gw.log().len();
    let status = gw
        .try_spawn()
        .expect_err("gatewayd started where it must refuse to");
    assert!(!status.success());
    gw.log()[before..].to_string()
}

/// Removes a directory made outside the fixture's pin directory, even when the test fails.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pin_dir_another_user_could_control_is_refused() {
    let mut gw = Gateway::prepare("squat", "", "");
    let pins = gw.pin_dir.clone();
    std::fs::create_dir(&pins).unwrap();
    let root_only = pins.display().to_string();

    // Made first by an unprivileged user, as a world-writable /sys/fs/bpf allows.
    chmod(&pins, 0o700);
    chown(&pins, Some(NOBODY), Some(NOBODY)).unwrap();
    let log = refused(&mut gw);
    assert!(
        log.contains(&format!(
            "{root_only} (directory, owner uid 65534, mode 0700)"
        )),
        "{log}"
    );

    // Root's, but anyone may write it.
    chown(&pins, Some(0), Some(0)).unwrap();
    chmod(&pins, 0o777);
    let log = refused(&mut gw);
    assert!(
        log.contains(&format!("{root_only} (directory, owner uid 0, mode 0777)")),
        "{log}"
    );

    // A directory between the mount point and the pin directory counts as much.
    let outer = RemoveDir(PathBuf::from(format!("{root_only}-outer")));
    std::fs::create_dir(&outer.0).unwrap();
    chown(&outer.0, Some(NOBODY), None).unwrap();
    gw.pin_dir = outer.0.join("pins");
    let log = refused(&mut gw);
    assert!(
        log.contains(&format!(
            "{} (directory, owner uid 65534",
            outer.0.display()
        )),
        "{log}"
    );
    assert!(!gw.pin_dir.exists(), "nothing is made below a refused one");
    gw.pin_dir = pins.clone();
    drop(outer);

    // Root's alone, as a previous daemon leaves it: adopted.
    chmod(&pins, 0o700);
    gw.spawn();
    gw.stop();

    // Made by the daemon: the whole tree is root's alone.
    let uninstall = Command::new(bin("gatewayd"))
        .args(gw.args())
        .arg("uninstall")
        .status()
        .unwrap();
    assert!(uninstall.success() && !pins.exists());
    gw.spawn();
    for dir in [pins.clone(), pins.join("maps"), pins.join("links")] {
        assert_eq!(owner(&dir), (0, 0o700), "{}", dir.display());
    }
}

/// Hands a cgroup to `uid` the way systemd's `Delegate=` does.
fn delegate(cgroup: &Cgroup, uid: u32) {
    for file in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        chown(cgroup.dir().join(file), Some(uid), Some(uid)).unwrap();
    }
}

#[test]
fn a_cgroup_below_a_delegated_one_is_governed_only_with_it() {
    let server = EchoServer::start("127.10.0.5");
    let addr = server.addr.to_string();
    let mut gw = Gateway::start("delegated", &tcp_target("echo", &addr));
    let user = Cgroup::create(&format!("{}-user", gw.name));
    delegate(&user, NOBODY);
    let agent = user.child("agent");
    let policies = gw.policy_dir();
    let policy = |file: &str, name: &str, cgroup: &Cgroup| {
        let text = format!("name = \"{name}\"\ncgroup = \"{}\"\n", cgroup.rel());
        std::fs::write(policies.join(file), text).unwrap();
    };
    let says_why = |text: &str| {
        text.contains(agent.rel())
            && text.contains(&format!("below {} (owner uid 65534", user.dir().display()))
            && text.contains("which uid 65534 may write")
    };

    // Reloaded: the set is rejected, the last good one stays, status says why.
    policy("agent.toml", "agent", &agent);
    gw.signal(Signal::SIGHUP);
    wait_for("the reload error", || {
        !gw.status()["last_reload_error"].is_null()
    });
    let status = gw.status();
    let error = status["last_reload_error"].as_str().unwrap();
    assert!(says_why(error), "{error}");
    assert_eq!(status["policies"].as_array().unwrap().len(), 1);
    assert_eq!(
        agent.probe(&["tcp", &addr, "--send", "a"])["reply"],
        "echo:a"
    );

    // Started with it: the daemon refuses to run.
    gw.stop();
    let log = refused(&mut gw);
    assert!(says_why(&log), "{log}");

    // Governing the delegated cgroup itself covers whatever its user makes in it.
    policy("user.toml", "user", &user);
    gw.spawn();
    let status = gw.status();
    assert!(status["last_reload_error"].is_null());
    assert_eq!(status["policies"].as_array().unwrap().len(), 3);
    assert!(
        gw.log().contains("governed cgroup is delegated"),
        "the delegation of a governed cgroup is noted"
    );
    assert_eq!(agent.probe(&["tcp", &addr])["reply"], "", "governed");
    let sibling = user.child("sibling");
    assert_eq!(sibling.probe(&["tcp", &addr])["reply"], "", "governed");
    assert_eq!(server.accepted(), 1);
}
