//! `man OUTDIR`: the man pages of `remote-vm-daemon` and each of its
//! subcommands (`remote-vm-daemon-run.1`, …), rendered from the clap
//! definitions in `src/cli.rs`. `cargo xtask deb` runs it and packages them.
use clap::CommandFactory;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: man OUTDIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let cmd = remote_vm_daemon::cli::Cli::command();
    let mut pages = vec![(cmd.get_name().to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        let page = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        pages.push((name, page));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        let written = clap_mangen::Man::new(page.version(env!("CARGO_PKG_VERSION")))
            .render(&mut out)
            .and_then(|()| std::fs::write(dir.join(format!("{name}.1")), &out));
        if let Err(e) = written {
            eprintln!("man: {name}: {e}");
            std::process::exit(1);
        }
    }
}
