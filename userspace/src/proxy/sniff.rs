//! What a redirected connection speaks, from its first bytes (peeked, so
//! they are still there for whoever handles the connection): a TLS
//! ClientHello and its server name, a plaintext HTTP request and its Host,
//! or something else.

use std::time::Duration;

use tokio::net::TcpStream;

/// Most we look at: a ClientHello fits in one 16 KiB record; HTTP headers
/// beyond this are refused anyway.
pub const MAX_SNIFF: usize = 16 * 1024 + 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS ClientHello; `sni` is the server name it asks for, if any.
    Tls { sni: Option<String> },
    /// A plaintext HTTP request; `host` from its Host header (port removed).
    Http { host: Option<String> },
    /// Anything else (or nothing before the deadline).
    Other,
}

enum Progress {
    Done(FirstBytes),
    NeedMore,
}

/// Classifies `buf` if it holds enough bytes to decide.
fn classify(buf: &[u8]) -> Progress {
    if buf.is_empty() {
        return Progress::NeedMore;
    }
    if buf[0] == 0x16 {
        return classify_tls(buf);
    }
    classify_http(buf)
}

fn classify_tls(buf: &[u8]) -> Progress {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = buf;
    if acceptor.read_tls(&mut reader).is_err() {
        return Progress::Done(FirstBytes::Other);
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let sni = accepted
                .client_hello()
                .server_name()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
            Progress::Done(FirstBytes::Tls { sni })
        }
        Ok(None) if buf.len() < MAX_SNIFF => Progress::NeedMore,
        _ => Progress::Done(FirstBytes::Other),
    }
}

fn classify_http(buf: &[u8]) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(host_without_port);
            Progress::Done(FirstBytes::Http { host })
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_SNIFF => Progress::NeedMore,
        // Too many or too large headers still make it HTTP: the HTTP
        // handler answers with a proper error.
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Progress::Done(FirstBytes::Http { host: None })
        }
        Err(_) => Progress::Done(FirstBytes::Other),
    }
}

/// `example.com:8080` -> `example.com`, `[::1]:80` -> `::1`, lower case.
pub fn host_without_port(h: &str) -> String {
    let h = h.trim();
    let bare = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    bare.trim_end_matches('.').to_ascii_lowercase()
}

/// Peeks at the stream until its first bytes can be classified or `deadline` passes.
pub async fn sniff(stream: &TcpStream, deadline: Duration) -> FirstBytes {
    let mut buf = vec![0u8; MAX_SNIFF];
    let started = tokio::time::Instant::now();
    let mut seen = 0usize;
    let mut pause = Duration::from_millis(1);
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return FirstBytes::Other;
        }
        let n = match tokio::time::timeout(remaining, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return FirstBytes::Other,
            Ok(Ok(n)) => n,
        };
        if let Progress::Done(what) = classify(&buf[..n]) {
            return what;
        }
        // peek returns what is buffered at once; wait for more to arrive.
        if n == seen {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        } else {
            seen = n;
            pause = Duration::from_millis(1);
        }
    }
}

/// Reads from `io` until its first bytes can be classified or `deadline`
/// passes. Returns what was read, to be served again ([`super::prefixed`]).
pub async fn read_first<IO>(io: &mut IO, deadline: Duration) -> (FirstBytes, Vec<u8>)
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::with_capacity(1024);
    let started = tokio::time::Instant::now();
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() || buf.len() >= MAX_SNIFF {
            return (FirstBytes::Other, buf);
        }
        let mut chunk = [0u8; 4096];
        let want = chunk.len().min(MAX_SNIFF - buf.len());
        match tokio::time::timeout(remaining, io.read(&mut chunk[..want])).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (FirstBytes::Other, buf),
        }
        if let Progress::Done(what) = classify(&buf) {
            return (what, buf);
        }
    }
}

/// A TLS alert record: fatal access_denied (sent when a name is refused).
pub const TLS_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello(name: Option<&str>) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        let _ = &mut roots;
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut cfg = cfg;
        cfg.enable_sni = name.is_some();
        let server =
            rustls::pki_types::ServerName::try_from(name.unwrap_or("ignored.example").to_string())
                .unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn tls_client_hello_gives_the_server_name() {
        let hello = client_hello(Some("API.Vendor.Test"));
        assert!(
            matches!(classify(&hello), Progress::Done(FirstBytes::Tls { sni: Some(ref s) }) if s == "api.vendor.test")
        );
        let partial = &hello[..hello.len() / 2];
        assert!(matches!(classify(partial), Progress::NeedMore));
        let nameless = client_hello(None);
        assert!(matches!(
            classify(&nameless),
            Progress::Done(FirstBytes::Tls { sni: None })
        ));
    }

    #[test]
    fn http_requests_give_their_host() {
        let req = b"GET /x HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n";
        assert!(
            matches!(classify(req), Progress::Done(FirstBytes::Http { host: Some(ref h) }) if h == "example.com")
        );
        assert!(matches!(
            classify(b"GET /x HTTP/1.1\r\nHo"),
            Progress::NeedMore
        ));
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\n\r\n"),
            Progress::Done(FirstBytes::Http { host: None })
        ));
    }

    #[test]
    fn anything_else_is_other() {
        assert!(matches!(
            classify(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Progress::Done(FirstBytes::Other)
        ));
        assert!(matches!(
            classify(&[0x16, 0xff, 0xff, 0, 1, 0]),
            Progress::Done(FirstBytes::Other)
        ));
        assert!(matches!(
            classify(b"\x00\x01\x02"),
            Progress::Done(FirstBytes::Other)
        ));
    }

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_without_port("a.example:443"), "a.example");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("A.Example."), "a.example");
    }
}
