//! Program families, one module each; `maps` holds what they share and
//! `layout` the kernel facts user space found in BTF.

/// The entry points: one line per program, its kind (an aya attribute macro, with
/// its arguments if any), its name (the program name user space loads, see
/// `remote_vm_common::registry`), and the one call it makes:
///
/// ```ignore
/// entry_points! {
///     fentry down_read_fentry(ctx) => remote_begin(ctx.arg(0), false);
///     btf_tracepoint(function = "mmap_lock_start_locking")
///     host_start_locking_tp_w1(ctx) => host_start_locking::<1>(&ctx);
/// }
/// ```
///
/// Each line expands to exactly what was written by hand before:
///
/// ```ignore
/// #[fentry]
/// pub fn down_read_fentry(ctx: FEntryContext) -> i32 {
///     remote_begin(ctx.arg(0), false);
///     0
/// }
/// ```
///
/// | kind             | context                | returns |
/// |------------------|------------------------|---------|
/// | `fentry`         | `FEntryContext`        | `i32`   |
/// | `fexit`          | `FExitContext`         | `i32`   |
/// | `kprobe`         | `ProbeContext`         | `u32`   |
/// | `kretprobe`      | `RetProbeContext`      | `u32`   |
/// | `btf_tracepoint` | `BtfTracePointContext` | `i32`   |
///
/// (aya's wrapper returns 0 whatever the function returns.) Attributes before a
/// line (doc comments) go on its function. Programs whose body is more than one
/// call stay hand-written: rustfmt does not format code inside the table.
macro_rules! entry_points {
    (@one fentry ($($args:tt)*) [$($attrs:tt)*] $name:ident $ctx:ident $body:expr) => {
        $($attrs)*
        #[::aya_ebpf::macros::fentry($($args)*)]
        pub fn $name($ctx: ::aya_ebpf::programs::FEntryContext) -> i32 {
            $body;
            0
        }
    };
    (@one fexit ($($args:tt)*) [$($attrs:tt)*] $name:ident $ctx:ident $body:expr) => {
        $($attrs)*
        #[::aya_ebpf::macros::fexit($($args)*)]
        pub fn $name($ctx: ::aya_ebpf::programs::FExitContext) -> i32 {
            $body;
            0
        }
    };
    (@one kprobe ($($args:tt)*) [$($attrs:tt)*] $name:ident $ctx:ident $body:expr) => {
        $($attrs)*
        #[::aya_ebpf::macros::kprobe($($args)*)]
        pub fn $name($ctx: ::aya_ebpf::programs::ProbeContext) -> u32 {
            $body;
            0
        }
    };
    (@one kretprobe ($($args:tt)*) [$($attrs:tt)*] $name:ident $ctx:ident $body:expr) => {
        $($attrs)*
        #[::aya_ebpf::macros::kretprobe($($args)*)]
        pub fn $name($ctx: ::aya_ebpf::programs::RetProbeContext) -> u32 {
            $body;
            0
        }
    };
    (@one btf_tracepoint ($($args:tt)*) [$($attrs:tt)*] $name:ident $ctx:ident $body:expr) => {
        $($attrs)*
        #[::aya_ebpf::macros::btf_tracepoint($($args)*)]
        pub fn $name($ctx: ::aya_ebpf::programs::BtfTracePointContext) -> i32 {
            $body;
            0
        }
    };
    (@one $kind:ident $($rest:tt)*) => {
        compile_error!(concat!("entry_points!: unknown program kind `", stringify!($kind), "`"));
    };
    ($(
        $(#[$attr:meta])*
        $kind:ident $(($($args:tt)*))? $name:ident($ctx:ident) => $body:expr;
    )*) => {
        $(
            entry_points!(@one $kind ($($($args)*)?) [$(#[$attr])*] $name $ctx $body);
        )*
    };
}

mod access;
mod check;
mod layout;
mod lock;
mod maps;
mod stacks;
mod vma;
mod waits;
