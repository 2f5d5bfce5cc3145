//! remote-vm-daemon: loads the probes, classifies remote-memory accesses and
//! serves Prometheus metrics.

use std::process::ExitCode;

use clap::Parser;

use remote_vm_daemon::{
    cli::{Cli, Command},
    cmd::{self, EXIT_FAILED, EXIT_OK, check, compare, fail},
    config, hangup, top,
};

/// Blocks SIGHUP before `main`, as the loader runs the executable's
/// initialisers: from here to the handler `run` installs, a reload signal
/// (`systemctl reload` at start-up) waits instead of ending the daemon.
extern "C" fn block_hangup_at_load() {
    hangup::block();
}

#[used]
#[unsafe(link_section = ".init_array")]
static BLOCK_HANGUP_AT_LOAD: extern "C" fn() = block_hangup_at_load;

fn main() -> ExitCode {
    let cli = Cli::try_parse();
    // Only `run` reloads on SIGHUP (and unblocks it once it can); every other
    // subcommand keeps the default: a hang-up ends it.
    if !matches!(cli, Ok(Cli { command: Command::Run { .. } })) {
        let _ = hangup::unblock();
    }
    let cli = match cli {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        EXIT_FAILED
                    } else {
                        EXIT_OK
                    })
                }
                // One line: clap's first, without its usage footer.
                _ => fail(e.to_string().lines().next().unwrap_or("bad arguments").trim_start_matches("error: ")),
            };
        }
    };
    match cli.command {
        Command::Defaults => {
            print!("{}", config::DEFAULTS);
            ExitCode::from(EXIT_OK)
        }
        Command::Check { common, format } => check::check(&common, format),
        Command::Compare {
            prometheus,
            range,
            end,
            mode,
            chunk,
            client,
            selector,
            format,
        } => {
            let connection = compare::Connection { url: prometheus, client };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let end = match compare::parse_end(&end, now) {
                Ok(e) => e,
                Err(e) => return fail(e),
            };
            let result = connection.open().and_then(|p| {
                let req = compare::Request {
                    range_s: compare::parse_range(&range)?,
                    selector: &selector,
                    end,
                    mode,
                    chunk_s: chunk.as_deref().map(compare::parse_chunk).transpose()?,
                };
                compare::compare(&p, &req)
            });
            match result {
                Ok(c) => {
                    print!("{}", compare::render(&c, format, &range));
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => fail(e),
            }
        }
        Command::Run { common, listen, telemetry_path, socket } => {
            cmd::run::run(&common, &cmd::run::WebFlags { listen, telemetry_path, socket: socket.map(|s| s.0) })
        }
        Command::Top { url, client, interval, once } => top::top(&url, &client, std::time::Duration::from_secs_f64(interval), once),
    }
}

