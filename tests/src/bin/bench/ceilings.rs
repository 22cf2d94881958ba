//! The ceilings every result is compared with, measured in the same run on the same nats-server with async-nats:
//! raw core-NATS publish → subscribe throughput, and JetStream publish throughput with `sync_interval: always`
//! (pipelined, one ack awaited at a time, and into two streams at once as a fan-out stores commands and reports).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use futures::StreamExt as _;
use muster_nats::{ConnectParams, ConnectionEvents};

use crate::api::client;

/// Payload of every ceiling message: about a heartbeat's size.
const PAYLOAD_BYTES: usize = 128;

/// Acks awaited at once in the pipelined JetStream measurement (the leader pipelines command publishes too).
const JS_WINDOW: usize = 1_024;

/// How many messages each measurement sends.
#[derive(Debug, Clone, Copy)]
pub struct CeilingSizes {
    /// Core-NATS messages published to one subscriber (no JetStream).
    pub core: u64,
    /// Pipelined JetStream publishes.
    pub js_pipelined: u64,
    /// JetStream publishes awaited one by one.
    pub js_serial: u64,
}

/// The measured ceilings.
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    /// Core NATS publish → subscribe, messages per second received.
    pub core_msgs_per_sec: f64,
    /// Slow-consumer drops at the subscriber during the core measurement.
    pub core_dropped: u64,
    /// JetStream publishes acked per second, pipelined.
    pub js_pipelined_per_sec: f64,
    /// JetStream publishes acked per second, one at a time.
    pub js_serial_per_sec: f64,
    /// JetStream publishes acked per second into two streams at once (each pipelined, on its own connection): the
    /// shape of a fan-out, whose commands and reports are stored by two streams, each fsyncing on its own.
    pub js_two_streams_per_sec: f64,
}

/// Measures the ceilings against the nats-server at `url`.
pub async fn measure(url: &str, sizes: CeilingSizes) -> anyhow::Result<Ceilings> {
    let (core_msgs_per_sec, core_dropped) = core(url, sizes.core).await?;
    let (js_pipelined_per_sec, js_serial_per_sec) = jetstream(url, sizes.js_pipelined, sizes.js_serial).await?;
    let js_two_streams_per_sec = two_streams(url, sizes.js_pipelined / 2).await?;
    Ok(Ceilings { core_msgs_per_sec, core_dropped, js_pipelined_per_sec, js_serial_per_sec, js_two_streams_per_sec })
}

async fn core(url: &str, count: u64) -> anyhow::Result<(f64, u64)> {
    let dropped = ConnectionEvents::new();
    let params = ConnectParams {
        subscription_capacity: 1 << 20,
        events: dropped.clone(),
        ..crate::api::params(url, "muster bench ceiling subscriber")?
    };
    let subscriber = muster_nats::connect(params).await?;
    let publisher = client(url, "muster bench ceiling publisher").await?;
    let mut sub = subscriber.subscribe("bench.ceiling.core").await?;
    subscriber.flush().await?;
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let receive = tokio::spawn(async move {
        let mut received = 0u64;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        // The publisher may outrun the subscriber and lose messages to slow-consumer drops; stop once the
        // stream goes quiet rather than waiting for a count that can no longer arrive.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            first.get_or_insert_with(Instant::now);
            received += 1;
            last = Instant::now();
            if received == count {
                break;
            }
        }
        (received, first.map(|f| last.duration_since(f)))
    });
    for _ in 0..count {
        publisher.publish("bench.ceiling.core", payload.clone()).await?;
    }
    publisher.flush().await?;
    let (received, span) = receive.await?;
    let span = span.context("core ceiling: nothing was received")?;
    if received < count / 2 {
        bail!("core ceiling: only {received} of {count} messages arrived");
    }
    Ok((received as f64 / span.as_secs_f64().max(1e-6), dropped.slow_consumers()))
}

async fn jetstream(url: &str, pipelined: u64, serial: u64) -> anyhow::Result<(f64, f64)> {
    let js = jetstream::new(client(url, "muster bench ceiling").await?);
    let name = "BENCH_CEILING";
    fresh_stream(&js, name, "bench.ceiling.js").await?;
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES]);

    let started = Instant::now();
    let acks = futures::stream::iter(0..pipelined)
        .map(|_| {
            let (js, payload) = (js.clone(), payload.clone());
            async move { js.publish("bench.ceiling.js", payload).await?.await.map(|_| ()) }
        })
        .buffer_unordered(JS_WINDOW)
        .collect::<Vec<_>>()
        .await;
    let pipelined_rate = pipelined as f64 / started.elapsed().as_secs_f64();
    if let Some(Err(e)) = acks.into_iter().find(Result::is_err) {
        bail!("JetStream ceiling: a publish failed: {e}");
    }

    let started = Instant::now();
    for _ in 0..serial {
        js.publish("bench.ceiling.js", payload.clone()).await?.await.context("JetStream ceiling: serial publish")?;
    }
    let serial_rate = serial as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(name).await;
    Ok((pipelined_rate, serial_rate))
}

/// `each` pipelined publishes into each of two streams at once, from two connections; acks per second in all.
async fn two_streams(url: &str, each: u64) -> anyhow::Result<f64> {
    let mut contexts = Vec::new();
    for i in 0..2 {
        let js = jetstream::new(client(url, "muster bench ceiling").await?);
        fresh_stream(&js, &format!("BENCH_CEILING_{i}"), &format!("bench.ceiling.two.{i}")).await?;
        contexts.push((i, js));
    }
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let started = Instant::now();
    let runs = contexts.iter().map(|(i, js)| {
        let (js, payload, subject) = (js.clone(), payload.clone(), format!("bench.ceiling.two.{i}"));
        async move {
            let acks = futures::stream::iter(0..each)
                .map(|_| {
                    let (js, payload, subject) = (js.clone(), payload.clone(), subject.clone());
                    async move { js.publish(subject, payload).await?.await.map(|_| ()) }
                })
                .buffer_unordered(JS_WINDOW)
                .collect::<Vec<_>>()
                .await;
            acks.into_iter().find(Result::is_err).unwrap_or(Ok(()))
        }
    });
    for result in futures::future::join_all(runs).await {
        result.context("two-stream ceiling: a publish failed")?;
    }
    let rate = (2 * each) as f64 / started.elapsed().as_secs_f64();
    for (i, js) in &contexts {
        let _ = js.delete_stream(format!("BENCH_CEILING_{i}")).await;
    }
    Ok(rate)
}

/// An empty file stream `name` on `subject` (one left over from an earlier run is deleted first).
async fn fresh_stream(js: &jetstream::Context, name: &str, subject: &str) -> anyhow::Result<()> {
    let _ = js.delete_stream(name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating the ceiling stream {name}"))?;
    Ok(())
}
