//! The `identity-sidecar` binary: parse the command line, load the configuration, start
//! logging, then run the chosen command. Everything else lives in the library, except the
//! small operator commands in [`commands`].

use std::io::Read as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use identity_sidecar::{App, Config};

mod commands;

#[derive(Parser)]
#[command(
    name = "identity-sidecar",
    version,
    about = "Keycloak token gate and B2B entitlement headers for APISIX"
)]
struct Cli {
    /// TOML configuration file (SIDECAR__SECTION__KEY variables override it).
    #[arg(long, env = "SIDECAR_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public and admin ports (the default).
    Serve,
    /// Apply database migrations and exit (for a migration Job or init container).
    Migrate,
    /// Print the effective configuration, secrets redacted, and exit.
    CheckConfig,
    /// Run a self-contained demo: the real server, a development issuer, an echo app (or
    /// your own app, with --upstream) and sample data, with ready-to-paste curl commands.
    /// Ignores --config.
    Demo {
        /// Public port (the admin port is the next one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Where the demo's SQLite file lives.
        #[arg(long, default_value = "identity-sidecar-demo")]
        data_dir: PathBuf,
        /// Your own app (an http:// URL, e.g. http://127.0.0.1:8000) to put the demo in front
        /// of, instead of the built-in echo app.
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
    },
    /// Exit 0 when the admin port (server.admin_listen) answers /healthz with 200, else 1 with
    /// a one-line reason; for HEALTHCHECK and exec probes in images without a shell.
    Health {
        /// Ask /readyz (signing keys loaded) instead of /healthz (the process answers).
        #[arg(long)]
        ready: bool,
    },
    /// Read an admin token on stdin (one trailing newline is trimmed) and print its SHA-256,
    /// the value for admin.token_sha256. Ignores --config.
    HashToken,
    /// Write a new ES256 private key (PKCS#8 PEM, mode 0600) for
    /// entitlements.signing_key_file; never overwrites a file. Ignores --config.
    GenerateSigningKey {
        /// Where to write the key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Import Keycloak's organizations (as POST /admin/v1/sync/organizations); prints
    /// {created, updated, skipped, conflicts} as JSON.
    SyncOrgs,
    /// Reconcile one user against their organizations in Keycloak (as
    /// POST /admin/v1/reconcile/users/{sub} without a body); prints the outcome as JSON.
    Reconcile {
        /// The user's subject (Keycloak user id).
        #[arg(long)]
        sub: String,
        /// Plan only: print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Commands that need no configuration.
    match cli.command {
        Some(Command::Demo { port, data_dir, upstream }) => {
            let quiet = identity_sidecar::config::LogConfig {
                format: identity_sidecar::config::LogFormat::Pretty,
                level: "error".into(),
            };
            let logs = match identity_sidecar::telemetry::init(&quiet) {
                Ok(logs) => logs,
                Err(e) => return exit(Err(e)),
            };
            let code = exit(run(demo(port, data_dir, upstream)));
            drop(logs);
            return code;
        }
        Some(Command::HashToken) => return exit(hash_token()),
        Some(Command::GenerateSigningKey { out }) => {
            return exit(commands::generate_signing_key(&out).map(|kid| {
                // The config wants a path that holds wherever `serve` runs from.
                let absolute = std::path::absolute(&out).unwrap_or(out);
                println!("wrote an ES256 private key (PKCS#8 PEM, mode 0600) to {}", absolute.display());
                println!("kid {kid}; set entitlements.signing_key_file = \"{}\"", absolute.display());
            }));
        }
        _ => {}
    }
    let health = matches!(cli.command, Some(Command::Health { .. }));
    // Checked as `serve` checks it, so every command refuses a bad rule, algorithm or Redis
    // key file with the same message.
    let loaded = Config::load(cli.config.as_deref(), std::env::vars())
        .and_then(|c| identity_sidecar::app::check(&c).map(|_| c));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("identity-sidecar: {e:#}");
            // Docker reserves a HEALTHCHECK exit status of 2; unhealthy is 1.
            return std::process::ExitCode::from(if health { 1 } else { 2 });
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // Log lines leave through a writer thread: `logs` lives until main returns, so its drop
    // flushes every line, the `fatal` line of `exit` included.
    let started = match command {
        Command::Serve => identity_sidecar::telemetry::init_with_traces(&config.log, &config.telemetry)
            .map(|(logs, traces)| (Some(logs), Some(traces))),
        Command::Migrate | Command::SyncOrgs | Command::Reconcile { .. } => {
            identity_sidecar::telemetry::init(&config.log).map(|logs| (Some(logs), None))
        }
        _ => Ok((None, None)),
    };
    let (logs, traces) = match started {
        Ok(started) => started,
        Err(e) => return exit(Err(e)),
    };
    let result = match command {
        Command::CheckConfig => config.redacted_toml().map(|t| print!("{t}")),
        Command::Serve => run(serve(config, traces.expect("serve starts traces"))),
        Command::Migrate => run(migrate(config)),
        Command::Health { ready } => {
            // One thread is plenty for one request, and a probe runs often.
            let answer = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(commands::health(config.server.admin_listen, ready)));
            match answer {
                Ok(line) => {
                    println!("{line}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("identity-sidecar health: {e:#}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        Command::Demo { .. } | Command::HashToken | Command::GenerateSigningKey { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::SyncOrgs => {
            run(async { print_json(&identity_sidecar::keycloak::command::sync_orgs(&config).await?) })
        }
        Command::Reconcile { sub, dry_run } => run(async {
            use identity_sidecar::reconcile::apply::Mode;
            let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
            print_json(&identity_sidecar::keycloak::command::reconcile_sub(&config, &sub, mode).await?)
        }),
    };
    let code = exit(result);
    drop(logs);
    code
}

fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("identity-sidecar: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `hash-token`: the token on stdin, its SHA-256 on stdout.
fn hash_token() -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Paste the admin token, press Enter, then Ctrl-D:");
    }
    let mut input = Vec::new();
    // One byte past the limit is enough to tell "too long" apart.
    stdin.by_ref().take(commands::MAX_TOKEN_BYTES as u64 + 1).read_to_end(&mut input)?;
    println!("{}", commands::hash_token(&input)?);
    Ok(())
}

fn run(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(future)
}

/// Prints a command's result on stdout (logs go to stderr).
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn serve(config: Config, traces: identity_sidecar::telemetry::Traces) -> anyhow::Result<()> {
    let result = async {
        let mut handle = App::build(config).await?.spawn();
        let stop = handle.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            stop.cancel();
        });
        handle.wait().await
    }
    .await;
    // The spans of the last requests are still queued; exporting them blocks.
    tokio::task::spawn_blocking(move || traces.shutdown()).await?;
    result
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store =
        identity_sidecar::store::Store::connect(config.database_url(), config.database.max_connections)
            .await?;
    store.migrate().await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn demo(port: u16, data_dir: PathBuf, upstream: Option<String>) -> anyhow::Result<()> {
    let options = identity_sidecar::demo::DemoOptions { port, data_dir, upstream };
    let mut running = identity_sidecar::demo::start(options).await?;
    identity_sidecar::demo::print(&running, port);
    let stop = running.app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    running.app.wait().await
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
