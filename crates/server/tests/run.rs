//! The whole service in-process: `service::run` on listeners bound to port 0, stopped by its shutdown token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zerotouch_server::config::{Cli, Command, Config};
use zerotouch_server::service::{Listeners, run};

/// `run` serves on the listeners it is given, and returns on its own once its shutdown token is cancelled: the
/// servers drain, the background tasks (operation expiry, CRL refresh, the outbox worker) stop, the database
/// closes, and the ports are free again.
#[actix_web::test]
async fn run_serves_until_its_shutdown_token_is_cancelled() {
    zerotouch_server::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let database = format!("sqlite://{data}/zerotouch.db?mode=rwc");
    let cli = Cli::try_parse_from(["zerotouch", "serve", "--data-dir", &data, "--database-url", &database]).unwrap();
    let Command::Serve(args) = cli.command else { panic!("not serve") };
    let config = Config::resolve(&args).unwrap();
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let listeners = Listeners { admin: bind(), device: bind(), mqtt: bind() };
    let ports = [&listeners.admin, &listeners.device, &listeners.mqtt].map(|l| l.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let service = actix_web::rt::spawn({
        let shutdown = shutdown.clone();
        async move { run(&config, listeners, shutdown).await }
    });

    // The service writes its trust material as it starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bundle = loop {
        match std::fs::read(dir.path().join("trust-bundle.pem")) {
            Ok(bundle) if !bundle.is_empty() => break bundle,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("no trust bundle in the data dir: {other:?}"),
        }
    };
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&bundle).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (name, port) in [("admin", ports[0]), ("device", ports[1])] {
        let url = format!("https://127.0.0.1:{}/healthz", port.port());
        loop {
            match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("the {name} listener did not answer /healthz: {other:?}"),
            }
        }
    }

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), service).await;
    let result = stopped.expect("run did not return within 30 s of the shutdown").expect("run panicked");
    result.expect("run failed");
    for port in ports {
        TcpListener::bind(port).unwrap_or_else(|e| panic!("{port} is still taken after run returned: {e}"));
    }
}
