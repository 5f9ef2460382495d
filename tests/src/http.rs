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

/// `GET path` with extra header lines (each ending in `\r\n`), as the
/// admin of the core this process started at `addr` (its admin token as
/// `Authorization: Bearer`) unless `headers` bring their own credential
/// (`Authorization` or `Cookie`).
pub async fn get(addr: impl std::fmt::Display, path: &str, headers: &str) -> (String, Vec<u8>) {
    let addr = addr.to_string();
    let auth = admin_auth(&addr, headers);
    request(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{headers}Connection: close\r\n\r\n"),
    )
    .await
}

/// `Authorization: Bearer <admin token>\r\n` for the core at `addr`, unless
/// `headers` carry a credential already or no core was started there.
pub fn admin_auth(addr: &str, headers: &str) -> String {
    let lower = headers.to_ascii_lowercase();
    let has_own = lower
        .split("\r\n")
        .any(|l| l.starts_with("authorization:") || l.starts_with("cookie:"));
    match crate::proc::admin_token_for(addr) {
        Some(t) if !has_own => format!("Authorization: Bearer {t}\r\n"),
        _ => String::new(),
    }
}

/// The status code of a response head (`HTTP/1.1 200 OK` → 200).
pub fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// A header's value in a response head (name case-insensitive).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The body of a response in chunked transfer encoding, whole.
pub fn dechunk_body(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(&String::from_utf8_lossy(&rest[..eol]), 16) else {
            break;
        };
        let data = &rest[eol + 2..];
        if size == 0 || data.len() < size + 2 {
            break;
        }
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
    body
}

/// `POST path` of a form `body` (a dashboard server function), as the admin
/// of the core this process started at `addr`, from the dashboard's own
/// origin: (head, body, de-chunked).
pub async fn post_form(addr: impl std::fmt::Display, path: &str, body: &str) -> (String, Vec<u8>) {
    let addr = addr.to_string();
    let auth = admin_auth(&addr, "");
    let (head, raw) = request(
        &addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Origin: http://{addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let chunked =
        header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    (head, if chunked { dechunk_body(&raw) } else { raw })
}

/// Percent-encodes a form value.
pub fn form_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /login` as a same-origin browser form would: (head, body).
pub async fn post_login(
    addr: impl std::fmt::Display,
    name: &str,
    password: &str,
) -> (String, Vec<u8>) {
    let addr = addr.to_string();
    let body = format!(
        "name={}&password={}&next=%2F",
        form_value(name),
        form_value(password)
    );
    request(
        &addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// Logs in through `POST /login`; the `Cookie:` header line (with `\r\n`)
/// that carries the new session. Panics if the login is refused.
pub async fn login(addr: impl std::fmt::Display, name: &str, password: &str) -> String {
    let (head, body) = post_login(addr, name, password).await;
    assert_eq!(
        status(&head),
        303,
        "login refused: {head}\n{}",
        String::from_utf8_lossy(&body)
    );
    let set = header(&head, "set-cookie").expect("a session cookie");
    let pair = set.split(';').next().unwrap().trim();
    format!("Cookie: {pair}\r\n")
}
