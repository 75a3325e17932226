//! Files generated from the command line itself, for packages: shell
//! completions (clap_complete) and man pages (clap_mangen), one per
//! command and subcommand. `enforcer __generate DIR` (hidden) writes them.

use std::{fs, io, path::Path};

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/completions/{enforcer.bash,_enforcer,enforcer.fish}` and
/// `DIR/man/enforcer*.1`; returns the files written.
pub fn write_all(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            "enforcer",
            &completions,
        )?);
    }
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, &man)?;
    for e in fs::read_dir(&man)? {
        written.push(e?.path());
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_come_from_the_real_command_line() {
        let dir = std::env::temp_dir().join(format!("enforcer-generate-{}", std::process::id()));
        let files = write_all(&dir).expect("generate");
        let read = |p: &str| fs::read_to_string(dir.join(p)).expect(p);
        let bash = read("completions/enforcer.bash");
        for flag in ["--fail-on", "--mode", "--no-ci", "--audit-db"] {
            assert!(bash.contains(flag), "{flag} missing from bash completion");
        }
        assert!(read("man/enforcer.1").contains("enforcer"));
        let launch = read("man/enforcer-launch.1");
        assert!(launch.contains("fail\\-on"), "{launch}");
        assert!(
            files
                .iter()
                .any(|f| f.ends_with("enforcer-policy-suggest.1"))
        );
        assert!(
            !files
                .iter()
                .any(|f| f.to_string_lossy().contains("__generate"))
        );
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
