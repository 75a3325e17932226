//! Copying bytes both ways between the agent and an upstream.

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transferred {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Relays until either side closes (half-closes are propagated) or errors.
pub async fn relay<A, B>(mut client: A, mut upstream: B) -> std::io::Result<Transferred>
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
