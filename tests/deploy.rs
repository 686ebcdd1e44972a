//! The deployment files, checked by parsing (there is no Docker engine here): docker-compose.yml
//! runs a command the binary accepts, sets only environment variables the binary reads, mounts
//! the policies read-only where the binary looks, publishes the admin port on loopback only and
//! waits for a healthy database; the Dockerfile runs as a non-root user. The observability
//! files: every PromQL expression of the alert rules and the Grafana dashboard names only series
//! the binary exports, each alert has a runbook section in the README, and the `observability`
//! profile mounts files that exist where Prometheus and Grafana read them.

use std::collections::BTreeSet;

use ecs_janitor::cli::{self, Command};
use ecs_janitor::metrics::Metrics;
use ecs_janitor::settings::SPECS;
use serde_json::Value;

fn root(file: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn yaml(file: &str) -> Value {
    serde_saphyr::from_str(&root(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every environment variable the binary reads: each setting's, `JANITOR_CONFIG`, plus the
/// credential variables the lookup chain reads.
fn known_env() -> BTreeSet<String> {
    let mut out: BTreeSet<String> = SPECS.iter().map(|s| s.env.to_string()).collect();
    for direct in [
        "JANITOR_CONFIG",
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_SECURITY_TOKEN",
    ] {
        out.insert(direct.to_string());
    }
    out
}

/// `argv` parsed as the binary parses it, with no environment and no configuration file.
fn parse(argv: &[String]) -> cli::Invocation {
    cli::parse(argv, &|_| None).unwrap_or_else(|e| panic!("{argv:?}: {e:?}"))
}

#[test]
fn docker_compose_runs_what_the_binary_accepts() {
    let compose: Value = serde_saphyr::from_str(&root("docker-compose.yml")).unwrap();
    let svc = &compose["services"]["ecs-janitor"];
    let pg = &compose["services"]["postgres"];

    // The command parses, and is the daemon.
    let mut argv = vec!["ecs-janitor".to_string()];
    argv.extend(
        svc["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string()),
    );
    let inv = parse(&argv);
    assert!(
        matches!(inv.cli.command, Command::Run),
        "the service runs the daemon: {argv:?}"
    );
    assert_eq!(inv.settings.listen.port(), 9187);

    // Only variables the binary reads.
    let known = known_env();
    let env = svc["environment"].as_object().unwrap();
    for k in env.keys() {
        assert!(
            known.contains(k),
            "docker-compose.yml sets {k}, which ecs-janitor does not read"
        );
    }
    for line in root("janitor.env.example").lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some((k, _)) = line.split_once('=') {
            if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                assert!(
                    known.contains(k),
                    "janitor.env.example names {k}, which ecs-janitor does not read"
                );
            }
        }
    }
    // The database URL names the postgres service with its credentials.
    let url = url::Url::parse(env["JANITOR_DATABASE_URL"].as_str().unwrap()).unwrap();
    assert_eq!(url.scheme(), "postgres");
    assert_eq!(url.host_str(), Some("postgres"));
    assert_eq!(
        url.username(),
        pg["environment"]["POSTGRES_USER"].as_str().unwrap()
    );
    assert_eq!(
        url.path().trim_start_matches('/'),
        pg["environment"]["POSTGRES_DB"].as_str().unwrap()
    );

    // Policies from the git checkout, read-only, where JANITOR_POLICIES points.
    let mounts: Vec<&str> = svc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"./policies:/policies:ro"), "{mounts:?}");
    assert_eq!(env["JANITOR_POLICIES"], "/policies");
    assert_eq!(svc["read_only"], true);

    // The admin port on this machine only; the database healthy first; data kept in a volume.
    for p in svc["ports"].as_array().unwrap() {
        assert!(p.as_str().unwrap().starts_with("127.0.0.1:"), "{p}");
    }
    assert_eq!(
        svc["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    assert!(pg["healthcheck"]["test"].is_array());
    assert!(compose["volumes"]
        .as_object()
        .unwrap()
        .contains_key("pgdata"));
    assert_eq!(svc["env_file"][0], "janitor.env");
}

#[test]
fn the_image_runs_the_binary_as_a_non_root_user() {
    let d = root("Dockerfile");
    let user = d
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/ecs-janitor\"]"));
    // The health check asks the daemon's readiness, not merely whether the binary runs.
    assert!(
        d.contains("HEALTHCHECK --interval=30s --timeout=3s CMD [\"/usr/local/bin/ecs-janitor\", \"ready\"]"),
        "{d}"
    );
    assert!(d.contains("CMD [\"run\"]"));
    let inv = parse(&["ecs-janitor".to_string(), "run".to_string()]);
    assert!(matches!(inv.cli.command, Command::Run));
}

/// The names of the series an expression reads: identifiers that are not functions (followed by
/// `(`), keywords, label names (inside `{...}` or a `by`/`without`/`on`/`ignoring`/`group_*`
/// list), strings, durations or Grafana variables.
fn series_in(expr: &str) -> BTreeSet<String> {
    // Aggregation operators among them: they may be followed by `by (...)` rather than `(`.
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let (mut i, mut labels_until) = (0, None::<char>);
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if labels_until == Some(c) {
            labels_until = None;
        } else if labels_until.is_none() {
            match c {
                '{' => labels_until = Some('}'),
                '[' => labels_until = Some(']'),
                '(' if after_grouping => labels_until = Some(')'),
                _ => {}
            }
        }
        if c == '(' || c == '{' || c == '[' {
            after_grouping = false;
        }
        if c == '$' || c.is_ascii_digit() {
            // A variable or a number/duration: skip the word.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if labels_until.is_some() {
                continue;
            }
            if KEYWORDS.contains(&word.to_lowercase().as_str()) {
                after_grouping = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                continue;
            }
            if next != Some(&'(') {
                out.insert(word);
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The rules of alerts.yaml: (alert or record name, expr, the rule).
fn rules() -> Vec<(String, String, Value)> {
    let doc = yaml("deploy/prometheus/alerts.yaml");
    let mut out = Vec::new();
    for g in doc["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            out.push((
                name.to_string(),
                r["expr"].as_str().unwrap().to_string(),
                r.clone(),
            ));
        }
    }
    out
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&root("deploy/grafana/ecs-janitor.json")).unwrap();
    let mut out = Vec::new();
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
            walk(&p["panels"], out);
        }
    }
    walk(&d["panels"], &mut out);
    out
}

#[test]
fn the_promql_reader_finds_series_and_skips_the_rest() {
    let got = series_in(
        r#"sum by (state, policy) (rate(janitor_a_total{code=~"Throttling.*|x"}[$__rate_interval]))
           - on (policy) group_left (x) max(janitor_b offset 1d) > 3 * time() or up{job="j"} == 0
           and rec:by_x:sum > bool 1e3"#,
    );
    let want: BTreeSet<String> = ["janitor_a_total", "janitor_b", "up", "rec:by_x:sum"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
}

#[test]
fn alerts_and_dashboard_name_only_series_the_binary_exports() {
    let mut known: BTreeSet<String> = Metrics::new().series_names().into_iter().collect();
    // Prometheus's own, per scrape target.
    known.insert("up".into());
    let rules = rules();
    for (name, _, r) in &rules {
        if r["record"].is_string() {
            known.insert(name.clone());
        }
    }
    let mut exprs: Vec<(String, String)> = rules.into_iter().map(|(n, e, _)| (n, e)).collect();
    let dash = dashboard_exprs();
    assert!(dash.len() >= 10, "{dash:?}");
    exprs.extend(dash);
    let mut used = BTreeSet::new();
    for (at, expr) in &exprs {
        let names = series_in(expr);
        assert!(!names.is_empty(), "{at}: no series in {expr}");
        for n in names {
            assert!(
                known.contains(&n),
                "{at}: {n} is not a series ecs-janitor exports ({known:?}): {expr}"
            );
            used.insert(n);
        }
    }
    // Every exported series is alerted on or shown.
    for n in Metrics::new().series_names() {
        assert!(
            used.contains(&n),
            "{n} is neither alerted on nor on the dashboard"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_in_the_readme_and_a_row_in_its_table() {
    let readme = root("README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let alerts: Vec<_> = rules()
        .into_iter()
        .filter(|(_, _, r)| r["alert"].is_string())
        .collect();
    assert!(alerts.len() >= 6);
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let job = prom["scrape_configs"][0]["job_name"].as_str().unwrap();
    for (name, expr, r) in &alerts {
        let runbook = r["annotations"]["runbook"].as_str().unwrap_or_default();
        let a = runbook
            .strip_prefix("README.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook:?} is not README.md#anchor"));
        assert!(
            anchors.contains(a),
            "{name}: no README heading has the anchor #{a}"
        );
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "{name} is missing from the README's table of alerts"
        );
        assert!(r["annotations"]["summary"].is_string(), "{name}");
        assert!(r["labels"]["severity"].is_string(), "{name}");
        // A job named in an alert is the one Prometheus scrapes.
        if let Some((_, rest)) = expr.split_once("job=\"") {
            assert!(rest.starts_with(&format!("{job}\"")), "{name}: {expr}");
        }
    }
    // The README no longer gives alert expressions of its own.
    assert!(!readme.contains("increase(janitor_releases"));
}

#[test]
fn the_observability_profile_mounts_the_rules_and_the_dashboard() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    // The default `docker compose up` is unchanged: the database and the daemon only.
    for (name, svc) in services {
        let profiles: Vec<&str> = svc["profiles"]
            .as_array()
            .map(|a| a.iter().map(|p| p.as_str().unwrap()).collect())
            .unwrap_or_default();
        match name.as_str() {
            "postgres" | "ecs-janitor" => assert!(profiles.is_empty(), "{name}"),
            "prometheus" | "grafana" => assert_eq!(profiles, ["observability"], "{name}"),
            other => panic!("unexpected service {other}"),
        }
        for p in svc["ports"].as_array().into_iter().flatten() {
            assert!(p.as_str().unwrap().starts_with("127.0.0.1:"), "{name}: {p}");
        }
    }
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let volumes = compose["volumes"].as_object().unwrap();
    // Bind mounts: (service, container path) -> host path, each existing; named volumes declared.
    let mut mounts = std::collections::BTreeMap::new();
    for name in ["prometheus", "grafana"] {
        for v in services[name]["volumes"].as_array().unwrap() {
            let parts: Vec<&str> = v.as_str().unwrap().split(':').collect();
            let (host, inside) = (parts[0], parts[1]);
            if host.starts_with("./") {
                assert!(
                    base.join(host).exists(),
                    "{name} mounts {host}, which does not exist"
                );
                assert_eq!(parts.get(2), Some(&"ro"), "{name}: {v}");
                mounts.insert((name, inside.to_string()), host.to_string());
            } else {
                assert!(
                    volumes.contains_key(host),
                    "{name}: volume {host} is not declared"
                );
            }
        }
    }

    // Prometheus reads its config where the command says, and the rules next to it.
    let cmd: Vec<&str> = services["prometheus"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config = cmd
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap();
    assert_eq!(
        mounts[&("prometheus", config.to_string())],
        "./deploy/prometheus/prometheus.yml"
    );
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let config_dir = std::path::Path::new(config).parent().unwrap();
    for f in prom["rule_files"].as_array().unwrap() {
        let inside = config_dir.join(f.as_str().unwrap());
        assert_eq!(
            mounts[&("prometheus", inside.to_string_lossy().to_string())],
            "./deploy/prometheus/alerts.yaml"
        );
    }
    // It scrapes the daemon's service on the port the daemon listens on.
    let job = &prom["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    let target = job["static_configs"][0]["targets"][0].as_str().unwrap();
    let (host, port) = target.split_once(':').unwrap();
    assert!(services.contains_key(host), "{target}");
    let listen = services[host]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .unwrap();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "{listen} vs {target}"
    );

    // Grafana: the provisioning folder, a data source at the prometheus service, and the
    // dashboard in the folder its provider reads.
    assert_eq!(
        mounts[&("grafana", "/etc/grafana/provisioning".to_string())],
        "./deploy/grafana/provisioning"
    );
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let url = url::Url::parse(ds["datasources"][0]["url"].as_str().unwrap()).unwrap();
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert!(services.contains_key(url.host_str().unwrap()), "{url}");
    assert_eq!(url.port(), Some(9090));
    let provider = yaml("deploy/grafana/provisioning/dashboards/ecs-janitor.yaml");
    let folder = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dashboard = mounts
        .iter()
        .find(|((svc, inside), _)| *svc == "grafana" && inside.starts_with(&format!("{folder}/")))
        .map(|(_, host)| host.as_str());
    assert_eq!(dashboard, Some("./deploy/grafana/ecs-janitor.json"));
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    assert_eq!(
        mounts[&("grafana", home.to_string())],
        "./deploy/grafana/ecs-janitor.json"
    );
}
