//! Connections a client leaves hanging are closed, and a response sent before the request's
//! body was read tells the client the connection ends with it.

use std::time::{Duration, Instant};

use serde_json::json;
use tenantry_server::connections::{BODY_IDLE, HEADER_READ};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, TestApp};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `within` passes): what it sent, and how
/// long it took.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + within).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}; received {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[tokio::test]
async fn connections_that_stall_are_closed() {
    let app = spawn_app().await;
    let bound = HEADER_READ + Duration::from_secs(3);
    // Nothing at all; half a request line; headers without their end; a kept-alive
    // connection idle after a request.
    let stalls: [&[u8]; 4] = [
        b"",
        b"GET /heal",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let runs = stalls.iter().map(|sent| {
        let app = &app;
        async move {
            let mut s = connect(app).await;
            s.write_all(sent).await.unwrap();
            let (got, took) = until_closed(&mut s, bound).await;
            assert!(took >= HEADER_READ - Duration::from_secs(1), "{took:?}");
            (String::from_utf8_lossy(sent).into_owned(), got)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    // The kept-alive one was answered first.
    assert!(results[3].1.starts_with("HTTP/1.1 200"), "{:?}", results[3]);
}

#[tokio::test]
async fn a_stalled_body_ends_its_request() {
    let app = spawn_app().await;
    let key = app.tenant("alpha").await;
    let mut s = connect(&app).await;
    s.write_all(
        format!(
            "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user_id\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (got, took) = until_closed(&mut s, BODY_IDLE + Duration::from_secs(5)).await;
    assert!(took >= BODY_IDLE - Duration::from_secs(1), "{took:?}");
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("malformed_body"), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    let orders = app
        .with_key(&key, reqwest::Method::GET, "/v1/orders", None)
        .await;
    assert_eq!(orders.ok(200)["items"], json!([]), "nothing written");
}

/// A POST refused before its body is read (401 here) says `Connection: close` and the server
/// closes; one whose body was read keeps the connection for the next request.
#[tokio::test]
async fn a_response_before_the_body_was_read_closes_the_connection_cleanly() {
    let app = spawn_app().await;
    let key = app.tenant("alpha").await;
    let user = app.user(&key, "ann@example.com").await;
    let body = json!({"user_id": user, "amount_cents": 1, "currency": "EUR"}).to_string();
    for _ in 0..20 {
        // The headers in one packet, the body in a second one a little later.
        let mut s = connect(&app).await;
        s.write_all(
            format!(
                "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tk_wrong\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = s.write_all(body.as_bytes()).await;
        let (got, _) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(got.starts_with("HTTP/1.1 401"), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
    }
    // Read bodies keep the connection: two creates on one connection.
    let mut s = connect(&app).await;
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(format!("{request}{request}").as_bytes())
        .await
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 8192];
    while got.matches("HTTP/1.1 201").count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("both answered on one connection")
            .unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        !got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
}
