//! The state of the controller's connection to the broker, as the MQTT link last saw it:
//! written by [`crate::bus`], read by `GET /api/v1/health` (which answers 503 while it is
//! down) and by the gateway's supervisor.

use std::time::Instant;

use tokio::sync::watch;

/// Whether the link holds a broker session, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    pub since: Instant,
}

/// The link's state, shared.
#[derive(Debug)]
pub struct Link {
    state: watch::Sender<LinkState>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: watch::Sender::new(LinkState {
                connected: false,
                since: Instant::now(),
            }),
        }
    }
}

impl Link {
    pub fn set_connected(&self, connected: bool) {
        self.state.send_if_modified(|s| {
            if s.connected == connected {
                return false;
            }
            *s = LinkState {
                connected,
                since: Instant::now(),
            };
            true
        });
    }

    pub fn get(&self) -> LinkState {
        *self.state.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }
}
