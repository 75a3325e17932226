use enforcer::kernel::{
    bpffs, cgroup,
    loader::{Enforcement, KernelConfig},
};
fn main() {
    let root = cgroup::cgroup2_mount().unwrap();
    let bpf = bpffs::ensure_mounted().unwrap();
    let cg = cgroup::RunCgroup::create(&root, "smoke").unwrap();
    let pins = bpffs::PinDir::create(&bpf, "smoke").unwrap();
    let cfg = KernelConfig {
        proxy_port4: 1,
        dns_port4: 2,
        ..Default::default()
    };
    match Enforcement::attach(&cg, pins, &cfg) {
        Ok(e) => {
            println!("attached {e:?}");
            e.detach().unwrap();
        }
        Err(e) => println!("ERR {e}"),
    }
    cg.remove().unwrap();
}
