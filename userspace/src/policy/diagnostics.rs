//! Policy error reporting: problems with byte spans, rendered as
//! `file:line:col: error: ...` followed by the source line and carets.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a location in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem has a location.
    pub column: Option<usize>,
    /// What is wrong and what was expected (no location prefix).
    pub message: String,
}

/// Why a policy could not be loaded. `Display` renders every problem in
/// full: `file:line:col: error: message`, the offending line, and carets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{rendered}")]
pub struct PolicyError {
    /// Every problem, rendered (what `Display` prints).
    pub rendered: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl PolicyError {
    /// An error that has no location inside the file (e.g. unreadable file).
    pub(crate) fn whole_file(path: &Path, message: String) -> Self {
        Self {
            rendered: format!("{}: error: {message}", path.display()),
            problems: vec![Problem {
                line: None,
                column: None,
                message,
            }],
        }
    }

    /// An error about something other than the file (e.g. a URL given to
    /// `explain`).
    pub(crate) fn message(message: String) -> Self {
        Self {
            rendered: format!("error: {message}"),
            problems: vec![Problem {
                line: None,
                column: None,
                message,
            }],
        }
    }

    /// The first TOML/serde error (syntax, unknown key, wrong type, ...).
    pub(crate) fn from_toml(err: &toml::de::Error, text: &str, path: &Path) -> Self {
        let mut message = toml_message(err.message());
        let mut d = Diagnostics::new(text, path);
        match err.span() {
            Some(span) => {
                message.push_str(&toml_hint(&message, text, span.clone()));
                d.error(span, message);
            }
            None => d.error_unlocated(message),
        }
        d.into_error()
    }
}

/// Extra advice for common TOML shape mistakes, from the offending text.
fn toml_hint(message: &str, text: &str, span: Range<usize>) -> String {
    let start = floor_boundary(text, span.start);
    let end = floor_boundary(text, span.end.max(start));
    let snippet = &text[start..end];
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..]
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start();
    if message == "duplicate key" && !snippet.is_empty() && snippet.len() <= 64 {
        return format!(" `{snippet}`");
    }
    if message.starts_with("invalid type: map, expected a list") {
        if line.starts_with("[[host.rule") {
            return "; [[host.rule]] must come after the [[host]] it belongs to".into();
        }
        if line.starts_with('[') && !line.starts_with("[[") {
            let name = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default();
            return format!("; write [[{name}]] (double brackets): a policy can have several");
        }
    }
    String::new()
}

/// Makes serde's phrasing read like a policy reference.
fn toml_message(msg: &str) -> String {
    let msg = msg.trim_end();
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing required key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    msg.replace("expected a sequence", "expected a list (`[...]`)")
        .replace("expected a boolean", "expected `true` or `false`")
}

/// Collects problems while a policy is validated, then renders them.
pub(crate) struct Diagnostics<'a> {
    text: &'a str,
    path: &'a Path,
    problems: Vec<(Option<Range<usize>>, String)>,
}

impl<'a> Diagnostics<'a> {
    pub(crate) fn new(text: &'a str, path: &'a Path) -> Self {
        Self {
            text,
            path,
            problems: Vec::new(),
        }
    }

    /// Records a problem at `span` (byte offsets into the file).
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push((Some(span), message.into()));
    }

    pub(crate) fn error_unlocated(&mut self, message: impl Into<String>) {
        self.problems.push((None, message.into()));
    }

    /// How many problems were recorded so far.
    pub(crate) fn len(&self) -> usize {
        self.problems.len()
    }

    /// 1-based line number of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        let offset = floor_boundary(self.text, offset);
        self.text[..offset].bytes().filter(|b| *b == b'\n').count() + 1
    }

    /// `Ok(value)` when nothing was recorded, otherwise every problem.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, PolicyError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.into_error())
        }
    }

    pub(crate) fn into_error(mut self) -> PolicyError {
        // File order; problems without a location first. Stable, so two
        // problems at one spot keep the order they were found in.
        self.problems
            .sort_by_key(|(span, _)| span.as_ref().map(|s| s.start));
        let mut rendered = String::new();
        let mut problems = Vec::with_capacity(self.problems.len());
        for (i, (span, message)) in self.problems.iter().enumerate() {
            // Messages quote values from the file; never echo control
            // characters (e.g. a "\u001b" escape in a TOML string).
            let message: String = message.chars().map(printable).collect();
            let message = &message;
            if i > 0 {
                rendered.push('\n');
            }
            match span {
                Some(span) => {
                    let loc = locate(self.text, span.clone());
                    render_located(&mut rendered, self.path, message, &loc);
                    problems.push(Problem {
                        line: Some(loc.line),
                        column: Some(loc.column),
                        message: message.clone(),
                    });
                }
                None => {
                    let _ = writeln!(rendered, "{}: error: {message}", self.path.display());
                    problems.push(Problem {
                        line: None,
                        column: None,
                        message: message.clone(),
                    });
                }
            }
        }
        while rendered.ends_with('\n') {
            rendered.pop();
        }
        PolicyError { rendered, problems }
    }
}

/// Where a span starts, and what to draw under it.
struct Location {
    line: usize,
    column: usize,
    /// The source line, made safe to print.
    source: String,
    /// Characters of `source` before the span.
    before: usize,
    /// Characters of `source` covered by the span (at least 1 caret drawn).
    width: usize,
}

fn floor_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn locate(text: &str, span: Range<usize>) -> Location {
    let start = floor_boundary(text, span.start);
    let end = floor_boundary(text, span.end.max(start));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].bytes().filter(|b| *b == b'\n').count() + 1;
    let raw_line = text[line_start..line_end].trim_end_matches('\r');
    let before = text[line_start..start].chars().count();
    let covered_end = end.min(line_start + raw_line.len()).max(start);
    let width = text[start..covered_end].chars().count();
    Location {
        line,
        column: before + 1,
        source: raw_line.chars().map(printable).collect(),
        before,
        width,
    }
}

/// Never echo control characters (terminal escapes) from a policy file.
fn printable(c: char) -> char {
    if c == '\t' || !c.is_control() {
        c
    } else {
        '\u{fffd}'
    }
}

fn render_located(out: &mut String, path: &Path, message: &str, loc: &Location) {
    let number = loc.line.to_string();
    let pad = " ".repeat(number.len() + 1);
    let _ = writeln!(
        out,
        "{}:{}:{}: error: {message}",
        path.display(),
        loc.line,
        loc.column
    );
    let _ = writeln!(out, "{pad}|");
    let _ = writeln!(out, "{number} | {}", loc.source);
    let indent: String = loc
        .source
        .chars()
        .take(loc.before)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let _ = writeln!(out, "{pad}| {indent}{}", "^".repeat(loc.width.max(1)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, span: Range<usize>, msg: &str) -> String {
        let mut d = Diagnostics::new(text, Path::new("p.toml"));
        d.error(span, msg);
        d.into_error().rendered
    }

    #[test]
    fn renders_file_line_col_and_carets() {
        let text = "[[host]]\n  methd = \"GET\"\n";
        let start = text.find("methd").unwrap();
        let out = render(text, start..start + 5, "unknown field `methd`");
        assert_eq!(
            out,
            "p.toml:2:3: error: unknown field `methd`\n  |\n2 |   methd = \"GET\"\n  |   ^^^^^"
        );
    }

    #[test]
    fn empty_span_at_end_of_file_gets_one_caret() {
        let text = "a = [";
        let out = render(text, 5..5, "unclosed array");
        assert!(
            out.starts_with("p.toml:1:6: error: unclosed array"),
            "{out}"
        );
        assert!(out.ends_with("|      ^"), "{out}");
    }

    #[test]
    fn multi_line_span_is_clipped_to_first_line() {
        let text = "x = [\n1,\n]\n";
        let out = render(text, 4..text.len(), "bad");
        assert!(out.ends_with("1 | x = [\n  |     ^"), "{out}");
    }

    #[test]
    fn control_characters_are_not_echoed() {
        let text = "name = \"\u{1b}[31m\"";
        let out = render(text, 0..4, "bad");
        assert!(!out.contains('\u{1b}'), "{out}");
    }

    #[test]
    fn out_of_range_and_non_boundary_spans_do_not_panic() {
        let text = "é = 1\n";
        let _ = render(text, 1..400, "x");
        let _ = render(text, 400..401, "x");
        let _ = render("", 0..0, "x");
    }

    #[test]
    fn problems_are_sorted_by_position() {
        let text = "a = 1\nb = 2\n";
        let mut d = Diagnostics::new(text, Path::new("p.toml"));
        d.error(6..7, "second");
        d.error(0..1, "first");
        let err = d.into_error();
        assert_eq!(err.problems[0].message, "first");
        assert_eq!(err.problems[1].line, Some(2));
        assert!(err.rendered.find("first") < err.rendered.find("second"));
    }
}
