//! What the network front does with bytes from a device or integrator: MQTT 3.1.1 frames
//! decoded by rumqttd's v4 codec (as `broker/src/front.rs` does), then every topic and filter
//! through the confinement checks (a local user's read and write filters too) and the topic
//! parser.
#![no_main]

use edgefleet_protocol::acl::{self, Identity};
use edgefleet_protocol::topics;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol};

fuzz_target!(|data: &[u8]| {
    let identities = [
        Identity::Device("press-07".into()),
        Identity::Integrator("scada".into()),
        Identity::Local("historian".into()),
    ];
    let grants = acl::LocalGrants::new(
        vec!["plant/#".into(), "+/line3/+".into()],
        vec!["plant/line3/#".into()],
    )
    .expect("valid grants");
    let mut buf = bytes::BytesMut::from(data);
    // Several packets may follow each other in one read.
    for _ in 0..16 {
        let packet = match V4.read_mut(&mut buf, 1 << 20) {
            Ok(p) => p,
            Err(_) => return,
        };
        for id in &identities {
            match &packet {
                Packet::Connect(connect, _, will, _, _) => {
                    let _ = acl::check_client_id(id, &connect.client_id);
                    if let Some(will) = will {
                        if let Ok(topic) = std::str::from_utf8(&will.topic) {
                            let _ = acl::check_publish(id, topic);
                            let _ = topics::parse(topic);
                        }
                    }
                }
                Packet::Publish(publish, _) => {
                    if let Ok(topic) = std::str::from_utf8(&publish.topic) {
                        let _ = acl::check_publish(id, topic);
                        let _ = acl::check_payload(id, topic, publish.payload.len());
                        let _ = grants.check_write(id, topic);
                        let _ = grants.may_read(topic);
                        let _ = topics::parse(topic);
                    }
                }
                Packet::Subscribe(subscribe, _) => {
                    for f in &subscribe.filters {
                        let _ = acl::check_subscribe(id, &f.path);
                        let _ = grants.check_subscribe(id, &f.path);
                        let _ = acl::overlaps(&f.path, "plant/+/temp");
                        let _ = acl::LocalGrants::new(vec![f.path.clone()], Vec::new());
                        let _ = acl::covers(&f.path, "edgefleet/v1/devices/press-07/status");
                    }
                }
                _ => {}
            }
        }
        // The front re-encodes what it relays.
        let mut out = bytes::BytesMut::new();
        let _ = V4.write(packet, &mut out);
    }
});
