//! Per-route and per-backend totals and latency percentiles over a time window.

use crate::reader::{QueryCancel, remove_cancel, unsigned};
use crate::{LogReader, StoreError, time};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, Row};

/// One group's key, a route or a backend, and its totals.
type Group = (Option<String>, Summary);

/// Totals and latency percentiles since a point in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Start of the window, in microseconds since the Unix epoch.
    pub since_us: i64,
    /// Start of the window, as RFC 3339 in UTC.
    pub since: String,
    /// All requests in the window.
    pub total: Summary,
    /// One entry per route, busiest first. `route` is `None` for requests that matched none.
    pub routes: Vec<RouteStats>,
    /// One entry per backend, busiest first. `backend` is `None` for requests that reached
    /// none.
    pub backends: Vec<BackendStats>,
}

/// One route's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStats {
    /// The route pattern.
    pub route: Option<String>,
    /// The totals and percentiles.
    #[serde(flatten)]
    pub summary: Summary,
}

/// One backend's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStats {
    /// The backend's URL.
    pub backend: Option<String>,
    /// The totals and percentiles.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Request count, error counts and latency percentiles of a group of requests.
///
/// Percentiles use the nearest-rank method: the p-th percentile of n sorted latencies is the
/// one at rank ceil(p × n / 100). They are 0 when the group has no requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Requests in the group.
    pub requests: u64,
    /// Requests with a 4xx status.
    pub errors_4xx: u64,
    /// Requests with a 5xx status.
    pub errors_5xx: u64,
    /// Median latency, in microseconds.
    pub latency_p50_us: u64,
    /// 95th percentile latency, in microseconds.
    pub latency_p95_us: u64,
    /// 99th percentile latency, in microseconds.
    pub latency_p99_us: u64,
}

/// Groups rows by `{key}` and computes a [`Summary`] for each in SQL. `(n * p + 99) / 100` is
/// ceil(p × n / 100) in integer arithmetic, which avoids SQLite's optional math functions.
const SUMMARY_SQL: &str = "\
WITH ranked AS (
    SELECT {key} AS key, status, latency_us,
        ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY latency_us) AS rank,
        COUNT(*) OVER (PARTITION BY {key}) AS n
    FROM requests
    WHERE ts_us >= ?
)
SELECT key,
    COUNT(*) AS requests,
    SUM(status >= 400 AND status < 500) AS errors_4xx,
    SUM(status >= 500 AND status < 600) AS errors_5xx,
    MAX(CASE WHEN rank = (n * 50 + 99) / 100 THEN latency_us END) AS p50,
    MAX(CASE WHEN rank = (n * 95 + 99) / 100 THEN latency_us END) AS p95,
    MAX(CASE WHEN rank = (n * 99 + 99) / 100 THEN latency_us END) AS p99
FROM ranked
GROUP BY key
ORDER BY requests DESC, key";

impl LogReader {
    /// Computes per-route, per-backend and overall totals for rows at or after `since_us`.
    ///
    /// The database sorts every latency in the window once for each of the three groupings,
    /// so the time this takes grows with the rows in the window.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Query`] when SQLite fails.
    pub async fn stats(&self, since_us: i64) -> Result<Stats, StoreError> {
        self.stats_cancellable(since_us, &QueryCancel::default())
            .await
    }

    /// Computes the totals of [`LogReader::stats`], stopping when `cancel` is set.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Query`] when SQLite fails or the query was cancelled.
    pub async fn stats_cancellable(
        &self,
        since_us: i64,
        cancel: &QueryCancel,
    ) -> Result<Stats, StoreError> {
        let mut connection = self.connection_with_cancel(cancel).await?;
        let groups = self.groupings(&mut connection, since_us).await;
        remove_cancel(&mut connection).await;
        let (total, routes, backends) = groups?;

        let total = total.into_iter().next().map(|(_, summary)| summary);
        Ok(Stats {
            since_us,
            since: time::format_rfc3339(since_us),
            total: total.unwrap_or_default(),
            routes: routes
                .into_iter()
                .map(|(route, summary)| RouteStats { route, summary })
                .collect(),
            backends: backends
                .into_iter()
                .map(|(backend, summary)| BackendStats { backend, summary })
                .collect(),
        })
    }

    /// Runs the three groupings of [`LogReader::stats`] on `connection`.
    async fn groupings(
        &self,
        connection: &mut SqliteConnection,
        since_us: i64,
    ) -> Result<(Vec<Group>, Vec<Group>, Vec<Group>), StoreError> {
        // One read transaction, so that all three groupings see the same rows while a writer
        // commits.
        let mut transaction = connection
            .begin()
            .await
            .map_err(|source| self.query_error(source))?;
        let total = self.summaries(&mut transaction, "NULL", since_us).await?;
        let routes = self.summaries(&mut transaction, "route", since_us).await?;
        let backends = self
            .summaries(&mut transaction, "backend", since_us)
            .await?;
        transaction
            .commit()
            .await
            .map_err(|source| self.query_error(source))?;
        Ok((total, routes, backends))
    }

    /// Runs [`SUMMARY_SQL`] grouped by `key`, a column name or `NULL` for one group.
    async fn summaries(
        &self,
        connection: &mut SqliteConnection,
        key: &'static str,
        since_us: i64,
    ) -> Result<Vec<Group>, StoreError> {
        let sql = SUMMARY_SQL.replace("{key}", key);
        let rows = sqlx::query(&sql)
            .bind(since_us)
            .fetch_all(connection)
            .await
            .map_err(|source| self.query_error(source))?;
        rows.iter()
            .map(summary_from_row)
            .collect::<Result<_, _>>()
            .map_err(|source| self.query_error(source))
    }
}

fn summary_from_row(row: &SqliteRow) -> Result<(Option<String>, Summary), sqlx::Error> {
    let summary = Summary {
        requests: unsigned(row.try_get("requests")?),
        errors_4xx: unsigned(row.try_get("errors_4xx")?),
        errors_5xx: unsigned(row.try_get("errors_5xx")?),
        latency_p50_us: unsigned(row.try_get("p50")?),
        latency_p95_us: unsigned(row.try_get("p95")?),
        latency_p99_us: unsigned(row.try_get("p99")?),
    };
    Ok((row.try_get("key")?, summary))
}
