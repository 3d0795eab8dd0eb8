//! Who may use the admin endpoints: `admin.allowed_clients` opens `/admin/*` to some client
//! addresses, loopback by default, while `/health` stays open to every client.

use gateway_tests::{GatewayProcess, MockProcess, get, raw_request, request};
use http::{Method, StatusCode};

/// Starts a gateway with `server_fields` added under `server:` and `sections` at the top level.
fn start(server_fields: &str, sections: &str) -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start("Admin");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
{server_fields}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
{sections}
"#,
        mock.url
    ));
    (mock, gateway)
}

#[tokio::test]
async fn loopback_clients_may_use_admin_by_default() {
    let (_mock, gateway) = start("", "");
    for path in ["/admin/backends", "/admin/logs", "/admin/stats"] {
        let reply = get(&format!("{}{path}", gateway.url)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

/// The endpoints are found by the path's match form, as routes are, so another spelling of
/// an admin path reaches the gateway, never a backend through a catch-all route.
#[tokio::test]
async fn admin_path_spellings_reach_gateway() {
    let (_mock, gateway) = start(
        "",
        "  - path: \"/*rest\"\n    backends: [{url: \"http://127.0.0.1:9\"}]",
    );
    for path in ["//admin/backends", "/%61dmin/backends", "/admin//backends"] {
        let reply = get(&format!("{}{path}", gateway.url)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(
            reply.json()["routes"].is_array(),
            "{path}: not the admin listing"
        );
    }
    let reply = get(&format!("{}/%68ealth", gateway.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "ok");
}

#[tokio::test]
async fn unlisted_clients_get_403_except_health() {
    let (_mock, gateway) = start("", "admin: {allowed_clients: [\"192.0.2.0/24\"]}");
    for path in [
        "/admin/backends",
        "/admin/logs",
        "/admin/nothing-here",
        "//admin/logs",
    ] {
        let reply = get(&format!("{}{path}", gateway.url)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(reply.header("content-type"), "application/json", "{path}");
        assert_eq!(reply.header("cache-control"), "no-store", "{path}");
    }
    // The method does not matter: the endpoints are closed before they are looked at.
    let reply = request(
        Method::POST,
        &format!("{}/admin/backends", gateway.url),
        &[],
        "x",
    )
    .await
    .expect("POST");
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    let reply = get(&format!("{}/health", gateway.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = get(&format!("{}/api/proxied", gateway.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_client_behind_trusted_proxy_checked() {
    let (_mock, gateway) = start("  trusted_proxies: [\"127.0.0.1\"]", "");
    let url = format!("{}/admin/backends", gateway.url);

    let remote = request(Method::GET, &url, &[("x-forwarded-for", "203.0.113.7")], "")
        .await
        .expect("GET through a proxy");
    assert_eq!(remote.status, StatusCode::FORBIDDEN);

    let local = request(Method::GET, &url, &[("x-forwarded-for", "127.0.0.1")], "")
        .await
        .expect("GET through a proxy");
    assert_eq!(local.status, StatusCode::OK);
}

/// A byte outside ASCII that a client put in `X-Forwarded-For` spoils only its own entry. The
/// address its proxy appended after it is still the client, and not the proxy itself.
#[tokio::test]
async fn bytes_outside_ascii_do_not_make_proxy_client() {
    let (_mock, gateway) = start("  trusted_proxies: [\"127.0.0.1\"]", "");
    let addr = gateway.addr;
    let reply = tokio::task::spawn_blocking(move || {
        raw_request(
            addr,
            b"GET /admin/backends HTTP/1.1\r\nHost: localhost\r\n\
              X-Forwarded-For: \xe9, 203.0.113.7\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .expect("request task");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
}

/// A browser on this machine that a web page's rebound DNS name sent to the gateway is a
/// loopback client with that name in `Host`, and gets 403. The machine's own names pass.
#[tokio::test]
async fn rebound_host_name_gets_403() {
    let (_mock, gateway) = start("", "");
    let addr = gateway.addr;
    let send = |host: &'static str| {
        tokio::task::spawn_blocking(move || {
            let head = format!(
                "GET /admin/logs?limit=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            raw_request(addr, head.as_bytes())
        })
    };
    let rebound = send("rebind.attacker.example:8080")
        .await
        .expect("request task");
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains("DNS rebinding"), "{rebound}");
    for host in ["localhost:8080", "127.0.0.1"] {
        let reply = send(host).await.expect("request task");
        assert!(reply.starts_with("HTTP/1.1 200"), "{host}: {reply}");
    }
    // `/health` stays open to every client and name.
    let health = tokio::task::spawn_blocking(move || {
        raw_request(
            addr,
            b"GET /health HTTP/1.1\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .expect("request task");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

/// The rebinding page's script can also set `X-Forwarded-For`. Behind a trusted loopback
/// proxy that makes an allowed remote address the client, but the connection's peer is still
/// loopback, so the name in `Host` is still checked.
#[tokio::test]
async fn forwarded_client_does_not_skip_host_check() {
    let (_mock, gateway) = start(
        "  trusted_proxies: [\"127.0.0.1\"]",
        "admin:\n  allowed_clients: [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
    );
    let addr = gateway.addr;
    let send = |host: &'static str| {
        tokio::task::spawn_blocking(move || {
            let head = format!(
                "GET /admin/backends HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.0.0.5\r\n\
                 Connection: close\r\n\r\n"
            );
            raw_request(addr, head.as_bytes())
        })
    };
    let rebound = send("evil.example").await.expect("request task");
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    let local = send("127.0.0.1:8080").await.expect("request task");
    assert!(local.starts_with("HTTP/1.1 200"), "{local}");
}

/// Admin errors are not to be stored either: a shared cache may keep a 404 or 405 that is not
/// marked otherwise.
#[tokio::test]
async fn admin_errors_are_not_stored() {
    let (_mock, gateway) = start("", "");
    let missing = get(&format!("{}/admin/nothing-here", gateway.url)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("cache-control"), "no-store");

    let invalid = get(&format!("{}/admin/logs?limit=0", gateway.url)).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.header("cache-control"), "no-store");

    let url = format!("{}/admin/backends", gateway.url);
    let post = request(Method::POST, &url, &[], "x").await.expect("POST");
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("cache-control"), "no-store");
}
