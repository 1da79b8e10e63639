//! Builds the eBPF programs (gateway-ebpf) for bpfel-unknown-none with the nightly toolchain;
//! the object lands in OUT_DIR and is embedded into gatewayd with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
