//! What ships besides the code: the systemd unit, the example policies, the built-in
//! configuration, and the README's promise that CI runs its test command.

use std::{path::Path, process::Command};

use gateway_tests::bin;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("systemd/gatewayd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/gatewayd\n"));
    // verify checks that ExecStart exists: point it at the binary this build made.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatewayd.service");
    let gatewayd = bin("gatewayd");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/gatewayd", gatewayd.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("gatewayd.service"),
        "the unit draws warnings: {stderr}"
    );
}

#[test]
fn shipped_policies_pass_the_offline_check() {
    let out = Command::new(bin("gatewayctl"))
        .args(["policy", "check"])
        .arg(repo().join("policies"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "policy \"example\" governs /agents/example (2 targets)",
        "policy \"billing-bot\" governs /agents/billing-bot (1 targets)",
    ] {
        assert!(stdout.contains(want), "{want} missing from:\n{stdout}");
    }
}

#[test]
fn builtin_configuration_needs_no_file() {
    let out = Command::new(bin("gatewayd"))
        .args(["--policies", "policies", "config"])
        .env_remove("GATEWAYD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "listen_port: 915",
        "/sys/fs/bpf/gatewayd",
        "/var/lib/gatewayd/audit",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let bad = Command::new(bin("gatewayd"))
        .args(["--listen-port", "8080", "config"])
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "an unprivileged listener port must be refused"
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let last = ci
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .trim();
    assert_eq!(last, "cargo xtask test");
    assert!(
        readme.contains(&format!("\n{last}\n")),
        "README must give `{last}`"
    );
}
