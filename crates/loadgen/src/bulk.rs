//! Bulk import of enrollments through `POST /enrollments`, on a fresh service per run.

use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Options, Server};

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

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

pub(crate) async fn measure(
    backend: Backend,
    total: usize,
    batch: usize,
    concurrency: usize,
    runs: usize,
) -> anyhow::Result<()> {
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
