//! A WebSocket client the end-to-end tests run as the agent. It splits
//! messages into frames exactly where the test says, so that the proxy's
//! scanning across frame boundaries can be attacked.
//!
//! `enforcer-ws URL [-H 'Name: value']... [MESSAGE]...`: `wss://` trusts
//! the CA bundle in `SSL_CERT_FILE`; each MESSAGE is one text message, and
//! a `|` in it starts a new frame. It prints `status N`, then `msg TEXT`
//! for each message received, and `closed` or `end REASON` last.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::Duration,
};

use enforcer_e2e::ws;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            println!("end {e}");
            std::process::exit(1);
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let url = args
        .first()
        .ok_or("usage: enforcer-ws URL [-H header]... [MESSAGE]...")?;
    let (tls, rest) = match (url.strip_prefix("wss://"), url.strip_prefix("ws://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(format!("not a ws:// or wss:// URL: {url}")),
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut headers = Vec::new();
    let mut messages = Vec::new();
    let mut i = 1;
    while i < args.len() {
        if args[i] == "-H" {
            headers.push(args.get(i + 1).cloned().ok_or("-H needs a value")?);
            i += 2;
        } else {
            messages.push(args[i].clone());
            i += 1;
        }
    }
    let port = if tls { 443 } else { 80 };
    let tcp = TcpStream::connect((host, port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut stream: Box<dyn Stream> = if tls {
        Box::new(tls_stream(host, tcp)?)
    } else {
        Box::new(tcp)
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    );
    for h in &headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send handshake: {e}"))?;
    let head = read_head(&mut stream)?;
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    println!("status {status}");
    if status != "101" {
        let mut body = vec![0u8; 4096];
        let n = stream.read(&mut body).unwrap_or(0);
        println!("body {}", String::from_utf8_lossy(&body[..n]));
        return Ok(());
    }
    for m in &messages {
        let parts: Vec<&str> = m.split('|').collect();
        for (k, part) in parts.iter().enumerate() {
            let opcode = if k == 0 { ws::TEXT } else { ws::CONTINUATION };
            let frame = ws::encode(
                opcode,
                k + 1 == parts.len(),
                Some([0x37, 0xfa, 0x21, 0x3d]),
                part.as_bytes(),
            );
            stream
                .write_all(&frame)
                .map_err(|e| format!("send frame: {e}"))?;
            stream.flush().map_err(|e| e.to_string())?;
            // Each frame in its own write, so they cross as separate segments.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut message = Vec::new();
    let mut received = 0;
    loop {
        if !messages.is_empty() && received == messages.len() {
            let _ = stream.write_all(&ws::encode(ws::CLOSE, true, Some([1, 2, 3, 4]), b""));
        }
        let frame = ws::read_frame(&mut stream).map_err(|e| format!("read: {e}"))?;
        match frame.opcode {
            ws::CLOSE => {
                println!("closed");
                return Ok(());
            }
            ws::TEXT | ws::CONTINUATION => {
                message.extend_from_slice(&frame.payload);
                if frame.fin {
                    println!("msg {}", String::from_utf8_lossy(&message));
                    message.clear();
                    received += 1;
                }
            }
            _ => {}
        }
    }
}

/// The response head, up to the blank line.
fn read_head(stream: &mut dyn Stream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .map_err(|e| format!("read handshake: {e}"))?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err("handshake response too long".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn tls_stream(
    host: &str,
    tcp: TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let bundle = std::env::var("SSL_CERT_FILE").map_err(|_| "SSL_CERT_FILE is not set")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&bundle).map_err(|e| format!("{bundle}: {e}"))? {
        let cert = cert.map_err(|e| format!("{bundle}: {e}"))?;
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}
