//! The agent's `state.bin` as it may be found after a power cut, a full disk or tampering:
//! any bytes, decoded as the agent does at start.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgefleet_agent::state_file::decode_state_file(data, "press-07");
});
