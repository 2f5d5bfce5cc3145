//! `btf_minimize IN OUT`: IN (a kernel's raw BTF) cut down to what the daemon
//! reads, written to OUT. Run by `cargo xtask btf-testdata`, which extracts IN
//! from kernel images; not shipped.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: btf_minimize IN OUT");
        std::process::exit(2);
    };
    let result = std::fs::read(input)
        .map_err(|e| format!("{input}: {e}"))
        .and_then(|bytes| remote_vm_daemon::kernel::minimize_btf(&bytes).map_err(|e| format!("{input}: {e}")))
        .and_then(|small| std::fs::write(output, small).map_err(|e| format!("{output}: {e}")));
    if let Err(e) = result {
        eprintln!("btf_minimize: {e}");
        std::process::exit(1);
    }
}
