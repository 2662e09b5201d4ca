//! The YAML tree: yaml-rust2's parser events built into nodes that keep the
//! line and column of every key and value, and scalars typed by the YAML 1.2
//! core schema.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diag::Ctx;

/// A position in the file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) line: usize,
    pub(super) column: usize,
}

impl Pos {
    pub(super) const START: Self = Self { line: 1, column: 1 };

    /// yaml-rust2 markers have 1-based lines and 0-based columns.
    fn of(mark: Marker) -> Self {
        Self {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }

    /// The position just after `text`, counted as yaml-rust2's scanner
    /// counts: a line ends at LF, CR or CRLF, and a column is a character.
    pub(super) fn after(text: &str) -> Self {
        let mut pos = Self::START;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' | '\r' => {
                    pos = Self {
                        line: pos.line + 1,
                        column: 1,
                    };
                }
                _ => pos.column += 1,
            }
        }
        pos
    }
}

/// A YAML node with its position.
#[derive(Debug)]
pub(super) enum Yaml {
    Scalar {
        text: String,
        plain: bool,
        pos: Pos,
    },
    Seq {
        items: Vec<Yaml>,
        pos: Pos,
    },
    Map {
        entries: Vec<Entry>,
        pos: Pos,
    },
    /// Stands in for an alias, which was already reported.
    Invalid(Pos),
}

/// A key and its value in a mapping.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) key: Key,
    pub(super) value: Yaml,
}

/// A mapping key; `name` is `None` when the key was not a scalar (reported).
#[derive(Debug)]
pub(super) struct Key {
    pub(super) name: Option<String>,
    pub(super) pos: Pos,
}

/// A scalar typed by the YAML 1.2 core schema.
pub(super) enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(&'a str),
    Float(&'a str),
    Str(&'a str),
}

impl Yaml {
    pub(super) fn pos(&self) -> Pos {
        match self {
            Self::Scalar { pos, .. }
            | Self::Seq { pos, .. }
            | Self::Map { pos, .. }
            | Self::Invalid(pos) => *pos,
        }
    }

    pub(super) fn scalar(&self) -> Option<Scalar<'_>> {
        match self {
            Self::Scalar { text, plain, .. } => Some(classify(text, *plain)),
            _ => None,
        }
    }

    pub(super) fn is_null(&self) -> bool {
        matches!(self.scalar(), Some(Scalar::Null))
    }
}

pub(super) fn classify(text: &str, plain: bool) -> Scalar<'_> {
    if !plain {
        return Scalar::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
        "true" | "True" | "TRUE" => Scalar::Bool(true),
        "false" | "False" | "FALSE" => Scalar::Bool(false),
        _ if is_int(text) => Scalar::Int(text),
        _ if is_float(text) => Scalar::Float(text),
        _ => Scalar::Str(text),
    }
}

pub(super) fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn is_int(text: &str) -> bool {
    is_digits(text.strip_prefix(['-', '+']).unwrap_or(text))
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`, `.inf`, `.nan`.
fn is_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => is_digits(fraction),
        Some((whole, fraction)) => is_digits(whole) && (fraction.is_empty() || is_digits(fraction)),
        None => is_digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| is_digits(e.strip_prefix(['-', '+']).unwrap_or(e)))
}

/// A collection being built.
enum Frame {
    Seq {
        items: Vec<Yaml>,
        pos: Pos,
    },
    Map {
        entries: Vec<Entry>,
        pos: Pos,
        key: Option<Key>,
    },
}

/// Builds the tree from parser events, noting unsupported YAML features.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Yaml>,
    documents: usize,
    errors: Vec<(Pos, String)>,
}

impl Builder {
    fn properties(&mut self, pos: Pos, anchor: usize, tag: Option<&Tag>) {
        if anchor != 0 {
            self.errors.push((
                pos,
                "YAML anchors (&name) are not supported; write the value out in full".to_owned(),
            ));
        }
        if let Some(tag) = tag {
            self.errors.push((
                pos,
                format!(
                    "YAML tags ({}{}) are not supported; remove the tag (quote a value to make it a string)",
                    tag.handle, tag.suffix
                ),
            ));
        }
    }

    fn push(&mut self, node: Yaml) {
        match self.stack.last_mut() {
            None => {
                if self.documents <= 1 && self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, pos, key }) => {
                if let Some(k) = key.take() {
                    entries.push(Entry {
                        key: k,
                        value: node,
                    });
                } else {
                    let key_pos = node.pos();
                    // A block mapping is marked at its first key's colon:
                    // point at the first key instead.
                    if entries.is_empty() && key_pos < *pos {
                        *pos = key_pos;
                    }
                    let name = match node {
                        Yaml::Scalar { text, .. } => Some(text),
                        Yaml::Invalid(_) => None,
                        Yaml::Seq { .. } | Yaml::Map { .. } => {
                            self.errors.push((
                                key_pos,
                                "a key must be a plain word, not a list or a mapping".to_owned(),
                            ));
                            None
                        }
                    };
                    *key = Some(Key { name, pos: key_pos });
                }
            }
        }
    }

    fn close(&mut self) {
        match self.stack.pop() {
            Some(Frame::Seq { items, pos }) => self.push(Yaml::Seq { items, pos }),
            Some(Frame::Map { entries, pos, .. }) => self.push(Yaml::Map { entries, pos }),
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::of(mark);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.errors.push((
                        pos,
                        "a second YAML document; the configuration must be a single document"
                            .to_owned(),
                    ));
                }
            }
            Event::Alias(_) => {
                self.errors.push((
                    pos,
                    "YAML aliases (*name) are not supported; write the value out in full"
                        .to_owned(),
                ));
                self.push(Yaml::Invalid(pos));
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.properties(pos, anchor, tag.as_ref());
                self.push(Yaml::Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                    pos,
                });
            }
            Event::SequenceStart(anchor, tag) => {
                self.properties(pos, anchor, tag.as_ref());
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.properties(pos, anchor, tag.as_ref());
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    pos,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Parses `text` into a tree; a syntax error is returned alone, other
/// problems are added to `ctx`.
pub(super) fn parse_yaml(text: &str, ctx: &mut Ctx) -> Result<Option<Yaml>, (Pos, String)> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err((
            Pos::of(*e.marker()),
            format!("YAML syntax error: {}", e.info()),
        ));
    }
    ctx.errors.append(&mut builder.errors);
    Ok(builder.root)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::ConfigErrors;

    #[test]
    fn syntax_errors_use_the_scanner_position() {
        let yaml = "node:\n  name: lb1\n interface: eth0\nservices: []\n";
        let e = errors(yaml);
        assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            (3, 11),
            "YAML syntax error: while parsing a block mapping, did not find expected key",
        );
        let e = errors("node:\n\tname: lb1\n");
        assert_at(&e[0], (2, 2), "YAML syntax error: tabs disallowed");
        let e = errors("node: [lb1\nservices: []\n");
        assert_at(&e[0], (2, 9), "YAML syntax error");
    }

    #[test]
    fn second_document_is_rejected() {
        let yaml = format!("{NODE}services: []\n---\nfoo: 1\n");
        assert_only(&yaml, (5, 1), "single document");
    }

    #[test]
    fn anchors_aliases_and_tags_are_rejected() {
        let yaml = "node: &n\n  name: lb1\n  interface: eth0\nservices: []\nother: *n\n";
        let e = errors(yaml);
        assert!(
            e.iter()
                .any(|e| e.message.contains("anchors (&name) are not supported")),
            "{e:?}"
        );
        assert_some(
            yaml,
            loc(yaml, "*n", 0),
            "aliases (*name) are not supported",
        );
        let yaml = "node:\n  name: !!str lb1\n  interface: eth0\nservices: []\n";
        assert_only(
            yaml,
            loc(yaml, "lb1", 0),
            "tags (tag:yaml.org,2002:str) are not supported",
        );
    }
}
