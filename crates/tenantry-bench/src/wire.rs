//! The load generator's HTTP/1.1 client: each request is rendered to bytes once, and a client
//! writes those bytes on its kept-alive connection and reads the response with `httparse`.
//!
//! Why not a general-purpose client: the load generator shares this machine's two cores with the
//! servers it measures and with PostgreSQL. A full client (URL parsing, header maps, pool and
//! retry layers on every request) takes a large share of a baseline read's CPU here, which
//! compresses every ratio towards 1: a cheap 429 looks barely cheaper than a database read. What is left per request is two syscalls and a header parse,
//! the same for every side.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::Target;

/// A request, ready to write.
pub struct Wire {
    /// `host:port` to connect to.
    pub authority: String,
    pub bytes: Vec<u8>,
}

impl Wire {
    /// Renders `t` (an `http://` URL; a body is sent as JSON).
    pub fn render(t: &Target) -> Self {
        let rest = t
            .url
            .strip_prefix("http://")
            .expect("the load generator speaks plain http");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut s = format!("{} {path} HTTP/1.1\r\nhost: {authority}\r\n", t.method);
        for (k, v) in &t.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        match &t.body {
            Some(b) => s.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                b.len()
            )),
            None => s.push_str("\r\n"),
        }
        Self {
            authority: authority.to_owned(),
            bytes: s.into_bytes(),
        }
    }
}

/// One kept-alive connection.
pub struct Conn {
    authority: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// The local address to connect from (another loopback address makes another client
    /// address for the server); the system's choice when `None`.
    local: Option<std::net::IpAddr>,
}

/// Longest a response may take before the request counts as failed (status 0).
const TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Conn {
    fn default() -> Self {
        Self {
            authority: String::new(),
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            local: None,
        }
    }
}

impl Conn {
    /// A connection made from `local` (for example `127.0.0.2`, to be another client).
    pub fn from_address(local: std::net::IpAddr) -> Self {
        Self {
            local: Some(local),
            ..Self::default()
        }
    }

    /// Sends `w` and reads the whole response; its status, or 0 when the exchange failed (the
    /// connection is then dropped and the next request opens a new one).
    pub async fn send(&mut self, w: &Wire) -> u16 {
        match tokio::time::timeout(TIMEOUT, self.exchange(w)).await {
            Ok(Ok(status)) => status,
            _ => {
                self.stream = None;
                0
            }
        }
    }

    async fn exchange(&mut self, w: &Wire) -> std::io::Result<u16> {
        if self.stream.is_none() || self.authority != w.authority {
            let s = match self.local {
                None => TcpStream::connect(&w.authority).await?,
                Some(local) => {
                    let peer = tokio::net::lookup_host(&w.authority)
                        .await?
                        .next()
                        .ok_or_else(|| invalid("no address"))?;
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(std::net::SocketAddr::new(local, 0))?;
                    socket.connect(peer).await?
                }
            };
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.authority.clone_from(&w.authority);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(&w.bytes).await?;
        self.buf.clear();
        let (status, head, body, close) = loop {
            more(stream, &mut self.buf).await?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = res.parse(&self.buf).map_err(invalid)? {
                let mut body = Body::Empty;
                let mut close = false;
                for h in res.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let n = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| invalid("content-length"))?;
                        body = Body::Length(n);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        body = Body::Chunked;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                break (res.code.unwrap_or(0), head, body, close);
            }
        };
        match body {
            Body::Empty => {}
            Body::Length(n) => {
                while self.buf.len() < head + n {
                    more(stream, &mut self.buf).await?;
                }
            }
            Body::Chunked => {
                let mut at = head;
                loop {
                    // A chunk: hex size, CRLF, data, CRLF; the last has size 0 (then CRLF).
                    let line_end = loop {
                        if let Some(i) = find(&self.buf[at..], b"\r\n") {
                            break at + i;
                        }
                        more(stream, &mut self.buf).await?;
                    };
                    let size = std::str::from_utf8(&self.buf[at..line_end])
                        .ok()
                        .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                        .ok_or_else(|| invalid("chunk size"))?;
                    let end = line_end + 2 + size + 2;
                    while self.buf.len() < end {
                        more(stream, &mut self.buf).await?;
                    }
                    at = end;
                    if size == 0 {
                        break;
                    }
                }
            }
        }
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

/// Reads more of the response into `buf`; a connection closed mid-response is an error.
async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    match stream.read_buf(buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

enum Body {
    Empty,
    Length(usize),
    Chunked,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    /// The client against a real axum server: a JSON body with a length, a chunked body, a
    /// POST body, keep-alive across requests and a status other than 200.
    #[tokio::test]
    async fn exchanges_with_a_real_server() {
        let app = axum::Router::new()
            .route(
                "/json",
                get(|| async { axum::Json(serde_json::json!({"a": 1})) }),
            )
            .route(
                "/chunked",
                get(|| async {
                    let parts: Vec<Result<&'static str, std::io::Error>> =
                        vec![Ok("ab"), Ok("cdef")];
                    axum::body::Body::from_stream(futures_util::stream::iter(parts))
                }),
            )
            .route(
                "/echo",
                axum::routing::post(
                    |b: String| async move { (axum::http::StatusCode::CREATED, b) },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let target = |path: &str, body: Option<&str>| Target {
            method: if body.is_some() {
                reqwest::Method::POST
            } else {
                reqwest::Method::GET
            },
            url: format!("{base}{path}"),
            headers: vec![("x-tenant-id".into(), "a".into())],
            body: body.map(str::to_owned),
        };
        let mut c = Conn::default();
        for _ in 0..3 {
            assert_eq!(c.send(&Wire::render(&target("/json", None))).await, 200);
            assert_eq!(c.send(&Wire::render(&target("/chunked", None))).await, 200);
            assert_eq!(
                c.send(&Wire::render(&target("/echo", Some("{\"x\":1}"))))
                    .await,
                201
            );
            assert_eq!(c.send(&Wire::render(&target("/nope", None))).await, 404);
        }
        // A server that is gone: a failed exchange, not a hang.
        let gone = Wire {
            authority: "127.0.0.1:1".into(),
            bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        };
        assert_eq!(Conn::default().send(&gone).await, 0);
    }
}
