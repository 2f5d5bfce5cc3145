//! Program families, one module each; `maps` holds what they share and
//! `layout` the kernel facts user space found in BTF.
mod access;
mod layout;
mod lock;
mod maps;
mod vma;
