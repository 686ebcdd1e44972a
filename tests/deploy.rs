//! The deployment files, checked by parsing (there is no Docker engine here): docker-compose.yml
//! runs a command the binary accepts, sets only environment variables the binary reads, mounts
//! the policies read-only where the binary looks, publishes the admin port on loopback only and
//! waits for a healthy database; the Dockerfile runs as a non-root user.

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use ecs_janitor::cli::{Cli, Command};
use serde_json::Value;

fn root(file: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// Every environment variable the binary reads: clap's `env` names of every subcommand, plus
/// the credential and logging variables read directly.
fn known_env() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.insert(e.to_string_lossy().to_string());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&Cli::command(), &mut out);
    for direct in [
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_SECURITY_TOKEN",
        "JANITOR_ADMIN_TOKEN",
        "JANITOR_LOG",
    ] {
        out.insert(direct.to_string());
    }
    out
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
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Run(run) = cli.command else {
        panic!("the service runs the daemon: {argv:?}")
    };
    assert_eq!(run.listen.port(), 9187);

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
    assert!(d.contains("CMD [\"run\"]"));
    let cli = Cli::try_parse_from(["ecs-janitor", "run"]).unwrap();
    assert!(matches!(cli.command, Command::Run(_)));
}
