//! Measures how fast the writer commits rows: queues 200,000 records, waits for the writer to
//! commit them all, and prints rows per second and the process's CPU time per row (user and
//! system, all threads, read from `/proc/self/stat` on Linux).
//!
//! Run with `cargo run --release -p gateway-store --example writer_throughput`. The database
//! goes to a temporary folder, removed at the end.

use gateway_config::RequestLogConfig;
use gateway_store::{RequestLog, RequestRecord, now_us};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RECORDS: usize = 200_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = RequestLogConfig {
        enabled: true,
        database: dir.path().join("requests.db"),
        batch_size: 512,
        flush_interval: Duration::from_secs(1),
        // Room for every record, so the figure counts rows written rather than rows dropped.
        queue_capacity: RECORDS,
        retention: Duration::from_secs(7 * 86_400),
        max_rows: gateway_config::DEFAULT_MAX_ROWS,
    };
    let (log, writer) = RequestLog::open(&config).await?;

    // Build the records first, so the timing covers only queueing and writing.
    let route: Arc<str> = Arc::from("/users/:id");
    let backend: Arc<str> = Arc::from("http://127.0.0.1:9001");
    let start_us = now_us();
    let records: Vec<RequestRecord> = (0..RECORDS)
        .map(|i| RequestRecord {
            timestamp_us: start_us + i as i64,
            request_id: format!("{i:032x}"),
            method: Cow::Borrowed("GET"),
            path: format!("/users/{i}"),
            query: (i % 4 == 0).then(|| "expand=orders".to_owned()),
            route: Some(Arc::clone(&route)),
            status: if i % 50 == 0 { 503 } else { 200 },
            latency_us: 500 + (i as u64 % 10_000),
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(
                10,
                0,
                (i / 256 % 256) as u8,
                i as u8,
            ))),
            user_agent: Some("curl/8.5.0".to_owned()),
            backend: Some(Arc::clone(&backend)),
            bytes_received: 0,
            bytes_sent: 1_234,
            error_kind: None,
            retried: false,
        })
        .collect();

    let cpu_before = cpu_ticks();
    let started = Instant::now();
    let writer = writer.spawn();
    for record in records {
        log.record(record);
    }
    let queued_in = started.elapsed();
    let summary = writer.shutdown().await?;
    let elapsed = started.elapsed();
    let cpu_after = cpu_ticks();

    let rows_per_second = summary.written as f64 / elapsed.as_secs_f64();
    let cpu_us_per_row = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if summary.written > 0 => {
            format!(
                "{:.2}",
                (after - before) as f64 * 1e6 / TICKS_PER_SECOND / summary.written as f64
            )
        }
        _ => "unknown".to_owned(),
    };
    println!(
        "wrote {} rows in {:.3} s: {:.0} rows/s, {} us of CPU per row (batch_size {}, \
         dropped {}, failed {}, queueing took {:.3} s)",
        summary.written,
        elapsed.as_secs_f64(),
        rows_per_second,
        cpu_us_per_row,
        config.batch_size,
        summary.dropped,
        summary.failed,
        queued_in.as_secs_f64(),
    );
    Ok(())
}

/// Clock ticks per second of `/proc/self/stat`, 100 on Linux unless the kernel was built
/// otherwise.
const TICKS_PER_SECOND: f64 = 100.0;

/// Returns the process's user plus system time in clock ticks, or `None` off Linux.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}
