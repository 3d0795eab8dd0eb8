//! The batch insert: one transaction per batch, with multi-row statements.

use crate::RequestRecord;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection};
use sqlx::{Connection, query::Query};
use std::sync::LazyLock;

/// Rows in one multi-row `INSERT`. The 15 columns make 960 bound parameters, well under
/// SQLite's default limit of 32766 (since 3.32).
const ROWS_PER_STATEMENT: usize = 64;

const COLUMNS: &str = "ts_us, request_id, method, path, query, route, status, latency_us, \
     client_ip, user_agent, backend, bytes_received, bytes_sent, error_kind, retried";

const PARAMETERS_PER_ROW: usize = 15;

/// The SQL texts are built once, so sqlx's per-connection statement cache prepares each only
/// once: one for full chunks of rows and one for a single row.
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_STATEMENT));
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));

fn insert_sql(rows: usize) -> String {
    let placeholders = vec!["?"; PARAMETERS_PER_ROW].join(", ");
    let row = format!("({placeholders})");
    let values = vec![row.as_str(); rows].join(", ");
    format!("INSERT INTO requests ({COLUMNS}) VALUES {values}")
}

/// Inserts `batch` in one transaction.
pub(crate) async fn insert_batch(
    connection: &mut SqliteConnection,
    batch: &[RequestRecord],
) -> Result<(), sqlx::Error> {
    let mut transaction = connection.begin().await?;

    let mut chunks = batch.chunks_exact(ROWS_PER_STATEMENT);
    for chunk in &mut chunks {
        let mut query = sqlx::query(INSERT_MANY.as_str());
        for record in chunk {
            query = bind_record(query, record);
        }
        query.execute(&mut *transaction).await?;
    }
    for record in chunks.remainder() {
        let query = bind_record(sqlx::query(INSERT_ONE.as_str()), record);
        query.execute(&mut *transaction).await?;
    }

    transaction.commit().await
}

fn bind_record<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    record: &'q RequestRecord,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    query
        .bind(record.timestamp_us)
        .bind(record.request_id.as_str())
        .bind(record.method.as_ref())
        .bind(record.path.as_str())
        .bind(record.query.as_deref())
        .bind(record.route.as_deref())
        .bind(i64::from(record.status))
        .bind(saturating_i64(record.latency_us))
        .bind(record.client_ip.map(|ip| ip.to_string()))
        .bind(record.user_agent.as_deref())
        .bind(record.backend.as_deref())
        .bind(saturating_i64(record.bytes_received))
        .bind(saturating_i64(record.bytes_sent))
        .bind(record.error_kind)
        .bind(record.retried)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
