-- One row per finished request, written in batches by the request log writer.
-- Unsigned counters are stored as INTEGER (signed 64-bit) and saturate at i64::MAX.
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT,
    route TEXT,
    status INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    client_ip TEXT,
    user_agent TEXT,
    backend TEXT,
    bytes_received INTEGER NOT NULL,
    bytes_sent INTEGER NOT NULL,
    error_kind TEXT,
    retried INTEGER NOT NULL
);

-- Retention, the newest-first listing and the time window of the statistics.
CREATE INDEX requests_ts ON requests (ts_us);

-- Listings filtered by route or by status.
CREATE INDEX requests_route_ts ON requests (route, ts_us);
CREATE INDEX requests_status_ts ON requests (status, ts_us);
