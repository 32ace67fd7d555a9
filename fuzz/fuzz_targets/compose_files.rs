//! What `edgefleet apply` hands the controller as text: a Compose file (YAML, parsed by
//! serde-saphyr under the 512 KiB budget, interpolated, validated) and an env file, then the
//! stack as it goes into a device's desired document (serialized, as the controller does).
#![no_main]

use edgefleet_domain::compose;
use edgefleet_domain::interpolate::{self, Variables};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // An optional env file first, separated from the Compose file by a NUL byte.
    let (env, yaml) = text.split_once('\0').unwrap_or(("", text));
    let vars = interpolate::parse_env_file(env).unwrap_or_else(|_| Variables::new());
    // The files its configs and secrets name, "sent" with the apply as the CLI sends them.
    let files: std::collections::BTreeMap<String, String> = compose::file_sources(yaml)
        .into_iter()
        .map(|p| (p, "content".to_owned()))
        .collect();
    let _ = compose::environment_sources(yaml);
    let _ = compose::secrets_of(yaml, &vars, &files);
    // What a file refers to (read without variables) must cover what parsing looks up:
    // parsing with only those names gives the same stack.
    if let Ok(scan) = compose::scan(yaml) {
        let only: Variables = vars
            .iter()
            .filter(|(k, _)| scan.references.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            compose::parse_inputs(yaml, &vars, &files).ok(),
            compose::parse_inputs(yaml, &only, &files).ok()
        );
    }
    for vars in [Variables::new(), vars] {
        if let Ok(stack) = compose::parse_inputs(yaml, &vars, &files) {
            let _ = compose::secret_contents(&stack, &vars, &files);
            let spec = stack.into_stack_spec("fuzz", 1);
            let _ = serde_json::to_vec(&spec);
        }
    }
});
