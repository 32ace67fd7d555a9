//! Ports without guessing. No test picks a port by binding it and letting it go (another
//! process can take it in between); instead:
//! - our own servers listen on port 0 and say what they got in their addresses file
//!   (`DATA_DIR/addresses.json`, or `edgefleet broker --addresses-file`): [`wait_addresses`];
//! - a server that cannot report its port (Mosquitto) gets one [`Reservation`] holds for it:
//!   a socket bound with `SO_REUSEADDR` and **not listening**. socket(7): with `SO_REUSEADDR`
//!   a socket "may bind, except when there is an active listening socket bound to the
//!   address", so the server (which sets `SO_REUSEADDR` too) can bind and listen on it, while
//!   `bind(0)` and outgoing connections never get a port held this way;
//! - a server restarted on the port it had (a gateway whose agents know its address) gets
//!   its ports held the same way from the moment the old process died until the new one
//!   listens ([`crate::procs::Proc::hold_ports`]).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// A port held for a server that will bind it (see the module docs).
#[derive(Debug)]
pub struct Reservation {
    /// Bound, never listening; closed on drop.
    _socket: Socket,
    addr: SocketAddr,
}

impl Reservation {
    /// Holds `addr` (port 0: the kernel picks a free one).
    pub fn new(addr: SocketAddr) -> std::io::Result<Reservation> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        Ok(Reservation {
            _socket: socket,
            addr,
        })
    }

    /// A free loopback port, held.
    pub fn loopback() -> Reservation {
        Reservation::new(SocketAddr::from(([127, 0, 0, 1], 0))).expect("reserve a loopback port")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether some server now accepts connections on the held port (only a server that
    /// binds with `SO_REUSEADDR` can: the one it was held for).
    pub fn is_listened_on(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
    }
}

/// Waits until `path` holds the addresses of the process `pid` (a file left by an earlier
/// process is not read as this one's), or panics after `timeout` with `log()` in the message.
pub fn wait_addresses(path: &Path, pid: u32, timeout: Duration, log: impl Fn() -> String) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear for process {pid} within {timeout:?}:\n{}",
            path.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The port of the address under `key` in an addresses file.
pub fn port_of(addresses: &Value, key: &str) -> u16 {
    addresses[key]
        .as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("no '{key}' address in {addresses}"))
}
