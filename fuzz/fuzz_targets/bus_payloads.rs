//! Every document the controller or an agent takes from the bus, through `codec::decode`
//! (size, JSON, schema): presence, status, events, sync requests, commands and replies; and a
//! sealed value an agent opens with its key (any bytes: malformed, altered, for another key).
#![no_main]

use edgefleet_protocol::codec::decode;
use edgefleet_protocol::command::{Command, Reply};
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::{ControllerPresence, DevicePresence};
use edgefleet_protocol::site::SiteSummary;
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use edgefleet_protocol::sealed::{OpeningKey, Sealed};
use libfuzzer_sys::fuzz_target;

/// A fixed device key (the scalar 1…1), so a sealed value in the corpus can open.
fn key() -> &'static OpeningKey {
    static KEY: std::sync::OnceLock<OpeningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| OpeningKey::from_scalar(&[1; 32]).expect("a valid scalar"))
}

fuzz_target!(|data: &[u8]| {
    let _ = decode::<DevicePresence>(data);
    let _ = decode::<ControllerPresence>(data);
    let _ = decode::<DeviceStatus>(data);
    let _ = decode::<DeviceEvent>(data);
    let _ = decode::<SyncRequest>(data);
    let _ = decode::<Command>(data);
    let _ = decode::<Reply>(data);
    let _ = decode::<DesiredState>(data);
    let _ = decode::<SiteSummary>(data);
    if let Ok(mut sealed) = serde_json::from_slice::<Sealed>(data) {
        sealed.key = key().sealing_key().id().to_owned();
        let _ = key().open("edgefleet/v1 secret d/s/n", &sealed);
    }
});
