//! Link-time layout of the `trellis-proxy` binary, for its resident memory (issue 14).
//!
//! What a proxy makes resident of its own binary is not the code it runs but the page-cache
//! folios and fault-around windows that code lies in: the kernel maps up to 64 KiB (or a whole
//! large folio) around each page fault. Left in the compiler's order, the ~3 MB that start-up
//! and a request run are spread over all 10 MB of `.text`, and most of `.text` became resident.
//! `hot-code.ld` (written by `bench/proxy_rss_order.py` from callgrind runs of the mTLS pair)
//! names those functions' sections; as a linker script with `INSERT BEFORE .text` it gathers
//! them into one output section ahead of the rest, so the cold code (Wasm, config parsing, the
//! CLI, one-off paths) stays on disk.
//!
//! It only moves sections: what the binary does cannot change. Each function is named by its
//! exact symbol, which the build every bench script makes (`cargo build --release -p
//! trellis-proxy`, alone: symbol hashes follow the features one build unifies) matches, then,
//! where that cannot pull in unused generic instances, with its hash as a wildcard. A function
//! that is renamed, new or otherwise hashed falls back to `.text` (memory, never correctness).
//! Release builds of ELF targets only (GNU ld and lld both read the script);
//! `TRELLIS_PROXY_CODE_LAYOUT=off` turns it off, `TRELLIS_PROXY_CODE_LAYOUT=<file.ld>` links
//! with another script (to compare layouts without touching this one).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=hot-code.ld");
    println!("cargo:rerun-if-env-changed=TRELLIS_PROXY_CODE_LAYOUT");
    let elf = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let choice = env::var("TRELLIS_PROXY_CODE_LAYOUT").unwrap_or_default();
    let wanted = choice != "off";
    // Debug builds (the tests) gain nothing from it.
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let script = if choice.ends_with(".ld") {
        println!("cargo:rerun-if-changed={choice}");
        PathBuf::from(choice)
    } else {
        Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("hot-code.ld")
    };
    if elf && wanted && release && script.is_file() {
        // Linked from OUT_DIR, not from the source tree: cargo's build-dir may be shared by
        // clones at other paths (.ci/run's cache), and it reruns this script only when the
        // script's input changes, so a path into the clone that last ran it could be gone.
        let copied = env::var_os("OUT_DIR").and_then(|dir| {
            let out = Path::new(&dir).join("hot-code.ld");
            match std::fs::copy(&script, &out) {
                Ok(_) => Some(out),
                Err(e) => {
                    println!(
                        "cargo:warning=linking {} in place: copying it: {e}",
                        script.display()
                    );
                    None
                }
            }
        });
        let out = copied.unwrap_or(script);
        println!(
            "cargo:rustc-link-arg-bin=trellis-proxy=-Wl,-T,{}",
            out.display()
        );
    }
}
