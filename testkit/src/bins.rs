//! The workspace's binaries for the tests that run another package's binary as a process
//! (`CARGO_BIN_EXE_*` only names the tested package's own): [`bin_path`] builds it when it
//! is missing or older than the workspace's sources, so `cargo nextest run -p <crate>`
//! needs no `cargo build` first.
//!
//! The build is `$CARGO build --bin <name> -p <package>` in the workspace root, into the
//! target directory and profile of the running test, with the variables cargo and nextest
//! set for the test removed: the same build as the user's, which reuses every artifact
//! already there. A file lock keeps parallel test processes (nextest runs each test in a
//! process of its own) from building at once; the first builds, the others then find the
//! binary fresh.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use wxpay_runtime::config::ENV_PREFIX;

/// The path of binary `name` of the workspace (`wxpay-sim`, `wxpay-gateway`,
/// `wxpay-worker`, `wxpay-console`), built first if it is missing or stale. It blocks: in
/// async code use [`bin_path_async`].
pub fn bin_path(name: &str) -> PathBuf {
    // Checked once per test process.
    static READY: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut ready = READY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = ready.get(name) {
        return path.clone();
    }
    let layout = Layout::of_this_test();
    let binary = layout.profile_dir().join(name);
    let stamps = layout.profile_dir().join(".wxpay-testkit");
    std::fs::create_dir_all(&stamps).expect("stamp directory");
    let stamp = stamps.join(format!("{name}.built"));
    let lock = File::create(stamps.join("build.lock")).expect("lock file");
    lock.lock().expect("build lock");
    let root = workspace_root();
    let members = workspace_members(&root);
    let built = [&binary, &stamp]
        .into_iter()
        .filter_map(|p| modified(p))
        .max();
    if built.is_none_or(|built| newest_source(&root, &members) > built) {
        let package = package_of(&root, &members, name);
        layout.build(&root, &package, name);
        File::create(&stamp).expect("stamp written");
    }
    drop(lock);
    assert!(binary.is_file(), "{} was not built", binary.display());
    ready.insert(name.to_owned(), binary.clone());
    binary
}

/// A command for `program` without the `WXPAY…` variables of the test's environment (a
/// stray `WXPAY__DATABASE__URL` would point the child at another database), logging at info.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(ENV_PREFIX) {
            command.env_remove(&name);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

/// [`bin_path`] for async code: the build (minutes when cold) runs on a blocking thread,
/// so the test's other futures (a database connection with its timeout) keep running.
pub async fn bin_path_async(name: &str) -> PathBuf {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || bin_path(&name))
        .await
        .expect("binary lookup")
}

/// Where this test's executable says its build lives:
/// `<target>/[<triple>/]<profile>/deps/<test>-<hash>`.
struct Layout {
    target_dir: PathBuf,
    triple: Option<String>,
    profile_dir_name: String,
}

impl Layout {
    fn of_this_test() -> Layout {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in <target>/<profile>/deps");
        let name = |path: &Path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 target path")
                .to_owned()
        };
        let above = profile_dir.parent().expect("a target directory");
        // The target directory's root is tagged; a `<triple>/` level below it is not.
        let (target_dir, triple) = if above.join("CACHEDIR.TAG").is_file() {
            (above.to_path_buf(), None)
        } else {
            let root = above.parent().expect("a target directory");
            (root.to_path_buf(), Some(name(above)))
        };
        Layout {
            target_dir,
            triple,
            profile_dir_name: name(profile_dir),
        }
    }

    fn profile_dir(&self) -> PathBuf {
        match &self.triple {
            Some(triple) => self.target_dir.join(triple),
            None => self.target_dir.clone(),
        }
        .join(&self.profile_dir_name)
    }

    fn build(&self, root: &Path, package: &str, name: &str) {
        // `target/debug` holds the `dev` profile; every other profile its own name.
        let profile = match self.profile_dir_name.as_str() {
            "debug" => "dev",
            other => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut command = Command::new(cargo);
        command
            .current_dir(root)
            .args(["build", "--bin", name, "-p", package, "--profile", profile])
            .arg("--target-dir")
            .arg(&self.target_dir);
        if let Some(triple) = &self.triple {
            command.args(["--target", triple]);
        }
        for (variable, _) in std::env::vars_os() {
            if set_for_the_test(&variable.to_string_lossy()) {
                command.env_remove(&variable);
            }
        }
        // Cargo and nextest put the target directory first in the library path of a test.
        if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
            let user: Vec<PathBuf> = std::env::split_paths(&paths)
                .filter(|path| !path.starts_with(&self.target_dir))
                .collect();
            match std::env::join_paths(user) {
                Ok(joined) if !joined.is_empty() => command.env("LD_LIBRARY_PATH", joined),
                _ => command.env_remove("LD_LIBRARY_PATH"),
            };
        }
        let output = command.output().expect("cargo runs");
        assert_success(&output, format!("cargo build --bin {name} -p {package}"));
    }
}

/// Fails the test unless the command that gave `output` exited 0; the failure names the
/// command (`what`) and shows its stderr, which says why.
pub fn assert_success(output: &std::process::Output, what: impl std::fmt::Display) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Variables cargo and nextest set for a test process, which would make the nested build
/// another build than the user's (a package's metadata, a wrapper, a jobserver).
fn set_for_the_test(variable: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
        "CARGO_TARGET_TMPDIR",
        "CARGO_PRIMARY_PACKAGE",
        "NEXTEST",
        "__NEXTEST",
    ];
    const EXACT: [&str; 6] = [
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_MAKEFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "OUT_DIR",
        "RUST_TEST_THREADS",
    ];
    PREFIXES.iter().any(|prefix| variable.starts_with(prefix)) || EXACT.contains(&variable)
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the workspace root")
        .to_path_buf()
}

fn read_toml(path: &Path) -> toml::Table {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.parse()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn workspace_members(root: &Path) -> Vec<PathBuf> {
    let manifest = read_toml(&root.join("Cargo.toml"));
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .filter_map(|member| member.as_str())
        .map(|member| root.join(member))
        .collect()
}

/// The package whose `[[bin]]` (or `src/main.rs`, named after the package) is `name`.
fn package_of(root: &Path, members: &[PathBuf], name: &str) -> String {
    for member in members {
        let manifest = read_toml(&member.join("Cargo.toml"));
        let package = manifest["package"]["name"]
            .as_str()
            .expect("package.name")
            .to_owned();
        let declared = manifest
            .get("bin")
            .and_then(|bins| bins.as_array())
            .into_iter()
            .flatten()
            .any(|bin| bin.get("name").and_then(|n| n.as_str()) == Some(name));
        if declared || (package == name && member.join("src/main.rs").is_file()) {
            return package;
        }
    }
    panic!(
        "no package of the workspace {} has a binary {name}",
        root.display()
    )
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// The newest modification among what a binary is built from: the manifests, the lock
/// file and every member's files but its tests, benches, fuzz targets and build output.
fn newest_source(root: &Path, members: &[PathBuf]) -> SystemTime {
    let mut newest = [root.join("Cargo.toml"), root.join("Cargo.lock")]
        .iter()
        .filter_map(|p| modified(p))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut pending: Vec<PathBuf> = members.to_vec();
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let file_name = entry.file_name();
            let skipped = ["target", "tests", "benches", "fuzz"]
                .iter()
                .any(|s| file_name == *s)
                || file_name.to_string_lossy().starts_with('.');
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && !skipped => pending.push(path),
                Ok(kind) if kind.is_file() => {
                    newest = newest.max(modified(&path).unwrap_or(SystemTime::UNIX_EPOCH));
                }
                _ => {}
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_is_found_in_its_package() {
        let root = workspace_root();
        let members = workspace_members(&root);
        for (binary, package) in [
            ("wxpay-sim", "wxpay-simulator"),
            ("wxpay-gateway", "wxpay-gateway"),
            ("wxpay-worker", "wxpay-worker"),
            ("wxpay-console", "wxpay-console"),
        ] {
            assert_eq!(package_of(&root, &members, binary), package);
        }
    }

    #[test]
    fn only_what_cargo_and_nextest_set_for_the_test_is_removed() {
        for set in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_BIN_EXE_wxpay-sim",
            "NEXTEST_RUN_ID",
        ] {
            assert!(set_for_the_test(set), "{set}");
        }
        for kept in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "PATH",
            "RUSTUP_TOOLCHAIN",
            "CARGO",
        ] {
            assert!(!set_for_the_test(kept), "{kept}");
        }
    }
}
