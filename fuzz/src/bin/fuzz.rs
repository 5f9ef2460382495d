//! `fuzz <target|all> [--seconds N] [--seed S]`: runs a target (or each in
//! turn) on its corpus and mutations of it for N seconds (default 60).
//! `fuzz <target> --input FILE`: runs one input (a regression) as it is.
//!
//! Each target runs in a child process with its address space bounded
//! ([`MEMORY_LIMIT`]): an allocation past it aborts the child. The parent
//! then runs the last stretch of inputs again (they are a function of the
//! seed and their index), writing each before it is tried, so the input
//! that aborted is kept. Prints
//! `target=<t> executions=<n> seconds=<s> crashes=<c> seed=<seed>` per
//! target; exits non-zero when any crashed (panic, hang, abort), its input
//! in `fuzz/crashes/<target>-<hash>`.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use sightline_fuzz::{
    corpus, crash_dir, hash, input, quiet_panics, targets, Outcome, Worker, HANG,
};

/// The address space a target's process may use: an input that makes a
/// decoder allocate without bound ends there, as a crash.
const MEMORY_LIMIT: u64 = 4 << 30;
/// A child reports how far it got every this many inputs.
const PROGRESS_EVERY: u64 = 256;

struct Args {
    target: String,
    seconds: u64,
    seed: u64,
    child: bool,
    /// Child only: run inputs from..to, writing each before it is tried.
    replay: Option<(u64, u64)>,
    /// Run this one file's bytes (a regression input), the known crashes
    /// not stepped around; exits 0 when the target returned.
    input: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        target: String::new(),
        seconds: 60,
        seed: 0,
        child: false,
        replay: None,
        input: None,
    };
    let mut seed = None;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name}: a number"))
        };
        match arg.as_str() {
            "--seconds" => a.seconds = value("--seconds")?,
            "--seed" => seed = Some(value("--seed")?),
            "--child" => a.child = true,
            "--input" => a.input = Some(it.next().ok_or("--input: a file")?),
            "--replay" => a.replay = Some((value("--replay")?, value("--replay")?)),
            t if !t.starts_with('-') && a.target.is_empty() => a.target = t.to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.target.is_empty() {
        return Err("name a target or `all`".into());
    }
    a.seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            let names: Vec<&str> = targets::ALL.iter().map(|t| t.name).collect();
            eprintln!(
                "fuzz: {e}\nusage: fuzz <target|all> [--seconds N] [--seed S]\ntargets: {}",
                names.join(" ")
            );
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &args.input {
        return one_input(&args.target, file);
    }
    if args.child {
        return child(&args);
    }
    let names: Vec<&str> = if args.target == "all" {
        targets::ALL.iter().map(|t| t.name).collect()
    } else if targets::by_name(&args.target).is_some() {
        vec![args.target.as_str()]
    } else {
        eprintln!("fuzz: no target {:?}", args.target);
        return ExitCode::from(2);
    };
    let mut failed = false;
    for name in names {
        failed |= !supervise(name, args.seconds, args.seed);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one target in a child; true when nothing crashed.
fn supervise(name: &str, seconds: u64, seed: u64) -> bool {
    println!("fuzz: target={name} seed={seed} seconds={seconds}");
    let exe = std::env::current_exe().expect("the fuzz binary's path");
    let started = Instant::now();
    let mut proc = Command::new(&exe)
        .args([name, "--child", "--seconds", &seconds.to_string()])
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the fuzz child");
    let mut last = 0u64;
    let out = proc.stdout.take().expect("the child's stdout");
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("progress ") {
            last = n.trim().parse().unwrap_or(last);
        } else {
            println!("{line}");
        }
    }
    let status = proc.wait().expect("waiting for the fuzz child");
    if status.code().is_some() {
        // It ended by itself: it printed its summary (and any crash).
        return status.success();
    }
    // Killed by a signal (an abort: out of memory, a stack overflow).
    println!(
        "fuzz: target={name} died ({status}) after input {last}; running inputs {last}.. again to keep the one that did"
    );
    let status = Command::new(&exe)
        .args([name, "--child", "--seed", &seed.to_string()])
        .args([
            "--replay",
            &last.to_string(),
            &(last + 2 * PROGRESS_EVERY).to_string(),
        ])
        .status()
        .expect("starting the fuzz child again");
    let pending = crash_dir().join(format!("{name}-pending"));
    match std::fs::read(&pending) {
        Ok(data) if status.code().is_none() => {
            let to = crash_dir().join(format!("{name}-{}", hash(&data)));
            let _ = std::fs::rename(&pending, &to);
            println!(
                "target={name} executions={last} seconds={} crashes=1 seed={seed} crash={} ({status})",
                started.elapsed().as_secs(),
                to.display()
            );
        }
        _ => println!(
            "target={name} executions={last} seconds={} crashes=1 seed={seed} (died with {status}; not reproduced)",
            started.elapsed().as_secs()
        ),
    }
    false
}

fn bound_memory() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::As);
    let limit = match now.maximum {
        Some(max) => MEMORY_LIMIT.min(max),
        None => MEMORY_LIMIT,
    };
    let _ = setrlimit(
        Resource::As,
        Rlimit {
            current: Some(limit),
            maximum: now.maximum,
        },
    );
}

fn one_input(name: &str, file: &str) -> ExitCode {
    let Some(target) = targets::by_name(name) else {
        eprintln!("fuzz: no target {name:?}");
        return ExitCode::from(2);
    };
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fuzz: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    targets::SKIP_KNOWN.store(false, std::sync::atomic::Ordering::Relaxed);
    quiet_panics();
    bound_memory();
    match Worker::start(target).run(data, HANG) {
        Outcome::Ok => {
            println!("target={name} input={file}: ok");
            ExitCode::SUCCESS
        }
        bad => {
            println!("target={name} input={file}: {bad:?}");
            ExitCode::FAILURE
        }
    }
}

fn child(args: &Args) -> ExitCode {
    let Some(target) = targets::by_name(&args.target) else {
        return ExitCode::from(2);
    };
    quiet_panics();
    bound_memory();
    let corpus = corpus(target.name);
    let worker = Worker::start(target);
    let _ = std::fs::create_dir_all(crash_dir());
    let started = Instant::now();
    let deadline = Duration::from_secs(args.seconds);
    let (mut i, end) = match args.replay {
        Some((from, to)) => (from, to),
        None => (0, u64::MAX),
    };
    let pending = crash_dir().join(format!("{}-pending", target.name));
    let mut stdout = std::io::stdout();
    let mut executions = 0u64;
    while i < end && (args.replay.is_some() || started.elapsed() < deadline) {
        let data = input(&corpus, args.seed, i);
        if args.replay.is_some() {
            let _ = std::fs::write(&pending, &data);
        }
        let outcome = worker.run(data.clone(), HANG);
        executions += 1;
        if outcome != Outcome::Ok {
            let path = crash_dir().join(format!("{}-{}", target.name, hash(&data)));
            let _ = std::fs::write(&path, &data);
            let _ = std::fs::remove_file(&pending);
            let _ = writeln!(
                stdout,
                "fuzz: target={} input #{i} ({} bytes): {outcome:?}",
                target.name,
                data.len()
            );
            let _ = writeln!(
                stdout,
                "target={} executions={executions} seconds={} crashes=1 seed={} crash={}",
                target.name,
                started.elapsed().as_secs(),
                args.seed,
                path.display()
            );
            let _ = stdout.flush();
            // A hung call cannot be stopped: end the process.
            std::process::exit(1);
        }
        i += 1;
        if i.is_multiple_of(PROGRESS_EVERY) {
            let _ = writeln!(stdout, "progress {i}");
        }
    }
    let _ = std::fs::remove_file(&pending);
    if args.replay.is_none() {
        let _ = writeln!(
            stdout,
            "target={} executions={executions} seconds={} crashes=0 seed={}",
            target.name,
            started.elapsed().as_secs(),
            args.seed
        );
    }
    let _ = stdout.flush();
    ExitCode::SUCCESS
}
