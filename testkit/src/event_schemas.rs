//! The JSON Schemas of the events the worker publishes (`docs/events/<routing key>.schema.json`),
//! for tests to hold every event they see to the documented contract.
//!
//! A routing key `wechatpay.<event_type>` is held to its own schema when there is one (e.g.
//! `wechatpay.MCHTRANSFER.BILL.FINISHED`, whose resource is typed) and always to the schema
//! of every forwarded notification, `wechatpay.schema.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The folder of the schemas.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events")
}

fn schema(name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(schema_dir().join(format!("{name}.schema.json"))).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.schema.json: {e}")))
}

/// The schemas `routing_key`'s events must satisfy; panics when there is none.
fn schemas_of(routing_key: &str) -> Vec<(String, Value)> {
    let mut names = vec![routing_key.to_owned()];
    if routing_key.starts_with("wechatpay.") {
        names.push("wechatpay".to_owned());
    }
    let found: Vec<(String, Value)> = names
        .into_iter()
        .filter_map(|name| schema(&name).map(|schema| (name, schema)))
        .collect();
    assert!(
        !found.is_empty(),
        "no schema in docs/events for routing key {routing_key}"
    );
    found
}

/// Panics, naming every violation, unless `event` (an event's JSON body as published) is
/// valid under the schemas of `routing_key`.
pub fn assert_valid_event(routing_key: &str, event: &Value) {
    for (name, schema) in schemas_of(routing_key) {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{name}.schema.json is not a valid schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "event {routing_key} breaks {name}.schema.json:\n  {}\nevent: {event}",
            errors.join("\n  ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_a_valid_schema() {
        let mut count = 0;
        for entry in std::fs::read_dir(schema_dir()).expect("docs/events") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let schema: Value = serde_json::from_str(&text).expect("JSON");
            jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
        assert!(count >= 6, "schemas found: {count}");
    }

    #[test]
    #[should_panic(expected = "breaks order.paid.schema.json")]
    fn an_event_missing_a_field_is_refused() {
        assert_valid_event(
            "order.paid",
            &serde_json::json!({"id": "0193a1c2-0000-7000-8000-000000000000", "type": "order.paid",
                "mch_id": "1", "aggregate_key": "o", "occurred_at": "2026-12-01T00:00:00Z", "data": {}}),
        );
    }
}
