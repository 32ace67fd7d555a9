//! The desired-state document: everything one device should run, as one retained message.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::WorkloadPolicy;
use crate::spec::StackSpec;

/// Full desired state of one device (`edgefleet/v1/devices/{device}/desired`, retained).
/// `revision` increases by one each time the content changes; an agent never applies a
/// revision lower than the one it already applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub schema: u32,
    pub device: String,
    pub revision: u64,
    pub issued_at: String,
    /// Stacks by deployment name. An empty map means "run nothing managed".
    ///
    /// Behind an [`Arc`] so that the controller's documents of every device running one
    /// revision share that revision's stack instead of each holding a copy (a stack is
    /// changed for one device with [`Arc::make_mut`], which copies it only if it is shared).
    /// On the wire an `Arc<StackSpec>` is exactly a `StackSpec` (serde's `rc` feature).
    pub stacks: BTreeMap<String, Arc<StackSpec>>,
    /// The workload policy of the device's site when this document was issued: the agent
    /// refuses a document whose new or changed stacks break it. Absent in documents from
    /// controllers before policies (nothing is checked then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<WorkloadPolicy>,
    /// Credentials for the private registries the document's images come from, by registry
    /// host (`registry.plant.local:5000`): a JSON `{"username", "password"}` sealed for this
    /// device ([`crate::sealed::registry_info`]), used by the agent to pull.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, crate::spec::StackSecret>,
}

impl DesiredState {
    pub fn new(device: &str, revision: u64, stacks: BTreeMap<String, Arc<StackSpec>>) -> Self {
        DesiredState {
            schema: crate::SCHEMA_VERSION,
            device: device.to_owned(),
            revision,
            issued_at: crate::now_rfc3339(),
            stacks,
            policy: None,
            registries: BTreeMap::new(),
        }
    }

    /// The same document carrying `policy`.
    pub fn with_policy(mut self, policy: Option<WorkloadPolicy>) -> Self {
        self.policy = policy;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StackSecret;

    /// A document as issued before stacks were shared (`BTreeMap<String, StackSpec>`), field
    /// for field: what the wire carried then.
    #[derive(Serialize, Deserialize)]
    struct Unshared {
        schema: u32,
        device: String,
        revision: u64,
        issued_at: String,
        stacks: BTreeMap<String, StackSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<WorkloadPolicy>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        registries: BTreeMap<String, StackSecret>,
    }

    /// Written by hand, compact, fields in declaration order: the bytes an agent receives.
    const DOC: &str = concat!(
        r#"{"schema":1,"device":"press-07","revision":4,"issued_at":"2026-01-01T00:00:00.000Z","#,
        r#""stacks":{"#,
        r#""app":{"deployment":"app","deployment_revision":3,"volumes":["data"],"#,
        r#""services":{"db":{"image":"postgres:16","restart":"no"},"#,
        r#""web":{"image":"registry.plant.local/web:1.2","#,
        r#""environment":{"MODE":"eco"},"ports":[{"host_port":8080,"container_port":80,"protocol":"tcp"}],"#,
        r#""volumes":[{"kind":"named","source":"data","target":"/data","read_only":false}],"#,
        r#""restart":"always","depends_on":["db"],"privileged":true}},"#,
        r#""configs":{"conf":{"content":"a=1\n"}},"#,
        r#""secrets":{"pw":{"digest":"d1","sealed":{"key":"k","enc":"e","ct":"c"}}}},"#,
        r#""empty":{"deployment":"empty","deployment_revision":1,"services":{}}},"#,
        r#""policy":{"privileged":true},"#,
        r#""registries":{"registry.plant.local":{"digest":"d2","sealed":{"key":"k","enc":"e2","ct":"c2"}}}}"#,
    );

    #[test]
    fn shared_stacks_leave_the_wire_format_unchanged() {
        let doc: DesiredState = crate::codec::decode(DOC.as_bytes()).unwrap();
        assert!(doc.stacks["app"].services["web"].extra.privileged);
        assert_eq!(String::from_utf8(crate::codec::encode(&doc)).unwrap(), DOC);

        // The same bytes as the unshared document's, in JSON and in postcard.
        let before: Unshared = serde_json::from_str(DOC).unwrap();
        assert_eq!(
            serde_json::to_vec(&before).unwrap(),
            crate::codec::encode(&doc)
        );
        // postcard cannot write a service (its `extra` is flattened: a map of unknown
        // length), which is why the agent's state file keeps the document's JSON text; the
        // rest of a document it can, and must write the same with or without the Arc.
        let mut doc = doc;
        let mut before = before;
        for s in doc.stacks.values_mut() {
            Arc::make_mut(s).services.clear();
        }
        for s in before.stacks.values_mut() {
            s.services.clear();
        }
        assert_eq!(
            postcard::to_stdvec(&before).unwrap(),
            postcard::to_stdvec(&doc).unwrap()
        );
    }

    #[test]
    fn clones_of_a_document_share_its_stacks() {
        let doc: DesiredState = serde_json::from_str(DOC).unwrap();
        let copy = doc.clone();
        assert!(Arc::ptr_eq(&doc.stacks["app"], &copy.stacks["app"]));
        assert_eq!(doc, copy);
    }
}
