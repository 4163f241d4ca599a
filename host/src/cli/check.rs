//! `moonwall check --config FILE`: validate a server configuration, every
//! tenant policy, and compile every script a request could reach (and every
//! module in the tenants' `lib_dirs`), listing
//! every problem (`file:line:col: message`, syntax errors as
//! `script:line: message`). Exit 0 if there are none, 1 if there are, 2 if
//! the configuration cannot be read at all.

use std::path::{Path, PathBuf};

use clap::Args;

use super::exit;
use crate::runtime::Sandbox;
use crate::sandbox::{EngineSettings, Limits, block_on};
use crate::site::config::SiteConfig;
use crate::site::routing::{Locations, Router};
use crate::tenants::metrics::Metrics;
use crate::tenants::{ServerConfig, load_all};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The server configuration (with its `policies` directory) or a site
    /// configuration to check.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: CheckArgs) -> u8 {
    let text = match std::fs::read_to_string(&args.config) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", args.config.display());
            return exit::USAGE;
        }
    };
    let mut problems = Vec::new();
    // Scripts to compile, each with the name its errors are reported under.
    let mut scripts: Vec<PathBuf> = Vec::new();
    let mut tenants = 0;
    if ServerConfig::is_server_config(&text) {
        match ServerConfig::parse(&args.config, &text) {
            Ok(config) => {
                let (set, report) = load_all(&config, &Metrics::new());
                problems.extend(report.problems);
                tenants = set.tenants.len();
                for tenant in &set.tenants {
                    collect_router(&tenant.router, &mut scripts);
                    // Its init script is compiled like the others (it is
                    // run when a server loads the tenant).
                    scripts.extend(tenant.init_script().map(Path::to_path_buf));
                    // The Lua modules `require` can load.
                    for dir in &tenant.capabilities.files.lib_dirs {
                        collect_lua_files(dir, dir, &mut scripts);
                    }
                }
            }
            Err(error) => problems.extend(error.problems),
        }
    } else {
        match SiteConfig::parse(&args.config, &text) {
            Ok(site) => {
                collect_locations(&site.locations, &mut scripts);
                scripts.extend(site.init_script.map(|script| script.path().to_path_buf()));
            }
            Err(error) => problems.extend(error.problems),
        }
    }
    scripts.sort();
    scripts.dedup();

    if !scripts.is_empty() {
        let settings = EngineSettings {
            max_instances: 2,
            ..EngineSettings::default()
        };
        let sandbox = match Sandbox::new(settings) {
            Ok(sandbox) => sandbox,
            Err(error) => {
                eprintln!("error: {error}");
                return exit::INTERNAL;
            }
        };
        let limits = Limits {
            fuel: 2_000_000_000,
            ..Limits::default()
        };
        for script in &scripts {
            let shown = script.display().to_string();
            let code = match std::fs::read(script) {
                Ok(code) => code,
                Err(error) => {
                    problems.push(format!("{shown}: cannot read: {error}"));
                    continue;
                }
            };
            // Lua cuts chunk names longer than 59 bytes in its messages:
            // compile under a short name, then put the whole path back.
            match block_on(sandbox.compile("script", &code, &limits)) {
                Ok(Ok(_bytecode)) => {}
                Ok(Err(message)) => problems.push(match message.strip_prefix("script:") {
                    Some(rest) => format!("{shown}:{rest}"),
                    None => message,
                }),
                Err(error) => problems.push(format!("{shown}: cannot compile: {error}")),
            }
        }
    }

    for problem in &problems {
        println!("{problem}");
    }
    let tenants = if tenants > 0 {
        format!("{tenants} tenant(s), ")
    } else {
        String::new()
    };
    if problems.is_empty() {
        eprintln!(
            "{}: OK ({tenants}{} script(s) compiled)",
            args.config.display(),
            scripts.len()
        );
        exit::OK
    } else {
        eprintln!(
            "{}: {} problem(s) ({tenants}{} script(s) checked)",
            args.config.display(),
            problems.len(),
            scripts.len()
        );
        exit::LUA_ERROR
    }
}

fn collect_locations(locations: &Locations, into: &mut Vec<PathBuf>) {
    for location in &locations.locations {
        into.extend(
            location
                .scripts
                .phases()
                .into_iter()
                .flatten()
                .map(|script| script.path().to_path_buf()),
        );
    }
}

fn collect_router(router: &Router, into: &mut Vec<PathBuf>) {
    match router {
        Router::Locations(locations) => collect_locations(locations, into),
        Router::DocRoot(root) => collect_lua_files(root.root(), root.root(), into),
        Router::Both(locations, root) => {
            collect_locations(locations, into);
            collect_lua_files(root.root(), root.root(), into);
        }
    }
}

/// Every `.lua` file a document root serves: under `root` by real path,
/// dot-names skipped, as the router does. Bounded in depth.
fn collect_lua_files(root: &Path, dir: &Path, into: &mut Vec<PathBuf>) {
    const MAX_DEPTH: usize = 32;
    let depth = dir
        .strip_prefix(root)
        .map_or(0, |rel| rel.components().count());
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(real) = entry.path().canonicalize() else {
            continue;
        };
        if !real.starts_with(root) {
            continue;
        }
        if real.is_dir() {
            collect_lua_files(root, &entry.path(), into);
        } else if real.extension().is_some_and(|ext| ext == "lua") {
            into.push(entry.path());
        }
    }
}
