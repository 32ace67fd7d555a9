//! API request bodies: JSON (as axum's extractor reads it), and the text fields every route
//! hands to the domain's parsers: `apply` (Compose file, variables, target selector),
//! maintenance windows (spec and time zone), rollout strategies (`--set` merged into YAML),
//! labels, audit `since`, and the stored deployment document read back.
#![no_main]

use edgefleet_domain::rollout::strategy::Strategy;
use edgefleet_domain::rollout::window::Window;
use edgefleet_domain::{audit, compose, deployment, labels, selector};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let text = |key: &str| body.get(key).and_then(Value::as_str);
    if let Some(target) = text("target") {
        let _ = selector::Selector::parse(target);
    }
    if let Some(yaml) = text("compose") {
        let vars = body
            .get("variables")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let _ = compose::parse_with(yaml, &vars);
    }
    if let (Some(spec), Some(tz)) = (text("window"), text("tz")) {
        let _ = Window::parse(spec, tz);
    }
    if let Some(strategy) = body.get("strategy") {
        let _ = Strategy::from_yaml(&strategy.to_string());
    }
    if let Some(l) = text("labels") {
        let _ = labels::parse_labels(l);
    }
    if let Some(since) = text("since") {
        let _ = audit::parse_since(since);
    }
    let _ = deployment::RevisionSpec::from_json(&body.to_string());
});
