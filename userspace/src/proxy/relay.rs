//! Copying bytes both ways between the agent and an upstream, optionally
//! watching what the agent sends for placeholders that must not leave.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::secrets::matcher::StreamMatcher;

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transferred {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Relays until either side closes (half-closes are propagated) or errors.
pub async fn relay<A, B>(mut client: A, mut upstream: B) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(Transferred {
        to_upstream: up,
        to_client: down,
    })
}

/// The error a [`Watched`] stream fails with when a placeholder shows up.
#[derive(Debug, thiserror::Error)]
#[error("placeholder of {0} in the data sent")]
pub struct PlaceholderSeen(pub String);

impl PlaceholderSeen {
    /// The secret's name, if `e` is this error.
    pub fn in_error(e: &io::Error) -> Option<&str> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Self>())
            .map(|p| p.0.as_str())
    }
}

/// A client stream whose reads are scanned for placeholders (name,
/// value). Bytes pass at once (an interactive protocol must not stall); a
/// placeholder split across reads is found when its end arrives, and the
/// read fails before that end is passed on, which closes the relay.
pub struct Watched<IO> {
    inner: IO,
    names: Vec<String>,
    matcher: StreamMatcher,
    tripped: bool,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, placeholders: Vec<(String, Vec<u8>)>) -> Self {
        let matcher = StreamMatcher::new(
            placeholders
                .iter()
                .map(|(_, p)| (p.clone(), None))
                .collect(),
        );
        Self {
            inner,
            names: placeholders.into_iter().map(|(n, _)| n).collect(),
            matcher,
            tripped: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.tripped {
            return Poll::Ready(Err(io::Error::other("relay closed after a placeholder")));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !this.matcher.is_empty()
                    && let Some(i) = this.matcher.push(new).found
                {
                    this.tripped = true;
                    buf.set_filled(before);
                    let name = this.names.get(i).cloned().unwrap_or_default();
                    return Poll::Ready(Err(io::Error::other(PlaceholderSeen(name))));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_placeholder_split_across_writes_fails_the_read() {
        let (a, mut agent) = tokio::io::duplex(64);
        let mut w = Watched::new(a, vec![("KEY".into(), b"tok_secretplaceholder".to_vec())]);
        agent.write_all(b"SELECT 'tok_secret").await.unwrap();
        let mut buf = [0u8; 64];
        let n = w.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"SELECT 'tok_secret");
        agent.write_all(b"placeholder'").await.unwrap();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(PlaceholderSeen::in_error(&e), Some("KEY"));
        assert!(w.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn clean_data_passes() {
        let (a, mut agent) = tokio::io::duplex(64);
        let mut w = Watched::new(a, vec![("KEY".into(), b"tok_x".to_vec())]);
        agent.write_all(b"hello tok_").await.unwrap();
        drop(agent);
        let mut out = Vec::new();
        w.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello tok_");
    }
}
