//! Listening UDP sockets that send each reply from the address its request
//! was sent to.
//!
//! RADIUS clients such as radclient (FreeRADIUS 3.2) ignore a reply that
//! comes from another address than the one they sent the request to. On a
//! socket bound to a wildcard address (`0.0.0.0` or `[::]`), the kernel
//! picks a reply's source address by route. On a host with several
//! addresses, such as a virtual address shared for failover, that is often
//! another address. So a wildcard socket receives with IP_PKTINFO or
//! IPV6_RECVPKTINFO and sends each reply with the request's destination
//! address as its source.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The local address a request was sent to, on a wildcard socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAddress {
    V4(Ipv4Addr),
    /// The address and the index of the interface the request came in on,
    /// which a link-local address needs.
    V6(Ipv6Addr, u32),
}

/// One datagram received.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub length: usize,
    pub source: SocketAddr,
    /// `None` on a socket bound to one address, which replies from it.
    pub local: Option<LocalAddress>,
}

/// A listening UDP socket.
#[derive(Debug)]
pub struct Listener {
    socket: UdpSocket,
    /// Bound to `0.0.0.0` or `[::]`, so replies name their source address.
    wildcard: bool,
}

impl Listener {
    /// Binds `address`. An IPv6 socket takes IPv6 only, so `0.0.0.0:1812`
    /// and `[::]:1812` can both be listened on, as the default does.
    pub fn bind(address: SocketAddr) -> io::Result<Listener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
        let wildcard = address.ip().is_unspecified();
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
            if wildcard {
                setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
            }
        } else if wildcard {
            setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        Ok(Listener {
            socket: UdpSocket::from_std(socket.into())?,
            wildcard,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives one datagram into `buffer`; a longer one is cut to fit.
    pub async fn receive(&self, buffer: &mut [u8]) -> io::Result<Received> {
        if !self.wildcard {
            let (length, source) = self.socket.recv_from(buffer).await?;
            return Ok(Received {
                length,
                source,
                local: None,
            });
        }
        let fd = self.socket.as_raw_fd();
        let mut control = nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo);
        self.socket
            .async_io(Interest::READABLE, || {
                let mut slices = [IoSliceMut::new(buffer)];
                let message = recvmsg::<SockaddrStorage>(fd, &mut slices, Some(&mut control), MsgFlags::empty())?;
                let source = message
                    .address
                    .as_ref()
                    .and_then(socket_address)
                    .ok_or_else(|| io::Error::other("received a datagram without an IP source address"))?;
                let mut local = None;
                for message in message.cmsgs()? {
                    match message {
                        ControlMessageOwned::Ipv4PacketInfo(info) => {
                            local = Some(LocalAddress::V4(Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr))));
                        }
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            local = Some(LocalAddress::V6(
                                Ipv6Addr::from(info.ipi6_addr.s6_addr),
                                info.ipi6_ifindex,
                            ));
                        }
                        _ => {}
                    }
                }
                Ok(Received {
                    length: message.bytes,
                    source,
                    local,
                })
            })
            .await
    }

    /// Sends `bytes` to `destination`, from `local` when the request named
    /// it and the host can still send from it.
    pub async fn send(&self, bytes: &[u8], destination: SocketAddr, local: Option<LocalAddress>) -> io::Result<()> {
        let Some(local) = local else {
            self.socket.send_to(bytes, destination).await?;
            return Ok(());
        };

        let fd = self.socket.as_raw_fd();
        let target = SockaddrStorage::from(destination);
        let v4 = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: match local {
                    LocalAddress::V4(address) => u32::from(address).to_be(),
                    LocalAddress::V6(..) => 0,
                },
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let v6 = match local {
            // A link-local address needs the interface. Any other address
            // leaves the route to the kernel, which may pick another
            // interface than the request came in on.
            LocalAddress::V6(address, interface) => libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: address.octets(),
                },
                ipi6_ifindex: if address.is_unicast_link_local() { interface } else { 0 },
            },
            LocalAddress::V4(_) => libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: [0; 16] },
                ipi6_ifindex: 0,
            },
        };
        let control = match local {
            LocalAddress::V4(_) => [ControlMessage::Ipv4PacketInfo(&v4)],
            LocalAddress::V6(..) => [ControlMessage::Ipv6PacketInfo(&v6)],
        };

        let sent = self
            .socket
            .async_io(Interest::WRITABLE, || {
                sendmsg(fd, &[IoSlice::new(bytes)], &control, MsgFlags::empty(), Some(&target))?;
                Ok(())
            })
            .await;
        let Err(err) = sent else {
            return Ok(());
        };

        // The request's address cannot be the source when it was removed
        // after the request came (a virtual address that moved to another
        // server) or is a multicast address: Linux 6.18 then returns EINVAL
        // or ENETUNREACH. After any error, the reply is sent once more from
        // the address the kernel picks by route, and that send's error is
        // the one returned.
        tracing::debug!(%destination, ?local, error = %err, "cannot reply from the request's address; replying from the routed one");
        self.socket.send_to(bytes, destination).await?;
        Ok(())
    }
}

fn socket_address(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    // The conversion keeps the scope id, which a reply to a link-local
    // address needs.
    let v6 = address.as_sockaddr_in6()?;
    Some(SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    /// Sends a reply from `local` on a socket that takes the wildcard path
    /// but is bound to loopback, and returns the source address the
    /// reply arrived from, if it arrived.
    async fn reply_source(bind: &str, local: LocalAddress) -> Option<SocketAddr> {
        let bound = Listener::bind(bind.parse().unwrap()).unwrap();
        let listener = Listener {
            socket: bound.socket,
            wildcard: true,
        };
        let client = std::net::UdpSocket::bind(bind).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let sent = listener.send(b"reply", client.local_addr().unwrap(), Some(local)).await;
        assert!(sent.is_ok(), "send from {local:?}: {sent:?}");
        let mut buffer = [0u8; 16];
        client.recv_from(&mut buffer).ok().map(|(_, source)| source)
    }

    #[tokio::test]
    async fn reply_from_removed_ipv4_address_is_routed() {
        // 198.51.100.7 (TEST-NET-2) is an address that the host does not
        // have, like a virtual address that moved away.
        let source = reply_source("127.0.0.1:0", LocalAddress::V4(Ipv4Addr::new(198, 51, 100, 7))).await;
        assert_eq!(source.map(|source| source.ip()), Some("127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn reply_from_removed_ipv6_address_is_routed() {
        let local = LocalAddress::V6("2001:db8::7".parse().unwrap(), 0);
        let source = reply_source("[::1]:0", local).await;
        assert_eq!(source.map(|source| source.ip()), Some("::1".parse().unwrap()));
    }

    #[tokio::test]
    async fn reply_to_ipv6_multicast_request_is_routed() {
        // A multicast address cannot be a source, so a request sent to
        // ff02::1 gets its reply from an address the kernel picks.
        let local = LocalAddress::V6("ff02::1".parse().unwrap(), 1);
        let source = reply_source("[::1]:0", local).await;
        assert_eq!(source.map(|source| source.ip()), Some("::1".parse().unwrap()));
    }
}
