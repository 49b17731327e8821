//! Helpers shared by the parquet tests: writing small parquet files with the `parquet` crate.

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::fs;
use std::path::Path;
use std::sync::Arc;

/// A one-column schema: a required UTF-8 string column `text`, as in hub text datasets.
pub const TEXT_SCHEMA: &str = "message doc { REQUIRED BYTE_ARRAY text (UTF8); }";

/// Writes `groups` (one row group each) as a one-column parquet file; `None` is a null.
pub fn write_strings(
    path: &Path,
    schema: &str,
    groups: &[Vec<Option<&str>>],
    compression: Compression,
) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let file = fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for rows in groups {
        let mut group = writer.next_row_group().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows
            .iter()
            .flatten()
            .map(|s| ByteArray::from(s.as_bytes().to_vec()))
            .collect();
        let defs: Vec<i16> = rows.iter().map(|r| i16::from(r.is_some())).collect();
        let nullable = rows.iter().any(Option::is_none);
        col.typed::<ByteArrayType>()
            .write_batch(&values, nullable.then_some(&defs[..]), None)
            .unwrap();
        col.close().unwrap();
        assert!(group.next_column().unwrap().is_none());
        group.close().unwrap();
    }
    writer.close().unwrap();
}
