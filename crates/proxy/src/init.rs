//! `trellis-proxy init`: the iptables rules that make a pod's traffic pass through its proxy, as
//! the init container (or CNI step) would write them.
//!
//! The rules are built by a pure function ([`plan`]) from the options and the nat table as it is
//! now (the text of `iptables-save -t nat`), and applied by a thin adapter ([`run`]) that pipes
//! them into `iptables-restore --noflush`. Only the nat table and only Trellis' own chains are
//! touched; the rest of the pod's rules are left as they are. This module must not know about the
//! proxy's listeners beyond their port numbers.
//!
//! What the rules do (Istio's layout, trimmed to what Trellis needs):
//!
//! - `PREROUTING -p tcp -j TRELLIS_INBOUND`: TCP arriving at the pod from outside is redirected to
//!   the inbound listener, except to the proxy's own ports and the excluded ones. The proxy reads
//!   the port the client meant with `SO_ORIGINAL_DST`.
//! - `OUTPUT -p tcp -j TRELLIS_OUTPUT`: TCP the pod starts is redirected to the outbound listener,
//!   except the proxy's own (matched by uid: without that exception every upstream connection the
//!   proxy opens would come straight back to it, a loop) and traffic leaving through `lo`
//!   (the app calling itself on localhost or on its own pod IP never leaves the pod, so there is
//!   nothing for the mesh to mediate, and the proxy forwarding inbound traffic to the app goes
//!   that way too).
//!
//! Running it twice gives the same rules: the chains are flushed and refilled, and the jumps into
//! them are added only when `iptables-save` does not already show them.
//!
//! IPv4 only for now: a pod with IPv6 addresses would need the same rules through
//! `ip6tables-restore`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

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
    /// Outbound destination ports never redirected (for example a database the mesh must not see).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// The proxy's admin port: never redirected, so probes and scrapes reach the proxy itself.
    #[arg(long, default_value_t = 15020)]
    pub admin_port: u16,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// The chain PREROUTING jumps to.
pub const INBOUND_CHAIN: &str = "TRELLIS_INBOUND";
/// The chain OUTPUT jumps to.
pub const OUTPUT_CHAIN: &str = "TRELLIS_OUTPUT";

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `--inbound-port` or `--outbound-port` is 0: REDIRECT needs a real port.
    #[error("--{0} must not be 0: the rules redirect to a fixed port")]
    ZeroPort(&'static str),
    /// The iptables tools could not be started at all (not installed, not on PATH).
    #[error("cannot run {program}: {source} (is iptables installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An iptables tool ran and failed; `stderr` is what it said (permission, missing module).
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// Writing the rules to `iptables-restore`'s stdin failed.
    #[error("writing rules to iptables-restore: {0}")]
    Stdin(#[source] std::io::Error),
}

/// The jump rules as `iptables-save` prints them, so that their presence can be recognised.
fn jumps() -> [(&'static str, String); 2] {
    [
        (
            "PREROUTING",
            format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        ),
        ("OUTPUT", format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}")),
    ]
}

/// Builds the `iptables-restore --noflush` input that sets the rules up.
///
/// `current_nat` is the output of `iptables-save -t nat` (empty when unknown, as for
/// `--dry-run`): a jump into Trellis' chains already listed there is not added again.
pub fn plan(args: &InitArgs, current_nat: &str) -> Result<String, InitError> {
    if args.inbound_port == 0 {
        return Err(InitError::ZeroPort("inbound-port"));
    }
    if args.outbound_port == 0 {
        return Err(InitError::ZeroPort("outbound-port"));
    }

    // Sorted and deduplicated so the output is stable text (and unit-testable as such).
    let mut inbound_skip: Vec<u16> = [args.inbound_port, args.outbound_port, args.admin_port]
        .into_iter()
        .chain(args.exclude_inbound_ports.iter().copied())
        .filter(|p| *p != 0)
        .collect();
    inbound_skip.sort_unstable();
    inbound_skip.dedup();
    let mut outbound_skip: Vec<u16> = args
        .exclude_outbound_ports
        .iter()
        .copied()
        .filter(|p| *p != 0)
        .collect();
    outbound_skip.sort_unstable();
    outbound_skip.dedup();

    let existing: Vec<&str> = current_nat.lines().map(str::trim_end).collect();
    let mut out = String::new();
    // `writeln!` into a String cannot fail; the results are ignored on purpose below.
    let _ = writeln!(out, "*nat");
    // A chain line creates the chain or, with --noflush, empties an existing one: that is what
    // makes a second run replace the rules rather than append to them.
    let _ = writeln!(out, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{OUTPUT_CHAIN} - [0:0]");
    let _ = writeln!(out, "-F {INBOUND_CHAIN}");
    let _ = writeln!(out, "-F {OUTPUT_CHAIN}");

    for port in &inbound_skip {
        let _ = writeln!(
            out,
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        );
    }
    let _ = writeln!(
        out,
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    );

    // Order matters: the uid exception comes first so the proxy is never redirected, whatever
    // it connects to.
    let _ = writeln!(
        out,
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    );
    // Routing has already chosen the interface when nat OUTPUT runs, and every destination
    // that stays in the pod (127.0.0.0/8 and the pod's own addresses, which live in the local
    // routing table) goes out `lo`: one rule covers both.
    let _ = writeln!(out, "-A {OUTPUT_CHAIN} -o lo -j RETURN");
    for port in &outbound_skip {
        let _ = writeln!(
            out,
            "-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        );
    }
    let _ = writeln!(
        out,
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    );

    for (_, jump) in jumps() {
        if !existing.contains(&jump.as_str()) {
            let _ = writeln!(out, "{jump}");
        }
    }
    let _ = writeln!(out, "COMMIT");
    Ok(out)
}

/// Writes (or with `--dry-run` prints) the rules.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.dry_run {
        print!("{}", plan(args, "")?);
        return Ok(());
    }
    let current = iptables_save_nat()?;
    let rules = plan(args, &current)?;
    iptables_restore(&rules)?;
    tracing::info!(
        inbound_port = args.inbound_port,
        outbound_port = args.outbound_port,
        proxy_uid = args.proxy_uid,
        "iptables rules applied"
    );
    Ok(())
}

fn iptables_save_nat() -> Result<String, InitError> {
    const PROGRAM: &str = "iptables-save";
    let output = Command::new(PROGRAM)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitError::Spawn {
            program: PROGRAM,
            source,
        })?;
    if !output.status.success() {
        return Err(InitError::Failed {
            program: PROGRAM,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn iptables_restore(rules: &str) -> Result<(), InitError> {
    const PROGRAM: &str = "iptables-restore";
    let mut child = Command::new(PROGRAM)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            program: PROGRAM,
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping stdin at the end of this block closes it, which is what lets
        // iptables-restore see the end of its input.
        stdin
            .write_all(rules.as_bytes())
            .map_err(InitError::Stdin)?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            program: PROGRAM,
            source,
        })?;
    if !output.status.success() {
        return Err(InitError::Failed {
            program: PROGRAM,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InitArgs {
        InitArgs {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound_ports: vec![22, 15020],
            exclude_outbound_ports: vec![],
            admin_port: 15020,
            dry_run: true,
        }
    }

    #[test]
    fn fresh_table_gets_chains_and_jumps() {
        let want = "\
*nat
:TRELLIS_INBOUND - [0:0]
:TRELLIS_OUTPUT - [0:0]
-F TRELLIS_INBOUND
-F TRELLIS_OUTPUT
-A TRELLIS_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A TRELLIS_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A TRELLIS_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A TRELLIS_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A TRELLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A TRELLIS_OUTPUT -o lo -j RETURN
-A TRELLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j TRELLIS_INBOUND
-A OUTPUT -p tcp -j TRELLIS_OUTPUT
COMMIT
";
        assert_eq!(plan(&args(), "").unwrap(), want);
    }

    #[test]
    fn existing_jumps_are_not_added_twice() {
        let saved = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TRELLIS_INBOUND - [0:0]
:TRELLIS_OUTPUT - [0:0]
-A PREROUTING -p tcp -j TRELLIS_INBOUND
-A OUTPUT -p tcp -j TRELLIS_OUTPUT
COMMIT
";
        let rules = plan(&args(), saved).unwrap();
        assert!(!rules.contains("-A PREROUTING"), "{rules}");
        assert!(!rules.contains("-A OUTPUT "), "{rules}");
        // The chains are still emptied and refilled, so a changed option takes effect.
        assert!(rules.contains("-F TRELLIS_INBOUND\n"), "{rules}");
        assert!(rules.contains("--to-ports 15006\n"), "{rules}");
    }

    #[test]
    fn outbound_exclusions_and_custom_ports() {
        let mut a = args();
        a.inbound_port = 16006;
        a.outbound_port = 16001;
        a.proxy_uid = 2000;
        a.exclude_outbound_ports = vec![5432, 5432];
        let rules = plan(&a, "").unwrap();
        assert!(rules.contains("-A TRELLIS_OUTPUT -m owner --uid-owner 2000 -j RETURN\n"));
        assert_eq!(
            rules.matches("--dport 5432 -j RETURN").count(),
            1,
            "{rules}"
        );
        assert!(rules.contains("-A TRELLIS_OUTPUT -p tcp -j REDIRECT --to-ports 16001\n"));
        assert!(rules.contains("-A TRELLIS_INBOUND -p tcp -m tcp --dport 16006 -j RETURN\n"));
        // The uid exception must precede every REDIRECT in the output chain, or the proxy loops.
        let uid = rules.find("--uid-owner").unwrap();
        let redirect = rules.find("-A TRELLIS_OUTPUT -p tcp -j REDIRECT").unwrap();
        assert!(uid < redirect);
    }

    #[test]
    fn zero_ports_are_rejected() {
        let mut a = args();
        a.inbound_port = 0;
        assert!(matches!(
            plan(&a, ""),
            Err(InitError::ZeroPort("inbound-port"))
        ));
    }
}
