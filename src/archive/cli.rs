//! `capturefleet archive verify DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Verify options.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The filesystem archive's root (one directory per device).
    pub dir: PathBuf,
}

/// Verify an archive: print the JSON summary; exit 0 when it is intact, 1 when any problem
/// was found, 2 when the archive cannot be read.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = match super::verify::verify(&args.dir) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
