//! Running as a service: the Debian packages (cargo-deb) install what they
//! should, `systemd-analyze verify` accepts the units they install, the
//! container files' runtime stages install every shared library the binaries
//! link, and both binaries refuse a config variable that names no key.
//!
//! Needs what deploy/install-deps.sh installs: cargo-deb (under
//! ~/.cache/sightline/tools), dpkg-deb, systemd-analyze.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use sightline_tests::proc::bin_path;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The target dir and cargo profile the test binaries (and so the workspace
/// binaries beside them) were built in.
fn target_and_profile() -> (PathBuf, String) {
    let bin = bin_path("sightline-core");
    let profile_dir = bin.parent().unwrap();
    let target = profile_dir.parent().unwrap().to_path_buf();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    };
    (target, profile)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (run deploy/install-deps.sh)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Builds `package`'s .deb from the binary already built (no compile), into `out`.
fn build_deb(package: &str, out: &Path) -> PathBuf {
    let (target, profile) = target_and_profile();
    let tools = std::env::var("SIGHTLINE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sightline/tools")
        });
    let path = format!(
        "{}:{}",
        tools.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, stdout, stderr) = run(Command::new("cargo")
        .current_dir(repo())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--profile",
            &profile,
            "-p",
            package,
            "-o",
        ])
        .arg(out));
    assert!(ok, "cargo deb -p {package} failed:\n{stdout}\n{stderr}");
    let deb = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    assert!(
        deb.exists(),
        "no .deb in cargo-deb's output: {stdout}\n{stderr}"
    );
    deb
}

/// What the package holds (paths without the leading `.`), its control
/// fields and conffiles, and the tree extracted with `dpkg -x`.
struct Deb {
    files: BTreeSet<String>,
    control: String,
    conffiles: String,
    postinst: String,
    root: PathBuf,
}

fn open_deb(deb: &Path, scratch: &Path) -> Deb {
    let (ok, contents, err) = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    assert!(ok, "{err}");
    let files = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_string())
        .collect();
    let root = scratch.join("root");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    assert!(ok, "dpkg -x: {err}");
    let control_dir = scratch.join("control");
    let (ok, _, err) = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(&control_dir));
    assert!(ok, "dpkg-deb -e: {err}");
    let read = |name: &str| std::fs::read_to_string(control_dir.join(name)).unwrap_or_default();
    Deb {
        files,
        control: read("control"),
        conffiles: read("conffiles"),
        postinst: read("postinst"),
        root,
    }
}

/// `systemd-analyze verify` on `unit` as installed under `root`, its
/// ExecStart binary resolved inside `root`. Its complaints (it exits 0 on
/// some, e.g. an unknown key), or None when it has none.
fn verify_unit(root: &Path, unit: &Path, scratch: &Path) -> Option<String> {
    let text = std::fs::read_to_string(unit).unwrap();
    let rooted = text.replace(
        "ExecStart=/usr/bin/",
        &format!("ExecStart={}/usr/bin/", root.display()),
    );
    let dir = scratch.join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(unit.file_name().unwrap());
    std::fs::write(&copy, rooted).unwrap();
    let (ok, stdout, stderr) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0"));
    let said = format!("{stdout}{stderr}");
    (!ok || !said.trim().is_empty()).then_some(said)
}

fn check_package(package: &str, config: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let deb = build_deb(package, scratch.path());
    let d = open_deb(&deb, scratch.path());
    for path in [
        format!("/usr/bin/{package}"),
        format!("/usr/lib/systemd/system/{package}.service"),
        format!("/usr/lib/sysusers.d/{package}.conf"),
        format!("/usr/lib/tmpfiles.d/{package}.conf"),
        format!("/etc/sightline/{config}"),
        format!("/usr/share/doc/{package}/CONFIG.md"),
        format!(
            "/usr/share/doc/{package}/examples/{}",
            config.replace(".toml", ".example.toml")
        ),
    ] {
        assert!(
            d.files.contains(&path),
            "{path} not in the package: {:?}",
            d.files
        );
        assert!(
            d.root.join(path.trim_start_matches('/')).exists(),
            "{path} not extracted"
        );
    }
    // Only what belongs to the package: nothing from the build tree.
    for f in &d.files {
        assert!(
            [
                "/usr/bin",
                "/usr/lib/systemd",
                "/usr/lib/sysusers.d",
                "/usr/lib/tmpfiles.d",
                "/usr/share/doc",
                "/etc/sightline"
            ]
            .iter()
            .any(|p| f.starts_with(p) || p.starts_with(f.as_str())),
            "unexpected file {f}"
        );
    }
    assert!(
        d.conffiles
            .lines()
            .any(|l| l == format!("/etc/sightline/{config}")),
        "the config is not a conffile: {:?}",
        d.conffiles
    );
    let depends = d
        .control
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {}", d.control));
    // RocksDB is linked statically (.cargo/config.toml): the package needs
    // the compression libraries it calls (zstd among them), not librocksdb.
    for dep in ["libc6", "libzstd1", "liblz4-1", "systemd"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    assert!(!depends.contains("librocksdb"), "{depends}");
    // The user exists before the unit can start. A fresh install neither
    // enables nor starts the unit (the config and certificates come first);
    // an upgrade restarts it if it runs.
    let postinst = &d.postinst;
    assert!(
        postinst.contains(&format!(
            "systemd-sysusers ${{DPKG_ROOT:+--root=\"$DPKG_ROOT\"}} {package}.conf"
        )),
        "{postinst}"
    );
    assert!(postinst.contains(&format!(
        "deb-systemd-helper update-state {package}.service"
    )));
    assert!(postinst.contains(&format!("deb-systemd-invoke try-restart {package}.service")));
    assert!(!postinst.contains("deb-systemd-invoke start") && !postinst.contains("$_dh_action"));
    // The packaged binary runs.
    let (ok, stdout, stderr) =
        run(Command::new(d.root.join("usr/bin").join(package)).arg("--version"));
    assert!(ok && stdout.starts_with(package), "{stdout}{stderr}");
    // The unit it installs passes systemd-analyze verify, with its user from
    // the sysusers file it ships.
    let unit = d
        .root
        .join(format!("usr/lib/systemd/system/{package}.service"));
    if let Some(said) = verify_unit(&d.root, &unit, scratch.path()) {
        panic!("systemd-analyze verify {package}.service:\n{said}");
    }
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let sysusers =
        std::fs::read_to_string(d.root.join(format!("usr/lib/sysusers.d/{package}.conf"))).unwrap();
    assert!(unit_text.contains(&format!("\nUser={package}\n")));
    assert!(sysusers.contains(&format!("u {package} ")), "{sysusers}");
    assert!(unit_text.contains(&format!("ExecStart=/usr/bin/{package} ")));
    assert!(unit_text.contains(&format!("/etc/sightline/{config}")));
}

#[test]
fn the_core_package_installs_its_binary_unit_user_and_conffile_and_the_unit_verifies() {
    check_package("sightline-core", "core.toml");
}

#[test]
fn the_agent_package_installs_its_binary_unit_user_and_conffile_and_the_unit_verifies() {
    check_package("sightline-agent", "agent.toml");
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    // The check above is not vacuous: a typo in a directive, or a binary
    // that is not there, is reported.
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let binary = root.join("usr/bin/sightline-core");
    std::fs::write(&binary, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let empty = scratch.path().join("empty");
    let text =
        std::fs::read_to_string(repo().join("deploy/systemd/sightline-core.service")).unwrap();
    let unit = scratch.path().join("sightline-core.service");
    std::fs::write(&unit, &text).unwrap();
    assert_eq!(
        verify_unit(&root, &unit, scratch.path()),
        None,
        "the unit as shipped"
    );
    for (what, broken, root) in [
        (
            "a misspelt directive",
            text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
            &root,
        ),
        (
            "a bad value",
            text.replace("Restart=on-failure", "Restart=sometimes"),
            &root,
        ),
        ("a missing binary", text.clone(), &empty),
    ] {
        std::fs::write(&unit, broken).unwrap();
        assert!(
            verify_unit(root, &unit, scratch.path()).is_some(),
            "{what} passed"
        );
    }
}

/// The packages the last stage (`FROM` ... to the end) of a Containerfile
/// installs with apt-get.
fn runtime_packages(containerfile: &str) -> BTreeSet<String> {
    let last = containerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .unwrap_or(containerfile);
    let mut joined = String::new();
    for line in last.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        joined.push_str(line.trim_end().trim_end_matches('\\'));
        joined.push(' ');
    }
    joined
        .split("&&")
        .filter(|cmd| cmd.contains("apt-get install"))
        .flat_map(|cmd| cmd.split_whitespace())
        .filter(|w| {
            !w.starts_with('-') && !["apt-get", "install", "RUN"].contains(w) && !w.contains('=')
        })
        .map(str::to_string)
        .collect()
}

/// The Debian package of every shared library `binary` needs (its direct
/// NEEDED entries, resolved by ldd, owned per `dpkg -S`), by library.
fn linked_packages(binary: &Path) -> Vec<(String, String)> {
    let (ok, dynamic, err) = run(Command::new("objdump").arg("-p").arg(binary));
    assert!(ok, "objdump -p {}: {err}", binary.display());
    let needed: Vec<&str> = dynamic
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
        .collect();
    assert!(
        !needed.is_empty(),
        "{} links nothing dynamically?",
        binary.display()
    );
    let (ok, ldd, err) = run(Command::new("ldd").arg(binary));
    assert!(ok, "ldd: {err}");
    needed
        .iter()
        .map(|lib| {
            let path = ldd
                .lines()
                .find_map(|l| {
                    let (name, rest) = l.trim().split_once(" => ")?;
                    (name == *lib).then(|| rest.split_whitespace().next().unwrap_or("").to_string())
                })
                .or_else(|| lib.starts_with('/').then(|| lib.to_string()))
                .or_else(|| {
                    // The loader: ldd prints it by its absolute path.
                    ldd.lines()
                        .filter_map(|l| l.split_whitespace().next())
                        .find(|p| p.ends_with(lib))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| panic!("ldd does not resolve {lib}:\n{ldd}"));
            let canonical = std::fs::canonicalize(&path).unwrap();
            // usrmerge: dpkg knows a file by the path its package shipped it at.
            let mut candidates = vec![path.clone(), canonical.display().to_string()];
            for p in candidates.clone() {
                if let Some(rest) = p.strip_prefix("/usr") {
                    candidates.push(rest.to_string());
                } else {
                    candidates.push(format!("/usr{p}"));
                }
            }
            let package = candidates
                .iter()
                .find_map(|p| {
                    let (ok, owner, _) = run(Command::new("dpkg").arg("-S").arg(p));
                    ok.then(|| owner.split(':').next().unwrap().trim().to_string())
                })
                .unwrap_or_else(|| panic!("no Debian package owns {lib} ({path})"));
            (lib.to_string(), package)
        })
        .collect()
}

/// The libraries whose packages `containerfile`'s runtime stage does not
/// install (libc6 is in every Debian image).
fn missing_libraries(containerfile: &str, linked: &[(String, String)]) -> Vec<String> {
    let installed = runtime_packages(containerfile);
    linked
        .iter()
        .filter(|(_, pkg)| pkg != "libc6" && !installed.contains(pkg))
        .map(|(lib, pkg)| format!("{lib} ({pkg})"))
        .collect()
}

#[test]
fn the_container_runtime_stages_install_a_package_for_every_library_the_binaries_link() {
    for (binary, file) in [
        ("sightline-core", "core.Containerfile"),
        ("sightline-agent", "agent.Containerfile"),
    ] {
        let text = std::fs::read_to_string(repo().join("deploy/container").join(file)).unwrap();
        let linked = linked_packages(&bin_path(binary));
        // RocksDB linked statically: its compression libraries, not it.
        assert!(
            !linked.iter().any(|(_, p)| p.starts_with("librocksdb"))
                && linked.iter().any(|(_, p)| p == "libzstd1"),
            "{binary}: {linked:?}"
        );
        let missing = missing_libraries(&text, &linked);
        assert!(
            missing.is_empty(),
            "{file}'s runtime stage lacks {missing:?}"
        );
        // The check bites: without its libzstd1 the stage is refused.
        let without = text.replace("libzstd1 ", "");
        assert_eq!(
            missing_libraries(&without, &linked),
            vec!["libzstd.so.1 (libzstd1)".to_string()],
            "{file}"
        );
        // The build stage's packages do not count for the runtime.
        let runtime = runtime_packages(&text);
        assert!(!runtime.contains("librocksdb-dev"), "{runtime:?}");
        assert!(text.contains("\nUSER "), "{file} runs as root");
        assert!(text.contains("\nVOLUME "), "{file} declares no volume");
    }
}

#[test]
fn a_config_variable_naming_no_key_stops_either_binary_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (binary, args, var) in [
        (
            "sightline-core",
            &["serve", "--data-dir"][..],
            "SIGHTLINE_CORE__PIPELINE__PARTITIONZ",
        ),
        (
            "sightline-agent",
            &["--data-dir"][..],
            "SIGHTLINE_AGENT__BUFFER__MAX_EVENT",
        ),
    ] {
        let out = Command::new(bin_path(binary))
            .args(args)
            .arg(dir.path().join(binary))
            .env(var, "4")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} started with {var}");
        assert!(stderr.contains(&format!("`{var}`")), "{binary}: {stderr}");
        assert!(
            !dir.path().join(binary).exists(),
            "{binary} made its data dir before refusing"
        );
    }
}
