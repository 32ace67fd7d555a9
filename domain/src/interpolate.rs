//! Compose variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+other}`, `${VAR+other}` and `$$` for a literal
//! `$`, as the Compose specification defines them (defaults may nest: `${A:-${B:-x}}`).
//!
//! One difference from `docker compose`, on purpose: a variable that is unset and has no
//! default is an error naming the variable (Compose warns and substitutes an empty string,
//! which on a device nobody watches turns into a silently broken service). Write `${VAR:-}`
//! to ask for the empty string.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InterpolateError {
    #[error(
        "variable '{0}' is not set: give it with --var {0}=VALUE or --env-file, keep it for the devices ('edgefleet vars set --site SITE {0}=…' or '--device ID'), or write ${{{0}:-default}}"
    )]
    Unset(String),
    #[error("variable '{name}' is required: {message}")]
    Required { name: String, message: String },
    #[error(
        "invalid interpolation at {0:?}: expected ${{NAME}}, ${{NAME:-default}} or $$ for a literal $"
    )]
    Syntax(String),
}

/// The variables of one resolution (for a device: its built-ins, its own, its site's and
/// the apply variables, see [`crate::variables`]).
pub type Variables = BTreeMap<String, String>;

/// Nesting bound for `${A:-${B:-…}}` (keeps a hostile file from recursing deeply).
const MAX_NESTING: usize = 16;

/// Substitutes every variable reference in `text`.
pub fn interpolate(text: &str, vars: &Variables) -> Result<String, InterpolateError> {
    interpolate_at(text, vars, 0)
}

fn interpolate_at(text: &str, vars: &Variables, depth: usize) -> Result<String, InterpolateError> {
    if depth > MAX_NESTING {
        return Err(InterpolateError::Syntax(text.chars().take(40).collect()));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body)
                .ok_or_else(|| InterpolateError::Syntax(rest.chars().take(40).collect()))?;
            out.push_str(&braced(&body[..end], vars, depth)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                // A lone `$` (e.g. `cost: 5$`) is kept, as Compose does.
                out.push('$');
                rest = after;
                continue;
            }
            let name = &after[..len];
            out.push_str(
                vars.get(name)
                    .ok_or_else(|| InterpolateError::Unset(name.to_owned()))?,
            );
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Every variable name `text` refers to, in any branch (`${A:-${B}}` names A and B), so that
/// a resolution given exactly those names gives the same result as one given every variable;
/// and in `required` those without which it fails (`$A`, `${A}`, `${A:?…}`, not inside
/// another's default). Refuses what [`interpolate`] refuses as syntax.
pub fn collect_references(
    text: &str,
    out: &mut std::collections::BTreeSet<String>,
    required: &mut std::collections::BTreeSet<String>,
) -> Result<(), InterpolateError> {
    references_at(text, out, Some(required), 0)
}

fn references_at(
    text: &str,
    out: &mut std::collections::BTreeSet<String>,
    mut required: Option<&mut std::collections::BTreeSet<String>>,
    depth: usize,
) -> Result<(), InterpolateError> {
    if depth > MAX_NESTING {
        return Err(InterpolateError::Syntax(text.chars().take(40).collect()));
    }
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body)
                .ok_or_else(|| InterpolateError::Syntax(rest.chars().take(40).collect()))?;
            let (name, colon, op) = braced_parts(&body[..end])?;
            out.insert(name.to_owned());
            let op_char = op.chars().next();
            if matches!(op_char, None | Some('?'))
                && let Some(r) = required.as_deref_mut()
            {
                r.insert(name.to_owned());
            }
            match op_char {
                None if !colon => {}
                Some('-' | '?' | '+') => references_at(&op[1..], out, None, depth + 1)?,
                _ => return Err(InterpolateError::Syntax(format!("${{{}}}", &body[..end]))),
            }
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                rest = after;
                continue;
            }
            out.insert(after[..len].to_owned());
            if let Some(r) = required.as_deref_mut() {
                r.insert(after[..len].to_owned());
            }
            rest = &after[len..];
        }
    }
    Ok(())
}

/// A `${…}` body split into its name, whether a `:` follows it, and the operator and
/// argument after that (`A:-x` → `("A", true, "-x")`).
fn braced_parts(body: &str) -> Result<(&str, bool, &str), InterpolateError> {
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(InterpolateError::Syntax(format!("${{{body}}}")));
    }
    let op = &body[name_len..];
    Ok(match op.strip_prefix(':') {
        Some(op) => (name, true, op),
        None => (name, false, op),
    })
}

/// Index of the `}` closing a `${`, counting nested `${…}`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(body: &str, vars: &Variables, depth: usize) -> Result<String, InterpolateError> {
    let (name, colon, op) = braced_parts(body)?;
    let value = vars.get(name);
    // With a colon, an empty value counts as unset.
    let set = match value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    let arg = |s: &str| interpolate_at(s, vars, depth + 1);
    match op.chars().next() {
        None if !colon => value
            .cloned()
            .ok_or_else(|| InterpolateError::Unset(name.to_owned())),
        Some('-') if set => Ok(value.cloned().unwrap_or_default()),
        Some('-') => arg(&op[1..]),
        Some('?') if set => Ok(value.cloned().unwrap_or_default()),
        Some('?') => Err(InterpolateError::Required {
            name: name.to_owned(),
            message: match arg(&op[1..])? {
                m if m.is_empty() => "it must be set".to_owned(),
                m => m,
            },
        }),
        Some('+') if set => arg(&op[1..]),
        Some('+') => Ok(String::new()),
        _ => Err(InterpolateError::Syntax(format!("${{{body}}}"))),
    }
}

/// Parses an env file: `KEY=value` lines, `#` comments, blank lines, optional `export `,
/// values optionally in single (literal) or double quotes.
pub fn parse_env_file(text: &str) -> Result<Variables, String> {
    let mut vars = Variables::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=value", n + 1))?;
        let k = k.trim();
        validate_name(k).map_err(|e| format!("line {}: {e}", n + 1))?;
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v.split(" #").next().unwrap_or(v).trim_end()
        };
        vars.insert(k.to_owned(), v.to_owned());
    }
    Ok(vars)
}

/// A variable name: letters, digits and `_`, not starting with a digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.starts_with(|c: char| c.is_ascii_digit())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "'{name}' is not a variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    Ok(())
}

/// Whether `text` refers to variable `name` (`$NAME`, `${NAME}`, `${NAME:-…}`, …); `$$` is a
/// literal dollar, not a reference.
pub fn references(text: &str, name: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let start = if bytes.get(i + 1) == Some(&b'{') {
            i + 2
        } else {
            i + 1
        };
        let end = bytes[start..]
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
            .map_or(bytes.len(), |p| start + p);
        if &text[start..end] == name {
            return true;
        }
        i = start.max(i + 1);
    }
    false
}

/// Prefix of the built-in variables edgefleet sets per device; apply variables may not use it.
pub const BUILTIN_PREFIX: &str = "EDGEFLEET_";

/// The built-ins of one device: `EDGEFLEET_DEVICE` and `EDGEFLEET_<LABEL>` for each label
/// (upper-cased, other characters as `_`), e.g. `EDGEFLEET_SITE`, `EDGEFLEET_AREA`,
/// `EDGEFLEET_LINE`.
pub fn device_builtins(device: &str, labels: &BTreeMap<String, String>) -> Variables {
    let mut vars = Variables::new();
    vars.insert(format!("{BUILTIN_PREFIX}DEVICE"), device.to_owned());
    for (k, v) in labels {
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        vars.entry(format!("{BUILTIN_PREFIX}{key}"))
            .or_insert_with(|| v.clone());
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        [("A", "1"), ("E", ""), ("SITE", "lyon")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn references_find_every_form() {
        for t in ["$TOKEN", "a ${TOKEN} b", "${TOKEN:-x}", "${X:-${TOKEN}}"] {
            assert!(references(t, "TOKEN"), "{t}");
        }
        for t in ["$$TOKEN", "$TOKEN2", "${TOKENS}", "TOKEN", "$ TOKEN"] {
            assert!(!references(t, "TOKEN"), "{t}");
        }
    }

    #[test]
    fn every_compose_form() {
        let v = vars();
        let cases = [
            ("$A", "1"),
            ("${A}", "1"),
            ("x${A}y", "x1y"),
            ("${E}", ""),
            ("${B:-d}", "d"),
            ("${E:-d}", "d"),
            ("${E-d}", ""),
            ("${B-d}", "d"),
            ("${A:-d}", "1"),
            ("${A:?no}", "1"),
            ("${A:+alt}", "alt"),
            ("${E:+alt}", ""),
            ("${E+alt}", "alt"),
            ("${B+alt}", ""),
            ("$$A", "$A"),
            ("$${A}", "${A}"),
            ("cost 5$", "cost 5$"),
            ("${B:-${SITE}-x}", "lyon-x"),
            ("${B:-${C:-deep}}", "deep"),
            ("${B:-}", ""),
            ("plain", "plain"),
        ];
        for (input, want) in cases {
            assert_eq!(interpolate(input, &v).as_deref(), Ok(want), "{input}");
            // Resolving with only the names it refers to gives the same result.
            let mut refs = std::collections::BTreeSet::new();
            collect_references(input, &mut refs, &mut Default::default()).unwrap();
            let only: Variables = v
                .iter()
                .filter(|(k, _)| refs.contains(*k))
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect();
            assert_eq!(interpolate(input, &only).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn references_name_every_branch_and_refuse_bad_syntax() {
        let mut refs = std::collections::BTreeSet::new();
        let mut required = std::collections::BTreeSet::new();
        collect_references(
            "$A ${B:-${C:-x}} ${D?${E}} ${F:+$G} $$H $${I} 5$ ${J-} ${K:?no}",
            &mut refs,
            &mut required,
        )
        .unwrap();
        let names: Vec<&str> = refs.iter().map(String::as_str).collect();
        assert_eq!(names, ["A", "B", "C", "D", "E", "F", "G", "J", "K"]);
        let names: Vec<&str> = required.iter().map(String::as_str).collect();
        assert_eq!(names, ["A", "D", "K"], "those without which it fails");
        for bad in ["${A", "${}", "${1A}", "${A!x}", "${A:}"] {
            assert!(
                matches!(
                    collect_references(bad, &mut refs, &mut required),
                    Err(InterpolateError::Syntax(_))
                ),
                "{bad}"
            );
            assert!(interpolate(bad, &vars()).is_err(), "{bad}");
        }
        let deep = format!("{}x{}", "${B:-".repeat(40), "}".repeat(40));
        assert!(collect_references(&deep, &mut refs, &mut required).is_err());
    }

    #[test]
    fn errors_name_the_variable() {
        let v = vars();
        assert_eq!(
            interpolate("${NOPE}", &v),
            Err(InterpolateError::Unset("NOPE".into()))
        );
        assert_eq!(
            interpolate("$NOPE", &v),
            Err(InterpolateError::Unset("NOPE".into()))
        );
        assert_eq!(
            interpolate("${E:?set the site}", &v),
            Err(InterpolateError::Required {
                name: "E".into(),
                message: "set the site".into()
            })
        );
        assert!(matches!(
            interpolate("${B?}", &v),
            Err(InterpolateError::Required { .. })
        ));
        for bad in ["${A", "${}", "${1A}", "${A!x}"] {
            assert!(
                matches!(interpolate(bad, &v), Err(InterpolateError::Syntax(_))),
                "{bad}"
            );
        }
        let deep = format!("{}x{}", "${B:-".repeat(40), "}".repeat(40));
        assert!(interpolate(&deep, &v).is_err());
        assert!(
            InterpolateError::Unset("P".into())
                .to_string()
                .contains("--var P=VALUE")
        );
    }

    #[test]
    fn env_files_and_builtins() {
        let vars =
            parse_env_file("# c\n\nexport A=1\nB = \"two words\"\nC='$lit'\nD=x # note\n").unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "$lit");
        assert_eq!(vars["D"], "x");
        assert!(parse_env_file("novalue\n").unwrap_err().contains("line 1"));
        assert!(parse_env_file("1A=x\n").is_err());
        let labels = [
            ("site".to_owned(), "lyon".to_owned()),
            ("line-no".to_owned(), "3".to_owned()),
        ]
        .into();
        let b = device_builtins("press-07", &labels);
        assert_eq!(b["EDGEFLEET_DEVICE"], "press-07");
        assert_eq!(b["EDGEFLEET_SITE"], "lyon");
        assert_eq!(b["EDGEFLEET_LINE_NO"], "3");
    }
}
