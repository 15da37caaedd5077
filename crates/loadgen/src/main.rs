//! Benchmarks and load generator for zerotouch: drives the real binary over its real APIs and prints figures.
//!
//! `zerotouch-loadgen bulk-import` starts a service on a fresh database (SQLite and/or PostgreSQL), imports N
//! enrollments through `POST /enrollments` in calls of `--batch` items, `--concurrency` calls in flight, and
//! prints the rate. It repeats with calls of 10 items (the Azure DPS bulk limit) for comparison in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Options, Server};

#[derive(Debug, Parser)]
#[command(name = "zerotouch-loadgen", about = "Benchmarks for zerotouch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk import of enrollments through the admin API.
    BulkImport {
        /// Which databases to measure.
        #[arg(long, value_enum, num_args = 1.., default_values = ["sqlite", "postgres"])]
        backend: Vec<BackendArg>,
        /// Enrollments per run.
        #[arg(long, default_value_t = 100_000)]
        enrollments: usize,
        /// Items per bulk call.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Bulk calls in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Runs per configuration (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Enrollments imported in the Azure-limit comparison (calls of 10 items).
        #[arg(long, default_value_t = 20_000)]
        azure_limit_enrollments: usize,
    },
}

/// One bulk import on a fresh service; returns enrollments per second.
async fn bulk_import_once(backend: Backend, total: usize, batch: usize, concurrency: usize) -> anyhow::Result<f64> {
    let options = Options { env: vec![("ZEROTOUCH_LOG".into(), "warn".into())], ..Default::default() };
    let server = Server::start_with(backend, options).await?;
    let token = server.token("operator")?;
    let bodies: Vec<Value> = (0..total)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|ids| {
            let items: Vec<Value> = ids
                .iter()
                .map(|i| json!({"registrationId": format!("bench-device-{i:07}"), "attestation": {"type": "symmetricKey"}}))
                .collect();
            json!({"mode": "create", "enrollments": items})
        })
        .collect();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(bodies)
        .map(|body| {
            let server = &server;
            let token = &token;
            async move {
                let response =
                    server.client.post(server.url("/enrollments")).bearer_auth(token).json(&body).send().await?;
                let status = response.status();
                let result: Value = response.json().await?;
                if !status.is_success() || result["isSuccessful"] != json!(true) {
                    bail!("bulk call failed: {status} {result}");
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for result in results {
        result?;
    }
    let page = server
        .client
        .post(server.url("/enrollments/query"))
        .bearer_auth(&token)
        .header("x-ms-max-item-count", "1")
        .json(&json!({"query": "SELECT * FROM enrollments"}))
        .send()
        .await?;
    if !page.status().is_success() {
        bail!("query after import failed: {}", page.status());
    }
    Ok(total as f64 / elapsed.as_secs_f64().max(f64::EPSILON))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

async fn measure(backend: Backend, total: usize, batch: usize, concurrency: usize, runs: usize) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for run in 1..=runs {
        let rate = bulk_import_once(backend, total, batch, concurrency)
            .await
            .with_context(|| format!("{backend:?}, calls of {batch}, run {run}"))?;
        println!("  {backend:?}: run {run}: {total} enrollments in calls of {batch}: {rate:.0}/s");
        rates.push(rate);
    }
    let runs_text = rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "RESULT backend={backend:?} enrollments={total} batch={batch} concurrency={concurrency} median_per_s={:.0} runs=[{runs_text}]",
        median(rates)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zerotouch_tests::init();
    match Cli::parse().command {
        Command::BulkImport { backend, enrollments, batch, concurrency, runs, azure_limit_enrollments } => {
            for backend in backend {
                let backend = match backend {
                    BackendArg::Sqlite => Backend::Sqlite,
                    BackendArg::Postgres => Backend::Postgres,
                };
                measure(backend, enrollments, batch, concurrency, runs).await?;
                measure(backend, azure_limit_enrollments, 10, concurrency, runs).await?;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
