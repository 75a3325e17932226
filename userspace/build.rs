//! Compiles the eBPF programs (ebpf/enforcer-ebpf) from source with the nightly
//! toolchain and bpf-linker, so no prebuilt object is ever committed.
//! `cargo xtask setup` installs what this needs.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&root).join("../ebpf/enforcer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    println!("cargo:rerun-if-changed=../ebpf/enforcer-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install \
         the nightly rust-src component and bpf-linker",
    )
}
