//! `rudder-bench store`: concurrent writes, reads and a watch against the
//! embedded store or etcd, with the durability settings used in production.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rudder_store::local_etcd::LocalEtcd;
use rudder_store::{DynStore, EtcdConfig, EtcdStore, SqliteConfig, SqliteStore, WatchMessage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Etcd,
    /// Both, one after the other, for a side-by-side comparison.
    All,
}

#[derive(Args)]
pub struct StoreArgs {
    #[arg(long, value_enum, default_value = "all")]
    backend: Backend,
    /// etcd endpoint(s); without one, a local single-member etcd is started.
    #[arg(long)]
    endpoint: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Writes (and then reads) in total.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Value size in bytes (a small Pod is about 1.5 KiB of JSON).
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    if args.value_bytes < 16 {
        bail!("--value-bytes must be at least 16");
    }
    if matches!(args.backend, Backend::Sqlite | Backend::All) {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db"))).await?;
        let rss_pid = std::process::id();
        bench("sqlite", Arc::new(store), &args, rss_pid).await?;
    }
    if matches!(args.backend, Backend::Etcd | Backend::All) {
        let dir = tempfile::tempdir()?;
        let (store, local, rss_pid) = match &args.endpoint {
            Some(endpoint) => {
                let store = EtcdStore::connect(EtcdConfig::from_endpoints(endpoint))
                    .await
                    .with_context(|| format!("connecting to etcd at {endpoint}"))?;
                (store, None, None)
            }
            None => {
                let etcd = LocalEtcd::start(dir.path())?;
                let store = etcd.connect_with(etcd.config()).await?;
                let pid = etcd.pid();
                (store, Some(etcd), pid)
            }
        };
        // Without a local etcd, its memory is not ours to read.
        bench("etcd", Arc::new(store), &args, rss_pid.unwrap_or(0)).await?;
        drop(local);
    }
    Ok(())
}

async fn bench(name: &str, store: DynStore, args: &StoreArgs, rss_pid: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    let prefix = format!("/bench/{}/", std::process::id());

    // A watcher of the whole prefix measures how long each write takes to
    // reach it, from just before the write was sent.
    let mut watch = store.watch(&prefix, 0).await?;
    let expected = args.ops;
    let watcher = tokio::spawn(async move {
        let mut lags = Vec::with_capacity(expected);
        while lags.len() < expected {
            match watch.recv().await {
                Some(Ok(WatchMessage::Events(events))) => {
                    let now = started.elapsed().as_nanos() as u64;
                    for event in events {
                        let sent = u64::from_le_bytes(event.kv.value[..8].try_into().unwrap());
                        lags.push(now.saturating_sub(sent) as f64 / 1e6);
                    }
                }
                Some(Ok(WatchMessage::Progress(_))) => {}
                Some(Err(err)) => return Err(anyhow::anyhow!("watch failed: {err}")),
                None => bail!("watch ended"),
            }
        }
        Ok(lags)
    });

    let next = Arc::new(AtomicUsize::new(0));
    let write_start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (store, next, prefix) = (store.clone(), next.clone(), prefix.clone());
        let value_bytes = args.value_bytes;
        let ops = args.ops;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return anyhow::Ok(());
                }
                let mut value = vec![b'x'; value_bytes];
                let sent = started.elapsed().as_nanos() as u64;
                value[..8].copy_from_slice(&sent.to_le_bytes());
                store.create(&format!("{prefix}{i:08}"), value).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let write_secs = write_start.elapsed().as_secs_f64();

    let next = Arc::new(AtomicUsize::new(0));
    let read_start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (store, next, prefix) = (store.clone(), next.clone(), prefix.clone());
        let ops = args.ops;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return anyhow::Ok(());
                }
                // Spread reads over the keys, not in write order.
                let key = format!("{prefix}{:08}", (i * 7919 + c) % ops);
                if store.get(&key, None).await?.0.is_none() {
                    bail!("{key} was written but is missing");
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let read_secs = read_start.elapsed().as_secs_f64();

    let mut lags = tokio::time::timeout(Duration::from_secs(120), watcher)
        .await
        .context("the watcher did not receive every write")???;
    lags.sort_by(|a, b| a.total_cmp(b));
    let rss = crate::rss_mb(rss_pid)
        .map(|mb| format!("{mb:.1}"))
        .unwrap_or_else(|| "n/a".into());
    println!(
        "store backend={name} clients={} ops={} value_bytes={} writes_per_s={:.0} reads_per_s={:.0} watch_lag_p50_ms={:.2} watch_lag_p99_ms={:.2} rss_mb={rss}",
        args.clients,
        args.ops,
        args.value_bytes,
        args.ops as f64 / write_secs,
        args.ops as f64 / read_secs,
        crate::percentile(&lags, 50.0),
        crate::percentile(&lags, 99.0),
    );
    Ok(())
}
