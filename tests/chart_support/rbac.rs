//! A model of the RBAC a rendered chart grants, and the least-privilege rules it must meet.
//! Pure functions over the rendered documents, so the checks are themselves tested on
//! hand-written RBAC that breaks each rule.

use std::collections::BTreeSet;

use serde_json::Value;

/// Where a permission applies: every namespace and cluster-scoped objects (a
/// ClusterRoleBinding), or one namespace (a RoleBinding).
pub const CLUSTER_WIDE: &str = "<cluster-wide>";

/// One verb on one resource, flattened from a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// [`CLUSTER_WIDE`] or a namespace.
    pub scope: String,
    pub group: String,
    pub resource: String,
    pub verb: String,
    /// A resourceNames entry; empty: any name.
    pub name: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{} {}/{} in {}", self.verb, group, self.resource, self.scope)?;
        if !self.name.is_empty() {
            write!(f, " (name {})", self.name)?;
        }
        Ok(())
    }
}

/// Resources no capturefleet role may name: Secret values, and the ways to run code in or
/// act as someone else.
const FORBIDDEN_RESOURCES: &[&str] = &[
    "secrets",
    "serviceaccounts/token",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "pods/proxy",
    "nodes/proxy",
    "services/proxy",
];
/// Verbs that grant more RBAC or another identity.
const FORBIDDEN_VERBS: &[&str] = &["escalate", "bind", "impersonate"];
/// API groups of identity and access: no capturefleet role touches them.
const FORBIDDEN_GROUPS: &[&str] = &[
    "rbac.authorization.k8s.io",
    "authentication.k8s.io",
    "certificates.k8s.io",
    "admissionregistration.k8s.io",
];

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn is_role(doc: &Value) -> bool {
    matches!(doc["kind"].as_str(), Some("Role" | "ClusterRole"))
}

fn role_name(doc: &Value) -> String {
    format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or_default(),
        doc["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Everything in the rendered roles that least privilege forbids, whoever the role is for.
pub fn violations(docs: &[Value]) -> Vec<String> {
    let mut out = vec![];
    for doc in docs.iter().filter(|d| is_role(d)) {
        let role = role_name(doc);
        if !doc["aggregationRule"].is_null() {
            out.push(format!(
                "{role}: aggregationRule (would pull in rules written elsewhere)"
            ));
        }
        for (i, rule) in doc["rules"].as_array().cloned().unwrap_or_default().iter().enumerate() {
            let (groups, resources, verbs, names, urls) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
                strings(&rule["resourceNames"]),
                strings(&rule["nonResourceURLs"]),
            );
            let at = format!("{role} rule {i}");
            for (what, list) in [
                ("apiGroups", &groups),
                ("resources", &resources),
                ("verbs", &verbs),
                ("resourceNames", &names),
            ] {
                if list.iter().any(|s| s.contains('*')) {
                    out.push(format!("{at}: wildcard in {what} {list:?}"));
                }
            }
            if !urls.is_empty() {
                out.push(format!("{at}: nonResourceURLs {urls:?}"));
            }
            for r in &resources {
                if FORBIDDEN_RESOURCES.contains(&r.as_str()) {
                    out.push(format!("{at}: grants {verbs:?} on {r}"));
                }
            }
            for v in &verbs {
                if FORBIDDEN_VERBS.contains(&v.as_str()) {
                    out.push(format!("{at}: verb {v}"));
                }
            }
            for g in &groups {
                if FORBIDDEN_GROUPS.contains(&g.as_str()) {
                    out.push(format!("{at}: API group {g}"));
                }
            }
            if resources.is_empty() && urls.is_empty() {
                out.push(format!("{at}: no resources"));
            }
        }
    }
    out
}

fn find_role<'a>(docs: &'a [Value], kind: &str, name: &str, namespace: Option<&str>) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"].as_str() == Some(kind)
            && d["metadata"]["name"].as_str() == Some(name)
            && (kind == "ClusterRole" || d["metadata"]["namespace"].as_str() == namespace)
    })
}

/// Every permission the rendered bindings give the ServiceAccount `sa` of namespace `sa_ns`.
/// Panics when a binding refers to a role the chart does not render (it must be self-contained).
pub fn granted(docs: &[Value], sa: &str, sa_ns: &str) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("RoleBinding" | "ClusterRoleBinding")))
    {
        let bound = binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"].as_str() == Some(sa)
                    && s["namespace"].as_str() == Some(sa_ns)
            })
        });
        if !bound {
            continue;
        }
        let binding_ns = binding["metadata"]["namespace"].as_str();
        let scope = match binding["kind"].as_str() {
            Some("ClusterRoleBinding") => CLUSTER_WIDE.to_owned(),
            _ => binding_ns.expect("a RoleBinding has a namespace").to_owned(),
        };
        let kind = binding["roleRef"]["kind"].as_str().unwrap();
        let name = binding["roleRef"]["name"].as_str().unwrap();
        let role = find_role(docs, kind, name, binding_ns).unwrap_or_else(|| {
            panic!(
                "binding {} refers to {kind} {name}, which the chart does not render",
                binding["metadata"]["name"]
            )
        });
        for rule in role["rules"].as_array().cloned().unwrap_or_default() {
            let names = strings(&rule["resourceNames"]);
            let names = if names.is_empty() { vec![String::new()] } else { names };
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        for name in &names {
                            out.insert(Permission {
                                scope: scope.clone(),
                                group: group.clone(),
                                resource: resource.clone(),
                                verb: verb.clone(),
                                name: name.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// What the operator needs on namespaced objects, derived from src/operator/ (see the chart's
/// `capturefleet.namespacedRules`): (API group, resource, verbs).
pub const OPERATOR_NAMESPACED: &[(&str, &str, &[&str])] = &[
    ("capturefleet.dev", "capturedevices", &["list", "watch", "patch"]),
    ("capturefleet.dev", "devicepools", &["list", "watch"]),
    ("capturefleet.dev", "archivesinks", &["list", "watch"]),
    ("capturefleet.dev", "capturedevices/status", &["patch"]),
    ("capturefleet.dev", "devicepools/status", &["patch"]),
    ("capturefleet.dev", "archivesinks/status", &["patch"]),
    ("", "pods", &["list", "watch", "create", "patch", "delete"]),
    (
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("policy", "poddisruptionbudgets", &["get", "create", "patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// The operator's complete, reviewed permission set: namespaced rules in `scope` (a namespace,
/// or [`CLUSTER_WIDE`]), read-only nodes cluster-wide, and its own Lease in `lease_ns`.
pub fn operator_expected(
    scope: &str,
    lease_ns: &str,
    lease: &str,
    owner_ref_enforcement: bool,
) -> BTreeSet<Permission> {
    let p = |scope: &str, group: &str, resource: &str, verb: &str, name: &str| Permission {
        scope: scope.into(),
        group: group.into(),
        resource: resource.into(),
        verb: verb.into(),
        name: name.into(),
    };
    let mut out = BTreeSet::new();
    for (group, resource, verbs) in OPERATOR_NAMESPACED {
        for verb in *verbs {
            out.insert(p(scope, group, resource, verb, ""));
        }
    }
    if owner_ref_enforcement {
        for r in ["capturedevices/finalizers", "devicepools/finalizers"] {
            out.insert(p(scope, "capturefleet.dev", r, "update", ""));
        }
    }
    for verb in ["list", "watch"] {
        out.insert(p(CLUSTER_WIDE, "", "nodes", verb, ""));
    }
    out.insert(p(lease_ns, "coordination.k8s.io", "leases", "create", ""));
    for verb in ["get", "patch"] {
        out.insert(p(lease_ns, "coordination.k8s.io", "leases", verb, lease));
    }
    out
}

/// The API group of a resource as the operator's request metrics name it (they carry the
/// resource, not the group).
pub fn group_of(resource: &str) -> &'static str {
    match resource.split('/').next().unwrap_or_default() {
        "capturedevices" | "devicepools" | "archivesinks" => "capturefleet.dev",
        "poddisruptionbudgets" => "policy",
        "events" => "events.k8s.io",
        "leases" => "coordination.k8s.io",
        _ => "",
    }
}

/// Whether `granted` allows `verb` on `group/resource` in `namespace` (None: cluster-scoped),
/// for some object name.
pub fn allows(
    granted: &BTreeSet<Permission>,
    namespace: Option<&str>,
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    granted.iter().any(|p| {
        p.group == group
            && p.resource == resource
            && p.verb == verb
            && (p.scope == CLUSTER_WIDE || Some(p.scope.as_str()) == namespace)
    })
}
