//! `validate`'s output formats: text for people, JSON for scripts, GitHub workflow commands for
//! inline annotations, and SARIF 2.1.0 for code scanning.

use serde_json::{json, Value};

use super::Diagnostic;

/// How `validate` prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Github,
    Sarif,
}

/// What one `validate` run found.
#[derive(Debug, Clone, Default)]
pub struct Findings<'a> {
    pub problems: &'a [Diagnostic],
    pub warnings: &'a [Diagnostic],
    /// Policies loaded (0 when there were problems).
    pub policies: usize,
}

fn message(d: &Diagnostic) -> String {
    match &d.hint {
        Some(h) => format!("{} (hint: {h})", d.message),
        None => d.message.clone(),
    }
}

/// The JSON form: `{"problems": [...], "warnings": [...], "policies": N}`.
pub fn json(f: &Findings<'_>) -> Value {
    let one = |d: &Diagnostic| {
        json!({
            "file": d.file.display().to_string(),
            "line": d.line,
            "col": d.col,
            "message": d.message,
            "hint": d.hint,
        })
    };
    json!({
        "problems": f.problems.iter().map(one).collect::<Vec<_>>(),
        "warnings": f.warnings.iter().map(one).collect::<Vec<_>>(),
        "policies": f.policies,
    })
}

/// Escapes a workflow command's message (`%`, CR, LF) or, with `property`, a property value
/// (also `:` and `,`), as GitHub Actions reads them.
fn gh_escape(s: &str, property: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            ':' if property => out.push_str("%3A"),
            ',' if property => out.push_str("%2C"),
            c => out.push(c),
        }
    }
    out
}

/// GitHub Actions workflow commands, one a line: `::error file=F,line=L,col=C::message`.
pub fn github(f: &Findings<'_>) -> String {
    let mut out = String::new();
    for (level, list) in [("error", f.problems), ("warning", f.warnings)] {
        for d in list {
            let mut props = vec![format!(
                "file={}",
                gh_escape(&d.file.display().to_string(), true)
            )];
            if d.line > 0 {
                props.push(format!("line={}", d.line));
                props.push(format!("col={}", d.col.max(1)));
            }
            out.push_str(&format!(
                "::{level} {}::{}\n",
                props.join(","),
                gh_escape(&message(d), false)
            ));
        }
    }
    out
}

/// A SARIF 2.1.0 log with one run: each problem an `error` result, each warning a `warning`.
pub fn sarif(f: &Findings<'_>) -> Value {
    let result = |d: &Diagnostic, level: &str| {
        let mut location = json!({
            "physicalLocation": {
                "artifactLocation": { "uri": d.file.display().to_string() },
            }
        });
        if d.line > 0 {
            location["physicalLocation"]["region"] =
                json!({ "startLine": d.line, "startColumn": d.col.max(1) });
        }
        json!({
            "ruleId": if level == "error" { "policy-invalid" } else { "policy-warning" },
            "level": level,
            "message": { "text": message(d) },
            "locations": [location],
        })
    };
    let results: Vec<Value> = f
        .problems
        .iter()
        .map(|d| result(d, "error"))
        .chain(f.warnings.iter().map(|d| result(d, "warning")))
        .collect();
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": { "driver": {
                "name": "ecs-janitor",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": [
                    { "id": "policy-invalid", "shortDescription": { "text": "A policy file that ecs-janitor refuses to load" } },
                    { "id": "policy-warning", "shortDescription": { "text": "Something in the policies folder that was skipped" } },
                ],
            }},
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(message: &str) -> Diagnostic {
        Diagnostic {
            file: "policies/a,b.yaml".into(),
            line: 3,
            col: 7,
            message: message.into(),
            hint: Some("100% sure".into()),
        }
    }

    #[test]
    fn github_commands_escape_what_github_reads() {
        let p = [d("bad: value\nnext")];
        let out = github(&Findings {
            problems: &p,
            ..Findings::default()
        });
        assert_eq!(
            out,
            "::error file=policies/a%2Cb.yaml,line=3,col=7::bad: value%0Anext (hint: 100%25 sure)\n"
        );
    }

    #[test]
    fn sarif_has_one_located_result_per_finding() {
        let p = [d("bad")];
        let w = [Diagnostic {
            line: 0,
            ..d("skipped link")
        }];
        let v = sarif(&Findings {
            problems: &p,
            warnings: &w,
            policies: 0,
        });
        assert_eq!(v["version"], "2.1.0");
        let results = v["runs"][0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["level"], "error");
        let region = &results[0]["locations"][0]["physicalLocation"]["region"];
        assert_eq!(
            (region["startLine"].as_u64(), region["startColumn"].as_u64()),
            (Some(3), Some(7))
        );
        assert!(results[1]["locations"][0]["physicalLocation"]
            .get("region")
            .is_none());
    }
}
