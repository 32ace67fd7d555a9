//! HTML escaping and the frame around every page. Everything that came from a device, a
//! user or the store is written through [`esc`]; the frame loads only same-origin assets
//! (the Content-Security-Policy forbids inline scripts and styles).

use edgefleet_domain::access::{Caller, Role};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What a URL component keeps as it is: letters, digits and `- _ . ~ /`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Escapes text for an HTML element or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a URL path segment or query value.
pub fn url_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-encodes a path segment (also `/`).
pub fn seg(s: &str) -> String {
    url_component(s).replace('/', "%2F")
}

/// The whole document: head, navigation (when logged in), `main`.
pub fn frame(title: &str, caller: Option<&Caller>, page: &str, main: &str) -> String {
    let mut b = String::with_capacity(main.len() + 2048);
    b += "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">";
    b += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
    b += &format!("<title>{} · edgefleet</title>", esc(title));
    b += "<link rel=\"stylesheet\" href=\"/static/app.css\">";
    b += "<script src=\"/static/app.js\" defer></script></head>";
    let (role, can_write) = caller.map_or(("", false), |c| {
        (
            c.role.as_str(),
            matches!(c.role, Role::Admin | Role::Operator),
        )
    });
    b += &format!(
        "<body data-page=\"{}\" data-role=\"{}\" data-can-write=\"{}\">",
        esc(page),
        esc(role),
        can_write
    );
    if let Some(c) = caller {
        b += "<header><nav><a class=\"brand\" href=\"/\">edgefleet</a>";
        for (href, name, key) in [
            ("/", "Fleet", "fleet"),
            ("/deployments", "Deployments", "deployments"),
            ("/rollouts", "Rollouts", "rollouts"),
        ] {
            b += &nav_link(href, name, page.starts_with(key));
        }
        if matches!(c.role, Role::Admin | Role::Auditor) {
            b += &nav_link("/audit", "Audit", page == "audit");
        }
        b += "</nav><div class=\"who\"><span id=\"live\" class=\"live off\" title=\"live updates\">static</span>";
        b += &format!(
            "<span class=\"user\">{} ({})</span>",
            esc(&c.username),
            esc(c.role.as_str())
        );
        b += "<form method=\"post\" action=\"/logout\"><button type=\"submit\" id=\"logout\">Log out</button></form></div></header>";
    }
    b += main;
    b += "</body></html>";
    b
}

fn nav_link(href: &str, name: &str, current: bool) -> String {
    format!(
        "<a href=\"{href}\"{}>{name}</a>",
        if current {
            " aria-current=\"page\""
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(url_component("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(seg("a/b"), "a%2Fb");
    }
}
