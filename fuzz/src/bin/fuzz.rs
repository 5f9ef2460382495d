//! `fuzz <target|all> [--seconds N] [--seed S]`: runs a target (or each in
//! turn) on its corpus and mutations of it for N seconds (default 60).
//! `fuzz <target> --input FILE [--hang-seconds N]`: runs one input (a
//! regression) as it is. `--keep-going`: after a crash, go on with the
//! next input in a new process until the time is up (crashes counted).
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
    /// With --input: the bound on the call, in seconds (default [`HANG`]),
    /// to see how long a hang really takes.
    hang: Option<u64>,
    /// Child only: the first input to run.
    start: u64,
    /// After a crash, go on with the next input until the time is up.
    keep_going: bool,
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
        hang: None,
        start: 0,
        keep_going: false,
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
            "--keep-going" => a.keep_going = true,
            "--start" => a.start = value("--start")?,
            "--input" => a.input = Some(it.next().ok_or("--input: a file")?),
            "--hang-seconds" => a.hang = Some(value("--hang-seconds")?),
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
                "fuzz: {e}\nusage: fuzz <target|all> [--seconds N] [--seed S] [--keep-going] | fuzz <target> --input FILE [--hang-seconds N]\ntargets: {}",
                names.join(" ")
            );
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &args.input {
        let bound = args.hang.map_or(HANG, Duration::from_secs);
        return one_input(&args.target, file, bound);
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
        failed |= !supervise(name, args.seconds, args.seed, args.keep_going);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one target in a child; true when nothing crashed. With
/// `keep_going`, a crash is recorded and a new child goes on after it
/// until the time is up (a hung call cannot be stopped but by its process).
fn supervise(name: &str, seconds: u64, seed: u64, keep_going: bool) -> bool {
    println!("fuzz: target={name} seed={seed} seconds={seconds}");
    let started = Instant::now();
    let (mut start, mut executions, mut crashes) = (0u64, 0u64, 0u64);
    loop {
        let left = seconds.saturating_sub(started.elapsed().as_secs());
        let end = run_child(name, left, seed, start);
        executions += end.executions;
        if end.crashed {
            crashes += 1;
        }
        match end.next {
            Some(next) if keep_going && started.elapsed().as_secs() < seconds => start = next,
            _ => break,
        }
    }
    println!(
        "target={name} executions={executions} seconds={} crashes={crashes} seed={seed}",
        started.elapsed().as_secs()
    );
    crashes == 0
}

/// How a child ended.
struct ChildEnd {
    executions: u64,
    crashed: bool,
    /// The input to go on from, after a crash.
    next: Option<u64>,
}

fn run_child(name: &str, seconds: u64, seed: u64, start: u64) -> ChildEnd {
    let exe = std::env::current_exe().expect("the fuzz binary's path");
    let mut proc = Command::new(&exe)
        .args([name, "--child", "--seconds", &seconds.to_string()])
        .args(["--seed", &seed.to_string(), "--start", &start.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the fuzz child");
    let (mut last, mut executions, mut crashed_at) = (start, 0u64, None::<u64>);
    let out = proc.stdout.take().expect("the child's stdout");
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("progress ") {
            last = n.trim().parse().unwrap_or(last);
        } else if let Some(n) = line.strip_prefix("crashed-at ") {
            crashed_at = n.trim().parse().ok();
        } else if let Some(n) = line.strip_prefix("executions ") {
            executions = n.trim().parse().unwrap_or(0);
        } else {
            println!("{line}");
        }
    }
    let status = proc.wait().expect("waiting for the fuzz child");
    if status.code().is_some() {
        // It ended by itself, after its time or a crash it reported.
        return ChildEnd {
            executions,
            crashed: !status.success(),
            next: crashed_at.map(|i| i + 1),
        };
    }
    // Killed by a signal (an abort: out of memory, a stack overflow).
    println!(
        "fuzz: target={name} died ({status}) after input {last}; running inputs {last}.. again to keep the one that did"
    );
    let window = last + 2 * PROGRESS_EVERY;
    let status = Command::new(&exe)
        .args([name, "--child", "--seed", &seed.to_string()])
        .args(["--replay", &last.to_string(), &window.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("starting the fuzz child again");
    let pending = crash_dir().join(format!("{name}-pending"));
    match std::fs::read(&pending) {
        Ok(data) if status.code().is_none() => {
            let to = crash_dir().join(format!("{name}-{}", hash(&data)));
            let _ = std::fs::rename(&pending, &to);
            println!("fuzz: target={name} crash={} ({status})", to.display());
        }
        _ => println!("fuzz: target={name} died with {status}; not reproduced"),
    }
    ChildEnd {
        executions: last - start,
        crashed: true,
        next: Some(window),
    }
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

fn one_input(name: &str, file: &str, bound: Duration) -> ExitCode {
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
    quiet_panics();
    bound_memory();
    let started = Instant::now();
    match Worker::start(target).run(data, bound) {
        Outcome::Ok => {
            println!(
                "target={name} input={file}: ok in {:.3} s",
                started.elapsed().as_secs_f64()
            );
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
        None => (args.start, u64::MAX),
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
                "fuzz: target={} input #{i} ({} bytes): {outcome:?}; kept as {}",
                target.name,
                data.len(),
                path.display()
            );
            let _ = writeln!(stdout, "crashed-at {i}");
            let _ = writeln!(stdout, "executions {executions}");
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
    let _ = writeln!(stdout, "executions {executions}");
    let _ = stdout.flush();
    ExitCode::SUCCESS
}
