//! Usage checks for `trellis inject` / `uninject` that clap cannot express: arguments that
//! clash with each other or with where the input comes from. Each failure is a usage error
//! (exit 64) that says why and prints the command's usage line, as clap's own errors do.

use std::io::IsTerminal;

use clap::CommandFactory;

use super::InjectArgs;

/// Why the arguments cannot be used, plus the command's usage, ready to print.
#[derive(Debug)]
pub struct UsageError {
    pub command: &'static str,
    pub why: String,
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut cli = crate::Cli::command();
        // Building fills in each subcommand's full name (`trellis inject`) for its usage line.
        cli.build();
        let usage = cli
            .find_subcommand_mut(self.command)
            .map(|c| c.render_usage().to_string())
            .unwrap_or_default();
        write!(
            f,
            "{}: {}\n{usage}\n\nFor more information, try 'trellis {} --help'.",
            self.command, self.why, self.command
        )
    }
}

impl std::error::Error for UsageError {}

/// Checks `args` for `inject` (or, with `remove`, `uninject`). `stdin_is_terminal`: whether the
/// process's stdin is a terminal (reading YAML from it would wait for typing).
pub fn check(args: &InjectArgs, remove: bool, stdin_is_terminal: bool) -> Result<(), UsageError> {
    let command = if remove { "uninject" } else { "inject" };
    let fail = |why: String| Err(UsageError { command, why });
    if remove {
        // These shape what inject adds; uninject removes it whatever it was, so a value here
        // is a mistake (probably `inject` was meant), not something to ignore silently.
        let given = [
            ("--proxy-image", args.proxy_image.is_some()),
            ("--native-sidecar", args.native_sidecar),
            ("--control", args.control.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return fail(format!(
                "{flag} applies to inject only (uninject removes whatever inject added)"
            ));
        }
    }
    if args
        .proxy_image
        .as_deref()
        .is_some_and(|i| i.trim().is_empty())
    {
        return fail("--proxy-image: must name an image, got \"\"".into());
    }
    if let Some(url) = &args.control
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return fail(format!(
            "--control: must be an http:// or https:// URL (the discovery URL proxies connect to), got {url:?}"
        ));
    }
    let stdin_uses = args.files.iter().filter(|f| f.as_os_str() == "-").count();
    if stdin_uses > 1 {
        return fail(format!(
            "`-` (stdin) is given {stdin_uses} times; stdin can be read once"
        ));
    }
    if args.files.is_empty() && stdin_is_terminal {
        return fail(
            "no input: give YAML files, `-` to type YAML on stdin, or pipe YAML in".into(),
        );
    }
    Ok(())
}

/// Whether this process's stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    fn args(files: &[&str]) -> InjectArgs {
        InjectArgs {
            files: files.iter().map(PathBuf::from).collect(),
            proxy_image: None,
            native_sidecar: false,
            control: None,
        }
    }

    #[test]
    fn clashes_are_usage_errors_with_the_usage_line() {
        assert!(check(&args(&["a.yaml", "-"]), false, true).is_ok());
        assert!(check(&args(&[]), false, false).is_ok(), "piped stdin");
        let err = check(&args(&["-", "-"]), false, false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("inject: `-` (stdin) is given 2 times; stdin can be read once\nUsage: trellis inject "),
            "{text}"
        );
        let err = check(&args(&[]), false, true).unwrap_err();
        assert!(err.why.starts_with("no input"), "{err}");
        let mut a = args(&["a.yaml"]);
        a.native_sidecar = true;
        assert!(check(&a, false, false).is_ok());
        let err = check(&a, true, false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("uninject: --native-sidecar applies to inject only")
        );
        let mut a = args(&["a.yaml"]);
        a.control = Some("trellis-control:15010".into());
        assert!(
            check(&a, false, false)
                .unwrap_err()
                .why
                .contains("--control")
        );
        a.control = None;
        a.proxy_image = Some(" ".into());
        assert!(
            check(&a, false, false)
                .unwrap_err()
                .why
                .contains("--proxy-image")
        );
    }
}
