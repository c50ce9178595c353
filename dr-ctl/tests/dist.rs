//! What dist/ ships (systemd units, their options file, the example plan)
//! agrees with dr-ctl's command line and parsers.
use std::{collections::HashMap, path::Path};

use clap::Parser;
use dr_ctl::{cli::Cli, plan::Plan};

fn dist(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const UNITS: [&str; 4] = [
    "dr.service",
    "dr-agent.service",
    "dr-sync.service",
    "dr-metrics.service",
];

/// The examples of dist/default (commented `#NAME=value` lines): what an
/// operator uncomments.
fn default_examples() -> HashMap<String, String> {
    dist("default")
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.split_once('='))
        .filter(|(name, _)| name.starts_with("DR_"))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Expands `$NAME` and `${NAME}` as systemd does for a whole word, splitting
/// the unbraced form into words.
fn expand(line: &str, env: &HashMap<String, String>) -> Vec<String> {
    line.split_whitespace()
        .flat_map(|word| {
            let name = word
                .strip_prefix("${")
                .and_then(|w| w.strip_suffix('}'))
                .or_else(|| word.strip_prefix('$'));
            match name {
                Some(name) => {
                    let value = env
                        .get(name)
                        .unwrap_or_else(|| panic!("{name} has no example"));
                    value.split_whitespace().map(str::to_string).collect()
                }
                None => vec![word.to_string()],
            }
        })
        .collect()
}

#[test]
fn shipped_units_run_valid_commands_with_the_example_options() {
    for name in UNITS {
        let unit = dist(name);
        let mut env = default_examples();
        for l in unit.lines() {
            if let Some((var, value)) = l
                .strip_prefix("Environment=")
                .and_then(|a| a.split_once('='))
            {
                env.entry(var.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        let commands: Vec<&str> = unit
            .lines()
            .filter_map(|l| {
                l.strip_prefix("ExecStart=")
                    .or_else(|| l.strip_prefix("ExecReload="))
            })
            .collect();
        assert!(!commands.is_empty(), "{name} runs nothing");
        for line in commands {
            let args = expand(line, &env);
            assert_eq!(args[0], "/usr/bin/dr-ctl", "{name}: {line}");
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{name}: {args:?}: {e}"));
        }
    }
}

#[test]
fn agent_hosts_units_do_not_pull_in_the_plan_unit() {
    for name in ["dr-agent.service", "dr-metrics.service"] {
        let unit = dist(name);
        assert!(
            !unit
                .lines()
                .any(|l| l.starts_with("Requires=") || l.starts_with("Wants=dr")),
            "{name} would start dr.service on an agent host"
        );
    }
}

#[test]
fn the_example_plan_is_valid() {
    let plan = Plan::parse("cluster.toml.example", &dist("cluster.toml.example")).unwrap();
    assert_eq!(plan.hosts.len(), 3);
}

/// The `dr_*` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("dr_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier (e.g. a label named x_dr_y).
        let preceded = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

/// Every string under an `expr` key (or `query`, Grafana's variables).
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

fn assert_known_metrics(file: &str, exprs: &[String]) {
    let known: Vec<&str> = dr_ctl::metrics::FAMILIES.iter().map(|f| f.name).collect();
    let mut used = 0;
    for expr in exprs {
        for name in metric_names(expr) {
            assert!(
                known.contains(&name),
                "{file}: {name} in `{expr}` is not a dr-ctl metric"
            );
            used += 1;
        }
    }
    assert!(used > 0, "{file} uses no dr metric");
}

#[test]
fn the_grafana_dashboard_uses_real_metric_names() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&dist("grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let mut exprs = Vec::new();
        expressions(&panel["targets"], &mut exprs);
        assert!(
            !exprs.is_empty(),
            "panel {} queries nothing",
            panel["title"]
        );
    }
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert_known_metrics("grafana-dashboard.json", &exprs);
}

#[test]
fn the_alert_rules_use_real_metric_names() {
    let rules: serde_json::Value = serde_norway::from_str(&dist("alerts.yml")).unwrap();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name");
            let expr = rule["expr"].as_str().expect("an expression");
            assert_known_metrics("alerts.yml", &[expr.to_string()]);
            alerts.push(name.to_string());
        }
    }
    for wanted in ["DrDatapathDown", "DrDropsRising", "DrNatTableNearlyFull"] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing");
    }
}
