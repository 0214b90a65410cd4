//! `xenchan domain set --file F` without a domain name: many configurations in one file,
//! sent with the bulk PUT (`PUT /v1/domains`), each answered on its own.

use std::io::Write;

use serde_json::Value;
use xenchan_api::types::{BulkItemResult, BulkOutcome};

/// Items per request unless `--batch` says otherwise: the broker's default
/// `limits.max_bulk`.
pub const DEFAULT_BATCH: u64 = 1000;

/// The items of a bulk file: a JSON array of `{"name", "uuid", "config"}` items, or such
/// items one after the other (one per document: JSON Lines, or objects separated by
/// whitespace), or several arrays. Each item is checked by the broker, on its own; here
/// only the file's JSON must be readable. The error names where it is not.
pub fn read_items(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    for (n, doc) in stream.enumerate() {
        match doc.map_err(|e| format!("document {} of the file is not JSON: {e}", n + 1))? {
            Value::Array(a) => items.extend(a),
            v @ Value::Object(_) => items.push(v),
            other => {
                return Err(format!(
                    "document {} of the file is neither an item {{\"name\", \"uuid\", \
                     \"config\"}} nor an array of items (it is {})",
                    n + 1,
                    kind(&other)
                ));
            }
        }
    }
    if items.is_empty() {
        return Err("the file holds no configuration".into());
    }
    Ok(items)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One line per item: `web1: configuration created, generation 3`, or
/// `web2: refused (409): <why> [at <field>]` with every field problem below it.
pub fn print_result(out: &mut dyn Write, r: &BulkItemResult) -> std::io::Result<()> {
    let who = r
        .name
        .clone()
        .unwrap_or_else(|| format!("item {}", r.index));
    if r.ok() {
        let what = match r.outcome {
            Some(BulkOutcome::Created) => "created",
            Some(BulkOutcome::Updated) => "updated",
            Some(BulkOutcome::Unchanged) | None => "unchanged",
        };
        return writeln!(
            out,
            "{who}: configuration {what}, generation {}",
            r.generation.unwrap_or(0)
        );
    }
    write!(
        out,
        "{who}: refused ({}): {}",
        r.status,
        r.error.as_deref().unwrap_or("no reason given")
    )?;
    if r.errors.is_empty()
        && let Some(p) = &r.path
    {
        write!(out, " [at {p}]")?;
    }
    writeln!(out)?;
    for fe in &r.errors {
        writeln!(out, "  {}: {}", fe.path, fe.message)?;
    }
    Ok(())
}

/// The names (or item numbers) of the refused items, for the closing message.
pub fn refused_names(results: &[BulkItemResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            r.name
                .clone()
                .unwrap_or_else(|| format!("item {}", r.index))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_or_one_item_per_document() {
        let array = br#"[{"name":"a","config":{}}, {"name":"b","config":{}}]"#;
        assert_eq!(read_items(array).unwrap().len(), 2);
        let lines = b"{\"name\":\"a\",\"config\":{}}\n{\"name\":\"b\",\"config\":{}}\n\n{\"name\":\"c\",\"config\":{}}\n";
        let items = read_items(lines).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[2]["name"], "c");
        let both = b"[{\"name\":\"a\",\"config\":{}}]\n{\"name\":\"b\",\"config\":{}}";
        assert_eq!(read_items(both).unwrap().len(), 2);
    }

    #[test]
    fn an_unreadable_file_names_the_document() {
        let e = read_items(b"{\"name\":\"a\",\"config\":{}}\n{\"name\":").unwrap_err();
        assert!(e.contains("document 2"), "{e}");
        let e = read_items(b"{\"name\":\"a\",\"config\":{}} 42").unwrap_err();
        assert!(e.contains("document 2") && e.contains("a number"), "{e}");
        assert!(
            read_items(b"  \n")
                .unwrap_err()
                .contains("no configuration")
        );
        assert!(read_items(b"[]").unwrap_err().contains("no configuration"));
    }
}
