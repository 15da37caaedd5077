//! Bulk import of enrollments through `POST /enrollments`, on a fresh service per run.

use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Options, Server};

/// What one bulk import sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Import {
    /// Enrollments in all.
    pub(crate) total: usize,
    /// Enrollments per call.
    pub(crate) batch: usize,
    /// Calls in flight.
    pub(crate) concurrency: usize,
    /// Whether each enrollment carries its two keys (64 bytes each, as the service would make them).
    pub(crate) client_keys: bool,
}

/// The symmetric-key attestation of enrollment `i`: keys of its own when `client_keys`, else none (generated).
fn attestation(i: usize, client_keys: bool) -> Value {
    if !client_keys {
        return json!({"type": "symmetricKey"});
    }
    let key = |salt: usize| {
        let bytes: Vec<u8> =
            (0..64usize).map(|j| (i.wrapping_mul(31).wrapping_add(j * 7 + salt) % 251) as u8).collect();
        STANDARD.encode(bytes)
    };
    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": key(1), "secondaryKey": key(2)}})
}

/// One bulk import on a fresh service; returns enrollments per second.
async fn bulk_import_once(backend: Backend, import: &Import) -> anyhow::Result<f64> {
    let Import { total, batch, concurrency, client_keys } = *import;
    let options = Options { env: vec![("ZEROTOUCH_LOG".into(), "warn".into())], ..Default::default() };
    let server = Server::start_with(backend, options).await?;
    let token = server.token("operator")?;
    let bodies: Vec<Value> = (0..total)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|ids| {
            let items: Vec<Value> = ids
                .iter()
                .map(|i| json!({"registrationId": format!("bench-device-{i:07}"), "attestation": attestation(*i, client_keys)}))
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

pub(crate) async fn measure(backend: Backend, import: &Import, runs: usize) -> anyhow::Result<()> {
    let Import { total, batch, concurrency, client_keys } = *import;
    let mut rates = Vec::new();
    for run in 1..=runs {
        let rate = bulk_import_once(backend, import)
            .await
            .with_context(|| format!("{backend:?}, calls of {batch}, run {run}"))?;
        println!("  {backend:?}: run {run}: {total} enrollments in calls of {batch}: {rate:.0}/s");
        rates.push(rate);
    }
    let runs_text = rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "RESULT backend={backend:?} enrollments={total} batch={batch} concurrency={concurrency} \
         client_keys={client_keys} median_per_s={:.0} runs=[{runs_text}]",
        median(rates)
    );
    Ok(())
}
