//! Builds the eBPF object from `dr-ebpf` so that `dr-ctl` embeds it.
use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "dr-ebpf")
        .ok_or_else(|| anyhow!("dr-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("dr-ebpf manifest has no parent"))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // aya-build watches dr-ebpf; the shared types live next door.
    println!("cargo:rerun-if-changed=../dr-common");
    aya_build::build_ebpf([package], Toolchain::default())
}
