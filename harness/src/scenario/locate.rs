//! Where a field path (`boards[1].host`) sits in the YAML text.
//!
//! `serde_yaml` 0.9 reports line and column for errors it finds itself, but its
//! `Value` carries no spans, so errors found later (a bad host name, a duplicate
//! variant) would have no line. [`SourceMap`] fills that gap: a small, tolerant
//! scanner over the text that builds a tree of positions (mappings, sequences,
//! scalars, aliases) for the YAML subset config files use: block mappings and
//! sequences (including `- key: value` items), flow collections (`[a, b]`,
//! `{k: v}`, across lines), quoted and plain scalars, block scalars (`|`, `>`),
//! comments, anchors and aliases.
//!
//! It never fails and never panics: on text it does not understand it keeps what
//! it found, and [`SourceMap::locate`] falls back to the nearest ancestor that it
//! did find, so every error still gets a line. Nesting is capped so hostile
//! input cannot exhaust the stack.
//!
//! The same tree measures alias expansion ([`SourceMap::alias_expansion`]) so a
//! "billion laughs" document is refused before `serde_yaml` expands anything.

use std::collections::HashMap;

/// A 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TextPos {
    pub line: usize,
    pub column: usize,
}

/// Nesting deeper than this is not followed (scenarios nest four or five levels).
const MAX_DEPTH: usize = 64;

#[derive(Debug)]
enum NodeKind {
    Scalar(String),
    Alias(String),
    Map(Vec<Entry>),
    Seq(Vec<Node>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    key_pos: TextPos,
    value: Node,
}

#[derive(Debug)]
struct Node {
    pos: TextPos,
    anchor: Option<String>,
    kind: NodeKind,
    /// Inside a flow collection (`[..]`, `{..}`): positions there are trusted for lookups,
    /// but not for guessing which field a syntax error is in (a broken flow collection
    /// swallows the lines after it).
    in_flow: bool,
}

impl Node {
    fn scalar(pos: TextPos, text: impl Into<String>) -> Node {
        Node { pos, anchor: None, kind: NodeKind::Scalar(text.into()), in_flow: false }
    }
}

/// Positions of every node of a YAML document, for error messages.
#[derive(Debug)]
pub struct SourceMap {
    root: Option<Node>,
}

/// The alias whose expansion is largest, and the document's total size with aliases expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasExpansion {
    /// Number of nodes the document has once every alias is replaced by its anchor's content.
    pub expanded_nodes: u64,
    /// The single largest alias: its field path, `*name`, its position and the nodes it expands to.
    pub largest: Option<(String, String, TextPos, u64)>,
}

/// One segment of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Parses `boards[1].monitor.port` into segments; keys in scenarios never contain `.` or `[`.
fn parse_path(path: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segments.push(Segment::Key(key.to_string()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(index) = stripped[..end].parse() {
                segments.push(Segment::Index(index));
            }
            rest = &stripped[end + 1..];
        }
    }
    segments
}

impl SourceMap {
    /// Scans `text`. Never fails: unknown constructs are skipped.
    pub fn parse(text: &str) -> SourceMap {
        let lines = split_lines(text);
        let mut parser = BlockParser { src: text, lines, cur: 0, depth: 0 };
        let root = if parser.lines.is_empty() { None } else { Some(parser.block_node(-1)) };
        SourceMap { root }
    }

    /// The position of `path`, and whether the path was found exactly. When it was not,
    /// the position of its deepest ancestor that exists (the document start at worst).
    ///
    /// For a mapping key whose value sits on the same line (`host: x`, `levels: [..]`)
    /// the value's position is given; for a nested block, the key's.
    pub fn locate(&self, path: &str) -> (TextPos, bool) {
        let start = TextPos { line: 1, column: 1 };
        let Some(mut node) = self.root.as_ref() else { return (start, false) };
        let mut best = node.pos;
        for segment in parse_path(path) {
            match (&segment, &node.kind) {
                (Segment::Key(key), NodeKind::Map(entries)) => {
                    let Some(entry) = entries.iter().rev().find(|e| &e.key == key) else { return (best, false) };
                    best = if entry.value.pos.line == entry.key_pos.line { entry.value.pos } else { entry.key_pos };
                    node = &entry.value;
                }
                (Segment::Index(i), NodeKind::Seq(items)) => {
                    let Some(item) = items.get(*i) else { return (best, false) };
                    best = item.pos;
                    node = item;
                }
                _ => return (best, false),
            }
        }
        (best, true)
    }

    /// The field path of the deepest node that starts at or before `line`: used to say
    /// "near `boards[1].host`" for syntax errors that only have a line.
    pub fn path_at_line(&self, line: usize) -> String {
        let mut path = String::new();
        let Some(mut node) = self.root.as_ref() else { return path };
        while !node.in_flow {
            match &node.kind {
                NodeKind::Map(entries) => {
                    let Some(entry) = entries.iter().rev().find(|e| e.key_pos.line <= line) else { break };
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&entry.key);
                    node = &entry.value;
                }
                NodeKind::Seq(items) => {
                    let Some((i, item)) = items.iter().enumerate().rev().find(|(_, n)| n.pos.line <= line) else {
                        break;
                    };
                    path.push_str(&format!("[{i}]"));
                    node = item;
                }
                _ => break,
            }
        }
        path
    }

    /// How large the document becomes once aliases are expanded (counting every node),
    /// and the largest single alias. Sizes saturate at `u64::MAX`.
    pub fn alias_expansion(&self) -> AliasExpansion {
        let mut anchors: HashMap<String, u64> = HashMap::new();
        let mut largest: Option<(String, String, TextPos, u64)> = None;
        let expanded_nodes = match &self.root {
            Some(root) => expanded_size(root, String::new(), &mut anchors, &mut largest),
            None => 0,
        };
        AliasExpansion { expanded_nodes, largest }
    }
}

fn expanded_size(
    node: &Node,
    path: String,
    anchors: &mut HashMap<String, u64>,
    largest: &mut Option<(String, String, TextPos, u64)>,
) -> u64 {
    let size = match &node.kind {
        NodeKind::Scalar(_) => 1,
        NodeKind::Alias(name) => {
            let size = anchors.get(name).copied().unwrap_or(1);
            if largest.as_ref().is_none_or(|l| size > l.3) {
                *largest = Some((path.clone(), format!("*{name}"), node.pos, size));
            }
            size
        }
        NodeKind::Map(entries) => entries.iter().fold(1u64, |acc, e| {
            let child = if path.is_empty() { e.key.clone() } else { format!("{path}.{}", e.key) };
            acc.saturating_add(1).saturating_add(expanded_size(&e.value, child, anchors, largest))
        }),
        NodeKind::Seq(items) => items.iter().enumerate().fold(1u64, |acc, (i, item)| {
            acc.saturating_add(expanded_size(item, format!("{path}[{i}]"), anchors, largest))
        }),
    };
    if let Some(anchor) = &node.anchor {
        anchors.insert(anchor.clone(), size);
    }
    size
}

/// A non-empty line with its comment removed.
#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    /// 1-based line number.
    line: usize,
    /// 0-based column (characters) where `text` starts.
    col: usize,
    /// Byte offset of `text` in the whole source.
    byte: usize,
    text: &'a str,
}

impl Line<'_> {
    fn pos(&self) -> TextPos {
        TextPos { line: self.line, column: self.col + 1 }
    }
}

fn split_lines(src: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut offset = 0;
    for (index, raw) in src.split('\n').enumerate() {
        let start = offset;
        offset += raw.len() + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let indent = raw.bytes().take_while(|b| *b == b' ').count();
        let mut text = strip_comment(&raw[indent..]).trim_end();
        let mut skip = 0;
        // Document markers and directives carry no fields; `--- value` keeps its value.
        if text == "---" || text == "..." || text.starts_with('%') {
            continue;
        }
        if let Some(rest) = text.strip_prefix("--- ") {
            skip = text.len() - rest.trim_start().len();
            text = rest.trim_start();
        }
        if text.is_empty() {
            continue;
        }
        lines.push(Line { line: index + 1, col: indent + skip, byte: start + indent + skip, text });
    }
    lines
}

/// Cuts a `#` comment (at the start or after whitespace, outside quotes).
fn strip_comment(text: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match quote {
            Some('"') => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quote = None;
                }
            }
            Some(_) => {
                if c == '\'' {
                    quote = None;
                }
            }
            None => {
                let after_separator = prev.is_none_or(|p| p.is_whitespace() || "[{,:".contains(p));
                if (c == '"' || c == '\'') && after_separator {
                    quote = Some(c);
                } else if c == '#' && prev.is_none_or(char::is_whitespace) {
                    return &text[..i];
                }
            }
        }
        prev = Some(c);
    }
    text
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ") || text.starts_with("-\t")
}

/// Splits `key: value` into the key (unquoted) and the byte index where the value starts
/// (after the `:`). `None` when the text is not a simple mapping entry.
fn split_key(text: &str) -> Option<(String, usize)> {
    let first = text.chars().next()?;
    if first == '"' || first == '\'' {
        let (key, end) = read_quoted(text, first)?;
        let after = &text[end..];
        let trimmed = after.trim_start();
        let colon = end + (after.len() - trimmed.len());
        return (trimmed.starts_with(':') && is_value_separator(&trimmed[1..])).then(|| (key, colon + 1));
    }
    if first == '-' {
        if is_seq_item(text) {
            return None;
        }
    } else if "[]{}*&!|>%@`#?,".contains(first) {
        return None;
    }
    let mut search = 0;
    while let Some(i) = text[search..].find(':') {
        let at = search + i;
        if is_value_separator(&text[at + 1..]) {
            let key = text[..at].trim_end();
            if key.is_empty() || key.contains(" #") {
                return None;
            }
            return Some((key.to_string(), at + 1));
        }
        search = at + 1;
    }
    None
}

fn is_value_separator(after_colon: &str) -> bool {
    after_colon.is_empty() || after_colon.starts_with(' ') || after_colon.starts_with('\t')
}

/// Reads a quoted scalar starting at byte 0; returns its unescaped text and the byte after it.
fn read_quoted(text: &str, quote: char) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if quote == '"' && c == '\\' {
            if let Some((_, next)) = chars.next() {
                out.push(match next {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            }
        } else if c == quote {
            if quote == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                out.push('\'');
            } else {
                return Some((out, i + c.len_utf8()));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// Strips node properties (`&anchor`, `!tag`) from the start of `text`.
/// Returns the anchor, the remaining text and how many bytes were removed.
fn strip_properties(text: &str) -> (Option<String>, &str, usize) {
    let mut anchor = None;
    let mut rest = text;
    while let Some(first @ ('&' | '!')) = rest.chars().next() {
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        if first == '&' {
            anchor = Some(rest[1..end].to_string());
        }
        rest = rest[end..].trim_start();
    }
    (anchor, rest, text.len() - rest.len())
}

struct BlockParser<'a> {
    src: &'a str,
    lines: Vec<Line<'a>>,
    cur: usize,
    depth: usize,
}

impl<'a> BlockParser<'a> {
    /// Skips every following line indented deeper than `indent` (continuations of a scalar).
    fn skip_deeper(&mut self, indent: isize) {
        while self.cur < self.lines.len() && self.lines[self.cur].col as isize > indent {
            self.cur += 1;
        }
    }

    /// Parses the block node starting at the current line; `parent_indent` is the indentation of
    /// the construct that owns it (-1 for the document).
    fn block_node(&mut self, parent_indent: isize) -> Node {
        let line = self.lines[self.cur];
        if self.depth >= MAX_DEPTH {
            self.cur += 1;
            self.skip_deeper(parent_indent);
            return Node::scalar(line.pos(), "");
        }
        self.depth += 1;
        let node = if is_seq_item(line.text) {
            self.sequence(line.col)
        } else if split_key(line.text).is_some() {
            self.mapping(line.col)
        } else {
            self.cur += 1;
            self.inline_value(line, parent_indent, false)
        };
        self.depth -= 1;
        node
    }

    fn sequence(&mut self, indent: usize) -> Node {
        let first = self.lines[self.cur];
        let mut items = Vec::new();
        while self.cur < self.lines.len() {
            let line = self.lines[self.cur];
            if line.col != indent || !is_seq_item(line.text) {
                break;
            }
            let after_dash = &line.text[1..];
            let rest = after_dash.trim_start();
            let skipped = line.text.len() - rest.len();
            let item_line = Line {
                line: line.line,
                col: line.col + line.text[..skipped].chars().count(),
                byte: line.byte + skipped,
                text: rest,
            };
            if rest.is_empty() {
                self.cur += 1;
                let nested = self.cur < self.lines.len() && self.lines[self.cur].col > indent;
                // The item is where its dash is; the nested block starts on the next line.
                items.push(if nested {
                    let mut node = self.block_node(indent as isize);
                    node.pos = line.pos();
                    node
                } else {
                    Node::scalar(line.pos(), "")
                });
                continue;
            }
            let (anchor, bare, props) = strip_properties(rest);
            if !bare.is_empty() && (is_seq_item(bare) || split_key(bare).is_some()) {
                // `- key: value` / `- - x`: the item is a block node starting mid-line.
                self.lines[self.cur] = Line {
                    line: line.line,
                    col: item_line.col + rest[..props].chars().count(),
                    byte: item_line.byte + props,
                    text: bare,
                };
                let mut node = self.block_node(indent as isize);
                if anchor.is_some() {
                    node.anchor = anchor;
                }
                items.push(node);
            } else {
                self.cur += 1;
                items.push(self.inline_value(item_line, indent as isize, false));
            }
        }
        Node { pos: first.pos(), anchor: None, kind: NodeKind::Seq(items), in_flow: false }
    }

    fn mapping(&mut self, indent: usize) -> Node {
        let first = self.lines[self.cur];
        let mut entries = Vec::new();
        while self.cur < self.lines.len() {
            let line = self.lines[self.cur];
            if line.col < indent {
                break;
            }
            if line.col > indent {
                // Badly indented: not ours to understand.
                self.cur += 1;
                continue;
            }
            let Some((key, value_at)) = split_key(line.text) else {
                if is_seq_item(line.text) {
                    break;
                }
                self.cur += 1;
                continue;
            };
            let after = &line.text[value_at..];
            let rest = after.trim_start();
            let offset = value_at + (after.len() - rest.len());
            let value_line = Line {
                line: line.line,
                col: line.col + line.text[..offset].chars().count(),
                byte: line.byte + offset,
                text: rest,
            };
            self.cur += 1;
            let value = self.inline_value(value_line, indent as isize, true);
            entries.push(Entry { key, key_pos: line.pos(), value });
        }
        Node { pos: first.pos(), anchor: None, kind: NodeKind::Map(entries), in_flow: false }
    }

    /// A value that starts on `line` (possibly empty, then the value is the nested block below).
    /// `owner_indent` is the indentation of the key or dash that owns it; a mapping value may be
    /// a sequence at the key's own indentation (`key:\n- a`).
    fn inline_value(&mut self, line: Line<'a>, owner_indent: isize, allow_same_indent_seq: bool) -> Node {
        let (anchor, text, props) = strip_properties(line.text);
        let pos = TextPos { line: line.line, column: line.col + line.text[..props].chars().count() + 1 };
        let mut node = if text.is_empty() {
            let nested = self.cur < self.lines.len() && {
                let next = self.lines[self.cur];
                next.col as isize > owner_indent
                    || (allow_same_indent_seq && next.col as isize == owner_indent && is_seq_item(next.text))
            };
            if nested {
                self.block_node(owner_indent)
            } else {
                Node::scalar(pos, "")
            }
        } else if let Some(name) = text.strip_prefix('*') {
            self.skip_deeper(owner_indent);
            Node { pos, anchor: None, kind: NodeKind::Alias(name.trim().to_string()), in_flow: false }
        } else if text.starts_with('[') || text.starts_with('{') {
            let mut flow = FlowParser {
                src: self.src,
                at: line.byte + props,
                pos: TextPos { line: pos.line, column: pos.column },
                depth: self.depth,
            };
            let node = flow.node();
            let end_line = flow.pos.line;
            while self.cur < self.lines.len() && self.lines[self.cur].line <= end_line {
                self.cur += 1;
            }
            node
        } else {
            // Plain, quoted or block scalar: anything indented deeper continues it.
            self.skip_deeper(owner_indent);
            let value = match text.chars().next() {
                Some(q @ ('"' | '\'')) => read_quoted(text, q).map(|(s, _)| s).unwrap_or_else(|| text.to_string()),
                _ => text.to_string(),
            };
            Node::scalar(pos, value)
        };
        if anchor.is_some() {
            node.anchor = anchor;
        }
        node
    }
}

/// Flow collections (`[a, *b]`, `{k: v}`), possibly spanning lines; works on the raw text.
struct FlowParser<'a> {
    src: &'a str,
    at: usize,
    pos: TextPos,
    depth: usize,
}

impl FlowParser<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.at..].chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.src[self.at..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        if c == '\n' {
            self.pos.line += 1;
            self.pos.column = 1;
        } else {
            self.pos.column += 1;
        }
        Some(c)
    }

    fn skip_space(&mut self) {
        let mut prev_space = true;
        while let Some(c) = self.peek() {
            if c == '#' && prev_space {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
                prev_space = true;
            } else {
                break;
            }
        }
    }

    fn word(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || ",[]{}".contains(c) {
                break;
            }
            out.push(c);
            self.bump();
        }
        out
    }

    fn node(&mut self) -> Node {
        self.skip_space();
        let mut anchor = None;
        while let Some(c @ ('&' | '!')) = self.peek() {
            self.bump();
            let name = self.word();
            if c == '&' {
                anchor = Some(name);
            }
            self.skip_space();
        }
        let pos = self.pos;
        if self.depth >= MAX_DEPTH {
            self.at = self.src.len();
            return Node { pos, anchor, kind: NodeKind::Scalar(String::new()), in_flow: true };
        }
        let kind = match self.peek() {
            Some('[') => {
                self.depth += 1;
                let kind = self.sequence();
                self.depth -= 1;
                kind
            }
            Some('{') => {
                self.depth += 1;
                let kind = self.mapping();
                self.depth -= 1;
                kind
            }
            Some('*') => {
                self.bump();
                NodeKind::Alias(self.word())
            }
            Some(q @ ('"' | '\'')) => {
                let rest = &self.src[self.at..];
                match read_quoted(rest, q) {
                    Some((text, len)) => {
                        let end = self.at + len;
                        while self.at < end {
                            self.bump();
                        }
                        NodeKind::Scalar(text)
                    }
                    None => {
                        self.at = self.src.len();
                        NodeKind::Scalar(String::new())
                    }
                }
            }
            _ => NodeKind::Scalar(self.plain()),
        };
        Node { pos, anchor, kind, in_flow: true }
    }

    /// A plain scalar inside a flow collection: up to `,`, a bracket, `: ` or a line end.
    fn plain(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if ",[]{}\n".contains(c) {
                break;
            }
            if c == ':' && self.peek_second().is_none_or(|n| n.is_whitespace() || ",[]{}".contains(n)) {
                break;
            }
            if c == '#' && out.ends_with(char::is_whitespace) {
                break;
            }
            out.push(c);
            self.bump();
        }
        out.trim_end().to_string()
    }

    fn sequence(&mut self) -> NodeKind {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None => break,
                Some(']') => {
                    self.bump();
                    break;
                }
                Some(',') => {
                    self.bump();
                }
                Some('}') => {
                    // Mismatched bracket: stop rather than loop.
                    self.bump();
                    break;
                }
                Some(_) => {
                    let before = self.at;
                    let item = self.node();
                    self.skip_space();
                    if self.peek() == Some(':') {
                        // `[key: value]`: a single-pair mapping inside a sequence.
                        self.bump();
                        let key = match &item.kind {
                            NodeKind::Scalar(s) => s.clone(),
                            _ => String::new(),
                        };
                        let value = self.flow_value();
                        let pos = item.pos;
                        items.push(Node {
                            pos,
                            anchor: None,
                            kind: NodeKind::Map(vec![Entry { key, key_pos: pos, value }]),
                            in_flow: true,
                        });
                    } else {
                        items.push(item);
                    }
                    if self.at == before {
                        self.bump();
                    }
                }
            }
        }
        NodeKind::Seq(items)
    }

    /// The value after a `:` in a flow collection (null when the entry ends right there).
    fn flow_value(&mut self) -> Node {
        self.skip_space();
        match self.peek() {
            None | Some(',' | '}' | ']') => Node::scalar(self.pos, ""),
            _ => self.node(),
        }
    }

    fn mapping(&mut self) -> NodeKind {
        self.bump();
        let mut entries = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None => break,
                Some('}') => {
                    self.bump();
                    break;
                }
                Some(',') => {
                    self.bump();
                }
                Some(']') => {
                    self.bump();
                    break;
                }
                Some(_) => {
                    let before = self.at;
                    let key_node = self.node();
                    let key = match &key_node.kind {
                        NodeKind::Scalar(s) => s.clone(),
                        _ => String::new(),
                    };
                    self.skip_space();
                    let value = if self.peek() == Some(':') {
                        self.bump();
                        self.flow_value()
                    } else {
                        Node::scalar(key_node.pos, "")
                    };
                    entries.push(Entry { key, key_pos: key_node.pos, value });
                    if self.at == before {
                        self.bump();
                    }
                }
            }
        }
        NodeKind::Map(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(map: &SourceMap, path: &str) -> (usize, usize, bool) {
        let (pos, exact) = map.locate(path);
        (pos.line, pos.column, exact)
    }

    const DOC: &str = "\
# a comment line
name: demo   # trailing comment
boards:
  - name: a
    host: a.example   # comment
    cpus: [0, 1]
    monitor:
      kind: ppk2
      port: auto
  - name: \"b\"
    host: 'b.example'
    exec_prefix:
    - qemu-aarch64-static
    - -L
dvfs:
  levels: [600MHz,
           1GHz, 1500MHz]
  settle: 100ms
variants:
  -
    name: dense
    kind: dense
  - {name: bp, kind: block, sparsity: 0.5}
description: |
  host: not a key
  boards: neither
\"quoted key\": 1
";

    #[test]
    fn locates_block_and_flow_fields() {
        let map = SourceMap::parse(DOC);
        assert_eq!(at(&map, "name"), (2, 7, true));
        assert_eq!(at(&map, "boards"), (3, 1, true));
        assert_eq!(at(&map, "boards[0]"), (4, 5, true));
        assert_eq!(at(&map, "boards[0].host"), (5, 11, true));
        assert_eq!(at(&map, "boards[0].cpus[1]"), (6, 15, true));
        assert_eq!(at(&map, "boards[0].monitor"), (7, 5, true));
        assert_eq!(at(&map, "boards[0].monitor.port"), (9, 13, true));
        assert_eq!(at(&map, "boards[1].name"), (10, 11, true));
        assert_eq!(at(&map, "boards[1].host"), (11, 11, true));
        assert_eq!(at(&map, "boards[1].exec_prefix[1]"), (14, 7, true));
        assert_eq!(at(&map, "dvfs.levels[0]"), (16, 12, true));
        assert_eq!(at(&map, "dvfs.levels[2]"), (17, 18, true));
        assert_eq!(at(&map, "dvfs.settle"), (18, 11, true));
        assert_eq!(at(&map, "variants[0].kind"), (22, 11, true));
        assert_eq!(at(&map, "variants[1].sparsity"), (23, 39, true));
        assert_eq!(at(&map, "description"), (24, 14, true));
        assert_eq!(at(&map, "quoted key"), (27, 15, true));
    }

    #[test]
    fn block_scalar_content_is_not_parsed_as_keys() {
        let map = SourceMap::parse(DOC);
        // `host:` inside the block scalar must not shadow anything.
        assert!(!map.locate("description.host").1);
        assert_eq!(at(&map, "boards[0].host"), (5, 11, true));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let map = SourceMap::parse(DOC);
        assert_eq!(at(&map, "boards[0].monitor.baud"), (7, 5, false));
        assert_eq!(at(&map, "boards[5].host"), (3, 1, false));
        assert_eq!(at(&map, "nothing.here"), (2, 1, false));
        assert_eq!(SourceMap::parse("").locate("a"), (TextPos { line: 1, column: 1 }, false));
    }

    #[test]
    fn path_at_line_names_the_enclosing_field() {
        let map = SourceMap::parse(DOC);
        assert_eq!(map.path_at_line(5), "boards[0].host");
        assert_eq!(map.path_at_line(9), "boards[0].monitor.port");
        // Inside a flow collection the collection itself is named.
        assert_eq!(map.path_at_line(17), "dvfs.levels");
        assert_eq!(map.path_at_line(1), "");
    }

    #[test]
    fn alias_expansion_counts_billion_laughs() {
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let expansion = SourceMap::parse(&doc).alias_expansion();
        assert!(expansion.expanded_nodes > 1_000_000_000, "{expansion:?}");
        let (path, alias, pos, size) = expansion.largest.unwrap();
        assert_eq!(alias, "*a8");
        assert_eq!(path, "a9[0]");
        assert_eq!(pos.line, 10);
        assert!(size > 100_000_000);
    }

    #[test]
    fn small_aliases_are_counted_plainly() {
        let doc = "m: &m {kind: ppk2, port: auto}\nboards:\n  - monitor: *m\n  - monitor: *m\n";
        let expansion = SourceMap::parse(doc).alias_expansion();
        // root(1) + m key(1) + map(1 + 2 keys + 2 values) + boards key + seq + 2 x (map + key + alias(5))
        assert_eq!(expansion.expanded_nodes, 1 + 1 + 5 + 1 + 1 + 2 * (1 + 1 + 5));
        assert_eq!(expansion.largest.unwrap().0, "boards[0].monitor");
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let flow = "a: ".to_string() + &"[".repeat(100_000);
        let _ = SourceMap::parse(&flow).locate("a[0][0]");
        let block: String = (0..5000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        let _ = SourceMap::parse(&block).locate("k0.k1.k2");
    }

    #[test]
    fn same_indent_sequence_under_a_key() {
        let map = SourceMap::parse("levels:\n- 1GHz\n- 2GHz\nrepeats: 3\n");
        assert_eq!(at(&map, "levels[1]"), (3, 3, true));
        assert_eq!(at(&map, "repeats"), (4, 10, true));
    }

    #[test]
    fn urls_and_colons_in_values() {
        let map = SourceMap::parse("a: http://x:80/y\nb: \"c: d\"\nc: 12:30\n");
        assert_eq!(at(&map, "a"), (1, 4, true));
        assert_eq!(at(&map, "b"), (2, 4, true));
        assert_eq!(at(&map, "c"), (3, 4, true));
    }
}
