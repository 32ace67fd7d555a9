//! Who may act on what: the roles and the site scope of a caller. The HTTP layer maps routes
//! to roles (its role table); objects are placed in a site here.
//!
//! | role | may |
//! |---|---|
//! | `admin` | everything, including users and the audit log |
//! | `operator` | read, apply/delete deployments, set windows, start/control rollouts — within its sites |
//! | `viewer` | read — within its sites |
//! | `auditor` | read everything and the audit log; change nothing |
//!
//! An object is **within site S** when: a deployment's target pins `site=S`
//! (`site=lyon,line=3`; a target without a `site=` term, such as `*` or `id=a|b`, belongs to
//! no single site and only unscoped roles reach it); a maintenance window is the window of
//! site S; a device carries the label `site=S`; a rollout's deployment is within S.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// Operators and viewers act only within their sites.
    pub fn scoped(self) -> bool {
        matches!(self, Role::Operator | Role::Viewer)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!(
                "unknown role '{other}': use admin, operator, viewer or auditor"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub username: String,
    pub role: Role,
    pub sites: Vec<String>,
    /// Name of the token used (`login` for a login session).
    pub token_name: String,
    /// Unix seconds.
    pub expires_at: i64,
    #[serde(skip)]
    pub token_digest: String,
}

impl Caller {
    /// Whether an object of `site` (None: no single site) is within this caller's scope.
    pub fn sees(&self, site: Option<&str>) -> bool {
        !self.role.scoped() || site.is_some_and(|s| self.sites.iter().any(|m| m == s))
    }

    /// `'ana' is operator of site(s) lyon`, for refusals.
    pub fn scope_text(&self) -> String {
        format!(
            "'{}' is {} of site(s) {}",
            self.username,
            self.role,
            self.sites.join(", ")
        )
    }
}

/// The site a deployment target pins (`site=S`), if any.
pub fn deployment_site(target: &str) -> Option<String> {
    crate::selector::Selector::parse(target)
        .ok()
        .and_then(|s| s.labels.get("site").cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_scope() {
        let c = |role, sites: &[&str]| Caller {
            username: "u".into(),
            role,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            token_name: "login".into(),
            expires_at: 0,
            token_digest: String::new(),
        };
        let op = c(Role::Operator, &["lyon"]);
        assert!(op.sees(Some("lyon")));
        assert!(!op.sees(Some("paris")));
        assert!(!op.sees(None));
        assert!(c(Role::Auditor, &[]).sees(None));
        assert!(c(Role::Admin, &[]).sees(Some("paris")));
        assert_eq!(deployment_site("site=lyon,line=3").as_deref(), Some("lyon"));
        assert_eq!(deployment_site("*"), None);
        assert_eq!(deployment_site("id=a|b"), None);
    }
}
