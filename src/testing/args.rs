//! The command line of a `testing::main()` binary: the libtest options that matter to cargo,
//! `cargo nextest` and people (filters, `--exact`, `--skip`, `--list`, `--ignored`,
//! `--include-ignored`, `--test-threads`), plus `--timeout SECS`. Output options libtest knows
//! (`--nocapture`, `--color`, `--format`, ...) are accepted and have no effect.

use std::time::Duration;

/// The environment variable that sets the per-test timeout, in seconds.
pub const TIMEOUT_ENV: &str = "PYO3_ASYNC_BRIDGE_TEST_TIMEOUT";

/// The per-test timeout when neither `--timeout` nor [`TIMEOUT_ENV`] sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Which tests run, with the ignored ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum IgnoredMode {
    /// The tests not marked `#[ignore]` (the default).
    #[default]
    Skip,
    /// Only the `#[ignore]`d tests (`--ignored`).
    Only,
    /// Both (`--include-ignored`).
    Include,
}

/// The arguments of the test harness (see [`parse_args`](super::parse_args)).
///
/// `Args::default()` runs every test (no filter), with the default timeout.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub(crate) filters: Vec<String>,
    pub(crate) skip: Vec<String>,
    pub(crate) exact: bool,
    pub(crate) list: bool,
    pub(crate) terse: bool,
    pub(crate) ignored: IgnoredMode,
    pub(crate) test_threads: Option<usize>,
    pub(crate) timeout: Option<Duration>,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Parsed {
    Run(Args),
    Help,
}

impl Args {
    /// Sets the per-test timeout (otherwise `--timeout`, then [`TIMEOUT_ENV`], then
    /// [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether a test named `name` is selected by the filters and `--skip`.
    pub(crate) fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skip.iter().any(|s| {
                if self.exact {
                    name == s
                } else {
                    name.contains(s.as_str())
                }
            })
    }

    /// The per-test timeout.
    pub(crate) fn effective_timeout(&self) -> Result<Duration, String> {
        if let Some(t) = self.timeout {
            return Ok(t);
        }
        match std::env::var(TIMEOUT_ENV) {
            Ok(v) => secs(&v).map_err(|e| format!("{TIMEOUT_ENV}: {e}")),
            Err(_) => Ok(DEFAULT_TIMEOUT),
        }
    }

    /// How many tests run at once: `--test-threads`, else `RUST_TEST_THREADS`, else the
    /// machine's parallelism.
    pub(crate) fn concurrency(&self) -> usize {
        self.test_threads
            .or_else(|| std::env::var("RUST_TEST_THREADS").ok()?.parse().ok())
            .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
            .unwrap_or(1)
            .max(1)
    }
}

/// A positive number of seconds.
fn secs(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 => Duration::try_from_secs_f64(s)
            .map_err(|_| format!("expected a positive number of seconds, got `{v}`")),
        _ => Err(format!("expected a positive number of seconds, got `{v}`")),
    }
}

/// Parses the arguments after the program name.
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut out = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("`{name}` needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--exact" => out.exact = true,
            "--list" => out.list = true,
            "--ignored" => out.ignored = IgnoredMode::Only,
            "--include-ignored" => out.ignored = IgnoredMode::Include,
            "--skip" => out.skip.push(value("--skip")?),
            "--test-threads" => {
                let v = value("--test-threads")?;
                out.test_threads =
                    Some(v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("`--test-threads` expects a positive integer, got `{v}`")
                    })?);
            }
            "--timeout" => out.timeout = Some(secs(&value("--timeout")?)?),
            "--format" => out.terse = value("--format")? == "terse",
            "--color" | "--logfile" | "-Z" => {
                value(&flag)?;
            }
            "--nocapture" | "--no-capture" | "--show-output" | "-q" | "--quiet"
            | "--report-time" | "--ensure-time" | "--test" | "--bench" => {}
            f if f.starts_with('-') => return Err(format!("unknown option `{f}`")),
            _ => out.filters.push(arg),
        }
    }
    Ok(Parsed::Run(out))
}

/// The `--help` text.
pub(crate) const USAGE: &str = "\
Usage: TEST_BINARY [OPTIONS] [FILTERS...]

Runs the tests marked with the bridge's #[tokio::test] (pyo3-async-bridge testing::main),
each on a fresh asyncio event loop in its own thread.

Options:
    FILTERS              run only tests whose name contains one of these strings
    --exact              filters (and --skip) match whole names
    --skip FILTER        skip tests whose name contains FILTER (repeatable)
    --list               list the tests instead of running them
    --format terse       with --list: only the `name: test` lines
    --ignored            run only the #[ignore]d tests
    --include-ignored    run the #[ignore]d tests too
    --test-threads N     run N tests at once (default: RUST_TEST_THREADS or the CPU count)
    --timeout SECS       fail a test that runs longer (default: $PYO3_ASYNC_BRIDGE_TEST_TIMEOUT or 60)
    -h, --help           this text
Accepted for libtest compatibility, with no effect: --nocapture, --show-output, -q, --color, -Z";

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Args {
        match parse(args.iter().map(|s| s.to_string())).unwrap() {
            Parsed::Run(a) => a,
            Parsed::Help => panic!("help"),
        }
    }

    fn error(args: &[&str]) -> String {
        parse(args.iter().map(|s| s.to_string())).unwrap_err()
    }

    #[test]
    fn no_arguments_select_every_test() {
        let a = run(&[]);
        assert!(a.selects("any::name"));
        assert!(!a.list);
        assert_eq!(a.ignored, IgnoredMode::Skip);
    }

    #[test]
    fn filters_skip_and_exact_follow_libtest() {
        let a = run(&["sleep", "--skip", "slow"]);
        assert!(a.selects("m::test_sleep"));
        assert!(!a.selects("m::test_sleep_slow"));
        assert!(!a.selects("m::other"));
        let a = run(&["--exact", "m::test_sleep"]);
        assert!(a.selects("m::test_sleep"));
        assert!(!a.selects("m::test_sleep_2"));
    }

    #[test]
    fn nextest_invocations_parse() {
        let a = run(&["--list", "--format", "terse", "--ignored"]);
        assert!(a.list && a.terse);
        assert_eq!(a.ignored, IgnoredMode::Only);
        let a = run(&[
            "--exact",
            "m::t",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ]);
        assert!(a.exact);
        assert_eq!(a.ignored, IgnoredMode::Include);
        assert_eq!(a.test_threads, Some(1));
        let a = run(&["--color", "never", "-q", "--timeout=2.5"]);
        assert_eq!(a.timeout, Some(Duration::from_millis(2500)));
        assert!(matches!(parse(["--help".to_string()]), Ok(Parsed::Help)));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        assert!(error(&["--frobnicate"]).contains("unknown option `--frobnicate`"));
        assert!(error(&["--test-threads", "0"]).contains("positive integer"));
        assert!(error(&["--timeout", "-1"]).contains("positive number of seconds"));
        // Too large for a Duration: an error, not a panic.
        assert!(error(&["--timeout", "1e20"]).contains("positive number of seconds"));
        assert!(error(&["--timeout", "inf"]).contains("positive number of seconds"));
        assert!(error(&["--skip"]).contains("needs a value"));
    }
}
