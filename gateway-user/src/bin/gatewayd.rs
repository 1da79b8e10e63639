//! gatewayd: the host gateway daemon.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway_user::{config::Config, daemon, kernel};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Host gateway for AI agents: redirects governed cgroups' connections into policy-checked, audited sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file; fields it leaves out keep their built-in defaults.
    #[arg(long, global = true, env = "GATEWAYD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of policy files.
    #[arg(long, global = true)]
    policies: Option<PathBuf>,
    /// Listener port (1-1023).
    #[arg(long, global = true)]
    listen_port: Option<u16>,
    /// bpffs directory for pinned programs, links and maps.
    #[arg(long, global = true)]
    pin_dir: Option<PathBuf>,
    /// Audit store directory.
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Admin API socket.
    #[arg(long, global = true)]
    admin_socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Detach and remove every program, link and map pinned under the pin directory.
    /// Governed agents then connect directly again: stop the daemon first.
    Uninstall,
    /// Print the effective configuration.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Under systemd stderr already goes to the journal, which stamps its own time.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("GATEWAYD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if journald {
        fmt.without_time().init()
    } else {
        fmt.init()
    }

    let config = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
        Command::Uninstall => match kernel::uninstall(&config.pin_dir) {
            Ok(true) => {
                println!("removed {}", config.pin_dir.display());
                Ok(())
            }
            Ok(false) => {
                println!("nothing pinned at {}", config.pin_dir.display());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        Command::Config => {
            println!("{config:#?}");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("gatewayd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(cli: &Cli) -> Result<Config, gateway_user::config::ConfigError> {
    let mut c = Config::load(cli.config.as_deref())?;
    if let Some(v) = &cli.policies {
        c.policies = v.clone();
    }
    if let Some(v) = cli.listen_port {
        c.listen_port = v;
    }
    if let Some(v) = &cli.pin_dir {
        c.pin_dir = v.clone();
    }
    if let Some(v) = &cli.store {
        c.store = v.clone();
    }
    if let Some(v) = &cli.admin_socket {
        c.admin_socket = v.clone();
    }
    c.validate()?;
    Ok(c)
}

fn run(config: Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(daemon::run(config))
        .map_err(|e| e.to_string())
}
