//! The `zerotouch` binary.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use zerotouch_server::config::{Cli, Command};
use zerotouch_server::{service, tls};

/// mimalloc instead of the system allocator: a registration allocates a few hundred small objects across the TLS,
/// HTTP, JSON and database layers, and glibc's malloc showed as a tenth of the service's CPU time under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tls::install_crypto_provider();
    let filter = EnvFilter::try_from_env("ZEROTOUCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The MQTT endpoint's ntex crates: never below info. ntex-mqtt traces whole packets (the Debug of a CONNECT
    // holds its password, a SAS token), and ntex's debug lines (per worker and connection) are noise here.
    let verbose = filter.max_level_hint().is_none_or(|level| level > tracing_subscriber::filter::LevelFilter::INFO);
    let filter = match "ntex=info".parse() {
        Ok(directive) if verbose => filter.add_directive(directive),
        _ => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => actix_web::rt::System::new().block_on(service::serve(*args)),
        Command::Migrate(args) => actix_web::rt::System::new().block_on(service::migrate(args)),
        Command::AdminToken(args) => service::admin_token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerotouch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
