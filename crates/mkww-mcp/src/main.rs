//! `mkww-mcp`: the Master Control Program server. The binary only parses the command line,
//! loads configuration and wires the layers together; the work happens in the library crates.

mod bench;
mod commands;
mod config;
mod integrations;
mod log_output;
mod logging;
mod serve;
mod telemetry;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mkww-mcp",
    version,
    about = "The MKWW Master Control Program: an orchestration hub for tasks, memory and integrations."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP API plus task workers. With no configuration it listens on
    /// 127.0.0.1:8080 and keeps a SQLite database in ./data; set MCP_DATABASE_URL=postgres://…
    /// to use PostgreSQL.
    Serve {
        /// Configuration file (default: ./mkww-mcp.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the configuration).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply database migrations and exit (serve also does this on start).
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print an access token signed with the configured secret (for scripts and first use).
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// admin, operator, service or user.
        #[arg(long)]
        role: mcp_core::principal::Role,
        /// Who the token speaks for (its `sub`); the default is the command line's own subject.
        #[arg(long, default_value = mcp_core::principal::subjects::CLI)]
        sub: String,
        /// Lifetime such as 90s, 15m, 1h or 30d.
        #[arg(long, default_value = "1h", value_parser = mcp_api::token::parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Manage users (the first admin of a cluster, scripted set-ups).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check the configuration, reach the database and Redis, print every setting with its
    /// source and warn about unsafe set-ups. Exits non-zero on errors.
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Print the OpenAPI document (the one served at /openapi.json) and exit.
    Openapi,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from stdin with --password-stdin, else generated
    /// and printed once.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The username (letters, digits, `.`, `_`, `-`, `@`).
        name: String,
        /// admin, operator, service or user.
        #[arg(long)]
        role: mcp_core::principal::Role,
        /// Read the password (one line) from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve { config, listen } => serve::serve(config.as_deref(), listen).await,
        Command::Migrate { config } => commands::migrate::migrate(config.as_deref()).await,
        Command::Token {
            config,
            role,
            sub,
            ttl,
        } => commands::token::token(config.as_deref(), role, &sub, ttl),
        Command::User {
            command:
                UserCommand::Create {
                    config,
                    name,
                    role,
                    password_stdin,
                },
        } => commands::user::create_user(config.as_deref(), &name, role, password_stdin).await,
        Command::Bench { bench } => bench::run(bench).await,
        Command::Openapi => commands::openapi::openapi(),
        Command::Doctor { config } => commands::doctor::doctor(config.as_deref()).await,
    };
    // The log is written by a thread of its own: what is queued must reach stdout first.
    log_output::flush();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkww-mcp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
