//! The innermost service: it handles admin paths itself and dispatches other paths to their route.

use crate::admin;
use crate::app::{Gateway, RouteService};
use gateway_middleware::cors;
use gateway_proxy::server::Inbound;
use gateway_proxy::{ErrorKind, ProxyBody, ProxyError, RouteMatch};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version, header};
use std::convert::Infallible;
use std::future::Future;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// The innermost service: dispatches a request to the admin endpoints or to its route.
#[derive(Debug, Clone)]
pub struct Router {
    gateway: Arc<Gateway>,
}

impl Router {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Router {
        Router { gateway }
    }

    /// Returns the 403 response for an admin request that the client may not make, or `None`
    /// when it may. A request without a known client address (none reaches a listener) is
    /// rejected.
    ///
    /// A request whose client or connection peer is a loopback address must also name this
    /// machine in `Host`: `localhost`, a name under `.localhost` or an IP address. A web page
    /// whose DNS name an attacker points at 127.0.0.1 (DNS rebinding) makes the browser on
    /// this machine a loopback peer that sends the attacker's name, and would otherwise read
    /// `/admin/logs` as the same origin. The peer counts too, because the page's script can
    /// set `X-Forwarded-For`, and a trusted loopback proxy would make that the client.
    ///
    /// NOTE: a proxy on this machine that rewrites `Host` hides the browser's name, so the
    /// check cannot tell a rebinding page behind it. The README advises leaving loopback out
    /// of `admin.allowed_clients` there.
    fn admin_rejection(&self, request: &Request<Inbound>) -> Option<Response<ProxyBody>> {
        let Some(client) = self
            .gateway
            .client_ip(request)
            .filter(|&ip| self.gateway.admin_clients.contains(ip))
        else {
            return Some(admin::forbidden());
        };
        let peer_is_loopback = request
            .body()
            .peer()
            .is_some_and(|peer| peer.to_canonical().is_loopback());
        if !client.to_canonical().is_loopback() && !peer_is_loopback {
            return None;
        }
        let host = request.headers().get(header::HOST);
        let named = host.is_none_or(|host| names_this_machine(host.as_bytes()));
        (!named).then(admin::forbidden_host)
    }

    /// Builds the response to a request that no route serves, with the top-level CORS
    /// headers, so that a script of an allowed origin reads the error rather than a network
    /// failure.
    fn unrouted(&self, request: &HeaderMap, error: ProxyError) -> Response<ProxyBody> {
        let mut response = error.into_response();
        if let Some(policy) = &self.gateway.unrouted_cors {
            policy.apply(request, response.headers_mut());
        }
        response
    }

    /// Sends `request` to the service of the route at `index` in the route table.
    fn dispatch(&self, index: usize, request: Request<Inbound>) -> RouterFuture {
        // Route services are cheap to clone: every layer keeps its state behind an Arc.
        let mut service = self.gateway.routes[index].clone();
        RouterFuture::Route {
            future: service.call(request),
        }
    }
}

impl Service<Request<Inbound>> for Router {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Inbound>) -> RouterFuture {
        if let Err(error) = check_request(&mut request) {
            let mut response = self.unrouted(request.headers(), error);
            if request.method() == Method::CONNECT {
                // A client may send its tunnel's first bytes right after CONNECT, without
                // waiting for the response. They are not a request, so none is read from
                // them: the connection closes, as NGINX closes it.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return RouterFuture::Ready {
                response: Some(response),
            };
        }

        let path = request.uri().path();
        // RFC 9110 section 9.3.7: `OPTIONS *` requests information about the server, not a
        // resource, so the gateway responds itself instead of forwarding it to a backend.
        if path == "*" {
            return RouterFuture::Ready {
                response: Some(server_options()),
            };
        }
        // Routes and the gateway's own endpoints are found by the same form of the path, so
        // `//admin/backends` is the gateway's, as `/api//login` is the `/api/login` route's.
        let path = gateway_config::match_form(path);
        if admin::is_admin_path(&path) {
            if path != "/health"
                && let Some(rejection) = self.admin_rejection(&request)
            {
                return RouterFuture::Ready {
                    response: Some(rejection),
                };
            }
            let gateway = Arc::clone(&self.gateway);
            return RouterFuture::Admin {
                future: Box::pin(async move { Ok(admin::handle(&gateway, request).await) }),
            };
        }

        let response = match self.gateway.table.find_match_form(request.method(), &path) {
            RouteMatch::Found(route) => return self.dispatch(route.index, request),
            RouteMatch::NotFound => {
                self.unrouted(request.headers(), ProxyError::new(ErrorKind::NoRoute))
            }
            RouteMatch::MethodNotAllowed(route) => {
                let cors = self.gateway.route_cors(route.index);

                // The route's methods are what its backends accept, but a preflight is
                // checked against the CORS policy's methods. The route's CORS layer responds
                // to it without forwarding, so it goes there even when OPTIONS is not listed.
                if cors.is_some() && cors::is_preflight(&request) {
                    return self.dispatch(route.index, request);
                }

                let error = ProxyError::method_not_allowed(route.allow().clone());
                let mut response = error.into_response();
                if let Some(policy) = cors {
                    policy.apply(request.headers(), response.headers_mut());
                }
                response
            }
        };
        RouterFuture::Ready {
            response: Some(response),
        }
    }
}

/// Returns whether the `Host` value `host` is `localhost`, a name under `.localhost` (RFC
/// 6761 section 6.3) or an IP address, with or without a port.
fn names_this_machine(host: &[u8]) -> bool {
    if host.starts_with(b"[") {
        // A bracketed IPv6 address: the router has checked its form.
        return true;
    }
    let name = match host.iter().rposition(|&byte| byte == b':') {
        Some(colon) => &host[..colon],
        None => host,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    let is_localhost = |name: &[u8]| name.eq_ignore_ascii_case(b"localhost");
    is_localhost(name)
        || name
            .iter()
            .rposition(|&byte| byte == b'.')
            .is_some_and(|dot| is_localhost(&name[dot + 1..]))
        || std::str::from_utf8(name).is_ok_and(|name| name.parse::<std::net::Ipv4Addr>().is_ok())
}

/// Builds the response to `OPTIONS *`: 200 with no content. It has no `Allow` header,
/// because each route allows its own methods.
fn server_options() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// Rejects what the HTTP/1.1 reader lets through but RFC 9112 forbids or the gateway cannot
/// proxy safely, and makes the `Host` header agree with an absolute-form target.
fn check_request<B>(request: &mut Request<B>) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::new(ErrorKind::UnsupportedMethod));
    }

    // RFC 9112 sections 3.2.3 and 3.2.4: the authority form is for CONNECT only, and the
    // asterisk form for OPTIONS only.
    let uri = request.uri();
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(ProxyError::invalid_request(
            "an authority-form request target is only for CONNECT",
        ));
    }
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(ProxyError::invalid_request(
            "an absolute-form request target must use http or https",
        ));
    }
    if uri.path() == "*" && request.method() != Method::OPTIONS {
        return Err(ProxyError::invalid_request(
            "an asterisk-form request target is only for OPTIONS",
        ));
    }

    // RFC 9112 section 3.2: an HTTP/1.1 request has exactly one valid Host header, whatever
    // its target's form.
    // A scan of the few fields of a head costs less than a hashed lookup.
    let mut hosts = request
        .headers()
        .iter()
        .filter(|(name, _)| **name == header::HOST)
        .map(|(_, value)| value);
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::invalid_request("more than one Host header")),
        (Some(host), None) => {
            // Only ASCII passes the check, so the value needs no conversion to text first.
            let valid = is_valid_host(host.as_bytes());
            if !valid {
                return Err(ProxyError::invalid_request("invalid Host header"));
            }
        }
        (None, _) if request.version() == Version::HTTP_11 => {
            return Err(ProxyError::invalid_request("missing Host header"));
        }
        (None, _) => {}
    }

    // RFC 9112 section 3.2.2: an absolute-form target's authority replaces the Host header.
    if let Some(authority) = request.uri().authority() {
        if !is_valid_host(authority.as_str().as_bytes()) {
            return Err(ProxyError::invalid_request(
                "invalid authority in the request target",
            ));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::invalid_request("invalid authority in the request target"))?;
        request.headers_mut().insert(header::HOST, host);
    }

    check_transfer_codings(request.headers())?;

    if has_dot_segment(request.uri().path()) {
        return Err(ProxyError::invalid_request(
            "path contains a '.' or '..' segment",
        ));
    }
    Ok(())
}

/// Checks the request's transfer codings (RFC 9112 section 6.1). Chunked is the only one the
/// gateway decodes: chunked applied twice, or not last, is a malformed request (400), and any
/// other coding is one the gateway cannot decode (501).
fn check_transfer_codings(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = 0;
    let mut other = false;
    let mut last_is_chunked = false;
    let codings = headers
        .iter()
        .filter(|(name, _)| **name == header::TRANSFER_ENCODING);
    for (_, value) in codings {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if last_is_chunked {
                chunked += 1;
            } else {
                other = true;
            }
        }
    }
    if chunked > 1 {
        return Err(ProxyError::invalid_request(
            "the chunked transfer coding is applied more than once",
        ));
    }
    if other {
        return Err(ProxyError::new(ErrorKind::UnsupportedTransferCoding));
    }
    if chunked == 1 && !last_is_chunked {
        return Err(ProxyError::invalid_request(
            "the chunked transfer coding is not the last one",
        ));
    }
    Ok(())
}

/// Returns whether `text` is a valid `Host` value (RFC 9110 section 7.2): a host and an optional
/// numeric port. The host is a bracketed IPv6 address or a registered name of the characters
/// RFC 3986 section 3.2.2 allows, which leaves out user information (`user@host`). Every
/// request is checked, so a registered name and its port are read in one pass over the bytes.
fn is_valid_host(text: &[u8]) -> bool {
    if let Some(rest) = text.strip_prefix(b"[") {
        return is_bracketed_host(rest);
    }
    // A registered name: letters, digits, `-._~`, the sub-delimiters `!$&'()*+,;=` and
    // percent-encoded bytes, ended by the port's colon or the end of the value.
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        if NAME_BYTES[usize::from(byte)] {
            at += 1;
            continue;
        }
        match byte {
            b'%' if is_percent_encoded(&text[at..]) => at += 3,
            b':' => return at > 0 && is_port(&text[at + 1..]),
            _ => return false,
        }
    }
    at > 0
}

/// Returns whether `rest`, the part of a `Host` value after its `[`, is an IPv6 address, a `]`
/// and an optional port.
fn is_bracketed_host(rest: &[u8]) -> bool {
    let Some(end) = rest.iter().position(|&byte| byte == b']') else {
        return false;
    };
    let port = match &rest[end + 1..] {
        [] => &[][..],
        [b':', port @ ..] => port,
        _ => return false,
    };
    let address = std::str::from_utf8(&rest[..end]).ok();
    address.is_some_and(|address| address.parse::<Ipv6Addr>().is_ok()) && is_port(port)
}

/// Returns whether `bytes` starts with a `%` and two hexadecimal digits.
fn is_percent_encoded(bytes: &[u8]) -> bool {
    matches!(bytes, [b'%', high, low, ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit())
}

/// The bytes a registered name may contain outside a percent-encoding, as a table: a lookup
/// per byte instead of a chain of comparisons, because every request's `Host` is checked.
const NAME_BYTES: [bool; 256] = {
    let allowed: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=";
    let mut table = [false; 256];
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    table
};

/// Returns whether `port` is digits only and at most 65535. An empty port is valid (RFC 3986
/// section 3.2.3).
fn is_port(port: &[u8]) -> bool {
    let mut value: u32 = 0;
    for &byte in port {
        if !byte.is_ascii_digit() {
            return false;
        }
        value = value * 10 + u32::from(byte - b'0');
        if value > u32::from(u16::MAX) {
            return false;
        }
    }
    true
}

/// Returns whether a path has a `.` or `..` segment. Such a path can climb out of the route's
/// prefix once a backend normalizes it, so it is rejected rather than forwarded byte for byte.
///
/// Backends differ in what they decode before they normalize, so the check takes a wide
/// reading: `%2e` is a dot, `\`, `%2f` and `%5c` end a segment as `/` does, and a segment's
/// parameters after `;` or `%3b` (`..;x`, which Tomcat reads as `..`) are ignored. Spellings
/// outside RFC 3986, such as double encoding (`%252e`) or overlong UTF-8, are passed on. Route
/// paths are checked with the same function when the file loads, so no route names a path
/// that requests cannot reach.
fn has_dot_segment(path: &str) -> bool {
    gateway_config::dot_segment(path).is_some()
}

type AdminFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`Router`].
    #[project = RouterProj]
    pub enum RouterFuture {
        Ready { response: Option<Response<ProxyBody>> },
        Route { #[pin] future: <RouteService as Service<Request<Inbound>>>::Future },
        Admin { future: AdminFuture },
    }
}

impl Future for RouterFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouterProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            RouterProj::Route { future } => future.poll(cx),
            RouterProj::Admin { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_names_accepted() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "admin.localhost:9000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.0.0.5:80",
        ] {
            assert!(names_this_machine(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn other_names_rejected() {
        for host in [
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "localhost.attacker.example",
            "notlocalhost",
            "127.0.0.1.nip.io:8080",
            "",
        ] {
            assert!(!names_this_machine(host.as_bytes()), "{host}");
        }
    }

    fn checked(request: Request<()>) -> Result<Request<()>, u16> {
        let mut request = request;
        check_request(&mut request)
            .map(|()| request)
            .map_err(|error| error.status().as_u16())
    }

    fn with_codings(values: &[&'static str]) -> Request<()> {
        let mut builder = Request::post("/upload").header(header::HOST, "gw");
        for value in values {
            builder = builder.header(header::TRANSFER_ENCODING, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn transfer_codings_are_checked() {
        for ok in [&["chunked"][..], &["Chunked "], &[]] {
            assert!(checked(with_codings(ok)).is_ok(), "{ok:?}");
        }
        for malformed in [
            &["chunked", "chunked"][..],
            &["chunked, chunked"],
            &["chunked", " , chunked"],
        ] {
            assert_eq!(
                checked(with_codings(malformed)).unwrap_err(),
                400,
                "{malformed:?}"
            );
        }
        for unknown in [
            &["gzip"][..],
            &["gzip, chunked"],
            &["chunked", "gzip"],
            &["x"],
        ] {
            assert_eq!(
                checked(with_codings(unknown)).unwrap_err(),
                501,
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn target_forms_match_their_methods() {
        let request = |method: Method, target: &str| {
            Request::builder()
                .method(method)
                .uri(target)
                .header(header::HOST, "gw")
                .body(())
                .unwrap()
        };
        assert_eq!(checked(request(Method::GET, "*")).unwrap_err(), 400);
        assert!(checked(request(Method::OPTIONS, "*")).is_ok());
        assert_eq!(
            checked(request(Method::GET, "gw.example:80")).unwrap_err(),
            400
        );
        assert!(checked(request(Method::GET, "http://gw.example:80/a")).is_ok());
        assert!(checked(request(Method::GET, "HTTPS://gw.example/a")).is_ok());
        assert_eq!(
            checked(request(Method::GET, "ftp://gw.example/a")).unwrap_err(),
            400
        );
        assert!(checked(request(Method::GET, "/a")).is_ok());
    }

    #[test]
    fn dot_segments_are_found() {
        for path in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/..",
            "/%2E",
            "/a/%2e/",
            "/a/..%2fb",
            "/a/%2e%2e%2Fb",
            "/a/..%5cb",
            "/a/..%5C",
            "/a\\..\\b",
            "/a/..;/b",
            "/a/.;x=1/b",
            "/a/%2e%2e;jsessionid=1",
            "/a/..%3b/b",
            "/a/.%3Bx",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        let others = [
            "/a/b",
            "/a/.hidden",
            "/a/..b",
            "/a/b.",
            "/",
            "/a/...",
            "/a/%2e%2e%2e",
            "/a/%2",
            "/a/%2f",
            "/a/%%2e",
            "//",
            "/a/b;..",
            "/a/x..%2fb",
            "/a/;../b",
            "/a/%2fb",
            "",
        ];
        for path in others {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn host_values_follow_rfc() {
        let valid = [
            "gw",
            "gw:8080",
            "gw:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]:",
            "a-b.example_c~d",
            "x%2Dy",
            "a!$&'()*+,;=",
            "gw:65535",
            "gw:000080",
            "%41%42",
            "a%2Db",
        ];
        for host in valid {
            assert!(is_valid_host(host.as_bytes()), "{host}");
        }
        let invalid = [
            "",
            ":80",
            "user@gw",
            "gw:80:80",
            "gw:+80",
            "gw:65536",
            "gw:8o",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[gw]",
            "a b",
            "gw/x",
            "gw?",
            "x%2",
            "x%zz",
            "\"gw\"",
            "%",
            "a%4",
            "gw:99999999999",
            "gw:-1",
            "caf\u{e9}",
        ];
        for host in invalid {
            assert!(!is_valid_host(host.as_bytes()), "{host}");
        }
        // A header value may contain bytes that are not UTF-8.
        assert!(!is_valid_host(b"gw\xff:80"));
        assert!(!is_valid_host(b"[::1\xff]:80"));
    }

    #[test]
    fn host_rules_follow_rfc() {
        let ok = Request::builder()
            .uri("/a")
            .header("host", "gw:8080")
            .body(())
            .unwrap();
        assert!(checked(ok).is_ok());

        let missing = Request::builder().uri("/a").body(()).unwrap();
        assert_eq!(checked(missing).unwrap_err(), 400);

        let old = Request::builder()
            .uri("/a")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert!(checked(old).is_ok());

        let twice = Request::builder()
            .uri("/a")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert_eq!(checked(twice).unwrap_err(), 400);

        let spaced = Request::builder()
            .uri("/a")
            .header("host", "a b")
            .body(())
            .unwrap();
        assert_eq!(checked(spaced).unwrap_err(), 400);
    }

    #[test]
    fn host_values_are_checked() {
        for good in ["gw", "gw:8080", "127.0.0.1:1", "[::1]:80", "[::1]", "gw:"] {
            assert!(is_valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a:xyz",
            "a:99999",
            "u:p@host:1",
            "[::1",
            "[::1]:x",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn absolute_target_with_credentials_is_rejected() {
        let request = Request::builder()
            .uri("http://u:p@target.example:1/a")
            .header("host", "x")
            .body(())
            .unwrap();
        assert_eq!(checked(request).unwrap_err(), 400);
    }

    #[test]
    fn absolute_target_sets_host() {
        let request = Request::builder()
            .uri("http://target.example:1234/a")
            .header("host", "other.example")
            .body(())
            .unwrap();
        let request = checked(request).unwrap();
        assert_eq!(request.headers()["host"], "target.example:1234");
    }

    #[test]
    fn absolute_target_still_needs_one_host() {
        let without = Request::builder()
            .uri("http://target.example/a")
            .body(())
            .unwrap();
        assert_eq!(checked(without).unwrap_err(), 400);

        let twice = Request::builder()
            .uri("http://target.example/a")
            .header("host", "a.example")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(checked(twice).unwrap_err(), 400);

        // HTTP/1.0 has no Host header, so the target's authority is the only host.
        let old = Request::builder()
            .version(Version::HTTP_10)
            .uri("http://target.example/a")
            .body(())
            .unwrap();
        assert_eq!(checked(old).unwrap().headers()["host"], "target.example");
    }

    #[test]
    fn connect_is_not_implemented() {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .header("host", "example.com:443")
            .body(())
            .unwrap();
        assert_eq!(checked(request).unwrap_err(), 501);
    }
}
