//! The flat XML documents of API v2: `<xml><key><![CDATA[value]]></key>…</xml>`.
//!
//! Every v2 message (支付结果通知, 退款结果通知 and the decrypted `req_info`) is one root
//! element holding a flat list of text-only fields. See the protocol rules in
//! <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=4_2> (数据格式: XML, UTF-8).
//!
//! The body comes from the Internet before its signature is checked, so the parser is
//! strict and bounded:
//! - the size is checked before any parsing ([`MAX_XML_BYTES`]), the field count while
//!   parsing ([`MAX_FIELDS`]);
//! - any `DOCTYPE` or `<!ENTITY` declaration is rejected ([`XmlError::Doctype`]): no entity
//!   expansion, hence no XXE and no billion-laughs;
//! - only the five predefined entities and character references are resolved, any other
//!   entity reference is [`XmlError::Malformed`];
//! - a field that is repeated ([`XmlError::DuplicateField`]) or holds an element
//!   ([`XmlError::NestedElement`]) is rejected instead of guessing which value was signed.
//!
//! Values are kept exactly as sent (CDATA and text concatenated, nothing trimmed, no
//! end-of-line normalisation) because the signature covers the exact value.

use std::borrow::Cow;

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

/// Largest body accepted, checked before parsing. Real notifications are about 1 KiB.
pub const MAX_XML_BYTES: usize = 256 * 1024;

/// Largest number of fields accepted in one document. Real notifications have fewer than 40.
pub const MAX_FIELDS: usize = 256;

/// Root element of the v2 notification bodies.
const XML_ROOT: &str = "xml";

/// The fields of a flat v2 XML document, in document order, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmlFields {
    fields: Vec<(String, String)>,
}

/// Why a v2 XML document (or one of its fields) was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// The body is larger than the limit; checked before parsing.
    #[error("XML body larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// A `DOCTYPE` or `<!ENTITY` declaration: never legitimate in WeChat Pay bodies and
    /// the vector of XXE and entity-expansion attacks.
    #[error("DOCTYPE or ENTITY declarations are not allowed")]
    Doctype,
    /// Not well-formed XML (or not UTF-8, or an undeclared entity reference).
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The root element is not the expected one (`xml`, or `root` for `req_info`).
    #[error("unexpected root element <{found}>, expected <{expected}>")]
    WrongRoot {
        /// The root element expected.
        expected: String,
        /// The root element found.
        found: String,
    },
    /// A field holds an element: v2 documents are flat.
    #[error("field <{0}> contains an element")]
    NestedElement(String),
    /// The same field appears twice: which one was signed would be ambiguous.
    #[error("field <{0}> appears more than once")]
    DuplicateField(String),
    /// More fields than [`MAX_FIELDS`].
    #[error("more than {limit} fields")]
    TooManyFields {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A required field is absent or empty.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field is present but its value is not acceptable.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// Why the value is not acceptable (never the value itself when it may be secret).
        reason: String,
    },
    /// The body holds no element at all (empty, whitespace or comments only).
    #[error("empty XML body")]
    Empty,
}

/// Where the parser is in the document.
enum State {
    /// Nothing but the prolog seen yet.
    BeforeRoot,
    /// Inside the root element, between fields.
    InRoot,
    /// Inside a field: its name and the value read so far.
    InField { name: String, value: String },
    /// The root element is closed: only whitespace, comments and PIs may follow.
    AfterRoot,
}

impl XmlFields {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a v2 notification body, whose root must be `<xml>`.
    pub fn parse(body: &[u8]) -> Result<Self, XmlError> {
        Self::parse_with_root(body, XML_ROOT)
    }

    /// Parses a flat document whose root element must be `root` (the decrypted refund
    /// `req_info` is `<root>…</root>`).
    pub fn parse_with_root(body: &[u8], root: &str) -> Result<Self, XmlError> {
        if body.len() > MAX_XML_BYTES {
            return Err(XmlError::TooLarge {
                limit: MAX_XML_BYTES,
            });
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| XmlError::Malformed(format!("not UTF-8: {e}")))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);

        let mut reader = Reader::from_str(text);
        let mut fields = Self {
            fields: Vec::with_capacity(32),
        };
        let mut state = State::BeforeRoot;
        let mut first_event = true;

        loop {
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(err) => {
                    let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                    if starts_with_entity_decl(text, at) {
                        return Err(XmlError::Doctype);
                    }
                    // quick-xml's message may quote the input: keep it short for the logs.
                    let message = err.to_string();
                    return Err(XmlError::Malformed(format!(
                        "{} at byte {at}",
                        truncate(&message, 120)
                    )));
                }
            };
            let at_start = std::mem::replace(&mut first_event, false);
            match event {
                Event::DocType(_) => return Err(XmlError::Doctype),
                // The `<?xml …?>` declaration carries no data, but may only come first.
                Event::Decl(_) if at_start => {}
                Event::Decl(_) => {
                    return Err(XmlError::Malformed(
                        "XML declaration not at the start".to_owned(),
                    ))
                }
                // Other processing instructions and comments carry no data.
                Event::PI(_) | Event::Comment(_) => {}
                Event::Start(start) => {
                    let name = element_name(&start)?;
                    state = match state {
                        State::BeforeRoot => enter_root(name, root)?,
                        State::InRoot => {
                            fields.check_new_field(name)?;
                            State::InField {
                                name: name.to_owned(),
                                value: String::new(),
                            }
                        }
                        State::InField { name: field, .. } => {
                            return Err(XmlError::NestedElement(field))
                        }
                        State::AfterRoot => return Err(trailing_content()),
                    };
                }
                Event::Empty(start) => {
                    let name = element_name(&start)?;
                    state = match state {
                        State::BeforeRoot => {
                            enter_root(name, root)?;
                            State::AfterRoot
                        }
                        State::InRoot => {
                            fields.check_new_field(name)?;
                            fields.fields.push((name.to_owned(), String::new()));
                            State::InRoot
                        }
                        State::InField { name: field, .. } => {
                            return Err(XmlError::NestedElement(field))
                        }
                        State::AfterRoot => return Err(trailing_content()),
                    };
                }
                Event::End(_) => {
                    // quick-xml checks that end names match their start tags.
                    state = match state {
                        State::InField { name, value } => {
                            fields.fields.push((name, value));
                            State::InRoot
                        }
                        State::InRoot => State::AfterRoot,
                        State::BeforeRoot | State::AfterRoot => {
                            return Err(XmlError::Malformed("unexpected end tag".to_owned()))
                        }
                    };
                }
                Event::Text(t) => match &mut state {
                    State::InField { value, .. } => value.push_str(&t),
                    _ if is_xml_whitespace(&t) => {}
                    State::AfterRoot => return Err(trailing_content()),
                    _ => return Err(XmlError::Malformed("text outside of a field".to_owned())),
                },
                Event::CData(c) => match &mut state {
                    State::InField { value, .. } => value.push_str(&c),
                    State::AfterRoot => return Err(trailing_content()),
                    _ => return Err(XmlError::Malformed("CDATA outside of a field".to_owned())),
                },
                Event::GeneralRef(r) => match &mut state {
                    State::InField { value, .. } => value.push_str(&resolve_reference(&r)?),
                    State::AfterRoot => return Err(trailing_content()),
                    _ => {
                        return Err(XmlError::Malformed(
                            "entity reference outside of a field".to_owned(),
                        ))
                    }
                },
                Event::Eof => {
                    return match state {
                        State::AfterRoot => Ok(fields),
                        State::BeforeRoot => Err(XmlError::Empty),
                        State::InRoot | State::InField { .. } => {
                            Err(XmlError::Malformed("unclosed element".to_owned()))
                        }
                    };
                }
            }
        }
    }

    /// The value of `key`, if present (possibly empty).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`; absent or empty is [`XmlError::MissingField`] (WeChat Pay and
    /// its signing rule treat an empty value as an absent one).
    pub fn require(&self, key: &'static str) -> Result<&str, XmlError> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(XmlError::MissingField(key)),
        }
    }

    /// The fields in document (or insertion) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets `key` to `value`: replaces the value in place if present, else appends.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// Sets `key` to `value` when there is one: an absent optional field stays absent.
    pub fn insert_some(&mut self, key: impl Into<String>, value: Option<impl Into<String>>) {
        if let Some(value) = value {
            self.insert(key, value);
        }
    }

    /// Removes `key` and returns its value, keeping the order of the other fields.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let index = self.fields.iter().position(|(k, _)| k == key)?;
        Some(self.fields.remove(index).1)
    }

    /// Serialises as `<xml><k><![CDATA[v]]></k>…</xml>`, the form WeChat Pay sends.
    ///
    /// Keys are written as element names: they must be XML names (WeChat Pay's are
    /// `[a-z_]+`); values may be anything.
    pub fn to_xml(&self) -> String {
        self.to_xml_with_root(XML_ROOT)
    }

    /// Serialises under the element `root`, every value in CDATA. A value containing
    /// `]]>` is split across two CDATA sections (`]]` | `>`) so the document stays
    /// well-formed and parses back to the same value.
    pub fn to_xml_with_root(&self, root: &str) -> String {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| 2 * k.len() + v.len() + 17)
            .sum::<usize>()
            + 2 * root.len()
            + 5;
        let mut out = String::with_capacity(size);
        out.push('<');
        out.push_str(root);
        out.push('>');
        for (k, v) in &self.fields {
            out.push('<');
            out.push_str(k);
            out.push_str("><![CDATA[");
            push_cdata_content(&mut out, v);
            out.push_str("]]></");
            out.push_str(k);
            out.push('>');
        }
        out.push_str("</");
        out.push_str(root);
        out.push('>');
        out
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Rejects a field that would be a duplicate or one too many.
    fn check_new_field(&self, name: &str) -> Result<(), XmlError> {
        if self.fields.iter().any(|(k, _)| k == name) {
            return Err(XmlError::DuplicateField(name.to_owned()));
        }
        if self.fields.len() >= MAX_FIELDS {
            return Err(XmlError::TooManyFields { limit: MAX_FIELDS });
        }
        Ok(())
    }
}

/// Collects with [`XmlFields::insert`] semantics: a later duplicate key replaces the
/// earlier value in place.
impl FromIterator<(String, String)> for XmlFields {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut fields = Self::new();
        for (k, v) in iter {
            fields.insert(k, v);
        }
        fields
    }
}

/// Same as the owned version, for literals in tests and the simulator.
impl<'a> FromIterator<(&'a str, &'a str)> for XmlFields {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        iter.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The element's name, once the name is a valid XML name and the attributes (which carry
/// no data in v2 and are ignored) are well-formed.
fn element_name<'a>(start: &'a BytesStart<'_>) -> Result<&'a str, XmlError> {
    let name = start.name().into_inner();
    if !is_xml_name(name) {
        return Err(XmlError::Malformed(format!(
            "invalid element name {:?}",
            truncate(name, 32)
        )));
    }
    for attribute in start.attributes() {
        attribute.map_err(|e| XmlError::Malformed(format!("bad attribute: {e}")))?;
    }
    Ok(name)
}

/// The `Name` production of XML 1.0 (fifth edition), §2.3.
fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start_char) && chars.all(|c| {
        is_name_start_char(c)
            || c.is_ascii_digit()
            || matches!(c, '-' | '.' | '\u{b7}' | '\u{300}'..='\u{36f}' | '\u{203f}'..='\u{2040}')
    })
}

fn is_name_start_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '_' | ':'
        | '\u{c0}'..='\u{d6}' | '\u{d8}'..='\u{f6}' | '\u{f8}'..='\u{2ff}'
        | '\u{370}'..='\u{37d}' | '\u{37f}'..='\u{1fff}' | '\u{200c}'..='\u{200d}'
        | '\u{2070}'..='\u{218f}' | '\u{2c00}'..='\u{2fef}' | '\u{3001}'..='\u{d7ff}'
        | '\u{f900}'..='\u{fdcf}' | '\u{fdf0}'..='\u{fffd}' | '\u{10000}'..='\u{effff}')
}

fn enter_root(name: &str, expected: &str) -> Result<State, XmlError> {
    if name == expected {
        Ok(State::InRoot)
    } else {
        Err(XmlError::WrongRoot {
            expected: expected.to_owned(),
            found: name.to_owned(),
        })
    }
}

/// Appends `value` as CDATA content: each `]]>` is split as `]]` | `>` across two
/// sections, the only way to carry it in CDATA.
fn push_cdata_content(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(i) = rest.find("]]>") {
        out.push_str(&rest[..i]);
        out.push_str("]]]]><![CDATA[>");
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
}

fn trailing_content() -> XmlError {
    XmlError::Malformed("content after the root element".to_owned())
}

/// XML whitespace (S production): space, tab, CR, LF.
fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Whether the parse error at byte `at` is an `<!ENTITY` declaration outside a DOCTYPE,
/// so it is reported as [`XmlError::Doctype`] like one inside.
fn starts_with_entity_decl(text: &str, at: usize) -> bool {
    // quick-xml may report the position of the `<` or just after it.
    [at, at.saturating_sub(1), at.saturating_sub(2)]
        .into_iter()
        .filter_map(|pos| text.as_bytes().get(pos..pos.saturating_add(8)))
        .any(|bytes| bytes.eq_ignore_ascii_case(b"<!ENTITY"))
}

/// Resolves a reference: the five predefined entities and character references only.
/// Anything else would need a DTD, which is never accepted.
fn resolve_reference(r: &BytesRef<'_>) -> Result<Cow<'static, str>, XmlError> {
    let name: &str = r;
    let predefined = match name {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => {
            return match r.resolve_char_ref() {
                Ok(Some(ch)) => Ok(Cow::Owned(ch.to_string())),
                Ok(None) => Err(XmlError::Malformed(format!(
                    "undeclared entity reference &{};",
                    truncate(name, 32)
                ))),
                Err(e) => Err(XmlError::Malformed(format!("bad character reference: {e}"))),
            };
        }
    };
    Ok(Cow::Borrowed(predefined))
}

/// At most `max` bytes of `s`, cut on a char boundary, for error messages.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cdata_text_and_references() {
        let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xml>\n  <a><![CDATA[x]]>y&amp;&#x4e2d;</a>\n  <b>1 &lt; 2</b><c/><d></d>\n</xml>\n";
        let fields = XmlFields::parse(body).expect("valid");
        let got: Vec<_> = fields.iter().collect();
        assert_eq!(
            got,
            vec![("a", "xy&中"), ("b", "1 < 2"), ("c", ""), ("d", "")]
        );
    }

    #[test]
    fn keeps_whitespace_inside_values() {
        let fields =
            XmlFields::parse(b"<xml><a> v\r\n </a><b><![CDATA[ w ]]></b></xml>").expect("valid");
        assert_eq!(fields.get("a"), Some(" v\r\n "));
        assert_eq!(fields.get("b"), Some(" w "));
    }

    #[test]
    fn insert_replaces_in_place_and_remove_keeps_order() {
        let mut f: XmlFields = [("a", "1"), ("b", "2"), ("c", "3")].into_iter().collect();
        f.insert("a", "9");
        f.insert("d", "4");
        assert_eq!(f.remove("b").as_deref(), Some("2"));
        assert_eq!(f.remove("zz"), None);
        let got: Vec<_> = f.iter().collect();
        assert_eq!(got, vec![("a", "9"), ("c", "3"), ("d", "4")]);
        assert_eq!(f.len(), 3);
        assert!(!f.is_empty());
    }

    #[test]
    fn require_treats_empty_as_missing() {
        let f = XmlFields::parse(b"<xml><a></a><b>x</b></xml>").expect("valid");
        assert_eq!(f.require("a"), Err(XmlError::MissingField("a")));
        assert_eq!(f.require("z"), Err(XmlError::MissingField("z")));
        assert_eq!(f.require("b"), Ok("x"));
    }

    #[test]
    fn cdata_terminator_is_split() {
        let f: XmlFields = [("a", "x]]>y]]>")].into_iter().collect();
        let xml = f.to_xml();
        assert_eq!(
            xml,
            "<xml><a><![CDATA[x]]]]><![CDATA[>y]]]]><![CDATA[>]]></a></xml>"
        );
        assert_eq!(XmlFields::parse(xml.as_bytes()), Ok(f));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("中文", 4), "中");
        assert_eq!(truncate("ab", 4), "ab");
    }
}
