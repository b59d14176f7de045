//! A format-neutral report: headings, paragraphs, banners, tables and figures.
//!
//! The report's content is built once as a [`Document`] and rendered twice, by
//! [`super::markdown`] and [`super::html`], so the two files can never disagree about a
//! number. Text here is plain (unescaped); each renderer escapes for its own format.

/// How a table column is aligned (numbers right, names left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub title: String,
    pub align: Align,
}

/// A table of plain-text cells; every row has one cell per column.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns from `(title, align)` pairs.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|(title, align)| Column { title: (*title).to_string(), align: *align })
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Panics when its width differs from the header's: that is a bug in the
    /// report builder, and a silently ragged table would misplace numbers under wrong headings.
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.columns.len(), "table row {row:?} does not match {} columns", self.columns.len());
        self.rows.push(row);
    }
}

/// How loud a banner is: a warning (simulated board, interrupted run) or a plain note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BannerKind {
    Warning,
    Note,
}

/// One element of the report, in reading order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// `level` 2 or 3 (the title is level 1).
    Heading {
        level: u8,
        text: String,
    },
    Paragraph(String),
    /// A prominent box: `title` in capitals leads, then one line per fact.
    Banner {
        kind: BannerKind,
        title: String,
        lines: Vec<String>,
    },
    /// Two-column facts (`key: value`).
    Facts(Vec<(String, String)>),
    List(Vec<String>),
    Table(Table),
    /// An SVG plot: inlined into the HTML, linked from the Markdown as `plots/<file>`.
    Figure(Figure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figure {
    /// File name under `plots/` (board names are `[A-Za-z0-9._-]`, so names are safe paths).
    pub file: String,
    pub svg: String,
    pub caption: String,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Document {
    pub fn heading(&mut self, level: u8, text: impl Into<String>) {
        self.blocks.push(Block::Heading { level, text: text.into() });
    }
    pub fn paragraph(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Paragraph(text.into()));
    }
    pub fn table(&mut self, table: Table) {
        self.blocks.push(Block::Table(table));
    }
    pub fn facts(&mut self, facts: Vec<(String, String)>) {
        self.blocks.push(Block::Facts(facts));
    }
    pub fn list(&mut self, items: Vec<String>) {
        self.blocks.push(Block::List(items));
    }
    pub fn figure(&mut self, figure: Figure) {
        self.blocks.push(Block::Figure(figure));
    }

    /// The figures in reading order (what goes to `plots/`).
    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Figure(f) => Some(f),
            _ => None,
        })
    }
}
