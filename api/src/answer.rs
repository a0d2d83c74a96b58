//! Answering questions from the knowledge base.
//!
//! The built-in answerer retrieves the best-matching documents (any of the
//! question's words, ranked) and answers with their snippets, each cited. The
//! OpenAI-compatible path sends the same retrieved snippets as context and
//! streams the model's answer; [`SseParser`] reads its event stream.

use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Result;
use crate::knowledge::{self, Hit, MARK_END, MARK_START};
use crate::state::AppState;

/// Words too common to help retrieval.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "in", "is", "it", "me", "my", "of", "on", "or", "our", "the", "this", "to", "was", "we",
    "what", "when", "where", "which", "who", "why", "with", "you", "your",
];

/// A cited source.
#[derive(Debug, Clone, Serialize, ToSchema, serde::Deserialize, PartialEq)]
pub struct Citation {
    /// Citation number as used in the answer (`[1]`).
    pub index: usize,
    /// Document id.
    pub document_id: String,
    /// Document name.
    pub name: String,
    /// The file it came from.
    pub file_id: Option<String>,
    /// The passage relied on (plain text).
    pub snippet: String,
}

/// An answer with its sources.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer text.
    pub text: String,
    /// Its sources.
    pub citations: Vec<Citation>,
}

/// Strips highlight markers.
pub fn plain(snippet: &str) -> String {
    snippet.replace(MARK_START, "").replace(MARK_END, "")
}

/// The retrieval terms of a question.
pub fn question_terms(question: &str) -> Vec<String> {
    let all = knowledge::terms(question);
    let useful: Vec<String> = all
        .iter()
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
        .cloned()
        .collect();
    if useful.is_empty() { all } else { useful }
}

/// Retrieves the documents to cite.
pub async fn retrieve(
    state: &AppState,
    product: &str,
    question: &str,
    limit: u32,
) -> Result<Vec<Citation>> {
    let hits =
        knowledge::search_terms(state, product, &question_terms(question), true, limit).await?;
    Ok(cite(hits))
}

fn cite(hits: Vec<Hit>) -> Vec<Citation> {
    hits.into_iter()
        .enumerate()
        .map(|(i, h)| Citation {
            index: i + 1,
            document_id: h.document_id,
            name: h.name,
            file_id: h.file_id,
            snippet: plain(&h.snippet),
        })
        .collect()
}

/// Composes the built-in answer from citations. Pure.
pub fn compose(question: &str, citations: &[Citation]) -> String {
    if citations.is_empty() {
        return format!(
            "I found nothing in the knowledge base about \"{}\". Upload documents that cover \
             it to /api/knowledge-base/storage and ask again.",
            question.trim()
        );
    }
    let mut text = String::from("From the knowledge base:\n");
    for c in citations {
        text.push_str(&format!("\n[{}] {}: {}", c.index, c.name, c.snippet.trim()));
    }
    text
}

/// The built-in answer to a question.
pub async fn builtin(
    state: &AppState,
    product: &str,
    question: &str,
    limit: u32,
) -> Result<Answer> {
    let citations = retrieve(state, product, question, limit).await?;
    Ok(Answer {
        text: compose(question, &citations),
        citations,
    })
}

/// The system prompt for a model, with the retrieved context.
pub fn system_prompt(citations: &[Citation]) -> String {
    let mut p = String::from(
        "You are the product's assistant. Answer from the numbered context when it is \
         relevant and cite it as [n]. If the context does not cover the question, say so.\n",
    );
    for c in citations {
        p.push_str(&format!("\n[{}] {}: {}", c.index, c.name, c.snippet));
    }
    p
}

/// Splits text into streaming pieces (words with their following space).
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if ch.is_whitespace() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field (empty when absent).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser of a `text/event-stream` body.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    out.push(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_are_reassembled() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"a\":").is_empty());
        let ev = p.feed(b"1}\r\n\r\n: comment\nevent: x\ndata: l1\ndata: l2\n\n");
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: String::new(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "x".into(),
                    data: "l1\nl2".into()
                }
            ]
        );
    }

    #[test]
    fn the_builtin_answer_cites_or_says_it_knows_nothing() {
        let c = vec![Citation {
            index: 1,
            document_id: "doc_1".into(),
            name: "runbook.md".into(),
            file_id: None,
            snippet: "restart the <mark>pod</mark>".into(),
        }];
        let a = compose("how to restart?", &c);
        assert!(a.contains("[1] runbook.md: restart the"), "{a}");
        assert!(compose("x", &[]).contains("nothing"));
        assert_eq!(pieces("a b  c").concat(), "a b  c");
        assert_eq!(
            question_terms("What is the rollback plan?"),
            vec!["rollback", "plan"]
        );
        assert_eq!(plain("a <mark>b</mark>"), "a b");
    }
}
