//! gatewayctl: the operator CLI. Talks to the running daemon over its admin socket, or reads
//! a store directly with --store (an auditor's copy; sled allows one process per store).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use gateway_user::{
    admin::{self, Request, client},
    approval,
    audit::{AuditStore, SessionFilter, SessionRecord, VerdictKind, now_ms},
    config::Config,
    policy::PolicySet,
};

#[derive(Parser)]
#[command(version, about = "Operate gatewayd: audit sessions, check policies")]
struct Cli {
    /// Admin socket of the running daemon.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Read this audit store directly instead of asking the daemon.
    #[arg(long, global = true, conflicts_with = "socket")]
    store: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Audited sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// What the daemon is enforcing.
    Status,
    /// Commands held for a human decision.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Approve a held command: it runs and the agent gets its result.
    Approve {
        id: u64,
        /// Kept in the audit with your name.
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny a held command: the agent gets an error carrying the reason.
    Deny {
        id: u64,
        #[arg(long)]
        reason: String,
    },
    /// The audit store's integrity.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Play a session back as it happened: each statement, its verdict and outcome, at the
    /// pace it ran.
    Replay {
        id: u64,
        /// Play this many times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print at once, without the pauses.
        #[arg(long, conflicts_with = "speed")]
        no_wait: bool,
    },
    /// SSH targets.
    Ssh {
        #[command(subcommand)]
        command: SshCommand,
    },
    /// Write a session for other tools: its record, then one event per line, as stored
    /// (chain hashes included); or its terminal recording as asciicast v2.
    Export {
        id: u64,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

#[derive(Subcommand)]
enum SshCommand {
    /// The line for /etc/ssh/ssh_known_hosts that lets OpenSSH clients trust the hosts the
    /// daemon answers for (its host CA, from the `.pub` file beside the key).
    KnownHosts {
        /// The daemon's config file, for `ssh_host_ca`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending requests, oldest first.
    List,
    /// Pending requests and decisions as they happen (one JSON line each with --json).
    Watch,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions, oldest first.
    List {
        /// The agent's cgroup or an ancestor of it.
        #[arg(long)]
        cgroup: Option<String>,
        /// Target name, or destination as dialled (IP:PORT).
        #[arg(long)]
        target: Option<String>,
        /// RFC 3339 time, or an age such as 15m or 2h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum)]
        verdict: Option<VerdictKind>,
        /// At most this many of the newest matching sessions.
        #[arg(long, default_value_t = admin::DEFAULT_LIMIT)]
        limit: usize,
    },
    /// One session in full.
    Show { id: u64 },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory offline, as the daemon would.
    Check { dir: PathBuf },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every session's hash chain; names the first record or event that does not
    /// match, and exits non-zero if any does.
    Verify,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// JSON lines.
    Jsonl,
    /// asciicast v2 of the session's terminal output (`asciinema play`).
    Asciicast,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    match &cli.command {
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => {
            let set = PolicySet::load_dir(dir).map_err(|e| e.to_string())?;
            for p in &set.policies {
                println!(
                    "ok  {}  policy {:?} governs {} ({} targets)",
                    p.file.display(),
                    p.name,
                    p.cgroup,
                    p.targets.len()
                );
            }
            Ok(())
        }
        Command::Approvals {
            command: ApprovalsCommand::List,
        } => {
            let v = ask(cli, Request::ApprovalsList)?;
            if cli.json {
                print_json(&v)?;
            } else {
                let pending: Vec<approval::Request> =
                    serde_json::from_value(v).map_err(|e| e.to_string())?;
                print_approvals(&pending);
            }
            Ok(())
        }
        Command::Approvals {
            command: ApprovalsCommand::Watch,
        } => {
            let socket = socket(cli)?;
            client::watch(&socket, |v| {
                if cli.json {
                    println!("{v}");
                } else {
                    match serde_json::from_value::<approval::Event>(v) {
                        Ok(e) => print_event(&e),
                        Err(e) => eprintln!("gatewayctl: unreadable event: {e}"),
                    }
                }
                use std::io::Write as _;
                std::io::stdout().flush().is_ok()
            })
            .map_err(|e| e.to_string())
        }
        Command::Approve { id, note } => {
            let v = ask(
                cli,
                Request::Approve {
                    id: *id,
                    note: note.clone(),
                },
            )?;
            decided(cli, "approved", &v)
        }
        Command::Deny { id, reason } => {
            let v = ask(
                cli,
                Request::Deny {
                    id: *id,
                    reason: reason.clone(),
                },
            )?;
            decided(cli, "denied", &v)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => audit_verify(cli),
        Command::Replay { id, speed, no_wait } => play(cli, *id, (!*no_wait).then_some(*speed)),
        Command::Export { id, format } => export(cli, *id, *format),
        Command::Ssh {
            command: SshCommand::KnownHosts { config },
        } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let public = gateway_user::protocol::ssh::ca::pub_path(&config.ssh_host_ca);
            let text = std::fs::read_to_string(&public).map_err(|e| {
                format!(
                    "{}: {e} (the daemon makes it on its first start)",
                    public.display()
                )
            })?;
            println!(
                "{}",
                gateway_user::protocol::ssh::ca::known_hosts_line(text.trim())?
            );
            Ok(())
        }
        Command::Status => {
            let v = ask(cli, Request::Status)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::Sessions {
            command: SessionsCommand::Show { id },
        } => {
            let v = ask(cli, Request::SessionsShow { id: *id })?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::Sessions {
            command:
                SessionsCommand::List {
                    cgroup,
                    target,
                    since,
                    until,
                    verdict,
                    limit,
                },
        } => {
            let filter = SessionFilter {
                cgroup: cgroup.clone(),
                target: target.clone(),
                since_ms: since.as_deref().map(parse_time).transpose()?,
                until_ms: until.as_deref().map(parse_time).transpose()?,
                verdict: *verdict,
            };
            let v = ask(
                cli,
                Request::SessionsList {
                    filter,
                    limit: Some(*limit),
                },
            )?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                let sessions: Vec<SessionRecord> =
                    serde_json::from_value(v).map_err(|e| e.to_string())?;
                print_table(&sessions);
            }
            Ok(())
        }
    }
}

/// Asks the daemon, or answers from a store opened directly.
fn ask(cli: &Cli, req: Request) -> Result<serde_json::Value, String> {
    if let Some(path) = &cli.store {
        let store = AuditStore::open(path)
            .map_err(|e| format!("{e} (is a daemon holding it? ask it with --socket)"))?;
        return admin::answer_from_store(&store, req).map_err(|e| e.to_string());
    }
    client::call(&socket(cli)?, &req).map_err(|e| e.to_string())
}

fn socket(cli: &Cli) -> Result<PathBuf, String> {
    if cli.store.is_some() {
        return Err("approvals need the running daemon: use --socket, not --store".into());
    }
    Ok(cli
        .socket
        .clone()
        .unwrap_or_else(|| Config::default().admin_socket))
}

fn print_json(v: &serde_json::Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn decided(cli: &Cli, what: &str, v: &serde_json::Value) -> Result<(), String> {
    if cli.json {
        return print_json(v);
    }
    println!(
        "{what} {}: {}",
        v["id"],
        v["command"].as_str().unwrap_or_default()
    );
    Ok(())
}

fn print_approvals(pending: &[approval::Request]) {
    println!(
        "{:>5}  {:>8}  {:<18}  {:<24}  {:>7}  {:>6}  {:<14}  COMMAND",
        "ID", "WAITING", "RULE", "CGROUP", "PID", "UID", "TARGET"
    );
    for r in pending {
        let agent = r.agent.as_ref();
        println!(
            "{:>5}  {:>7}s  {:<18}  {:<24}  {:>7}  {:>6}  {:<14}  {}",
            r.id,
            now_ms().saturating_sub(r.requested_at_ms) / 1000,
            r.rule,
            agent
                .and_then(|a| a.cgroup.clone())
                .unwrap_or_else(|| "-".into()),
            agent.map_or("-".into(), |a| a.pid.to_string()),
            agent.map_or("-".into(), |a| a.uid.to_string()),
            r.target,
            r.command,
        );
    }
}

fn print_event(e: &approval::Event) {
    match e {
        approval::Event::Pending { request: r } => println!(
            "pending  {}  rule {}  session {}  {} uid {}  {}: {}",
            r.id,
            r.rule,
            r.session_id,
            r.agent
                .as_ref()
                .and_then(|a| a.cgroup.as_deref())
                .unwrap_or("-"),
            r.agent.as_ref().map_or("-".into(), |a| a.uid.to_string()),
            r.target,
            r.command
        ),
        approval::Event::Decided {
            request: r,
            decision,
            waited_ms,
        } => println!(
            "decided  {}  {}  after {waited_ms} ms",
            r.id,
            serde_json::to_string(decision).unwrap_or_default()
        ),
    }
}

fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| e.to_string());
    }
    let age: Duration = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age like 15m"))?;
    Ok(now_ms().saturating_sub(age.as_millis() as u64))
}

fn print_table(sessions: &[SessionRecord]) {
    println!(
        "{:>6}  {:<20}  {:<6}  {:<18}  {:>7}  {:<24}  {:<16}  {:>9}  {:>9}  END",
        "ID", "STARTED", "VERDICT", "RULE", "PID", "CGROUP", "DESTINATION", "UP", "DOWN"
    );
    for s in sessions {
        let started = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(s.started_at_ms),
        );
        let agent = s.agent.as_ref();
        println!(
            "{:>6}  {:<20}  {:<6}  {:<18}  {:>7}  {:<24}  {:<16}  {:>9}  {:>9}  {}",
            s.id,
            started.to_string(),
            format!("{:?}", s.verdict).to_lowercase(),
            s.rule,
            agent.map_or("-".into(), |a| a.pid.to_string()),
            agent
                .and_then(|a| a.cgroup.clone())
                .unwrap_or_else(|| "-".into()),
            s.destination.as_deref().unwrap_or("-"),
            s.bytes_up,
            s.bytes_down,
            s.end
                .as_ref()
                .map_or("open".into(), |e| serde_json::to_string(e)
                    .unwrap_or_default()),
        );
    }
}

fn audit_verify(cli: &Cli) -> Result<(), String> {
    // sled would create an empty store at a mistyped path, and an empty store verifies.
    if let Some(path) = &cli.store
        && !path.join("db").exists()
    {
        return Err(format!("{}: no audit store there", path.display()));
    }
    let v = ask(cli, Request::AuditVerify)?;
    let report: gateway_user::audit::VerifyReport =
        serde_json::from_value(v.clone()).map_err(|e| format!("verify report: {e}"))?;
    if cli.json {
        print_json(&v)?;
    } else {
        print!("{report}");
    }
    match report.problems.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "audit verify: {} not matching; the first: {first}",
            report.problems.len()
        )),
    }
}

/// Prints a session's steps, sleeping each pause divided by `speed` (`None`: no pauses).
fn play(cli: &Cli, id: u64, speed: Option<f64>) -> Result<(), String> {
    use gateway_user::audit::replay;
    use std::io::Write as _;
    if speed.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        return Err("--speed must be a positive number".into());
    }
    let (record, events) = replay::from_show(ask(cli, Request::SessionsShow { id })?)?;
    let mut out = std::io::stdout();
    // A terminal session plays as the terminal showed it; anything else as its events.
    if let Some(steps) = gateway_user::audit::cast::terminal(&record, &events) {
        for step in steps {
            if let Some(s) = speed {
                std::thread::sleep(step.pause.div_f64(s));
            }
            write!(out, "{}", step.text)
                .and_then(|()| out.flush())
                .map_err(|e| format!("stdout: {e}"))?;
        }
        return Ok(());
    }
    for step in replay::steps(&record, &events) {
        if let Some(s) = speed {
            std::thread::sleep(step.pause.div_f64(s));
        }
        writeln!(out, "{}", step.text)
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }
    Ok(())
}

fn export(cli: &Cli, id: u64, format: ExportFormat) -> Result<(), String> {
    if let ExportFormat::Asciicast = format {
        use gateway_user::audit::{cast, replay};
        let (record, events) = replay::from_show(ask(cli, Request::SessionsShow { id })?)?;
        for line in cast::asciicast(&record, &events) {
            println!("{line}");
        }
        return Ok(());
    }
    let v = ask(cli, Request::AuditExport { id })?;
    let lines: Vec<String> =
        serde_json::from_value(v).map_err(|e| format!("exported session {id}: {e}"))?;
    match format {
        ExportFormat::Jsonl | ExportFormat::Asciicast => {
            for line in lines {
                println!("{line}");
            }
        }
    }
    Ok(())
}
