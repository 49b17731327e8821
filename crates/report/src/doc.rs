//! A small document model rendered both to Markdown and to a self-contained HTML page, so
//! that `report.md` and `report.html` always say the same thing.
//!
//! Text may contain `` `code` `` spans; everything else is plain text and is escaped.

use base64::Engine;

/// One block of the report.
#[derive(Debug, Clone)]
pub enum Block {
    /// A heading; level 1 is the title.
    Heading(u8, String),
    /// A paragraph.
    Paragraph(String),
    /// A bulleted list.
    List(Vec<String>),
    /// A table with a header row.
    Table {
        /// Column titles.
        header: Vec<String>,
        /// Rows, each as long as `header`.
        rows: Vec<Vec<String>>,
    },
    /// A plot: linked files for Markdown, an embedded PNG for HTML.
    Image {
        /// Alternative text / caption.
        alt: String,
        /// PNG path relative to the report.
        png: String,
        /// SVG path relative to the report.
        svg: String,
        /// The PNG's bytes, embedded in the HTML.
        png_bytes: Vec<u8>,
    },
    /// A collapsible block of verbatim text (a config file).
    Code {
        /// The summary line of the collapsible block.
        summary: String,
        /// Language tag of the fence ("toml").
        lang: String,
        /// The verbatim text.
        text: String,
        /// Relative link to the file, in Markdown only.
        link: Option<String>,
    },
}

/// Splits text into (is_code, piece) runs at backticks. An unmatched backtick is plain text.
fn spans(text: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(len) = after.find('`') else {
            break;
        };
        if start > 0 {
            out.push((false, rest[..start].to_string()));
        }
        out.push((true, after[..len].to_string()));
        rest = &after[len + 1..];
    }
    if !rest.is_empty() {
        out.push((false, rest.to_string()));
    }
    out
}

fn md_escape(text: &str, in_table: bool) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '*' | '\\' | '[' | ']' => {
                s.push('\\');
                s.push(c);
            }
            '|' if in_table => s.push_str("\\|"),
            '\n' if in_table => s.push(' '),
            _ => s.push(c),
        }
    }
    s
}

fn md_inline(text: &str, in_table: bool) -> String {
    spans(text)
        .into_iter()
        .map(|(code, piece)| {
            if code {
                let piece = if in_table {
                    piece.replace('|', "\\|")
                } else {
                    piece
                };
                format!("`{piece}`")
            } else {
                md_escape(&piece, in_table)
            }
        })
        .collect()
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            _ => s.push(c),
        }
    }
    s
}

fn html_inline(text: &str) -> String {
    spans(text)
        .into_iter()
        .map(|(code, piece)| {
            if code {
                format!("<code>{}</code>", html_escape(&piece))
            } else {
                html_escape(&piece)
            }
        })
        .collect()
}

/// A code fence longer than any run of backticks in `text`.
fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// Renders the blocks as GitHub-flavoured Markdown.
pub fn to_markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                out.push_str(&"#".repeat((*level).clamp(1, 6) as usize));
                out.push(' ');
                out.push_str(&md_inline(text, false));
                out.push_str("\n\n");
            }
            Block::Paragraph(text) => {
                out.push_str(&md_inline(text, false));
                out.push_str("\n\n");
            }
            Block::List(items) => {
                for item in items {
                    out.push_str("- ");
                    out.push_str(&md_inline(item, false));
                    out.push('\n');
                }
                out.push('\n');
            }
            Block::Table { header, rows } => {
                let row = |cells: &[String]| {
                    let cells: Vec<String> = cells.iter().map(|c| md_inline(c, true)).collect();
                    format!("| {} |\n", cells.join(" | "))
                };
                out.push_str(&row(header));
                out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
                for r in rows {
                    out.push_str(&row(r));
                }
                out.push('\n');
            }
            Block::Image { alt, png, svg, .. } => {
                out.push_str(&format!(
                    "![{}]({png})\n\n{} ([PNG]({png}), [SVG]({svg}))\n\n",
                    md_escape(alt, false),
                    md_escape(alt, false)
                ));
            }
            Block::Code {
                summary,
                lang,
                text,
                link,
            } => {
                let fence = fence_for(text);
                out.push_str(&format!(
                    "<details><summary>{}</summary>\n\n",
                    html_escape(summary)
                ));
                if let Some(link) = link {
                    out.push_str(&format!("File: [{link}]({link})\n\n"));
                }
                out.push_str(&format!("{fence}{lang}\n{}", text));
                if !text.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&format!("{fence}\n\n</details>\n\n"));
            }
        }
    }
    out
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;\
color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid \
#ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid \
#ddd}figure{margin:1em 0}figcaption{color:#555;font-size:90%}pre{background:#f6f6f6;padding:\
0.8em;overflow-x:auto}code{background:#f3f3f3;padding:0 3px}details{margin:0.6em 0}";

/// Renders the blocks as one self-contained HTML page (plots embedded as base64 PNG; no
/// external file, font, script or style sheet).
pub fn to_html(title: &str, blocks: &[Block]) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!("<title>{}</title>\n", html_escape(title)));
    out.push_str(&format!("<style>{CSS}</style>\n</head>\n<body>\n"));
    let b64 = base64::engine::general_purpose::STANDARD;
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let l = (*level).clamp(1, 6);
                out.push_str(&format!("<h{l}>{}</h{l}>\n", html_inline(text)));
            }
            Block::Paragraph(text) => {
                out.push_str(&format!("<p>{}</p>\n", html_inline(text)));
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    out.push_str(&format!("<li>{}</li>\n", html_inline(item)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table { header, rows } => {
                out.push_str("<table>\n<thead><tr>");
                for h in header {
                    out.push_str(&format!("<th>{}</th>", html_inline(h)));
                }
                out.push_str("</tr></thead>\n<tbody>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        out.push_str(&format!("<td>{}</td>", html_inline(c)));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
            Block::Image { alt, png_bytes, .. } => {
                out.push_str(&format!(
                    "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>\n",
                    html_escape(alt),
                    b64.encode(png_bytes),
                    html_escape(alt)
                ));
            }
            Block::Code { summary, text, .. } => {
                out.push_str(&format!(
                    "<details><summary>{}</summary>\n<pre><code>{}</code></pre>\n</details>\n",
                    html_escape(summary),
                    html_escape(text)
                ));
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_and_escaping() {
        assert_eq!(
            spans("a `b` c"),
            vec![
                (false, "a ".to_string()),
                (true, "b".to_string()),
                (false, " c".to_string())
            ]
        );
        assert_eq!(spans("odd ` tick"), vec![(false, "odd ` tick".to_string())]);
        assert_eq!(html_inline("x<y `a&b`"), "x&lt;y <code>a&amp;b</code>");
        assert_eq!(md_inline("a|b <i>", true), "a\\|b &lt;i&gt;");
    }

    #[test]
    fn fence_outgrows_backticks_in_text() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("x = \"````\""), "`````");
    }

    #[test]
    fn both_renderings_carry_every_block() {
        let blocks = vec![
            Block::Heading(1, "Title".into()),
            Block::Heading(2, "Section".into()),
            Block::Paragraph("Text with `code`.".into()),
            Block::List(vec!["one".into(), "two".into()]),
            Block::Table {
                header: vec!["a".into(), "b".into()],
                rows: vec![vec!["1".into(), "2".into()]],
            },
            Block::Image {
                alt: "plot".into(),
                png: "plots/p.png".into(),
                svg: "plots/p.svg".into(),
                png_bytes: vec![0x89, b'P', b'N', b'G'],
            },
            Block::Code {
                summary: "config".into(),
                lang: "toml".into(),
                text: "a = 1".into(),
                link: Some("config.toml".into()),
            },
        ];
        let md = to_markdown(&blocks);
        assert!(md.starts_with("# Title\n\n## Section\n\nText with `code`.\n\n- one\n- two\n"));
        assert!(md.contains("| a | b |\n|---|---|\n| 1 | 2 |\n"));
        assert!(md.contains("![plot](plots/p.png)"));
        assert!(md.contains("```toml\na = 1\n```"));
        let html = to_html("T", &blocks);
        assert!(html.contains("<h2>Section</h2>"));
        assert!(html.contains("src=\"data:image/png;base64,iVBORw==\""));
        assert!(!html.contains("plots/p.png"));
        assert!(html.contains("<pre><code>a = 1</code></pre>"));
    }
}
