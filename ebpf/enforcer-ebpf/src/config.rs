//! Read-only settings userspace writes into the object before loading it.

/// Declares a global that userspace sets with `EbpfLoader::set_global` and a
/// reader that defeats constant folding (the compiler would otherwise inline 0).
macro_rules! global {
    ($name:ident, $reader:ident, $ty:ty) => {
        #[unsafe(no_mangle)]
        static $name: $ty = 0;

        #[inline(always)]
        pub fn $reader() -> $ty {
            // SAFETY: a plain read of a static; volatile so the value set at load time is used.
            unsafe { core::ptr::read_volatile(&$name) }
        }
    };
}

global!(PROXY_PORT4, proxy_port4, u16);
global!(PROXY_PORT6, proxy_port6, u16);
global!(DNS_PORT4, dns_port4, u16);
global!(DNS_PORT6, dns_port6, u16);
global!(EXPLICIT_PORT4, explicit_port4, u16);

/// True when `port` is one of the enforcer's own listeners.
#[inline(always)]
pub fn is_enforcer_port(port: u16) -> bool {
    port != 0
        && (port == proxy_port4()
            || port == proxy_port6()
            || port == dns_port4()
            || port == dns_port6()
            || port == explicit_port4())
}
