//! Program families, one module each; `maps` holds what they share.
mod access;
mod maps;
mod mmap_lock;
