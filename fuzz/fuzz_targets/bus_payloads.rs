//! Every document the controller or an agent takes from the bus, through `codec::decode`
//! (size, JSON, schema): presence, status, events, sync requests, commands and replies.
#![no_main]

use edgefleet_protocol::codec::decode;
use edgefleet_protocol::command::{Command, Reply};
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::{ControllerPresence, DevicePresence};
use edgefleet_protocol::site::SiteSummary;
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use libfuzzer_sys::fuzz_target;

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
});
