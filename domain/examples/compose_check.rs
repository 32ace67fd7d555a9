//! Runs Compose files through edgefleet's parser and prints one line per file:
//! `ACCEPTED path` or `REFUSED path: reason`. Used to measure the parser against public
//! collections of real files (which are never committed here):
//!
//! `cargo run -p edgefleet-domain --example compose_check -- FILE… [--var K=V]…`
//!
//! Variables are those an operator would give with `apply --var`; with `--permissive-vars`,
//! any unset variable resolves to the empty string (as `docker compose` does, with a warning);
//! with `--give-required`, each `${VAR:?message}` gets a placeholder value, as an operator
//! would give with `--var`. The files a file's configs and secrets name (`file:`) are given
//! placeholder content, as `edgefleet apply` would read them next to the file; their
//! `environment:` variables get a placeholder too, as an operator would export them.

use edgefleet_domain::compose;
use edgefleet_domain::interpolate::Variables;

fn main() {
    let mut vars = Variables::new();
    let mut files = Vec::new();
    let mut permissive = false;
    let mut required_vars = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--var" => {
                if let Some((k, v)) = args.next().as_deref().and_then(|kv| kv.split_once('=')) {
                    vars.insert(k.to_owned(), v.to_owned());
                }
            }
            "--permissive-vars" => permissive = true,
            "--give-required" => required_vars = true,
            _ => files.push(a),
        }
    }
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                println!("REFUSED {f}: unreadable: {e}");
                continue;
            }
        };
        let mut vars = vars.clone();
        for v in compose::environment_sources(&text) {
            vars.entry(v)
                .or_insert_with(|| "set-by-operator".to_owned());
        }
        let sources: std::collections::BTreeMap<String, String> = compose::file_sources(&text)
            .into_iter()
            .map(|p| (p, "placeholder".to_owned()))
            .collect();
        let result = loop {
            match compose::parse_inputs(&text, &vars, &sources)
                .and_then(|stack| compose::secret_contents(&stack, &vars, &sources).map(|_| stack))
            {
                Err(compose::ComposeError::Interpolate {
                    source: edgefleet_domain::interpolate::InterpolateError::Unset(name),
                    ..
                }) if permissive && !vars.contains_key(&name) => {
                    vars.insert(name, String::new());
                }
                // What an operator does for `${VAR:?message}`: gives the value.
                Err(compose::ComposeError::Interpolate {
                    source: edgefleet_domain::interpolate::InterpolateError::Required { name, .. },
                    ..
                }) if required_vars && !vars.contains_key(&name) => {
                    let value = if name.contains("PATH") {
                        "/dev/ttyUSB0"
                    } else {
                        "set-by-operator"
                    };
                    vars.insert(name, value.to_owned());
                }
                other => break other,
            }
        };
        match result {
            Ok(_) => println!("ACCEPTED {f}"),
            Err(e) => println!("REFUSED {f}: {e}"),
        }
    }
}
