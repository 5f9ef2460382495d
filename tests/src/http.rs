//! A minimal HTTP/1.1 client over a TCP stream, enough to check the core's
//! HTTP endpoints (and an S3 server) without a client library.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as is and reads until the server closes: (head, body).
pub async fn request(addr: &str, request: &str) -> (String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let body = out.get(split + 4..).unwrap_or_default().to_vec();
    (head, body)
}

/// `GET path` with extra header lines (each ending in `\r\n`).
pub async fn get(addr: impl std::fmt::Display, path: &str, headers: &str) -> (String, Vec<u8>) {
    let addr = addr.to_string();
    request(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"),
    )
    .await
}
