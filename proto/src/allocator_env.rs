//! Allocator settings a binary runs with: glibc's malloc and mimalloc read
//! theirs from the environment as the process loads, before `main`, so a
//! binary that wants its own defaults executes itself again with them set.

use std::{ffi::OsString, os::unix::process::CommandExt};

/// Executes the running program again (the same process id, arguments and
/// environment) with each of `settings` that its environment does not name
/// already; returns at once when it names them all. Call it first in `main`,
/// before any thread starts. When the new image cannot be loaded, `program`
/// says so on stderr and runs on with the allocators' defaults.
pub fn run_with(program: &str, settings: &[(&str, &str)]) {
    let missing = missing(settings, |k| std::env::var_os(k));
    if missing.is_empty() {
        return;
    }
    let error = match std::env::current_exe() {
        Ok(exe) => {
            let mut args = std::env::args_os();
            let mut again = std::process::Command::new(exe);
            if let Some(arg0) = args.next() {
                again.arg0(arg0);
            }
            // Returns only when the new image could not be loaded.
            again.args(args).envs(missing).exec()
        }
        Err(e) => e,
    };
    eprintln!(
        "{program}: could not run itself again with {settings:?} ({error}); going on with the allocators' defaults"
    );
}

/// The settings that `env` does not name; an operator's own value (even
/// empty) wins.
fn missing<'a>(
    settings: &[(&'a str, &'a str)],
    env: impl Fn(&str) -> Option<OsString>,
) -> Vec<(&'a str, &'a str)> {
    settings
        .iter()
        .copied()
        .filter(|(k, _)| env(k).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_the_environment_names_is_left_as_the_operator_set_it() {
        let settings = [
            ("MALLOC_ARENA_MAX", "1"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ];
        let env = |k: &str| (k == "MALLOC_ARENA_MAX").then(|| OsString::from("4"));
        assert_eq!(
            missing(&settings, env),
            vec![("MALLOC_MMAP_THRESHOLD_", "131072")]
        );
        assert!(missing(&settings, |_| Some(OsString::new())).is_empty());
    }
}
