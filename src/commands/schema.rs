//! `cartat-rules schema`: prints the JSON Schema of a rule file, for editors' YAML language
//! servers. Generated from the same types the loader uses (`rules::raw`), so it cannot drift.

pub(super) fn schema() -> u8 {
    match serde_json::to_string_pretty(&crate::rules::raw::rule_file_schema()) {
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
