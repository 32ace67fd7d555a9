//! topics.md is the public contract: every topic the code can build must be documented there
//! with its retain flag, and every documented example must decode into our types.

use edgefleet_protocol::codec::decode;
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::{ControllerPresence, DevicePresence};
use edgefleet_protocol::site::SiteSummary;
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use edgefleet_protocol::topics::TopicKind;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../topics.md"))
        .expect("topics.md at the repository root")
}

/// The table row of a topic in the overview table.
fn row<'a>(doc: &'a str, template: &str) -> Option<&'a str> {
    doc.lines()
        .find(|l| l.starts_with(&format!("| `{template}` |")))
}

fn example<'a>(doc: &'a str, template: &str) -> &'a str {
    let at = doc
        .find(&format!("### `{template}`"))
        .unwrap_or_else(|| panic!("no section for {template}"));
    let rest = &doc[at..];
    let start = rest.find("```json").expect("example") + "```json".len();
    let end = rest[start..].find("```").expect("end of example") + start;
    &rest[start..end]
}

#[test]
fn every_topic_the_code_builds_is_documented() {
    let doc = doc();
    for kind in TopicKind::ALL {
        let template = kind.template();
        let row =
            row(&doc, template).unwrap_or_else(|| panic!("topics.md does not list {template}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let retain = if kind.retained() { "yes" } else { "no" };
        assert_eq!(
            cells.get(4),
            Some(&retain),
            "retain flag of {template} in topics.md"
        );
        assert_eq!(cells.get(3), Some(&"1"), "QoS of {template} in topics.md");
        // The concrete topics are the template with a device id filled in.
        assert_eq!(
            kind.for_device("dev-1"),
            template.replace("{device}", "dev-1")
        );
    }
}

#[test]
fn documented_examples_decode() {
    let doc = doc();
    let e = |k: TopicKind| example(&doc, k.template()).as_bytes().to_vec();
    let envelope: serde_json::Value =
        serde_json::from_slice(&e(TopicKind::DeviceDesired)).expect("desired envelope");
    for field in ["key_id", "signature"] {
        assert!(envelope[field].is_string(), "desired example lacks {field}");
    }
    decode::<DesiredState>(envelope["document"].to_string().as_bytes()).expect("desired example");
    decode::<DeviceStatus>(&e(TopicKind::DeviceStatus)).expect("status example");
    decode::<DevicePresence>(&e(TopicKind::DevicePresence)).expect("presence example");
    decode::<DeviceEvent>(&e(TopicKind::DeviceEvents)).expect("event example");
    decode::<SyncRequest>(&e(TopicKind::DeviceSync)).expect("sync example");
    let envelope: serde_json::Value =
        serde_json::from_slice(&e(TopicKind::DeviceCommands)).expect("command envelope");
    assert!(
        envelope["signature"].is_string(),
        "command example lacks its signature"
    );
    decode::<edgefleet_protocol::command::Command>(envelope["document"].to_string().as_bytes())
        .expect("command example");
    decode::<edgefleet_protocol::command::Reply>(&e(TopicKind::DeviceReplies))
        .expect("reply example");
    decode::<ControllerPresence>(&e(TopicKind::ControllerPresence))
        .expect("controller presence example");
    decode::<SiteSummary>(&e(TopicKind::SiteSummary)).expect("site summary example");
}

#[test]
fn the_audit_head_example_is_a_real_signed_head() {
    let doc = doc();
    let example = example(&doc, TopicKind::AuditHead.template());
    // Signed by the test key from the secret [7; 32], so the example's signature is checked,
    // not only its shape.
    let signer = edgefleet_protocol::signing::DocumentSigner::from_secret(&[7; 32]);
    let head = edgefleet_protocol::audit_head::verify(&signer.verifying_key(), example.as_bytes())
        .expect("the audit head example verifies");
    assert_eq!(head.kind, edgefleet_protocol::audit_head::KIND);
}
