//! Stage 1, kernel facts: everything the daemon knows about the running kernel
//! before anything is loaded. The BTF bytes are read once; aya's `Btf` (for
//! loading programs) and our layout (offsets, enums, tracepoint arguments,
//! functions) are both built from them.
pub mod btf;
mod facts;
pub mod layout;
pub mod preempt;
pub mod symbols;
pub mod syscalls;

use std::path::Path;

pub use facts::{KernelFacts, SYS_BTF};
#[cfg(test)]
pub use facts::for_tests as facts_for_tests;
pub use layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read BTF from {path}: {source}")]
    Btf {
        path: String,
        #[source]
        source: BtfReadError,
    },
    #[error("--btf {path} differs from the running kernel's {}: --btf is for kernels without BTF", SYS_BTF)]
    BtfDiffers { path: String },
}

/// Why a BTF file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BtfReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Our reader's verdict.
    #[error(transparent)]
    Parse(#[from] btf::BtfError),
    /// aya's verdict on the same bytes.
    #[error("{}", crate::bpf::attach::describe(.0))]
    Aya(aya::BtfError),
}

/// The running kernel as the rest of the daemon sees it.
pub struct Kernel {
    pub facts: KernelFacts,
    pub layout: Layout,
    /// aya's view of the same BTF, for loading BTF-typed programs; `None`
    /// without BTF (only kprobes can attach then).
    pub btf: Option<aya::Btf>,
}

impl Kernel {
    /// Reads the BTF the daemon should use — `--btf PATH`, else the kernel's own,
    /// else none — and the facts that follow from it.
    pub fn read(btf_path: Option<&Path>) -> Result<Kernel, KernelError> {
        let mut facts = KernelFacts::read(btf_path);
        let path = btf_path.unwrap_or(Path::new(SYS_BTF));
        let bad = |source: BtfReadError| KernelError::Btf {
            path: path.display().to_string(),
            source,
        };
        let (layout, btf) = if btf_path.is_none() && !path.exists() {
            log::warn!("no kernel BTF at {}; only kprobes can attach (see --btf)", path.display());
            (Layout::without_btf(), None)
        } else {
            // Regular files of at most 64 MiB only, never read past that.
            let bytes = btf::read_file(path).map_err(bad)?;
            let read = from_btf_bytes(&bytes).map_err(bad)?;
            // Where the kernel has its own BTF, that is the one: another file's
            // offsets would be wrong for it.
            if btf_path.is_some() && Path::new(SYS_BTF).exists() {
                let own = btf::read_file(Path::new(SYS_BTF)).map_err(|source| KernelError::Btf {
                    path: SYS_BTF.to_string(),
                    source,
                })?;
                if own != bytes {
                    return Err(KernelError::BtfDiffers {
                        path: path.display().to_string(),
                    });
                }
            }
            if let Some(why) = &read.partial {
                log::warn!("BTF {} read in part: {why}", path.display());
            }
            (read.layout, Some(read.aya))
        };
        facts.fill_from_layout(&layout);
        Ok(Kernel { facts, layout, btf })
    }
}

/// What the daemon takes from one BTF file's bytes.
pub struct BtfRead {
    pub layout: Layout,
    /// aya's view, for loading BTF-typed programs.
    pub aya: aya::Btf,
    /// Why only part of the file was read (a kind this reader does not know).
    pub partial: Option<String>,
}

/// A kernel's BTF cut down to what the daemon reads (`cargo xtask
/// btf-testdata` writes the unit tests' test data with it): refused unless our
/// reader and aya's take it and it gives the same layout as the whole file.
pub fn minimize_btf(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let whole = btf::Btf::parse(bytes).map_err(|e| e.to_string())?;
    let layout = format!("{:?}", Layout::from_btf(&whole));
    let small = whole.minimized()?;
    let read = from_btf_bytes(&small).map_err(|e| format!("the minimized BTF is refused: {e}"))?;
    let again = format!("{:?}", read.layout);
    if again != layout {
        return Err(format!("the minimized BTF gives another layout:\n{again}\nthan the whole file:\n{layout}"));
    }
    Ok(small)
}

/// Our reader, then aya's on what ours read, then the layout: every step the
/// daemon takes on untrusted BTF bytes, in one place (`fuzz/` drives it).
pub fn from_btf_bytes(bytes: &[u8]) -> Result<BtfRead, BtfReadError> {
    let ours = btf::Btf::parse(bytes)?;
    // aya stops at a kind it does not know: it gets the types ours read.
    let aya = aya::Btf::parse(&ours.for_aya(), aya::Endianness::default()).map_err(BtfReadError::Aya)?;
    Ok(BtfRead {
        layout: Layout::from_btf(&ours),
        aya,
        partial: ours.partial.clone(),
    })
}
