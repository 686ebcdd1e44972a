//! `validate`: check policy files, for people or for CI (GitHub annotations, JSON, SARIF).

use std::process::ExitCode;

use super::args::ValidateArgs;
use crate::policy::report::{self, Findings, Format};
use crate::settings::Settings;

pub(super) fn validate(args: &ValidateArgs, settings: &Settings) -> ExitCode {
    // The price file, when one is set, is checked first: a bad one fails validation.
    if let Some(path) = &settings.ecs.prices_file {
        match crate::pricing::PriceFile::load(path) {
            Ok(f) if args.format == Format::Text => outln!(
                "{}: prices in {} for {}, no problems.",
                path.display(),
                f.currency,
                crate::policy::count(f.regions.len(), "region")
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "{} found in the price file.",
                    crate::policy::count(e.problems.len(), "problem")
                );
                return ExitCode::from(1);
            }
        }
    }
    let (paths, what) = if args.files.is_empty() {
        let dir = &settings.policies;
        (vec![dir.clone()], dir.display().to_string())
    } else {
        let shown: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
        (args.files.clone(), shown.join(", "))
    };
    let loaded = crate::policy::load_paths(&paths);
    if args.format != Format::Text {
        let (problems, policies): (Vec<crate::policy::Diagnostic>, usize) = match &loaded.result {
            Ok(set) => (Vec::new(), set.policies.len()),
            Err(d) => (d.0.clone(), 0),
        };
        let warnings: Vec<crate::policy::Diagnostic> = loaded.warnings.0.clone();
        let f = Findings {
            problems: &problems,
            warnings: &warnings,
            policies,
        };
        match args.format {
            Format::Json => outln!("{:#}", report::json(&f)),
            Format::Sarif => outln!("{:#}", report::sarif(&f)),
            Format::Github | Format::Text => out!("{}", report::github(&f)),
        }
        return if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    for w in loaded.warnings.iter() {
        outln!("warning: {w}");
    }
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        n => format!(" ({})", crate::policy::count(n, "warning")),
    };
    match loaded.result {
        Ok(set) => {
            outln!(
                "{what}: {}, no problems{warnings}.",
                crate::policy::count(set.policies.len(), "policy")
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            outln!("{diags}");
            eprintln!(
                "{} found{warnings}.",
                crate::policy::count(diags.len(), "problem")
            );
            ExitCode::from(1)
        }
    }
}
