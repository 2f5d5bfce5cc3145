//! `check`: validate the config, load and attach every probe, report, detach.
use std::process::ExitCode;

use super::{Common, EXIT_DEGRADED, EXIT_OK, fail};
use crate::{kernel::Kernel, logging, metrics::coverage::Sight, status};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Lines for people.
    Text,
    /// One JSON document (docs/operating.md: "check --format json").
    Json,
}

pub fn check(common: &Common, format: Format) -> ExitCode {
    let config = match common.settle() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let source = common
        .config
        .as_ref()
        .map_or("embedded defaults".to_string(), |p| p.display().to_string());
    let text = format == Format::Text;
    let web = match crate::webconfig::Security::load(config.web_config_file.as_deref()) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    if text {
        println!("config: ok ({source})");
        if let Some(f) = &config.web_config_file {
            println!("web config: ok ({}: {})", f.display(), web.summary);
        }
    }
    logging::init(config.log_level.min(log::LevelFilter::Warn), config.log_format);
    let kernel = match Kernel::read(common.btf.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    if text {
        println!("{}", status::kernel_line(&kernel.facts));
        for line in status::contradiction_lines(&kernel.facts) {
            println!("{line}");
        }
        println!("{}", status::preempt_line(&kernel.facts));
    }
    let (mut session, attached) = match super::load(&kernel, &config) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    session.start_stacks(&kernel.facts.release);
    let sight = Sight::of(&kernel.layout, &attached);
    let (n, total) = attached.probe_counts();
    let exit = if n == total { EXIT_OK } else { EXIT_DEGRADED };
    if text {
        let lines = kernel
            .layout
            .lines()
            .into_iter()
            .chain(status::verdict_lines(&attached))
            .chain([status::patched_line(&attached), status::series_line(&attached)])
            .chain(status::coverage_lines(&sight, &attached))
            .chain([session.stacks_line(), status::summary_line(&attached)]);
        for line in lines {
            println!("{line}");
        }
    } else {
        let report = status::check_report(source, &kernel.facts, &kernel.layout, &attached, &sight, exit);
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => return fail(format!("cannot write the report: {e}")),
        }
    }
    ExitCode::from(exit)
}
