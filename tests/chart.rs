//! The Helm chart (charts/capturefleet), its alerts, dashboard and image, tested for real:
//! - without a server: the chart's CRDs are the generated ones, values.schema.json accepts the
//!   shipped values and refuses bad ones, the Dockerfile agrees with the chart and the operator,
//!   the RBAC checks catch what they must, alerts and dashboard name only real metrics;
//! - with the cluster's helm (`#[ignore]`, run by `make test`): `helm lint --strict`, bad values
//!   refused at install, rendered RBAC least-privilege in every mode, promtool on the rules;
//! - against the test cluster: server-side dry-run of every rendering, CRD upgrades through
//!   `helm upgrade`, and the operator run as the chart's ServiceAccount proving its RBAC is
//!   sufficient (a fleet reaches AwaitingEnrollment, spares, drains) and minimal (`auth can-i`).

mod chart_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chart_support::operator_as_sa::{OperatorAsSa, Release, api_requests, service_account_kubeconfig};
use chart_support::rbac::{self, CLUSTER_WIDE, Permission};
use chart_support::tools::{self, chart, documents, helm, kubectl, must, repo, scratch, template};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{TestNamespace, apply_yaml, client, eventually, install_crds, wait_crd_established};

use capturefleet::api::{CaptureDevice, DevicePhase, DevicePool};

const WAIT: Duration = Duration::from_secs(90);
/// The edge-value files shipped in charts/capturefleet/ci/.
const VALUE_FILES: &[&str] = &[
    "ci/namespaced-values.yaml",
    "ci/monitoring-values.yaml",
    "ci/single-replica-values.yaml",
    "ci/custom-values.yaml",
];
/// Operator tests watch devices; a cluster-mode operator would also act on the namespaced
/// test's devices, so they take turns.
static ONE_OPERATOR_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The CRD upgrade test applies an older CRD and checks Helm replaces it; the other tests'
/// server-side apply of the current CRDs must not run in between.
static CRD_CHANGES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Install the current CRDs (server-side apply), unless the CRD upgrade test is running.
async fn current_crds(client: &kube::Client) {
    let _shared = CRD_CHANGES.read().await;
    install_crds(client).await;
}

fn yaml_file(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap()).unwrap()
}

fn kinds(docs: &[Value], kind: &str) -> Vec<Value> {
    docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
}

// ---- without a server ------------------------------------------------------------------

#[test]
fn chart_crds_are_the_generated_crds() {
    let path = chart().join("files/crds/capturefleet.dev.yaml");
    let in_chart = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        in_chart == capturefleet::api::crdgen::render().unwrap(),
        "{} differs from `capturefleet crd`: run `make crds` and commit the result",
        path.display()
    );
}

fn schema_validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("values.schema.json is a valid JSON Schema")
}

/// Helm validates the merged values (defaults overlaid with the user's), as here.
fn merged(overlay: &Value) -> Value {
    fn merge(base: &mut Value, over: &Value) {
        match (base, over) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (b, o) => *b = o.clone(),
        }
    }
    let mut values = yaml_file(&chart().join("values.yaml"));
    merge(&mut values, overlay);
    values
}

#[test]
fn values_schema_accepts_the_shipped_values_and_refuses_bad_ones() {
    let validator = schema_validator();
    let defaults = yaml_file(&chart().join("values.yaml"));
    let errors: Vec<String> = validator.iter_errors(&defaults).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "values.yaml fails its own schema: {errors:?}");
    for file in VALUE_FILES {
        let values = merged(&yaml_file(&chart().join(file)));
        let errors: Vec<String> = validator.iter_errors(&values).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{file} fails the schema: {errors:?}");
    }
    let bad = [
        json!({"replicas": 0}),
        json!({"replicas": "2"}),
        json!({"replicas": 2, "leaderElection": {"enabled": false}}),
        json!({"watchNamespace": "Not_A_Namespace"}),
        json!({"operator": {"logFormt": "json"}}),
        json!({"operator": {"logFormat": "yaml"}}),
        json!({"image": {"digest": "latest"}}),
        json!({"resources": {"limits": {"memory": "lots"}}}),
        json!({"networkPolicy": {"apiServer": [{"cidr": "kubernetes", "ports": [443]}]}}),
        json!({"metrics": {"prometheusRule": {"thresholds": {"spoolBacklogRatio": 2}}}}),
        json!({"metrics": {"serviceMonitor": {"interval": "often"}}}),
        json!({"podDisruptionBudget": {"maxUnavailable": 0}}),
        json!({"unknownTopLevelKey": true}),
    ];
    for overlay in bad {
        assert!(
            !validator.is_valid(&merged(&overlay)),
            "the schema accepts bad values {overlay}"
        );
    }
}

/// The Dockerfile's final stage, as (instruction, argument) pairs.
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<Vec<(String, String)>> = vec![];
    for line in joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (instr, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instr = instr.to_uppercase();
        if instr == "FROM" {
            stages.push(vec![]);
        }
        stages
            .last_mut()
            .expect("FROM first")
            .push((instr, arg.trim().to_owned()));
    }
    stages.pop().expect("a final stage")
}

#[test]
fn dockerfile_agrees_with_the_chart_and_the_operator() {
    use capturefleet::operator::device::build::RUN_AS;
    let stage = final_stage();
    let get = |i: &str| -> Vec<String> { stage.iter().filter(|(k, _)| k == i).map(|(_, v)| v.clone()).collect() };
    let from = &get("FROM")[0];
    assert!(
        from.starts_with("gcr.io/distroless/") && from.ends_with(":nonroot"),
        "runtime base is distroless nonroot, got {from}"
    );
    assert_eq!(
        get("USER"),
        vec![format!("{RUN_AS}:{RUN_AS}")],
        "the image runs as the uid the operator's device Pods run as"
    );
    let entrypoint: Vec<String> = serde_json::from_str(&get("ENTRYPOINT")[0]).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, vec!["/usr/local/bin/capturefleet".to_owned()]);
    // Device Pods give only args (the image's entrypoint runs them) and exec probes that call
    // `capturefleet` by name: it must be on the distroless PATH.
    assert!(
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            .split(':')
            .any(|d| format!("{d}/capturefleet") == entrypoint[0])
    );
    // The build stage uses the crate's rust-version.
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        text.contains(&format!("rust:{msrv}-")),
        "the build stage uses rust {msrv}"
    );
    // The chart runs the operator as that user, read-only, from the image the examples use.
    let values = yaml_file(&chart().join("values.yaml"));
    assert_eq!(values["podSecurityContext"]["runAsUser"], json!(RUN_AS));
    assert_eq!(values["podSecurityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(values["securityContext"]["readOnlyRootFilesystem"], json!(true));
    let chart_yaml = yaml_file(&chart().join("Chart.yaml"));
    assert_eq!(
        chart_yaml["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "the chart's appVersion (the default image tag) is the crate version"
    );
    let image = format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    let pool = std::fs::read_to_string(repo().join("examples/20-pool-mac.yaml")).unwrap();
    assert!(
        pool.contains(&image),
        "examples/20-pool-mac.yaml uses the chart's image {image}"
    );
}

#[test]
fn rbac_checks_catch_secrets_wildcards_and_extra_permissions() {
    let role = |rules: Value| json!({"kind": "ClusterRole", "metadata": {"name": "r"}, "rules": rules});
    let fine = role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]));
    assert!(rbac::violations(&[fine]).is_empty());
    for (bad, what) in [
        (
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
            "secrets",
        ),
        (
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]),
            "wildcard",
        ),
        (
            json!([{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}]),
            "wildcard",
        ),
        (
            json!([{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]),
            "wildcard",
        ),
        (
            json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"]}]),
            "bind",
        ),
        (
            json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
            "pods/exec",
        ),
        (
            json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]),
            "nonResourceURLs",
        ),
    ] {
        let found = rbac::violations(&[role(bad.clone())]);
        assert!(found.iter().any(|v| v.contains(what)), "{bad} not caught ({found:?})");
    }
    // The permission model: a binding to the SA, an exact comparison with the reviewed set.
    let docs = vec![
        json!({"kind": "ClusterRole", "metadata": {"name": "op"}, "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}),
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "op"}, "roleRef": {"kind": "ClusterRole", "name": "op"},
               "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "sys"}]}),
    ];
    let granted = rbac::granted(&docs, "sa", "sys");
    assert_eq!(granted.len(), 3);
    assert!(rbac::allows(&granted, Some("any"), "", "secrets", "list"));
    assert!(!rbac::allows(&granted, Some("any"), "", "pods", "list"));
    let expected = rbac::operator_expected(CLUSTER_WIDE, "sys", "lease", false);
    assert!(granted.difference(&expected).any(|p| p.resource == "secrets"));
}

/// Metric names a PromQL text uses: identifiers of our prefixes (histogram series suffixes
/// folded into their metric), plus `up` and `process_*`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            let before = text[..start].chars().next_back();
            if (word.starts_with("capture_") || word.starts_with("capturefleet_") || word.starts_with("process_"))
                && before != Some('$')
            {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                out.insert(base.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Metric names registered in the operator's and the agent's code (string literals).
fn registered_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in ["src/operator/metrics.rs", "src/agent/metrics.rs"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            if (piece.starts_with("capture_") || piece.starts_with("capturefleet_"))
                && piece.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                out.insert(piece.to_owned());
            }
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(chart().join("dashboards/capturefleet-fleet.json")).unwrap())
        .expect("the dashboard is JSON")
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = vec![];
    for panel in dashboard()["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().cloned().unwrap_or_default() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn alerts_and_dashboard_name_only_metrics_the_code_exports() {
    let registered = registered_metrics();
    assert!(registered.contains("capturefleet_operator_leader") && registered.contains("capture_spool_full"));
    let rules = std::fs::read_to_string(chart().join("templates/prometheusrule.yaml")).unwrap();
    let mut used = metric_names(&rules);
    for (_, expr) in dashboard_exprs() {
        used.extend(metric_names(&expr));
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|m| !registered.contains(*m) && !m.starts_with("process_"))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts or dashboard use metrics nobody exports: {unknown:?}"
    );
    // Every alert has a runbook, and every runbook an alert.
    let alerts: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect();
    assert!(alerts.len() >= 7);
    let runbooks: BTreeSet<String> = std::fs::read_dir(repo().join("docs/runbooks"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".md").map(str::to_owned))
        .filter(|n| n != "README")
        .collect();
    assert_eq!(alerts, runbooks, "one runbook per alert, named after it");
    // The dashboard: unique panel ids, a Prometheus datasource variable, no hard-coded uid.
    let d = dashboard();
    let ids: Vec<i64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "panel ids are unique"
    );
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");
}

// ---- with the cluster's helm ---------------------------------------------------------------

#[test]
#[ignore = "needs helm from the test cluster's bin dir (tests/cluster/up); run by `make test`"]
fn helm_lint_strict_passes_with_every_values_file() {
    let chart = chart();
    let kv = tools::kube_version();
    let mut files = vec![None];
    files.extend(VALUE_FILES.iter().map(|f| Some(chart.join(f))));
    for file in files {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap(), "--kube-version", &kv];
        let f = file.as_ref().map(|p| p.to_string_lossy().into_owned());
        if let Some(f) = &f {
            args.extend(["-f", f.as_str()]);
        }
        let r = helm(&args);
        assert!(r.ok, "helm lint --strict {f:?} failed:\n{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("0 chart(s) failed"), "{}", r.stdout);
    }
}

#[test]
#[ignore = "needs helm from the test cluster's bin dir (tests/cluster/up); run by `make test`"]
fn bad_values_are_refused_at_install_with_a_clear_message() {
    for (set, expect) in [
        ("replicas=0", "/replicas"),
        ("watchNamespace=Bad_Namespace", "/watchNamespace"),
        ("operator.logFormat=yaml", "/operator/logFormat"),
        ("operator.logFormt=json", "logFormt"),
        ("image.digest=latest", "/image/digest"),
        ("resources.limits.memory=lots", "/resources/limits/memory"),
        ("leaderElection.enabled=false", "/leaderElection/enabled"),
        (
            "metrics.prometheusRule.thresholds.spoolBacklogRatio=2",
            "spoolBacklogRatio",
        ),
    ] {
        let err = template("bad", "default", &[], &[set.to_owned()]).expect_err(set);
        assert!(
            err.contains("values don't meet the specifications of the schema") && err.contains(expect),
            "--set {set}: the error should name {expect}:\n{err}"
        );
    }
}

fn release_sets(file: &str) -> Vec<String> {
    // Namespaced edge values name their namespace; the tests pick their own.
    if file.contains("namespaced") {
        vec!["watchNamespace=tenant-ns".into()]
    } else {
        vec![]
    }
}

#[test]
#[ignore = "needs helm from the test cluster's bin dir (tests/cluster/up); run by `make test`"]
fn rendered_rbac_is_least_privilege_in_every_mode() {
    /// (values file, sets, scope of the namespaced rules, service account, lease, owner-ref rules)
    type Case<'a> = (&'a str, Vec<String>, &'a str, &'a str, &'a str, bool);
    let cases: Vec<Case> = vec![
        ("", vec![], CLUSTER_WIDE, "rel-capturefleet", "rel-capturefleet", false),
        (
            "ci/namespaced-values.yaml",
            release_sets("namespaced"),
            "tenant-ns",
            "rel-capturefleet",
            "rel-capturefleet",
            false,
        ),
        (
            "ci/monitoring-values.yaml",
            vec![],
            CLUSTER_WIDE,
            "rel-capturefleet",
            "rel-capturefleet",
            false,
        ),
        (
            "ci/custom-values.yaml",
            vec![],
            CLUSTER_WIDE,
            "capture-operator",
            "compliance-capture-leader",
            true,
        ),
    ];
    for (file, sets, scope, sa, lease, owner_refs) in cases {
        let files: Vec<&str> = if file.is_empty() { vec![] } else { vec![file] };
        let docs = documents(&template("rel", "capturefleet-system", &files, &sets).unwrap());
        let violations = rbac::violations(&docs);
        assert!(
            violations.is_empty(),
            "{file}: least privilege violated:\n{}",
            violations.join("\n")
        );
        let granted = rbac::granted(&docs, sa, "capturefleet-system");
        let expected = rbac::operator_expected(scope, "capturefleet-system", lease, owner_refs);
        let extra: Vec<String> = granted.difference(&expected).map(Permission::to_string).collect();
        let missing: Vec<String> = expected.difference(&granted).map(Permission::to_string).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{file}: the operator's permissions differ from the reviewed set\n extra: {extra:#?}\n missing: {missing:#?}"
        );
        // The tenant roles only read or manage capturefleet objects.
        for role in kinds(&docs, "ClusterRole") {
            let name = role["metadata"]["name"].as_str().unwrap();
            if name.ends_with("-view") || name.ends_with("-edit") {
                for rule in role["rules"].as_array().unwrap() {
                    assert_eq!(rule["apiGroups"], json!(["capturefleet.dev"]), "{name}");
                }
            }
        }
    }
    // Without leader election there is no Lease role at all.
    let docs = documents(&template("rel", "capturefleet-system", &["ci/single-replica-values.yaml"], &[]).unwrap());
    let granted = rbac::granted(&docs, "rel-capturefleet", "capturefleet-system");
    assert!(!granted.iter().any(|p| p.resource == "leases"));
}

/// JSON numbers as the API server sees them: `1.0` and `1` are one value (the generator writes
/// schema bounds as floats; Helm's YAML round trip writes whole numbers as integers).
fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = json!(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

#[test]
#[ignore = "needs helm from the test cluster's bin dir (tests/cluster/up); run by `make test`"]
fn rendered_crds_are_exactly_the_generated_crds_plus_the_keep_policy() {
    let docs = documents(&template("rel", "capturefleet-system", &[], &[]).unwrap());
    let crds = kinds(&docs, "CustomResourceDefinition");
    let generated: Vec<Value> = capturefleet::api::crdgen::all()
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(crds.len(), generated.len());
    for (mut rendered, generated) in crds.into_iter().zip(generated) {
        let meta = rendered["metadata"].as_object_mut().unwrap();
        let annotations = meta.remove("annotations").unwrap_or_default();
        assert_eq!(annotations, json!({"helm.sh/resource-policy": "keep"}));
        let labels = meta.remove("labels").unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        let mut generated = generated;
        normalize_numbers(&mut rendered);
        normalize_numbers(&mut generated);
        assert_eq!(
            rendered, generated,
            "the chart renders {} differently",
            generated["metadata"]["name"]
        );
    }
    // crds.install=false leaves them out; keep=false drops the policy.
    let docs = documents(&template("rel", "capturefleet-system", &[], &["crds.install=false".into()]).unwrap());
    assert!(kinds(&docs, "CustomResourceDefinition").is_empty());
    let docs = documents(&template("rel", "capturefleet-system", &[], &["crds.keep=false".into()]).unwrap());
    assert!(kinds(&docs, "CustomResourceDefinition")[0]["metadata"]["annotations"].is_null());
}

/// Write the `spec.groups` of the PrometheusRule rendered with `sets` as a rules file.
fn rendered_rules(
    release: &str,
    namespace: &str,
    files: &[&str],
    sets: &[String],
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let docs = documents(&template(release, namespace, files, sets).unwrap());
    let rule = kinds(&docs, "PrometheusRule").pop().expect("a PrometheusRule");
    let path = dir.join("rendered-rules.yaml");
    std::fs::write(
        &path,
        serde_yaml::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    path
}

#[test]
#[ignore = "needs helm from the test cluster's bin dir and promtool (scripts/install-promtool); run by `make test`"]
fn alerts_pass_promtool_check_and_their_unit_tests() {
    let promtool = tools::promtool();
    let dir = scratch("alerts");
    // Every rendering that carries rules passes `promtool check rules`, and each alert has a
    // severity, summary, description and a runbook under docs/runbooks/.
    for (files, sets) in [
        (vec!["ci/monitoring-values.yaml"], vec![]),
        (
            vec!["ci/namespaced-values.yaml"],
            vec![
                "metrics.prometheusRule.enabled=true".to_owned(),
                "watchNamespace=tenant-ns".to_owned(),
            ],
        ),
    ] {
        let path = rendered_rules("rel", "capturefleet-system", &files, &sets, &dir);
        let out = must(&promtool, &["check", "rules", path.to_str().unwrap()], None);
        assert!(out.contains("SUCCESS"), "{out}");
        let rules = yaml_file(&path);
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["alert"].as_str().unwrap();
                assert!(
                    matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")),
                    "{name}"
                );
                for a in ["summary", "description", "runbook_url"] {
                    assert!(
                        rule["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                        "{name}: {a}"
                    );
                }
                let url = rule["annotations"]["runbook_url"].as_str().unwrap();
                assert!(url.ends_with(&format!("/docs/runbooks/{name}.md")), "{name}: {url}");
                assert!(
                    repo().join(format!("docs/runbooks/{name}.md")).exists(),
                    "{name}: runbook missing"
                );
            }
        }
    }
    // The alerts' behaviour on synthetic series (tests/chart/alerts.test.yaml), on the rules
    // rendered with default values.
    rendered_rules(
        "capturefleet",
        "capturefleet-system",
        &[],
        &["metrics.prometheusRule.enabled=true".to_owned()],
        &dir,
    );
    std::fs::copy(
        repo().join("tests/chart/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    let r = tools::run(
        &promtool,
        &["test", "rules", dir.join("alerts.test.yaml").to_str().unwrap()],
        None,
        &[],
    );
    assert!(
        r.ok && r.stdout.contains("SUCCESS"),
        "promtool test rules failed:\n{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
#[ignore = "needs promtool (scripts/install-promtool); run by `make test`"]
fn dashboard_queries_are_valid_promql() {
    let promtool = tools::promtool();
    let dir = scratch("dashboard");
    // Each panel query as a recording rule, Grafana's variables replaced by values, so that
    // promtool parses every one.
    let rules: Vec<Value> = dashboard_exprs()
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$operator_namespace", ".*")
                .replace("$namespace", ".*")
                .replace("$job", ".*");
            json!({"record": format!("capturefleet:dashboard_panel_{i}"), "expr": expr})
        })
        .collect();
    assert!(rules.len() >= 20);
    let path = dir.join("dashboard-rules.yaml");
    std::fs::write(
        &path,
        serde_yaml::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap(),
    )
    .unwrap();
    let out = must(&promtool, &["check", "rules", path.to_str().unwrap()], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---- against the test cluster ------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up) and the Go module proxy; run by `make test`"]
async fn rendered_manifests_pass_server_side_dry_run() {
    let client = client().await;
    current_crds(&client).await;
    // The Prometheus Operator's CRDs, so ServiceMonitor, PodMonitor and PrometheusRule are
    // validated by the API server too.
    let crds = tools::prometheus_operator_crds();
    must(
        &tools::cluster_bin("kubectl"),
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ],
        None,
    );
    for name in [
        "servicemonitors.monitoring.coreos.com",
        "podmonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ] {
        wait_crd_established(&client, name).await;
    }
    let sys = TestNamespace::new(&client, "chart-dry").await;
    let tenant = TestNamespace::new(&client, "chart-dry-tenant").await;
    let mut cases: Vec<(Vec<&str>, Vec<String>)> = vec![(vec![], vec![])];
    for file in VALUE_FILES {
        let sets = if file.contains("namespaced") {
            vec![format!("watchNamespace={}", tenant.name)]
        } else {
            vec![]
        };
        cases.push((vec![file], sets));
    }
    for (files, sets) in cases {
        let manifest = template("dry", &sys.name, &files, &sets).unwrap();
        let r = kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "--field-manager",
                "helm",
                "-f",
                "-",
            ],
            Some(&manifest),
        );
        assert!(r.ok, "server-side dry-run of {files:?} {sets:?} failed:\n{}", r.stderr);
        let applied = r.stdout.lines().filter(|l| l.contains("(server dry run)")).count();
        assert_eq!(
            applied,
            documents(&manifest).len(),
            "every object was validated:\n{}",
            r.stdout
        );
    }
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    let client = client().await;
    let _exclusive = CRD_CHANGES.write().await;
    install_crds(&client).await;
    let sys = TestNamespace::new(&client, "chart-crd").await;
    let release = format!("crd-{:06x}", rand::random::<u32>() & 0xffffff);
    // An "older" chart whose CaptureDevice CRD lacks its last printer column.
    let dir = scratch("crd-upgrade");
    let old = dir.join("old-chart");
    must(
        std::path::Path::new("cp"),
        &["-r", chart().to_str().unwrap(), old.to_str().unwrap()],
        None,
    );
    let crd_file = old.join("files/crds/capturefleet.dev.yaml");
    let text = std::fs::read_to_string(&crd_file).unwrap();
    let mut docs: Vec<serde_yaml::Value> = text
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let device_crd = docs
        .iter_mut()
        .find(|d| d["metadata"]["name"] == "capturedevices.capturefleet.dev")
        .unwrap();
    let columns = device_crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_sequence_mut()
        .unwrap();
    let dropped = columns.pop().unwrap()["name"].as_str().unwrap().to_owned();
    let full_count = columns.len() + 1;
    let old_text: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    std::fs::write(&crd_file, old_text).unwrap();

    // The CRDs already exist (installed server-side by the tests, as a first `make crds` or
    // kubectl apply would): adopt them into the release, as the chart README says.
    for crd in ["archivesinks", "capturedevices", "devicepools"] {
        let name = format!("crd/{crd}.capturefleet.dev");
        must(
            &tools::cluster_bin("kubectl"),
            &["label", &name, "app.kubernetes.io/managed-by=Helm", "--overwrite"],
            None,
        );
        must(
            &tools::cluster_bin("kubectl"),
            &[
                "annotate",
                &name,
                &format!("meta.helm.sh/release-name={release}"),
                &format!("meta.helm.sh/release-namespace={}", sys.name),
                "--overwrite",
            ],
            None,
        );
    }
    let columns_now = || {
        let r = kubectl(
            &[
                "get",
                "crd",
                "capturedevices.capturefleet.dev",
                "-o",
                "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
            ],
            None,
        );
        assert!(r.ok, "{}", r.stderr);
        r.stdout.split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let common = ["--namespace", sys.name.as_str(), "--set", "networkPolicy.enabled=false"];
    let mut args = vec!["install", release.as_str(), old.to_str().unwrap()];
    args.extend(common);
    let r = helm(&args);
    assert!(r.ok, "helm install (old chart) failed:\n{}", r.stderr);
    assert_eq!(columns_now().len(), full_count - 1, "the old chart's CRD is applied");
    assert!(!columns_now().contains(&dropped));

    let chart = chart();
    let mut args = vec!["upgrade", release.as_str(), chart.to_str().unwrap()];
    args.extend(common);
    let r = helm(&args);
    assert!(r.ok, "helm upgrade failed:\n{}", r.stderr);
    assert!(
        columns_now().contains(&dropped),
        "helm upgrade upgraded the CRD (column {dropped} is back)"
    );
    let policy = kubectl(
        &[
            "get",
            "crd",
            "capturedevices.capturefleet.dev",
            "-o",
            "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
        ],
        None,
    );
    assert_eq!(policy.stdout, "keep");

    let r = helm(&["uninstall", &release, "--namespace", &sys.name]);
    assert!(r.ok, "helm uninstall failed:\n{}", r.stderr);
    for crd in ["archivesinks", "capturedevices", "devicepools"] {
        let r = kubectl(
            &[
                "get",
                "crd",
                &format!("{crd}.capturefleet.dev"),
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ],
            None,
        );
        assert!(
            r.ok && r.stdout.is_empty(),
            "helm uninstall kept CRD {crd} ({}{})",
            r.stdout,
            r.stderr
        );
    }
    // The release's own objects are gone.
    let r = kubectl(&["get", "deployments", "--namespace", &sys.name, "-o", "name"], None);
    assert!(r.ok && r.stdout.trim().is_empty(), "{}", r.stdout);
}

fn fleet_yaml(devices: &[&str]) -> String {
    let mut yaml = support::ARCHIVE_SINK_YAML.to_owned()
        + r#"apiVersion: capturefleet.dev/v1alpha1
kind: DevicePool
metadata: {name: advisers}
spec:
  runtime: {image: "example.invalid/macos-runtime:15"}
  agent: {image: "example.invalid/capturefleet:test"}
  volume: {size: 1Gi}
  enrollment: {urlTemplate: "https://enroll.example/{namespace}/{device}"}
  warmSpares: 1
"#;
    for (i, d) in devices.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: capturefleet.dev/v1alpha1\nkind: CaptureDevice\nmetadata: {{name: {d}}}\nspec:\n  user: {{id: \"e{i:04}\", displayName: \"Jane Quincy Adviser{i}\", email: \"jane.adviser{i}@example.com\"}}\n  poolRef: {{name: advisers}}\n  sinkRefs: [{{name: archive}}]\n"
        ));
    }
    yaml
}

async fn pods_labelled(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn booted(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == "device" && c.started == Some(true)))
}

async fn phase(devices: &Api<CaptureDevice>, name: &str) -> Option<DevicePhase> {
    devices.get(name).await.ok()?.status?.phase
}

/// What the operator must be able to do, exercised end to end in `tenant`: warm spares,
/// a claim, cold provisioning, status, enrollment, a drain with a clean receipt (finalizer,
/// Pod and volume deletion), scaling spares down (Pod and volume deletion).
async fn fleet_lifecycle(client: &kube::Client, tenant: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), tenant);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), tenant);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), tenant);
    let pools: Api<DevicePool> = Api::namespaced(client.clone(), tenant);
    let spare_selector = "capturefleet.dev/pool=advisers,capturefleet.dev/role=spare";

    apply_yaml(client, tenant, &fleet_yaml(&[])).await;
    let spare = eventually(WAIT, "a booted warm spare", || async {
        pods_labelled(&pods, spare_selector).await.into_iter().find(booted)
    })
    .await;
    let names = ["adviser-a", "adviser-b"];
    apply_yaml(client, tenant, &fleet_yaml(&names)).await;
    for d in names {
        eventually(WAIT, &format!("{d} AwaitingEnrollment"), || async {
            (phase(&devices, d).await? == DevicePhase::AwaitingEnrollment).then_some(())
        })
        .await;
    }
    let claimed = eventually(WAIT, "a device to have claimed the warm spare", || async {
        let p = pods.get(&spare.name_any()).await.ok()?;
        p.labels().get("capturefleet.dev/device").cloned()
    })
    .await;
    assert!(names.contains(&claimed.as_str()));
    eventually(WAIT, "the pool to replenish its spare", || async {
        pods_labelled(&pods, spare_selector)
            .await
            .into_iter()
            .any(|p| p.name_any() != spare.name_any())
            .then_some(())
    })
    .await;
    eventually(WAIT, "the pool's PodDisruptionBudget", || async {
        let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), tenant);
        (!pdbs.list(&ListParams::default()).await.ok()?.items.is_empty()).then_some(())
    })
    .await;

    // Signed in: Capturing.
    for d in names {
        let pod = pods_labelled(
            &pods,
            &format!("capturefleet.dev/device={d},capturefleet.dev/role=assigned"),
        )
        .await
        .pop()
        .unwrap();
        let patch = json!({"metadata": {"annotations": {"sim.capturefleet.dev/enrolled": "true"}}});
        pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }
    for d in names {
        eventually(WAIT, &format!("{d} Capturing"), || async {
            (phase(&devices, d).await? == DevicePhase::Capturing).then_some(())
        })
        .await;
    }

    // Offboarding with nothing pending: drain requested, receipt read, finalizer released, Pod
    // and volume deleted.
    let gone = names[0];
    let claim = devices
        .get(gone)
        .await
        .unwrap()
        .status
        .unwrap()
        .device
        .unwrap()
        .volume_claim
        .unwrap();
    devices.delete(gone, &DeleteParams::default()).await.unwrap();
    let pod = eventually(WAIT, "the operator to ask the agent to drain", || async {
        let p = pods_labelled(
            &pods,
            &format!("capturefleet.dev/device={gone},capturefleet.dev/role=assigned"),
        )
        .await
        .pop()?;
        p.spec.as_ref()?.active_deadline_seconds.map(|_| p)
    })
    .await;
    let receipt = json!({"schema": "capturefleet.dev/drain-receipt/v1", "recordsCaptured": 3, "lastSequence": 3,
        "chainHead": "ab12", "pending": {"archive": 0}, "pendingTotal": 0, "complete": true, "finishedAt": "2026-01-01T00:00:00Z"});
    let status = json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded", "containerStatuses": [
        {"name": "device", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
         "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": receipt.to_string()}}}]}});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    eventually(WAIT, "the drained device to be gone", || async {
        devices.get(gone).await.is_err().then_some(())
    })
    .await;
    support::claim_deleted(WAIT, &claims, &claim).await;

    // Spares scaled to zero: the spare Pod and its volume go.
    pools
        .patch(
            "advisers",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"warmSpares": 0}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "no warm spare left", || async {
        pods_labelled(&pods, spare_selector).await.is_empty().then_some(())
    })
    .await;
}

/// Assert nothing the operator did was refused, and every request it made is in the chart's
/// RBAC. Returns its metrics text.
async fn assert_no_denials(
    op: &OperatorAsSa,
    release: &Release,
    granted: &BTreeSet<Permission>,
    tenant: &str,
) -> String {
    let metrics = op.metrics().await;
    let user = format!(
        "system:serviceaccount:{}:{}",
        release.namespace,
        release.service_account()
    );
    let log = op.log_text();
    assert!(
        !log.contains("Jane Quincy Adviser") && !log.contains("@example.com"),
        "the operator logged an employee's name or e-mail address"
    );
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(&format!("User \\\"{user}\\\" cannot")) || l.contains(&format!("User \"{user}\" cannot"))
        })
        .collect();
    assert!(
        denied.is_empty(),
        "the API server refused the operator:\n{}",
        denied.join("\n")
    );
    // (Other refusals can happen in cluster mode: namespaces of earlier tests are being deleted
    // and refuse new Events; those are not RBAC.)
    let requests = api_requests(&metrics);
    assert!(requests.len() > 10, "the operator made requests:\n{metrics}");
    let mut used = BTreeSet::new();
    for (verb, resource, code, _) in &requests {
        let group = rbac::group_of(resource);
        let ns = match resource.as_str() {
            "nodes" => None,
            "leases" => Some(release.namespace.as_str()),
            _ => Some(tenant),
        };
        assert!(
            rbac::allows(granted, ns, group, resource, verb),
            "the operator sent {verb} {resource} ({code}), which the chart does not grant"
        );
        used.insert(format!("{verb} {resource}"));
    }
    println!("requests the operator made as {user}: {used:?}");
    metrics
}

/// `kubectl auth can-i` as the ServiceAccount.
fn can_i(user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend(args);
    let r = kubectl(&all, None);
    match r.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {args:?}: {other} {}", r.stderr),
    }
}

/// What must be refused to the operator, whatever the mode.
fn assert_refused_everywhere(user: &str, namespaces: &[&str]) {
    for ns in namespaces {
        for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
            assert!(
                !can_i(user, &[verb, "secrets", "-n", ns]),
                "{user} can {verb} secrets in {ns}"
            );
        }
        for (verb, what, sub) in [
            ("create", "pods", "exec"),
            ("get", "pods", "log"),
            ("patch", "pods", "status"),
            ("create", "pods", "eviction"),
            ("create", "serviceaccounts", "token"),
            ("patch", "capturedevices.capturefleet.dev", "scale"),
        ] {
            assert!(
                !can_i(user, &[verb, what, "--subresource", sub, "-n", ns]),
                "{user} can {verb} {what}/{sub} in {ns}"
            );
        }
        for (verb, what) in [
            ("update", "pods"),
            ("create", "rolebindings"),
            ("update", "leases"),
            ("get", "configmaps"),
            ("update", "capturedevices.capturefleet.dev"),
            ("create", "capturedevices.capturefleet.dev"),
            ("delete", "capturedevices.capturefleet.dev"),
        ] {
            assert!(
                !can_i(user, &[verb, what, "-n", ns]),
                "{user} can {verb} {what} in {ns}"
            );
        }
    }
    for (verb, what) in [
        ("list", "secrets"),
        ("get", "nodes"),
        ("patch", "nodes"),
        ("delete", "nodes"),
        ("create", "clusterrolebindings"),
        ("escalate", "clusterroles"),
        ("impersonate", "users"),
        ("update", "customresourcedefinitions"),
        ("create", "namespaces"),
    ] {
        assert!(
            !can_i(user, &[verb, what, "-A"]),
            "{user} can {verb} {what} cluster-wide"
        );
    }
    assert!(!can_i(user, &["*", "*", "-A"]), "{user} has a wildcard");
}

/// `kubectl auth can-i --list` as the ServiceAccount in `ns`: no row grants secrets or a
/// wildcard on resources.
fn assert_listed_rules_clean(user: &str, ns: &str) {
    let r = kubectl(&["auth", "can-i", "--list", "--as", user, "-n", ns], None);
    assert!(r.ok, "{}", r.stderr);
    for line in r.stdout.lines().skip(1) {
        let resource = line.split_whitespace().next().unwrap_or_default();
        if resource.starts_with('[') {
            continue; // non-resource URLs (discovery, granted to every authenticated user)
        }
        assert!(!resource.contains("secrets"), "{user} in {ns}: {line}");
        assert!(
            !line.contains("[*]") && !resource.contains('*'),
            "{user} in {ns}: wildcard in {line}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up) and promtool; run by `make test`"]
async fn operator_rbac_is_sufficient_and_minimal_in_cluster_mode() {
    let _turn = ONE_OPERATOR_AT_A_TIME.lock().await;
    let client = client().await;
    current_crds(&client).await;
    let sys = TestNamespace::new(&client, "chart-sys").await;
    let tenant = TestNamespace::new(&client, "chart-tenant").await;
    let dir = scratch("cluster-mode");
    let release = Release::install(&format!("cm-{:06x}", rand::random::<u32>() & 0xffffff), &sys.name, &[]);
    let granted = rbac::granted(&release.docs, &release.service_account(), &sys.name);
    assert!(rbac::violations(&release.docs).is_empty());
    let kubeconfig = service_account_kubeconfig(&release, &dir);
    let op = OperatorAsSa::start(&release, &kubeconfig, &dir);
    assert!(
        !op.args.contains(&"--namespace".to_owned()),
        "cluster mode watches every namespace"
    );
    op.wait_leading().await;

    fleet_lifecycle(&client, &tenant.name).await;
    // Events were recorded through events.k8s.io.
    let events = must(
        &tools::cluster_bin("kubectl"),
        &[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            &tenant.name,
            "-o",
            "jsonpath={.items[*].reportingController}",
        ],
        None,
    );
    assert!(
        events.contains("capturefleet-operator"),
        "the operator recorded Events: {events}"
    );
    let metrics = assert_no_denials(&op, &release, &granted, &tenant.name).await;

    let user = format!("system:serviceaccount:{}:{}", sys.name, release.service_account());
    assert_refused_everywhere(&user, &[&tenant.name, &sys.name, "default", "kube-system"]);
    assert_listed_rules_clean(&user, &tenant.name);
    assert!(can_i(&user, &["create", "pods", "-n", &tenant.name]));
    assert!(can_i(&user, &["list", "nodes"]));
    assert!(
        !can_i(&user, &["create", "leases", "-n", &tenant.name]),
        "Leases only in the release namespace"
    );

    // The real scrape of the operator passes promtool's metric checks.
    let promtool = tools::promtool();
    let r = tools::run(&promtool, &["check", "metrics"], Some(&metrics), &[]);
    assert!(
        r.ok,
        "promtool check metrics on the operator's /metrics:\n{}{}",
        r.stdout, r.stderr
    );
    let exported: BTreeSet<String> = metric_names(&metrics);
    for m in [
        "capturefleet_devices",
        "capturefleet_devices_longest_not_ready_seconds",
        "capturefleet_operator_leader",
        "capturefleet_devices_waiting",
        "capturefleet_warm_spares",
        "capturefleet_operator_reconciles_total",
        "capturefleet_operator_reconcile_duration_seconds",
        "capturefleet_operator_api_requests_total",
    ] {
        assert!(exported.contains(m), "{m} is not in the operator's scrape");
    }
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn operator_rbac_is_sufficient_and_minimal_in_namespaced_mode() {
    let _turn = ONE_OPERATOR_AT_A_TIME.lock().await;
    let client = client().await;
    current_crds(&client).await;
    let sys = TestNamespace::new(&client, "chart-nsys").await;
    let tenant = TestNamespace::new(&client, "chart-ntenant").await;
    let other = TestNamespace::new(&client, "chart-nother").await;
    let dir = scratch("namespaced-mode");
    let release = Release::install(
        &format!("nm-{:06x}", rand::random::<u32>() & 0xffffff),
        &sys.name,
        &[format!("watchNamespace={}", tenant.name)],
    );
    assert!(
        kinds(&release.docs, "ClusterRole")
            .iter()
            .filter(|r| !r["metadata"]["name"].as_str().unwrap().ends_with("-view")
                && !r["metadata"]["name"].as_str().unwrap().ends_with("-edit"))
            .all(|r| r["rules"] == json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])),
        "in namespaced mode the only cluster-wide rule is reading nodes"
    );
    let granted = rbac::granted(&release.docs, &release.service_account(), &sys.name);
    let kubeconfig = service_account_kubeconfig(&release, &dir);
    let op = OperatorAsSa::start(&release, &kubeconfig, &dir);
    assert!(op.args.windows(2).any(|w| w[0] == "--namespace" && w[1] == tenant.name));
    op.wait_leading().await;

    // A device in another namespace is none of its business.
    apply_yaml(&client, &other.name, &fleet_yaml(&["outsider"])).await;
    fleet_lifecycle(&client, &tenant.name).await;
    let outsider: Api<CaptureDevice> = Api::namespaced(client.clone(), &other.name);
    assert!(
        outsider.get("outsider").await.unwrap().status.is_none(),
        "the operator left other namespaces alone"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &other.name);
    assert!(pods.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert_no_denials(&op, &release, &granted, &tenant.name).await;

    let user = format!("system:serviceaccount:{}:{}", sys.name, release.service_account());
    assert_refused_everywhere(&user, &[&tenant.name, &sys.name, &other.name, "default"]);
    assert_listed_rules_clean(&user, &tenant.name);
    for ns in [other.name.as_str(), "default", sys.name.as_str()] {
        for (verb, what) in [
            ("list", "pods"),
            ("create", "pods"),
            ("delete", "pods"),
            ("list", "capturedevices.capturefleet.dev"),
            ("patch", "capturedevices.capturefleet.dev"),
            ("create", "persistentvolumeclaims"),
            ("create", "events.events.k8s.io"),
        ] {
            assert!(
                !can_i(&user, &[verb, what, "-n", ns]),
                "{user} can {verb} {what} in {ns}"
            );
        }
    }
    assert!(
        !can_i(&user, &["list", "pods", "-A"]),
        "no cluster-wide Pod access in namespaced mode"
    );
    assert!(can_i(&user, &["create", "pods", "-n", &tenant.name]));
    tenants_manage_capturefleet_objects_through_the_built_in_roles(&tenant.name, &other.name).await;
}

/// With the release installed, `edit` and `view` bound in a namespace cover capturefleet's
/// objects there (the chart's aggregated ClusterRoles), and nothing elsewhere.
async fn tenants_manage_capturefleet_objects_through_the_built_in_roles(ns: &str, other: &str) {
    let binding = |name: &str, role: &str, user: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
        )
    };
    let yaml = format!(
        "{}---\n{}",
        binding("editors", "edit", "tenant-editor"),
        binding("viewers", "view", "tenant-viewer")
    );
    must(&tools::cluster_bin("kubectl"), &["apply", "-f", "-"], Some(&yaml));
    // The aggregation controller folds the chart's roles into view/edit/admin asynchronously.
    eventually(WAIT, "edit to cover CaptureDevices", || async {
        can_i(
            "tenant-editor",
            &["create", "capturedevices.capturefleet.dev", "-n", ns],
        )
        .then_some(())
    })
    .await;
    for args in [
        vec!["delete", "capturedevices.capturefleet.dev"],
        vec!["update", "devicepools.capturefleet.dev"],
        vec!["patch", "devicepools.capturefleet.dev", "--subresource", "scale"],
        vec!["create", "archivesinks.capturefleet.dev"],
    ] {
        let mut args = args.clone();
        args.extend(["-n", ns]);
        assert!(can_i("tenant-editor", &args), "edit does not allow {args:?}");
    }
    eventually(WAIT, "view to cover CaptureDevices", || async {
        can_i("tenant-viewer", &["list", "capturedevices.capturefleet.dev", "-n", ns]).then_some(())
    })
    .await;
    assert!(can_i(
        "tenant-viewer",
        &["get", "archivesinks.capturefleet.dev", "-n", ns]
    ));
    assert!(!can_i(
        "tenant-viewer",
        &["create", "capturedevices.capturefleet.dev", "-n", ns]
    ));
    assert!(
        !can_i("tenant-viewer", &["get", "secrets", "-n", ns]),
        "view never reads Secrets"
    );
    assert!(!can_i(
        "tenant-editor",
        &["list", "capturedevices.capturefleet.dev", "-n", other]
    ));
}

#[tokio::test]
#[ignore = "needs promtool (scripts/install-promtool); run by `make test`"]
async fn agent_metrics_pass_promtool_check_metrics() {
    let promtool = tools::promtool();
    let dir = scratch("agent-metrics");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_capturefleet"));
    // A simulated device: 100 messages of history, then live traffic (so the live-only
    // commit-to-acknowledgement histogram has observations).
    let device = dir.join("device");
    let mut simulator = std::process::Command::new(bin)
        .args([
            "device",
            "simulate",
            "--dir",
            device.to_str().unwrap(),
            "--messages",
            "100",
            "--rate",
            "20",
            "--duration",
            "60",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("simulator.log")).unwrap())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the simulator's chat.db", || async {
        device.join("chat.db").exists().then_some(())
    })
    .await;
    // Two sinks: a working archive, and one whose directory cannot be created (a file is in
    // the way), so the failure metrics are exported too.
    std::fs::write(dir.join("blocker"), b"").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(bin)
        .args([
            "agent",
            "--chat-db",
            device.join("chat.db").to_str().unwrap(),
            "--spool",
            dir.join("spool").to_str().unwrap(),
            "--sink",
            &format!("file:{}", dir.join("archive").display()),
            "--sink",
            &format!("file:{}", dir.join("blocker/archive").display()),
            "--device",
            "demo",
            "--http-listen",
            &addr,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sum = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let text = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if sum(&text, "capture_records_delivered_total{") >= 100.0
            && sum(&text, "capture_commit_to_ack_seconds_count{") > 0.0
            && sum(&text, "capture_delivery_errors_total{") > 0.0
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not deliver history and live events within 60 s:\n{}\n{text}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = simulator.kill();
    let _ = simulator.wait();
    let _ = agent.kill();
    let _ = agent.wait();
    // No personal data in the agent's log: no handle (phone number, e-mail address) and no
    // message text of the simulated device appears in it.
    let agent_log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(agent_log.lines().count() > 3, "the agent logged:\n{agent_log}");
    let db = rusqlite::Connection::open_with_flags(device.join("chat.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut personal: Vec<String> = db
        .prepare("SELECT id FROM handle")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!personal.is_empty());
    personal.extend(
        db.prepare("SELECT text FROM message WHERE length(text) >= 12")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap),
    );
    for p in &personal {
        assert!(
            !agent_log.contains(p.as_str()),
            "the agent's log contains personal data {p:?}"
        );
    }
    let r = tools::run(&promtool, &["check", "metrics"], Some(&metrics), &[]);
    assert!(
        r.ok,
        "promtool check metrics on the agent's /metrics:\n{}{}",
        r.stdout, r.stderr
    );
    // Every agent metric the alerts and the dashboard use is in a real scrape.
    let exported = metric_names(&metrics);
    let rules = std::fs::read_to_string(chart().join("templates/prometheusrule.yaml")).unwrap();
    let mut used = metric_names(&rules);
    for (_, expr) in dashboard_exprs() {
        used.extend(metric_names(&expr));
    }
    for m in used.iter().filter(|m| m.starts_with("capture_")) {
        assert!(
            exported.contains(m),
            "{m} (used by alerts or the dashboard) is not in the agent's scrape"
        );
    }
}
