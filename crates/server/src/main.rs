//! The `zerotouch` binary.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use zerotouch_server::config::{Cli, Command, MASTER_KEY_ENV, MasterKeyText};
use zerotouch_server::{azure_import, service, tls};

/// mimalloc instead of the system allocator: a registration allocates a few hundred small objects across the TLS,
/// HTTP, JSON and database layers, and glibc's malloc showed as a tenth of the service's CPU time under load. It is
/// built without transparent huge pages (feature `no_thp`, workspace `Cargo.toml`): with them each of its arenas'
/// 2 MiB regions a thread touched stayed resident whole, 40 of an idle service's 72 MB (`BENCHMARKS.md`, memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First, while this is the only thread: the master key given in the environment leaves it before anything else
    // runs (no child process inherits it, nothing reads it again).
    let proof = zerotouch_environ::SingleThreaded::at_start_of_main();
    let master_key = zerotouch_environ::take_before_threads(MASTER_KEY_ENV, &proof)
        .map(|text| MasterKeyText(std::sync::Arc::new(text)));
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Serve(args) => args.master_key.master_key_from_env = master_key,
        Command::RotateMasterKey(args) => args.master_key.master_key_from_env = master_key,
        Command::SharedAccessPolicy(args) => args.master_key.master_key_from_env = master_key,
        Command::Migrate(_) | Command::AdminToken(_) | Command::ImportAzure(_) => {}
    }
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
        Command::RotateMasterKey(args) => actix_web::rt::System::new().block_on(service::rotate_master_key(args)),
        Command::SharedAccessPolicy(args) => {
            actix_web::rt::System::new().block_on(zerotouch_server::shared_access_policy::run(args))
        }
        Command::ImportAzure(args) => actix_web::rt::System::new().block_on(azure_import::import_azure(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerotouch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
