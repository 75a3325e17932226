//! The report as Markdown for the job page ($GITHUB_STEP_SUMMARY): the
//! verdict first, alarms in a caution block, then tables of what was
//! refused, asked, would have been denied, and allowed. Every value the
//! agent chose (hosts, paths, reasons) is escaped so it cannot add markup,
//! links or HTML to the page.

use std::fmt::Write as _;

use super::report::{Entry, Listing, Report, RunMode};

/// Most rows per table in the job page (the JSON report has more).
pub const MAX_ROWS: usize = 50;

/// Renders the report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let s = &r.summary;
    let verdict = if r.enforcer_exit_code == 0 {
        "passed".to_string()
    } else if let Some(v) = r.failed_on.first().filter(|_| s.exit_code == Some(0)) {
        format!(
            "**failed** (exit {}: `--fail-on {}`)",
            r.enforcer_exit_code,
            v.as_str()
        )
    } else {
        format!("**failed** (exit {})", r.enforcer_exit_code)
    };
    let _ = writeln!(
        out,
        "### enforcer: {} ({}) {verdict}\n",
        esc(&s.name),
        esc(&s.run_id)
    );
    if r.mode == RunMode::Observe {
        out.push_str(
            "> [!WARNING]\n> **Observe mode**: this run let through every HTTP(S) request, \
             connection and DNS name the policy would refuse (listed under *Would deny*). DNS and \
             HTTPS exfiltration were open. Use observe mode for trusted recording runs only.\n\n",
        );
    }
    if !r.exfiltration_attempts.is_empty() {
        let _ = writeln!(
            out,
            "> [!CAUTION]\n> **{} credential exfiltration attempt{}**: the agent tried to send a \
             secret's placeholder where that secret does not belong. Each was refused. Treat the \
             agent (and its input) as compromised.\n",
            r.exfiltration_attempts.len(),
            if r.exfiltration_attempts.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    let c = &s.counts;
    out.push_str("| | |\n|---|---|\n");
    let mode = match (r.mode, r.ci) {
        (RunMode::Enforce, true) => "enforce, CI",
        (RunMode::Enforce, false) => "enforce",
        (RunMode::Observe, true) => "observe, CI",
        (RunMode::Observe, false) => "observe",
    };
    let _ = writeln!(out, "| mode | {mode} |");
    let _ = writeln!(out, "| policy | {} |", esc(&r.policy));
    let agent = s.exit_code.map_or("-".to_string(), |c| c.to_string());
    let _ = writeln!(out, "| agent's exit status | {agent} |");
    let _ = writeln!(out, "| enforcer's exit status | {} |", r.enforcer_exit_code);
    let _ = writeln!(
        out,
        "| requests | {} allowed, {} refused, {} asked |",
        c.requests_allowed, c.requests_refused, c.requests_asked
    );
    let _ = writeln!(
        out,
        "| connections | {} allowed, {} refused |",
        c.connections_allowed, c.connections_refused
    );
    let _ = writeln!(
        out,
        "| also refused | {} DNS names, {} socket operations in the kernel |",
        c.names_refused, c.kernel_refused
    );
    let _ = writeln!(out, "| spend | ${:.2} |", s.spend_usd);
    let _ = writeln!(
        out,
        "| audit log | {} (run {}) |\n",
        esc(&s.db_path),
        esc(&s.run_id)
    );
    if let Some(e) = &s.audit_error {
        let _ = writeln!(
            out,
            "> [!CAUTION]\n> **The audit log failed during the run**: {}\n",
            esc(e)
        );
    }
    if !r.exfiltration_attempts.is_empty() {
        out.push_str("#### Exfiltration attempts\n\n| at | destination | process | why |\n|---|---|---|---|\n");
        for a in r.exfiltration_attempts.iter().take(MAX_ROWS) {
            let process = match (&a.comm, a.pid) {
                (Some(c), Some(p)) => format!("{} [{p}]", esc(c)),
                (None, Some(p)) => format!("[{p}]"),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {process} | {} |",
                esc(&a.at),
                esc(&a.destination),
                esc(&a.reason)
            );
        }
        more(&mut out, r.exfiltration_attempts.len() as u64, MAX_ROWS);
        out.push('\n');
    }
    table(&mut out, "Refused", &r.refused, false);
    let asked = if r.ci {
        "Asked (no one is asked in CI: denied)"
    } else {
        "Asked a human"
    };
    table(&mut out, asked, &r.asked, false);
    table(
        &mut out,
        "Would deny (observe mode: let through)",
        &r.would_deny,
        false,
    );
    table(&mut out, "Allowed", &r.allowed, true);
    out
}

fn table(out: &mut String, title: &str, l: &Listing, folded: bool) {
    if l.total == 0 {
        return;
    }
    if folded {
        let _ = writeln!(out, "<details><summary>{title} ({})</summary>\n", l.total);
    } else {
        let _ = writeln!(out, "#### {title} ({})\n", l.total);
    }
    out.push_str("| count | destination | cause | rule or reason |\n|---:|---|---|---|\n");
    for e in l.entries.iter().take(MAX_ROWS) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            e.count,
            esc(&e.destination),
            esc(e.cause.as_deref().unwrap_or("-")),
            esc(why(e))
        );
    }
    more(out, l.entries.len() as u64, MAX_ROWS);
    if folded {
        out.push_str("\n</details>\n");
    }
    out.push('\n');
}

fn why(e: &Entry) -> &str {
    e.rule.as_deref().unwrap_or(&e.reason)
}

fn more(out: &mut String, n: u64, shown: usize) {
    if n > shown as u64 {
        let _ = writeln!(out, "\n{} more in the JSON report.", n - shown as u64);
    }
}

/// Text that shows as itself in a Markdown table cell: no markup, no HTML,
/// no links, no line breaks.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars().take(300) {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '!' | '~' | '{' | '}' | '+'
            | '-' | '.' | ':' | '"' | '\'' | '=' | '^' | '$' | '@' => {
                out.push('\\');
                out.push(ch);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_chosen_text_cannot_add_markup() {
        let hostile = "evil.test/[click](https://x)<img src=x>|`code`\n# heading";
        let e = esc(hostile);
        for bad in ["<img", "](", "|`", "\n", "`code`"] {
            assert!(!e.contains(bad), "{bad} in {e}");
        }
        assert!(e.contains("&lt;img"));
    }
}
