//! The Debian package: built by `cargo xtask dist` (here from the binary
//! under test), installed with dpkg on a clean debootstrapped Debian root,
//! and run there.

use enforcer_e2e::{deb, debroot};

#[test]
fn the_package_installs_on_a_clean_debian_root_and_runs_there() {
    let deb = deb::build();
    let root = debroot::debian_root(&[]);
    let o = debroot::Overlay::new(&root);
    std::fs::copy(&deb, o.root().join("tmp/enforcer.deb")).expect("copy the package in");
    let (st, text) = o.chroot(&["dpkg", "-i", "/tmp/enforcer.deb"]);
    assert!(st.success(), "dpkg -i: {text}");
    let (st, text) = o.chroot(&["enforcer", "--version"]);
    assert!(st.success(), "{text}");
    assert!(text.starts_with("enforcer "), "{text}");
    let (st, text) = o.chroot(&[
        "enforcer",
        "policy",
        "check",
        "/usr/share/enforcer/policies/ci-readonly.toml",
    ]);
    assert!(st.success(), "an installed example policy loads: {text}");
    for f in [
        "usr/share/man/man1/enforcer-launch.1.gz",
        "usr/share/bash-completion/completions/enforcer",
        "usr/share/enforcer/schemas/policy.schema.json",
        "usr/share/enforcer/schemas/report.v1.schema.json",
    ] {
        assert!(o.root().join(f).is_file(), "{f} is installed");
    }
    let (st, text) = o.chroot(&["dpkg", "-r", "enforcer"]);
    assert!(st.success(), "dpkg -r: {text}");
    assert!(!o.root().join("usr/bin/enforcer").exists());
}
