//! The smallest HTTP/1.1 client that creates buckets and containers: one
//! request per connection (`Connection: close`), no TLS, no chunked bodies
//! to send. Enough for moto and Azurite on loopback, and no HTTP crate.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An `http://host:port[/base]` endpoint, split for requests.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `host:port`, for connecting and for the `Host` header.
    pub authority: String,
    /// The path prefix without a trailing slash: `""` or `/devstoreaccount1`.
    pub base_path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Endpoint {
        let rest =
            url.strip_prefix("http://").unwrap_or_else(|| panic!("testkit: endpoint {url:?} must start with http://"));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.trim_end_matches('/');
        Endpoint {
            authority: authority.to_string(),
            base_path: if path.is_empty() { String::new() } else { format!("/{path}") },
        }
    }
}

pub(crate) struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends one request; `path_and_query` starts with `/` and is sent as is.
pub(crate) fn request(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, String)],
) -> std::io::Result<Response> {
    let addr = endpoint
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {}", endpoint.authority)))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;

    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n",
        endpoint.authority
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;

    // With `Connection: close` the server ends the body by closing; a HEAD
    // response has no body at all, so reading to the end works for both.
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok(Response { status, body: body.to_string() })
}
