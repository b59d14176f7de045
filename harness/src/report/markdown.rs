//! Renders a [`Document`] as GitHub-flavoured Markdown (`report.md`).
//!
//! Figures are links to `plots/<file>` (the SVGs are written beside the report), so the
//! Markdown stays readable as text and renders with its plots on a code host.

use std::fmt::Write as _;

use super::document::{Align, BannerKind, Block, Document, Table};

/// Backslash-escapes what Markdown would read as markup, so names and messages (a variant
/// called `pp*62`, an error quoting `<path>`) show literally, while leaving what cannot be
/// markup alone so the file stays readable as text: `_` inside a word (`x86_64`, GFM never
/// reads it as emphasis), `[` and `]` unless a `]` is followed by `(`, `[` or `:` (the only
/// ways brackets become a link, since the report defines no link references), `#` except at
/// the start. Newlines become spaces: every use is one line (paragraph, table cell, item).
pub fn escape(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        let word = |ch: Option<char>| ch.is_some_and(char::is_alphanumeric);
        let escape = match c {
            '\\' | '`' | '*' | '<' | '>' | '|' => true,
            '_' => !(word(prev) && word(next)),
            ']' => matches!(next, Some('(' | '[' | ':')),
            '#' => i == 0,
            _ => false,
        };
        match c {
            '\n' | '\r' => out.push(' '),
            _ => {
                if escape {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
    out
}

fn table(out: &mut String, t: &Table) {
    let header: Vec<String> = t.columns.iter().map(|c| escape(&c.title)).collect();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let rule: Vec<&str> = t
        .columns
        .iter()
        .map(|c| match c.align {
            Align::Left => "---",
            Align::Right => "---:",
        })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// The Markdown text of `doc`; deterministic (a function of the document only).
pub fn render(doc: &Document) -> String {
    let mut out = format!("# {}\n\n", escape(&doc.title));
    for block in &doc.blocks {
        match block {
            Block::Heading { level, text } => {
                let _ = writeln!(out, "{} {}\n", "#".repeat(usize::from(*level).clamp(2, 6)), escape(text));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "{}\n", escape(text));
            }
            Block::Banner { kind, title, lines } => {
                let marker = match kind {
                    BannerKind::Warning => "⚠",
                    BannerKind::Note => "ℹ",
                };
                let _ = writeln!(out, "> **{marker} {}**", escape(title));
                for line in lines {
                    let _ = writeln!(out, ">\n> {}", escape(line));
                }
                out.push('\n');
            }
            Block::Facts(facts) => {
                out.push_str("| | |\n|---|---|\n");
                for (k, v) in facts {
                    let _ = writeln!(out, "| {} | {} |", escape(k), escape(v));
                }
                out.push('\n');
            }
            Block::List(items) => {
                for item in items {
                    let _ = writeln!(out, "- {}", escape(item));
                }
                out.push('\n');
            }
            Block::Table(t) => table(&mut out, t),
            Block::Figure(f) => {
                // The file name is a safe path (see `Figure::file`); the caption follows in italics.
                let alt = f.file.trim_end_matches(".svg").replace('_', " ");
                let _ = writeln!(out, "![{}](plots/{})\n\n*{}*\n", escape(&alt), f.file, escape(&f.caption));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::document::Figure;

    #[test]
    fn markup_characters_in_text_are_escaped() {
        assert_eq!(escape("*x* [a](b) <c> |d| `f` \\"), "\\*x\\* [a\\](b) \\<c\\> \\|d\\| \\`f\\` \\\\");
        assert_eq!(escape("#1 not # 2"), "\\#1 not # 2");
        assert_eq!(escape("x86_64 _lead trail_ a__b"), "x86_64 \\_lead trail\\_ a\\_\\_b");
        assert_eq!(escape("[1.0, 2.0] ![i][r] [d]: u"), "[1.0, 2.0] ![i\\][r] [d\\]: u");
        assert_eq!(escape("two\nlines"), "two lines");
    }

    #[test]
    fn tables_figures_and_banners_render() {
        let mut t = Table::new(&[("variant", Align::Left), ("ms", Align::Right)]);
        t.push(vec!["a|b".into(), "1.00".into()]);
        let doc = Document {
            title: "T".into(),
            blocks: vec![
                Block::Banner { kind: BannerKind::Warning, title: "SIMULATED".into(), lines: vec!["board sim".into()] },
                Block::Table(t),
                Block::Figure(Figure { file: "x.svg".into(), svg: "<svg/>".into(), caption: "Cap".into() }),
            ],
        };
        let md = render(&doc);
        assert!(md.starts_with("# T\n\n> **⚠ SIMULATED**\n>\n> board sim\n"), "{md}");
        assert!(md.contains("| variant | ms |\n|---|---:|\n| a\\|b | 1.00 |\n"), "{md}");
        assert!(md.contains("![x](plots/x.svg)\n\n*Cap*\n"), "{md}");
        assert!(!md.contains("<svg"), "SVGs are linked, not inlined: {md}");
    }
}
