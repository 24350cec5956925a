//! `cartat-rules schema [rules|config]`: prints the JSON Schema of a rule file or of
//! `cartat.yaml`, for editors' YAML language servers. Generated from the same types the loaders
//! use (`rules::raw`, `config::raw`), so it cannot drift.

use super::SchemaOf;

pub(super) fn schema(of: SchemaOf) -> u8 {
    let schema = match of {
        SchemaOf::Rules => crate::rules::raw::rule_file_schema(),
        SchemaOf::Config => crate::config::raw::config_schema(),
    };
    match serde_json::to_string_pretty(&schema) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("cannot print the schema: {e}");
            1
        }
    }
}
