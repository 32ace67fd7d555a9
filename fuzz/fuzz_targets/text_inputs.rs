//! Short texts users and devices hand us: enrollment tokens, broker URLs, target selectors,
//! durations, label sets, identifiers and topics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = edgefleet_protocol::enrollment::EnrollmentToken::decode(text);
    let _ = edgefleet_protocol::broker_url::BrokerAddr::parse(text);
    let _ = edgefleet_protocol::ids::validate_device_id(text);
    let _ = edgefleet_protocol::ids::validate_stack_name(text);
    let _ = edgefleet_protocol::acl::Identity::from_common_name(text);
    let _ = edgefleet_protocol::topics::parse(text);
    let _ = edgefleet_domain::selector::Selector::parse(text);
    let _ = edgefleet_domain::duration::parse_duration_ms(text);
    let _ = edgefleet_domain::labels::parse_labels(text);
});
