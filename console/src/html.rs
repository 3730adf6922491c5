//! HTML without a template engine: every value goes through [`escape`] (or [`mask_openids`]
//! then [`escape`]), markup is only ever written in this crate's source.

use std::fmt::Write;

/// Escapes text for an element's content or a double-quoted attribute.
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

/// Masks WeChat openids (28 characters of `[A-Za-z0-9_-]` starting with `o`, e.g. in an
/// anomaly's detail): a payer is personal data, support staff need at most its ends.
pub fn mask_openids(text: &str) -> String {
    let is_id_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() == 28 && word.starts_with('o') {
            let _ = write!(out, "{}…{}", &word[..4], &word[24..]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_id_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Fen as yuan for reading (`12345` → `123.45`); integers only, no float.
pub fn fen(amount: i64) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    format!("{sign}{}.{:02} ({amount} fen)", abs / 100, abs % 100)
}

/// A time as UTC, to the second.
pub fn time(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn opt_time(at: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.as_ref().map(time).unwrap_or_else(|| "—".into())
}

pub fn opt(text: &Option<String>) -> String {
    text.as_deref().map(escape).unwrap_or_else(|| "—".into())
}

/// Who is looking, for the page's header and its forms.
pub struct Viewer<'a> {
    pub user: &'a str,
    pub role: &'a str,
    pub csrf: &'a str,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{background:#1f3a5f;color:#fff;padding:.6em 1em;display:flex;gap:1.2em;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f0f3f7}.state{font-weight:bold}.warn{color:#a40000}.muted{color:#777}\
form.inline{display:inline}";

/// A whole page: header with navigation (and the logout form) when someone is logged in.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let nav = match viewer {
        Some(v) => format!(
            "<a href=\"/\">Overview</a><a href=\"/search\">Search</a>\
             <a href=\"/anomalies\">Anomalies</a><a href=\"/parked\">Parked</a>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             {} ({}) <button type=\"submit\">Log out</button></form>",
            escape(v.csrf),
            escape(v.user),
            escape(v.role)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} · wxpay console</title>\
         <style>{STYLE}</style></head><body><header><strong>wxpay console</strong>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        escape(title),
        escape(title)
    )
}

/// A table: `head` are column titles, each row's cells already escaped markup.
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!(
            "<p class=\"muted\" id=\"{}\">{}</p>",
            escape(id),
            escape(empty)
        );
    }
    let mut out = format!("<table id=\"{}\"><tr>", escape(id));
    for title in head {
        let _ = write!(out, "<th>{}</th>", escape(title));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn openids_are_masked_and_other_words_kept() {
        let detail =
            "payer oUpF8uMuAJO_M2pxb1Q9zNjWeS6o paid 100; order 1217752501201407033233368018";
        assert_eq!(
            mask_openids(detail),
            "payer oUpF…eS6o paid 100; order 1217752501201407033233368018"
        );
    }

    #[test]
    fn fen_reads_as_yuan_without_floats() {
        assert_eq!(fen(12345), "123.45 (12345 fen)");
        assert_eq!(fen(5), "0.05 (5 fen)");
        assert_eq!(fen(-250), "-2.50 (-250 fen)");
    }
}
