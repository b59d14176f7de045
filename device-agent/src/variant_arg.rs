//! The short variant syntax of the one-shot commands (`hil-agent bench --variant ...`).
//!
//! ```text
//! [NAME=]dense
//! [NAME=]block:SPARSITY[:ROWSxCOLS][:global]
//! [NAME=]pattern:SPARSITY:TILE[:PATTERNS_PER_SET][@BASE]
//! ```
//!
//! `block:0.64` is BP at 64 % with 32x1 blocks; `pattern:0.75:16` is a set of
//! four 16x16 patterns at 75 % applied on top of the nearest `block` variant
//! listed before it (or `@BASE`, a name). Names default to `dense`,
//! `block-0.64`, `pattern-0.75-t16`.

use crate::protocol::{PatternMethod, VariantSpecWire};

/// The `--variant` help text, shared by the CLI and the docs.
pub const VARIANT_SYNTAX_HELP: &str = "\
Variant syntax (repeat --variant for several; the first is run first):
  [NAME=]dense
  [NAME=]block:SPARSITY[:ROWSxCOLS][:global]             BP only; blocks default to 32x1;
                                                         `global` ranks blocks over all layers
  [NAME=]pattern:SPARSITY:TILE[:PATTERNS_PER_SET][@BASE] pattern set on a block variant
A pattern variant builds on BASE, or else on the last block variant listed before it.
Examples:
  dense
  block:0.64
  block:0.5:16x1:global
  pattern:0.75:16
  pp87=pattern:0.875:16:4@block-0.64";

/// Parses a list of `--variant` arguments into protocol variant specs,
/// resolving pattern bases and checking names are unique.
pub fn parse_variant_args<S: AsRef<str>>(args: &[S]) -> Result<Vec<VariantSpecWire>, String> {
    let mut out: Vec<VariantSpecWire> = Vec::new();
    for arg in args {
        let spec = parse_one(arg.as_ref(), &out)?;
        if out.iter().any(|v| v.name() == spec.name()) {
            return Err(format!("variant name `{}` is used twice (give one a name: NAME=...)", spec.name()));
        }
        out.push(spec);
    }
    Ok(out)
}

fn parse_one(arg: &str, earlier: &[VariantSpecWire]) -> Result<VariantSpecWire, String> {
    let bad = |why: String| format!("bad variant `{arg}`: {why}");
    let (name, body) = match arg.split_once('=') {
        Some((n, b)) if !n.trim().is_empty() => (Some(n.trim().to_owned()), b.trim()),
        Some(_) => return Err(bad("empty name before `=`".into())),
        None => (None, arg.trim()),
    };
    let (body, base) = match body.split_once('@') {
        Some((b, base)) => (b, Some(base.trim().to_owned())),
        None => (body, None),
    };
    let parts: Vec<&str> = body.split(':').map(str::trim).collect();
    let sparsity = |s: &str| -> Result<f64, String> {
        let v: f64 = s.parse().map_err(|_| bad(format!("sparsity `{s}` is not a number")))?;
        if (0.0..1.0).contains(&v) {
            Ok(v)
        } else {
            Err(bad(format!("sparsity {v} is outside [0, 1)")))
        }
    };
    let count = |what: &str, s: &str| -> Result<usize, String> {
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(format!("{what} `{s}` is not a positive integer"))),
        }
    };
    if base.is_some() && parts[0] != "pattern" {
        return Err(bad("only pattern variants take @BASE".into()));
    }
    match parts.as_slice() {
        ["dense"] => Ok(VariantSpecWire::Dense { name: name.unwrap_or_else(|| "dense".into()) }),
        ["block", s, rest @ ..] if rest.len() <= 2 => {
            let s = sparsity(s)?;
            let (global, rest) = match rest.split_last() {
                Some((&"global", shape)) => (true, shape),
                _ => (false, rest),
            };
            if rest.len() > 1 {
                return Err(bad("expected block:SPARSITY[:ROWSxCOLS][:global]".into()));
            }
            let (block_rows, block_cols) = match rest.first() {
                Some(shape) => {
                    let (r, c) =
                        shape.split_once('x').ok_or_else(|| bad(format!("block shape `{shape}` is not ROWSxCOLS")))?;
                    (count("block rows", r)?, count("block cols", c)?)
                }
                None => (32, 1),
            };
            Ok(VariantSpecWire::Block {
                name: name.unwrap_or_else(|| format!("block-{s}")),
                sparsity: s,
                block_rows,
                block_cols,
                per_layer: None,
                global,
            })
        }
        ["pattern", s, tile, rest @ ..] if rest.len() <= 1 => {
            let s = sparsity(s)?;
            let tile = count("tile", tile)?;
            let patterns_per_set = rest.first().map(|p| count("patterns per set", p)).transpose()?.unwrap_or(4);
            let base = match base {
                Some(b) => {
                    if !earlier.iter().any(|v| v.name() == b) {
                        return Err(bad(format!("base `{b}` is not a variant listed before it")));
                    }
                    b
                }
                None => earlier
                    .iter()
                    .rev()
                    .find(|v| matches!(v, VariantSpecWire::Block { .. }))
                    .map(|v| v.name().to_owned())
                    .ok_or_else(|| bad("a pattern variant needs a block variant before it, e.g. `block:0.5`".into()))?,
            };
            Ok(VariantSpecWire::Pattern {
                name: name.unwrap_or_else(|| format!("pattern-{s}-t{tile}")),
                base,
                tile,
                patterns_per_set,
                sparsity: s,
                method: PatternMethod::default(),
                seed: 0,
            })
        }
        _ => Err(bad("expected dense, block:SPARSITY[:ROWSxCOLS] or pattern:SPARSITY:TILE[:N][@BASE]".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds_with_default_names() {
        let v = parse_variant_args(&["dense", "block:0.64", "pattern:0.75:16"]).unwrap();
        assert_eq!(v[0], VariantSpecWire::Dense { name: "dense".into() });
        assert_eq!(
            v[1],
            VariantSpecWire::Block {
                name: "block-0.64".into(),
                sparsity: 0.64,
                block_rows: 32,
                block_cols: 1,
                per_layer: None,
                global: false
            }
        );
        assert_eq!(
            v[2],
            VariantSpecWire::Pattern {
                name: "pattern-0.75-t16".into(),
                base: "block-0.64".into(),
                tile: 16,
                patterns_per_set: 4,
                sparsity: 0.75,
                method: PatternMethod::Rt3TileSums,
                seed: 0
            }
        );
    }

    #[test]
    fn names_shapes_counts_and_bases() {
        let v = parse_variant_args(&["bp=block:0.5:16x2", "bp2=block:0.6:global", "pp=pattern:0.875:8:2@bp"]).unwrap();
        assert!(matches!(&v[0], VariantSpecWire::Block { name, block_rows: 16, block_cols: 2, .. } if name == "bp"));
        assert!(matches!(&v[1], VariantSpecWire::Block { global: true, block_rows: 32, .. }));
        assert!(matches!(&v[2], VariantSpecWire::Pattern { base, tile: 8, patterns_per_set: 2, .. } if base == "bp"));
    }

    #[test]
    fn errors_name_the_argument_and_the_problem() {
        let e = parse_variant_args(&["pattern:0.75:16"]).unwrap_err();
        assert!(e.contains("needs a block variant before it"), "{e}");
        let e = parse_variant_args(&["block:1.5"]).unwrap_err();
        assert!(e.contains("`block:1.5`") && e.contains("outside [0, 1)"), "{e}");
        let e = parse_variant_args(&["block:0.5", "pattern:0.7:0"]).unwrap_err();
        assert!(e.contains("tile `0`"), "{e}");
        let e = parse_variant_args(&["dense", "dense"]).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e = parse_variant_args(&["block:0.5", "pattern:0.7:16@nope"]).unwrap_err();
        assert!(e.contains("base `nope`"), "{e}");
        let e = parse_variant_args(&["sparse"]).unwrap_err();
        assert!(e.contains("expected dense"), "{e}");
        let e = parse_variant_args(&["block:0.5:16"]).unwrap_err();
        assert!(e.contains("ROWSxCOLS"), "{e}");
    }
}
