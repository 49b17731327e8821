//! Parquet inputs: one string column, read row group by row group with the `parquet` crate's
//! column reader (no Arrow).
//!
//! Only the footer, then one column chunk of one row group at a time, is read from disk (in
//! batches of [`BATCH_ROWS`] rows), so a multi-GB file is never held in memory as a whole; the
//! decoded texts themselves are kept, like those of every other input (see the `prepare` module
//! docs). Each row is one document; null and empty values are skipped, as empty documents are
//! elsewhere.

use super::{FileDocs, InputError, Utf8Policy};
use ::parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use ::parquet::column::reader::{get_typed_column_reader, ColumnReader};
use ::parquet::data_type::{ByteArray, ByteArrayType};
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::schema::types::ColumnDescriptor;
use std::path::Path;

/// Rows decoded per call of the column reader: bounds the memory held besides the texts.
pub const BATCH_ROWS: usize = 1024;

/// Whether a column's annotations make its bytes UTF-8 text.
fn is_string(col: &ColumnDescriptor) -> bool {
    col.physical_type() == PhysicalType::BYTE_ARRAY
        && (matches!(col.logical_type_ref(), Some(LogicalType::String))
            || col.converted_type() == ConvertedType::UTF8)
}

/// A column's type in words, for errors.
fn describe(col: &ColumnDescriptor) -> String {
    let physical = col.physical_type();
    match (col.logical_type_ref(), col.converted_type()) {
        (Some(l), _) => format!("{physical:?} ({l:?})"),
        (None, ConvertedType::NONE) if physical == PhysicalType::BYTE_ARRAY => {
            "BYTE_ARRAY without a string annotation (binary)".to_string()
        }
        (None, ConvertedType::NONE) => format!("{physical:?}"),
        (None, c) => format!("{physical:?} ({c:?})"),
    }
}

/// Reads the documents of `column` in the parquet file at `path`.
pub(super) fn read(path: &Path, column: &str, policy: Utf8Policy) -> Result<FileDocs, InputError> {
    let corrupt = |message: String| InputError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| corrupt(e.to_string()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();

    // The column must be a top-level, non-repeated string: a field of that name inside a group
    // (a struct or a list) is refused with what it is, not searched for.
    let index = schema
        .columns()
        .iter()
        .position(|c| c.path().parts().first().map(String::as_str) == Some(column));
    let Some(index) = index else {
        let mut names: Vec<&str> = schema
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name())
            .collect();
        names.dedup();
        return Err(InputError::ParquetMissingColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            found: if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
        });
    };
    let desc = schema.column(index);
    let not_string = |found: String| InputError::ParquetColumnNotString {
        path: path.to_path_buf(),
        column: column.to_string(),
        found,
    };
    if desc.path().parts().len() > 1 {
        return Err(not_string(format!(
            "a group (nested column {})",
            desc.path().string()
        )));
    }
    if desc.max_rep_level() > 0 {
        return Err(not_string(format!("a repeated {}", describe(&desc))));
    }
    if !is_string(&desc) {
        return Err(not_string(describe(&desc)));
    }

    let mut out = FileDocs::default();
    let mut values: Vec<ByteArray> = Vec::with_capacity(BATCH_ROWS);
    let mut defs: Vec<i16> = Vec::with_capacity(BATCH_ROWS);
    // Rows before the current batch, to name a row in errors (0-based, over the whole file).
    let mut row_base = 0u64;
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| corrupt(format!("row group {g}: {e}")))?;
        let rows = group.metadata().num_rows().max(0) as u64;
        let col = group
            .get_column_reader(index)
            .map_err(|e| corrupt(format!("row group {g}, column {column:?}: {e}")))?;
        let ColumnReader::ByteArrayColumnReader(_) = &col else {
            return Err(not_string(describe(&desc)));
        };
        let mut typed = get_typed_column_reader::<ByteArrayType>(col);
        let mut seen = 0u64;
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) = typed
                .read_records(BATCH_ROWS, Some(&mut defs), None, &mut values)
                .map_err(|e| corrupt(format!("row group {g}, column {column:?}: {e}")))?;
            if records == 0 {
                break;
            }
            // `values` holds the non-null values only, in row order; with a required column
            // (max definition level 0) every row has one and `defs` stays empty.
            let mut next = values.iter();
            for r in 0..records {
                let max_def = desc.max_def_level();
                let present = max_def == 0 || defs.get(r) == Some(&max_def);
                if !present {
                    continue;
                }
                let Some(v) = next.next() else {
                    return Err(corrupt(format!(
                        "row group {g}: fewer values than non-null rows in column {column:?}"
                    )));
                };
                let bytes = v.data();
                out.bytes += bytes.len() as u64;
                let text = match std::str::from_utf8(bytes) {
                    Ok(s) => s.to_string(),
                    Err(_) => match policy {
                        Utf8Policy::Error => {
                            return Err(InputError::ParquetInvalidUtf8 {
                                path: path.to_path_buf(),
                                column: column.to_string(),
                                row: row_base + seen + r as u64,
                            })
                        }
                        Utf8Policy::Replace => {
                            out.replaced += bytes
                                .utf8_chunks()
                                .filter(|c| !c.invalid().is_empty())
                                .count() as u64;
                            String::from_utf8_lossy(bytes).into_owned()
                        }
                    },
                };
                if !text.is_empty() {
                    out.docs.push(text);
                }
            }
            seen += records as u64;
        }
        if seen != rows {
            return Err(corrupt(format!(
                "row group {g} declares {rows} rows, column {column:?} holds {seen}"
            )));
        }
        row_base += seen;
    }
    Ok(out)
}
