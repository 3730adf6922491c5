//! What the v2 XML parser accepts and, above all, what it rejects.

use wxpay_shared::v2::xml::{MAX_FIELDS, MAX_XML_BYTES};
use wxpay_shared::v2::{XmlError, XmlFields};

fn parse(s: &str) -> Result<XmlFields, XmlError> {
    XmlFields::parse(s.as_bytes())
}

fn is_malformed(r: Result<XmlFields, XmlError>) -> bool {
    matches!(r, Err(XmlError::Malformed(_)))
}

#[test]
fn accepts_prolog_comments_and_formatting() {
    let f = parse(
        "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- hi -->\n<xml>\n\t<a>1</a>\r\n  <!-- c --><b><![CDATA[2]]></b>\n</xml>\n<!-- bye -->\n",
    )
    .expect("valid");
    assert_eq!(f.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
}

#[test]
fn ignores_well_formed_attributes_and_processing_instructions() {
    let f = parse("<xml lang=\"zh\"><a x='1'>1<?pi data?>2</a><?pi?></xml>").expect("valid");
    assert_eq!(f.get("a"), Some("12"));
}

#[test]
fn concatenates_text_and_cdata_in_a_field() {
    let f = parse("<xml><a>x<![CDATA[<y>]]>&#49;<![CDATA[]]>z</a></xml>").expect("valid");
    assert_eq!(f.get("a"), Some("x<y>1z"));
}

#[test]
fn empty_root_and_empty_fields_are_fine() {
    assert_eq!(parse("<xml/>"), Ok(XmlFields::new()));
    assert_eq!(parse("<xml></xml>"), Ok(XmlFields::new()));
    let f = parse("<xml><a/><b></b><c><![CDATA[]]></c></xml>").expect("valid");
    assert_eq!(f.len(), 3);
    assert!(f.iter().all(|(_, v)| v.is_empty()));
}

#[test]
fn rejects_doctype() {
    assert_eq!(
        parse("<!DOCTYPE xml><xml><a>1</a></xml>"),
        Err(XmlError::Doctype)
    );
    assert_eq!(
        parse("<?xml version=\"1.0\"?>\n<!DOCTYPE xml SYSTEM \"http://evil/x.dtd\"><xml/>"),
        Err(XmlError::Doctype)
    );
}

#[test]
fn rejects_xxe_and_billion_laughs() {
    let xxe = r#"<?xml version="1.0"?>
<!DOCTYPE xml [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<xml><attach>&xxe;</attach></xml>"#;
    assert_eq!(parse(xxe), Err(XmlError::Doctype));

    let mut laughs =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        laughs.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    laughs.push_str("]>\n<xml><a>&lol9;</a></xml>");
    assert_eq!(parse(&laughs), Err(XmlError::Doctype));
}

#[test]
fn rejects_entity_declaration_outside_doctype() {
    assert_eq!(
        parse("<!ENTITY x \"y\"><xml><a>&x;</a></xml>"),
        Err(XmlError::Doctype)
    );
    assert_eq!(
        parse("<xml><!ENTITY x \"y\"><a>1</a></xml>"),
        Err(XmlError::Doctype)
    );
}

#[test]
fn the_string_entity_inside_cdata_is_just_data() {
    let f = parse("<xml><attach><![CDATA[<!ENTITY x \"y\"><!DOCTYPE z>]]></attach></xml>")
        .expect("CDATA is data");
    assert_eq!(f.get("attach"), Some("<!ENTITY x \"y\"><!DOCTYPE z>"));
}

#[test]
fn rejects_custom_entity_references() {
    assert!(is_malformed(parse("<xml><a>&xxe;</a></xml>")));
    assert!(is_malformed(parse("<xml><a>&nbsp;</a></xml>")));
    assert!(is_malformed(parse("<xml><a>&#0;</a></xml>")));
    assert!(is_malformed(parse("<xml><a>a & b</a></xml>")));
    assert!(is_malformed(parse("<xml>&amp;<a>1</a></xml>")));
}

#[test]
fn rejects_malformed_documents() {
    for bad in [
        "<xml><a>1</a>",
        "<xml><a>1</xml>",
        "<xml><a>1</b></xml>",
        "<xml><a>1</a></xml></xml>",
        "<xml><a>1</a></xml><xml/>",
        "<xml><a>1</a></xml>trailing",
        "<xml><a>1</a></xml><![CDATA[x]]>",
        "<xml>loose text<a>1</a></xml>",
        "<xml><![CDATA[x]]><a>1</a></xml>",
        "text<xml/>",
        "</xml>",
        "<xml><a><![CDATA[1]></a></xml>",
        "<xml><a",
        "<<<>>>",
        "<xml><a b=></a></xml>",
        "<xml><a b></a></xml>",
        "<xml><1a>x</1a></xml>",
        "<xml><a>1</a></xml><?xml version=\"1.0\"?>",
        "<xml><?xml version=\"1.0\"?><a>1</a></xml>",
    ] {
        assert!(is_malformed(parse(bad)), "accepted: {bad}");
    }
    assert!(is_malformed(XmlFields::parse(
        b"<xml><a>\xff\xfe</a></xml>"
    )));
}

#[test]
fn rejects_wrong_root() {
    assert_eq!(
        parse("<root><a>1</a></root>"),
        Err(XmlError::WrongRoot {
            expected: "xml".to_owned(),
            found: "root".to_owned()
        })
    );
    assert_eq!(
        XmlFields::parse_with_root(b"<xml><a>1</a></xml>", "root"),
        Err(XmlError::WrongRoot {
            expected: "root".to_owned(),
            found: "xml".to_owned()
        })
    );
    assert!(matches!(
        parse("<XML></XML>"),
        Err(XmlError::WrongRoot { .. })
    ));
    assert_eq!(
        XmlFields::parse_with_root(b"<root><a>1</a></root>", "root")
            .map(|f| f.get("a").map(str::to_owned)),
        Ok(Some("1".to_owned()))
    );
}

#[test]
fn rejects_nested_elements() {
    for body in ["<xml><a><b>1</b></a></xml>", "<xml><a>1<b/></a></xml>"] {
        let nested = Err(XmlError::NestedElement("a".to_owned()));
        assert_eq!(parse(body), nested, "{body}");
    }
}

#[test]
fn rejects_duplicate_fields() {
    for (body, field) in [
        (
            "<xml><total_fee>1</total_fee><total_fee>100</total_fee></xml>",
            "total_fee",
        ),
        ("<xml><a/><a>1</a></xml>", "a"),
    ] {
        let duplicate = Err(XmlError::DuplicateField(field.to_owned()));
        assert_eq!(parse(body), duplicate, "{body}");
    }
}

fn many_fields(n: usize) -> String {
    let mut s = String::from("<xml>");
    for i in 0..n {
        s.push_str(&format!("<f{i}>{i}</f{i}>"));
    }
    s.push_str("</xml>");
    s
}

#[test]
fn field_count_is_bounded() {
    assert_eq!(
        parse(&many_fields(MAX_FIELDS)).map(|f| f.len()),
        Ok(MAX_FIELDS)
    );
    assert_eq!(
        parse(&many_fields(MAX_FIELDS + 1)),
        Err(XmlError::TooManyFields { limit: MAX_FIELDS })
    );
}

#[test]
fn size_is_bounded_before_parsing() {
    let prefix = "<xml><a>";
    let suffix = "</a></xml>";
    let fill = MAX_XML_BYTES - prefix.len() - suffix.len();
    let at_limit = format!("{prefix}{}{suffix}", "x".repeat(fill));
    assert_eq!(at_limit.len(), MAX_XML_BYTES);
    assert_eq!(
        parse(&at_limit).map(|f| f.get("a").map(str::len)),
        Ok(Some(fill))
    );
    let over = format!("{prefix}{}{suffix}", "x".repeat(fill + 1));
    assert_eq!(
        parse(&over),
        Err(XmlError::TooLarge {
            limit: MAX_XML_BYTES
        })
    );
    // Checked before parsing: even garbage reports TooLarge.
    assert_eq!(
        XmlFields::parse(&vec![b'<'; MAX_XML_BYTES + 1]),
        Err(XmlError::TooLarge {
            limit: MAX_XML_BYTES
        })
    );
}

#[test]
fn rejects_empty_bodies() {
    for empty in ["", "   \n\t", "<?xml version=\"1.0\"?>", "<!-- nothing -->"] {
        assert_eq!(parse(empty), Err(XmlError::Empty), "{empty:?}");
    }
}

#[test]
fn serialises_in_order_with_cdata() {
    let mut f = XmlFields::new();
    f.insert("return_code", "SUCCESS");
    f.insert("return_msg", "OK");
    assert_eq!(
        f.to_xml(),
        "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    );
    assert_eq!(
        f.to_xml_with_root("root"),
        "<root><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></root>"
    );
}
