//! `trellis-proxy init`: the iptables rules that make a pod's traffic pass through its proxy, as
//! the init container (or CNI step) would write them.
//!
//! INTERFACE CONTRACT (stub; implemented by the pods/testkit work).

/// Options of `trellis-proxy init`.
#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// The uid the proxy runs as; its own traffic is never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// Where inbound TCP is redirected.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Where outbound TCP is redirected.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Inbound ports never redirected (the proxy's admin port is always added).
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Writes (or with `--dry-run` prints) the rules.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("trellis-proxy init is not implemented yet")
}
