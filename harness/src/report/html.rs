//! Renders a [`Document`] as one self-contained HTML page (`report.html`).
//!
//! Self-contained: the style sheet is inline, plots are inline SVG, there are no scripts,
//! fonts or links to fetch, so the file can be mailed or archived on its own. The markup is
//! also well-formed XML (every element closed, void elements self-closed, all text and
//! attribute values escaped), so XML tools can read it and the tests can check it.

use std::fmt::Write as _;

use super::document::{Align, BannerKind, Block, Document, Table};

/// Escapes text for HTML/XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Kept free of `<` and `&` so the page stays well-formed XML.
const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444}
h2{border-bottom:1px solid #bbb;margin-top:2em}
div.table-wrap{max-width:100%;overflow-x:auto;margin:0.8em 0;border:1px solid #e4e4e4}
table{border-collapse:collapse;font-size:0.9em}
div.table-wrap table{margin:0}
td{overflow-wrap:break-word}
td:last-child{min-width:14em}
td.num{overflow-wrap:normal;white-space:nowrap}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;vertical-align:top}
th{background:#f0f0f0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.facts th{text-align:left;font-weight:600}
.banner{border:3px solid #555;padding:0.6em 1em;margin:1em 0;border-radius:4px}
.banner.warning{border-color:#c0392b;background:#fdecea}
.banner.note{border-color:#2c6fbb;background:#eaf2fb}
.banner .title{font-size:1.4em;font-weight:700;letter-spacing:0.05em}
.banner.warning .title{color:#c0392b}
figure{margin:1em 0}
figure svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.9em;color:#555}
";

fn align_class(align: Align) -> &'static str {
    match align {
        Align::Left => "",
        Align::Right => " class=\"num\"",
    }
}

/// Every table sits in its own horizontally scrolling box, so a wide one never widens the page.
fn table(out: &mut String, t: &Table) {
    out.push_str("<div class=\"table-wrap\">\n<table>\n<thead><tr>");
    for c in &t.columns {
        let _ = write!(out, "<th{}>{}</th>", align_class(c.align), escape(&c.title));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for (cell, c) in row.iter().zip(&t.columns) {
            let _ = write!(out, "<td{}>{}</td>", align_class(c.align), escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</div>\n");
}

/// Strips an XML declaration a plotting backend may put before `<svg`: it is only allowed at
/// the very start of a document, not inside HTML.
fn inline_svg(svg: &str) -> &str {
    let trimmed = svg.trim_start();
    if trimmed.starts_with("<?xml") {
        if let Some(end) = trimmed.find("?>") {
            return trimmed[end + 2..].trim_start();
        }
    }
    trimmed
}

/// The HTML page of `doc`; deterministic (a function of the document only).
pub fn render(doc: &Document) -> String {
    let title = escape(&doc.title);
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    for block in &doc.blocks {
        match block {
            Block::Heading { level, text } => {
                let l = (*level).clamp(2, 6);
                let _ = writeln!(out, "<h{l}>{}</h{l}>", escape(text));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "<p>{}</p>", escape(text));
            }
            Block::Banner { kind, title, lines } => {
                let class = match kind {
                    BannerKind::Warning => "warning",
                    BannerKind::Note => "note",
                };
                let _ = writeln!(out, "<div class=\"banner {class}\">\n<div class=\"title\">{}</div>", escape(title));
                for line in lines {
                    let _ = writeln!(out, "<p>{}</p>", escape(line));
                }
                out.push_str("</div>\n");
            }
            Block::Facts(facts) => {
                out.push_str("<div class=\"table-wrap\">\n<table class=\"facts\">\n<tbody>\n");
                for (k, v) in facts {
                    let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
                }
                out.push_str("</tbody>\n</table>\n</div>\n");
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", escape(item));
                }
                out.push_str("</ul>\n");
            }
            Block::Table(t) => table(&mut out, t),
            Block::Figure(f) => {
                let _ = writeln!(
                    out,
                    "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>",
                    inline_svg(&f.svg).trim_end(),
                    escape(&f.caption)
                );
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::document::Figure;

    #[test]
    fn text_is_escaped_and_svg_inlined() {
        let doc = Document {
            title: "a <b> & 'c'".into(),
            blocks: vec![
                Block::Paragraph("x < y && \"z\"".into()),
                Block::Figure(Figure {
                    file: "p.svg".into(),
                    svg: "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n".into(),
                    caption: "1 < 2".into(),
                }),
            ],
        };
        let html = render(&doc);
        assert!(html.contains("<title>a &lt;b&gt; &amp; &#39;c&#39;</title>"), "{html}");
        assert!(html.contains("<p>x &lt; y &amp;&amp; &quot;z&quot;</p>"), "{html}");
        assert!(html.contains("<figure>\n<svg xmlns"), "{html}");
        assert!(!html.contains("<?xml"), "{html}");
        assert!(html.contains("<figcaption>1 &lt; 2</figcaption>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!STYLE.contains(['<', '&']));
    }

    #[test]
    fn numeric_columns_are_right_aligned() {
        let mut t = Table::new(&[("name", Align::Left), ("ms", Align::Right)]);
        t.push(vec!["dense".into(), "1.0".into()]);
        let html = render(&Document { title: "t".into(), blocks: vec![Block::Table(t)] });
        assert!(html.contains("<tr><td>dense</td><td class=\"num\">1.0</td></tr>"), "{html}");
        // Each table scrolls inside its own box rather than widening the page.
        assert!(html.contains("<div class=\"table-wrap\">\n<table>"), "{html}");
        assert!(STYLE.contains("div.table-wrap{max-width:100%;overflow-x:auto"));
    }
}
