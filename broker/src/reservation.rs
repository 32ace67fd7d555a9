//! Holding a TCP address for a listener that binds it itself (rumqttd, Mosquitto), so port 0
//! can be used with programs that cannot take a bound listener, without the race of
//! bind-and-release (another socket taking the port between the release and the bind).
//!
//! A [`PortReservation`] is a socket with `SO_REUSEADDR`, **bound but not listening**. On
//! Linux (socket(7), `inet_csk_bind_conflict` in `net/ipv4/inet_connection_sock.c`):
//! - another socket with `SO_REUSEADDR` may bind the same address explicitly, and listen,
//!   because no socket *listening* there holds it. rumqttd (tokio → mio `TcpListener::bind`)
//!   and Mosquitto (`net__socket_listen`) both set `SO_REUSEADDR` before `bind`;
//! - a `bind` to port 0 never picks the port: the kernel's search for a free port treats any
//!   socket bound there as a conflict, `SO_REUSEADDR` or not (unless
//!   `net.ipv4.ip_autobind_reuse` is set *and* the whole range is exhausted);
//! - an outgoing connection's ephemeral port never takes it (`__inet_hash_connect` skips every
//!   port a socket holds through `bind`, port 0 included);
//! - while the reservation is the only socket there, a connection to it is refused; once the
//!   real listener listens, connections reach the listener, never the reservation.
//!
//! So: reserve, hand [`PortReservation::addr`] to the program, wait until
//! [`PortReservation::is_listened_on`], then drop the reservation. An address someone already
//! listens on is refused at [`PortReservation::new`] with `EADDRINUSE`.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::net::TcpSocket;

/// An address reserved for a listener that will bind it itself. Dropping it releases the
/// address (do that once the listener listens).
#[derive(Debug)]
pub struct PortReservation {
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl PortReservation {
    /// Binds `addr` with `SO_REUSEADDR` without listening; port 0 lets the kernel pick one.
    /// Fails like a listener would if something already listens on `addr`. Needs no runtime.
    pub fn new(addr: SocketAddr) -> io::Result<PortReservation> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(PortReservation {
            _socket: socket,
            addr,
        })
    }

    /// The reserved address, with the real port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether something listens on the reserved address now: one TCP connect (to loopback
    /// when the address is unspecified), closed at once. While the reservation holds the port,
    /// only a program that bound this very address can be listening there.
    pub fn is_listened_on(&self) -> bool {
        TcpStream::connect_timeout(&crate::connect_addr(self.addr), Duration::from_millis(200))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// How many ports `net.ipv4.ip_local_port_range` holds (Linux's default range if unreadable).
    fn ephemeral_ports() -> usize {
        let range =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let mut bounds = range.split_whitespace().map(|n| n.parse::<usize>());
        match (bounds.next(), bounds.next()) {
            (Some(Ok(lo)), Some(Ok(hi))) if hi >= lo => hi - lo + 1,
            _ => 60999 - 32768 + 1,
        }
    }

    /// The facts the module docs rely on, checked on this kernel with the calls rumqttd and
    /// Mosquitto make (`SO_REUSEADDR`, `bind`, `listen`).
    #[tokio::test]
    async fn a_reservation_lets_only_its_listener_in() {
        let reservation = PortReservation::new(loopback(0)).unwrap();
        let addr = reservation.addr();
        assert_ne!(addr.port(), 0);
        assert!(!reservation.is_listened_on(), "nothing listens yet");

        // A socket without SO_REUSEADDR cannot take the address.
        let plain = TcpSocket::new_v4().unwrap();
        assert_eq!(
            plain.bind(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        // bind(0) never hands it out, with or without SO_REUSEADDR. Three times as many binds
        // as the ephemeral range has ports: not a proof (the module docs cite the kernel), but a
        // kernel that could pick the reserved port would almost surely pick it here.
        let tries = 3 * ephemeral_ports();
        let mut seen = std::collections::HashSet::new();
        for i in 0..tries {
            let probe = TcpSocket::new_v4().unwrap();
            probe.set_reuseaddr(i % 2 == 0).unwrap();
            probe.bind(loopback(0)).unwrap();
            let got = probe.local_addr().unwrap();
            assert_ne!(got, addr, "bind(0) took the reserved port after {i} tries");
            seen.insert(got.port());
        }
        assert!(
            seen.len() > 1000,
            "bind(0) explored only {} ports",
            seen.len()
        );

        // What rumqttd does (tokio::net::TcpListener::bind: SO_REUSEADDR, bind, listen).
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        assert!(reservation.is_listened_on());
        let (_, peer) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        peer.expect("the connection reached the listener, not the reservation");

        // Once someone listens, the address is in use for everyone, reservations included.
        assert_eq!(
            PortReservation::new(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        assert_eq!(
            tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::AddrInUse
        );
        drop(reservation);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "dropping the reservation leaves the listener"
        );
    }
}
