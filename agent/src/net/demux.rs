//! One UDP port for gossip and QUIC. [`DemuxSocket`] is the quinn socket (`AsyncUdpSocket`) of
//! the node's endpoint: a datagram whose first byte has QUIC's fixed bit (0x40) set goes to
//! quinn, every other one to a bounded gossip channel (dropped and counted when full). Sealed
//! gossip starts with `envelope::MAGIC` (0x8A), which has the bit clear. quinn clears the bit
//! only towards a peer that advertises `grease_quic_bit`, and every node turns that off (see
//! `quic.rs`), so the packets nodes send each other always have it set.
//!
//! The quinn endpoint driver is the only reader of the socket: it receives while the endpoint
//! lives, and diverts gossip as it goes. GSO/GRO are off (one datagram per call) and ECN is not
//! reported; quinn's MTU discovery is off too (`may_fragment` is true), so QUIC packets stay at
//! 1,200 bytes.

use super::counters::{NetCounters, bump};
use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use swarm_core::envelope::MAX_DATAGRAM_BYTES;
use tokio::sync::mpsc;

/// QUIC v1's fixed bit, set in the first byte of every QUIC packet quinn sends (greasing off).
pub const QUIC_FIXED_BIT: u8 = 0x40;
/// Datagrams the gossip channel holds before new ones are dropped.
pub const GOSSIP_QUEUE_DATAGRAMS: usize = 4096;
/// Gossip datagrams diverted in one `poll_recv` before yielding to other tasks.
const MAX_DIVERT_PER_POLL: usize = 64;

/// A gossip datagram as received: the sender's address and the (still sealed) bytes.
pub type GossipDatagram = (SocketAddr, Bytes);

/// The node's UDP socket, shared by its quinn endpoint and its gossip.
pub struct DemuxSocket {
    io: tokio::net::UdpSocket,
    gossip: mpsc::Sender<GossipDatagram>,
    counters: Arc<NetCounters>,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("local", &self.io.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl DemuxSocket {
    /// Binds `addr` and returns the socket with the receiving end of its gossip channel.
    pub async fn bind(
        addr: SocketAddr,
        counters: Arc<NetCounters>,
    ) -> io::Result<(Arc<DemuxSocket>, mpsc::Receiver<GossipDatagram>)> {
        let io = tokio::net::UdpSocket::bind(addr).await?;
        let (tx, rx) = mpsc::channel(GOSSIP_QUEUE_DATAGRAMS);
        Ok((
            Arc::new(DemuxSocket {
                io,
                gossip: tx,
                counters,
            }),
            rx,
        ))
    }

    /// Sends one sealed gossip datagram from the node's port. Refuses anything QUIC would claim
    /// (first byte with bit 0x40 set) or larger than `MAX_DATAGRAM_BYTES`.
    pub async fn send_gossip(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        check_gossip(datagram)?;
        self.io.send_to(datagram, to).await?;
        bump(&self.counters.gossip_sent);
        Ok(())
    }

    /// Like [`DemuxSocket::send_gossip`] but never waits: `WouldBlock` when the socket's send
    /// buffer is full (the caller drops the datagram; gossip tolerates loss).
    pub fn try_send_gossip(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        check_gossip(datagram)?;
        self.io.try_send_to(datagram, to)?;
        bump(&self.counters.gossip_sent);
        Ok(())
    }

    fn divert(&self, from: SocketAddr, datagram: &[u8]) {
        if datagram.is_empty() || datagram.len() > MAX_DATAGRAM_BYTES {
            bump(&self.counters.gossip_dropped_malformed);
            return;
        }
        match self
            .gossip
            .try_send((from, Bytes::copy_from_slice(datagram)))
        {
            Ok(()) => bump(&self.counters.gossip_received),
            Err(_) => bump(&self.counters.gossip_dropped_full),
        }
    }
}

fn check_gossip(datagram: &[u8]) -> io::Result<()> {
    if datagram.len() > MAX_DATAGRAM_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "gossip datagram of {} bytes exceeds {MAX_DATAGRAM_BYTES}",
                datagram.len()
            ),
        ));
    }
    match datagram.first() {
        Some(b) if b & QUIC_FIXED_BIT == 0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "gossip datagram must be sealed (first byte with bit 0x40 clear)",
        )),
    }
}

/// Future returned by the writable poller.
type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Wakes one quinn task when the socket may be writable again (each poller keeps its own waker).
struct WritablePoller {
    socket: Arc<DemuxSocket>,
    pending: Option<WritableFuture>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WritablePoller")
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let socket = this.socket.clone();
        let fut = this
            .pending
            .get_or_insert_with(|| Box::pin(async move { socket.io.writable().await }));
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            this.pending = None;
        }
        result
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            pending: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        debug_assert!(transmit.segment_size.is_none(), "GSO is off");
        // No fixed-bit check here: quinn greases (clears) the bit towards a peer that advertises
        // `grease_quic_bit`. Our nodes never do (the endpoint turns it off), so between nodes
        // the bit is always set; a foreign QUIC client that asks for greasing gets it.
        self.io
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut diverted = 0;
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_recv_from(buf) {
                Ok((len, addr)) => {
                    if len > 0 && buf[0] & QUIC_FIXED_BIT != 0 {
                        *slot = RecvMeta {
                            addr,
                            len,
                            stride: len,
                            ecn: None,
                            dst_ip: None,
                        };
                        return Poll::Ready(Ok(1));
                    }
                    self.divert(addr, &buf[..len]);
                    diverted += 1;
                    if diverted >= MAX_DIVERT_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // ICMP errors surfacing on the socket say nothing about the next datagram.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}
