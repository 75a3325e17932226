//! What a valid policy still leaves open, said when it is checked and when
//! a run starts: secrets that may cross the network in cleartext, and hosts
//! whose TLS passes through unseen while the run holds secrets.

use super::Policy;
use super::host::HostMode;

impl Policy {
    /// One line per weakness, in file order.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let file = self.source.display();
        for h in &self.hosts {
            if h.secrets.is_empty() {
                continue;
            }
            if h.plaintext_secrets {
                out.push(format!(
                    "host {} ({file}:{}): allow_plaintext_secrets = true: {} cross the network in cleartext on plain HTTP",
                    h.name,
                    h.line,
                    h.secrets.join(", ")
                ));
            } else if h.ports.iter().any(|p| *p != 443) {
                out.push(format!(
                    "host {} ({file}:{}): ports other than 443 are listed; {} are injected only on TLS connections, and a plain HTTP request carrying one is refused",
                    h.name,
                    h.line,
                    h.secrets.join(", ")
                ));
            }
        }
        if !self.secrets.is_empty() {
            for h in self
                .hosts
                .iter()
                .filter(|h| h.mode() == HostMode::PassThrough)
            {
                out.push(format!(
                    "host {} ({file}:{}) is passed through: a placeholder sent to it over TLS cannot be seen; add `intercept = true` to scan its requests",
                    h.name, h.line
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(text: &str) -> Vec<String> {
        Policy::parse(text, std::path::Path::new("p.toml"))
            .unwrap()
            .warnings()
    }

    const SECRET: &str = r#"
[[secret]]
name = "KEY"
from = "env:KEY"
hosts = ["api.example.com"]
header = "Authorization"
format = "Bearer {}"
"#;

    #[test]
    fn secret_hosts_default_to_tls_only() {
        let p = Policy::parse(
            &format!("{SECRET}\n[[host]]\nname = \"api.example.com\"\naction = \"allow\"\n"),
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(p.hosts[0].ports, [443]);
        assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    }

    #[test]
    fn plaintext_and_pass_through_are_warned_about() {
        let w = warnings(&format!(
            "{SECRET}\n[[host]]\nname = \"api.example.com\"\nports = [443, 80]\naction = \"allow\"\n\
             [[host]]\nname = \"pypi.org\"\naction = \"allow\"\n"
        ));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("injected only on TLS"), "{w:?}");
        assert!(
            w[1].contains("pypi.org") && w[1].contains("intercept = true"),
            "{w:?}"
        );
        let w = warnings(&format!(
            "{SECRET}\n[[host]]\nname = \"api.example.com\"\nallow_plaintext_secrets = true\nports = [80]\naction = \"allow\"\n\
             [[host]]\nname = \"pypi.org\"\naction = \"allow\"\nintercept = true\n"
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("cleartext"), "{w:?}");
    }
}
