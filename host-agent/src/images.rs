//! Finding and building the guest kernels.
//!
//! The kernels are `x86_64-unknown-none` binaries of this workspace (`guest-os-a`,
//! `guest-os-b`). By default the agent builds them itself with cargo (incrementally: a no-op
//! when nothing changed) and copies them to `images/`; with `--images DIR` it uses what is
//! there and, if a kernel is missing, says which command builds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use shm_ring::layout::Role;

/// The target guest kernels are built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";
/// The cargo profile guest kernels are built with.
pub const GUEST_PROFILE: &str = "guest";
/// The command that builds the images by hand.
pub const BUILD_COMMAND: &str = "cargo run --release -p host-agent -- build-images";

/// Errors finding or building images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A kernel image is missing.
    #[error("guest image {0} is missing; build the images with `{BUILD_COMMAND}`")]
    Missing(PathBuf),
    /// A command could not be run.
    #[error(
        "cannot run `{command}`: {source}; build the images with `{BUILD_COMMAND}` from the duovm source tree"
    )]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The build failed.
    #[error("`{0}` failed (its output is above)")]
    BuildFailed(String),
    /// Copying or reading failed.
    #[error("cannot use {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The source tree this agent was built from.
pub fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The default image directory.
pub fn default_dir() -> PathBuf {
    source_root().join("images")
}

/// The file name of an OS's image.
pub fn file_name(role: Role) -> &'static str {
    match role {
        Role::A => "guest-os-a.elf",
        Role::B => "guest-os-b.elf",
    }
}

fn run(command: &mut Command, quiet: bool) -> Result<(), ImageError> {
    let text = format!("{command:?}").replace('"', "");
    if quiet {
        command.stdout(std::process::Stdio::null());
    }
    let status = command.status().map_err(|source| ImageError::Spawn {
        command: text.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::BuildFailed(text))
    }
}

fn target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.trim() == GUEST_TARGET)
        })
        .unwrap_or(false)
}

/// Builds both kernels with cargo and copies them into `dir`; returns their paths.
pub fn build(dir: &Path, progress: bool) -> Result<[PathBuf; 2], ImageError> {
    let root = source_root();
    if !target_installed() {
        if progress {
            eprintln!("host-agent: installing the {GUEST_TARGET} target with rustup");
        }
        run(
            Command::new("rustup").args(["target", "add", GUEST_TARGET]),
            false,
        )?;
    }
    if progress {
        eprintln!(
            "host-agent: building guest kernels (cargo build --profile {GUEST_PROFILE} --target {GUEST_TARGET})"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(&root).args([
        "build",
        "--profile",
        GUEST_PROFILE,
        "--target",
        GUEST_TARGET,
        "-p",
        "guest-os-a",
        "-p",
        "guest-os-b",
    ]);
    if !progress {
        command.arg("--quiet");
    }
    run(&mut command, false)?;
    std::fs::create_dir_all(dir).map_err(|source| ImageError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let built = target_dir.join(GUEST_TARGET).join(GUEST_PROFILE);
    let mut paths = Vec::new();
    for role in Role::ALL {
        let name = file_name(role);
        let source = built.join(name.trim_end_matches(".elf"));
        let destination = dir.join(name);
        std::fs::copy(&source, &destination).map_err(|source_error| ImageError::Io {
            path: source.clone(),
            source: source_error,
        })?;
        paths.push(destination);
    }
    if progress {
        eprintln!("host-agent: guest images ready in {}", dir.display());
    }
    Ok([paths[0].clone(), paths[1].clone()])
}

/// The images in `dir`, which must exist.
pub fn existing(dir: &Path) -> Result<[PathBuf; 2], ImageError> {
    let paths = Role::ALL.map(|role| dir.join(file_name(role)));
    for path in &paths {
        if !path.is_file() {
            return Err(ImageError::Missing(path.clone()));
        }
    }
    Ok(paths)
}

/// Reads both images.
pub fn read(paths: &[PathBuf; 2]) -> Result<[Vec<u8>; 2], ImageError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })
    };
    Ok([read(&paths[0])?, read(&paths[1])?])
}
