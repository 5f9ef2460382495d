//! Wires a configured agent together — buffer, sender, intake and a source —
//! and runs it until shutdown (or, with `exit_when_drained`, until the source
//! is done and the core has acknowledged everything).

use std::{sync::Arc, time::Duration};

use sightline_proto::{v1::intake_server::IntakeServer, Limits};
use tokio_util::sync::CancellationToken;

use crate::{
    buffer::{Buffer, BufferOptions},
    capture::{spool::Spool, Capture},
    config::AgentConfig,
    sources::{
        intake::IntakeService,
        replay::{self, ReplayOptions},
        simulate::{self, SimulateOptions},
        Publisher,
    },
    transport::{
        media::Uploader,
        sender::{Sender, SenderStats},
        Transport,
    },
};

/// What feeds the buffer besides the intake endpoint.
#[derive(Debug, Clone)]
pub enum Source {
    /// Only the intake endpoint (the production set-up).
    None,
    Simulate(SimulateOptions),
    Replay(ReplayOptions),
}

/// Starts the metrics endpoint on `metrics.listen` (printing where it
/// listens, for a port 0), or nothing when it is off. A default address that
/// is taken is skipped with a warning; an explicit one must bind.
async fn start_metrics(
    config: &AgentConfig,
    scrape: crate::observe::Scrape,
    stop: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = config.metrics.address()? else {
        return Ok(None);
    };
    let listener = match tokio::net::TcpListener::bind(listen.addr).await {
        Ok(l) => l,
        Err(e) if !listen.explicit => {
            tracing::warn!(addr = %listen.addr, error = %e, "metrics endpoint off: its default address is taken (set metrics.listen)");
            return Ok(None);
        }
        Err(e) => anyhow::bail!("config `metrics.listen`: cannot bind {}: {e}", listen.addr),
    };
    let local = listener.local_addr()?;
    println!("sightline-agent metrics listening on {local}");
    tracing::info!(addr = %local, "metrics endpoint: GET /metrics, GET /healthz");
    Ok(Some(tokio::spawn(crate::observe::serve(
        listener,
        Arc::new(scrape),
        stop.clone(),
    ))))
}

/// Runs the agent. With `exit_when_drained`, returns once the source has
/// finished and the buffer is empty; otherwise runs until `shutdown`.
pub async fn run(
    config: AgentConfig,
    source: Source,
    exit_when_drained: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let path = config.buffer.path.clone();
    let opts = BufferOptions {
        max_events: config.buffer.max_events,
        max_bytes: config.buffer.max_bytes.as_u64(),
        sync: config.buffer.sync,
        keep_acked: config.buffer.keep_acked,
    };
    let buffer = tokio::task::spawn_blocking(move || Buffer::open(&path, opts))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the buffer at {}: {e}",
                config.buffer.path.display()
            )
        })?;
    let buffer = Arc::new(buffer);
    tracing::info!(
        agent_id = %config.agent_id,
        epoch = buffer.epoch(),
        next_seq = buffer.next_seq(),
        depth = buffer.depth(),
        "buffer open"
    );
    let capture = if config.capture.cameras.is_empty() {
        None
    } else {
        let cfg = config.capture.clone();
        Some(Arc::new(
            tokio::task::spawn_blocking(move || Capture::start(&cfg)).await??,
        ))
    };
    let metrics = Arc::new(crate::observe::AgentMetrics::new());
    let publisher = Publisher {
        metrics: metrics.clone(),
        capture: capture.clone(),
        buffer: buffer.clone(),
        when_full: config.buffer.when_full,
        block_timeout: config.buffer.block_timeout,
        limits: Limits {
            max_future_skew_ms: config.max_future_skew.as_millis() as i64,
            ..Limits::default()
        },
    };

    let transport: Arc<dyn Transport> = crate::transport::open(&config)?;
    let stats = Arc::new(SenderStats {
        metrics: metrics.clone(),
        ..SenderStats::default()
    });
    let sender_stop = CancellationToken::new();
    let sender = Sender {
        agent_id: config.agent_id.clone(),
        buffer: buffer.clone(),
        transport: transport.clone(),
        config: config.sender.clone(),
        stats: stats.clone(),
        cameras: capture.as_ref().map(|c| c.board.clone()),
    };
    let sender_task = tokio::spawn(sender.run(sender_stop.clone()));
    // Footage goes up from the spool: the cameras' own, or what an earlier
    // run left there (cameras since removed from the config).
    let spool = match &capture {
        Some(c) => Some(c.spool.clone()),
        None if config.capture.spool_path.is_dir() => {
            let (path, max) = (
                config.capture.spool_path.clone(),
                config.capture.spool_max_bytes,
            );
            let spool = Arc::new(Spool::open(path, max)?);
            (!spool.list().is_empty()).then_some(spool)
        }
        None => None,
    };
    let metrics_stop = CancellationToken::new();
    let metrics_task = start_metrics(
        &config,
        crate::observe::Scrape {
            metrics,
            buffer: buffer.clone(),
            buffer_dir: config.buffer.path.clone(),
            max_events: config.buffer.max_events,
            max_bytes: config.buffer.max_bytes.as_u64(),
            stats: stats.clone(),
            transport: transport.clone(),
            cameras: capture.as_ref().map(|c| c.board.clone()),
            spool: spool.clone(),
        },
        &metrics_stop,
    )
    .await?;
    let uploader_task = spool.map(|spool| {
        let uploader = Uploader {
            spool,
            transport: transport.clone(),
            agent_id: config.agent_id.clone(),
            bytes_per_s: config.capture.upload_bytes_per_s,
        };
        tokio::spawn(uploader.run(sender_stop.clone()))
    });

    let intake_stop = CancellationToken::new();
    let intake_task = match config.intake.listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("config `intake.listen`: cannot bind {addr}: {e}"))?;
            let local = listener.local_addr()?;
            println!("sightline-agent intake listening on {local}");
            let service = IntakeServer::new(IntakeService {
                publisher: publisher.clone(),
            })
            .max_decoding_message_size(16 * 1024 * 1024);
            let stop = intake_stop.clone();
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        // With our own listener tonic does not set TCP_NODELAY:
                        // without it, Nagle + delayed ACK hold answers ~40 ms.
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                        async move { stop.cancelled().await },
                    ),
            ))
        }
    };

    let source_task = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            match source {
                Source::None => std::future::pending::<anyhow::Result<()>>().await,
                Source::Simulate(opts) => {
                    let s = simulate::simulate(publisher, opts).await?;
                    println!(
                        "simulate: published={} duplicates={}",
                        s.published, s.duplicates
                    );
                    Ok(())
                }
                Source::Replay(opts) => {
                    let s = replay::replay(publisher, opts).await?;
                    println!(
                        "replay: rows={} accepted={} invalid={} skipped={}",
                        s.rows, s.accepted, s.invalid, s.skipped
                    );
                    Ok(())
                }
            }
        })
    };

    let mut source_task = source_task;
    let mut source_done = false;
    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = &mut source_task, if !source_done => {
                source_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { result = Err(e); break; }
                    Err(e) => { result = Err(e.into()); break; }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if source_done && exit_when_drained => {
                if buffer.depth() == 0 {
                    tracing::info!("source finished and the core has everything: exiting");
                    break;
                }
            }
        }
    }
    source_task.abort();
    intake_stop.cancel();
    if let Some(t) = intake_task {
        let _ = t.await;
    }
    sender_stop.cancel();
    let _ = sender_task.await;
    if let Some(t) = uploader_task {
        let _ = t.await;
    }
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    buffer.flush()?;
    tracing::info!(
        depth = buffer.depth(),
        acked = buffer.acked(),
        rejected = stats.rejected.load(std::sync::atomic::Ordering::Relaxed),
        live_lane = stats.live_sent.load(std::sync::atomic::Ordering::Relaxed),
        "agent stopped"
    );
    result
}
