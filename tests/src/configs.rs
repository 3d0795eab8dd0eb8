//! Gateway configurations that several test files share. `{port}` and `{dir}` are left in
//! them for [`ConfigFile::write`](crate::ConfigFile::write) to fill in.

/// Builds a configuration with health checks and access lines off, so that stdout carries only
/// the gateway's own events. `request_log` and `routes` are YAML blocks indented under their
/// keys.
pub fn log_config(request_log: &str, routes: &str) -> String {
    format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
health_check:
  enabled: false
logging:
  access_log: false
request_log:
{request_log}
routes:
{routes}
"#
    )
}

/// Returns the YAML block of one route with `path` to one backend at `backend_url`.
pub fn route_yaml(path: &str, backend_url: &str) -> String {
    format!("  - path: \"{path}\"\n    backends:\n      - url: \"{backend_url}\"\n")
}

/// Returns a configuration with one route, `/api/*rest`, to `backend_url`, a one-second
/// shutdown timeout and the request log in `{dir}`.
pub fn quick_stop_config(backend_url: &str) -> String {
    format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  shutdown_timeout: 1s
health_check:
  enabled: false
request_log:
  database: "{{dir}}/gateway.db"
routes:
{}"#,
        route_yaml("/api/*rest", backend_url)
    )
}
