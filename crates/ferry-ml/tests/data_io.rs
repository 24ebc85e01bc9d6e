//! CSV / JSON Lines parsing, writing, inference and profiles.
use ferry_ml::data::{detect_delimiter, Cell, ColumnData, ColumnKind, CsvOptions, Dataset};
use ferry_ml::MlError;

fn csv(text: &str) -> Dataset {
    Dataset::from_csv(text, &CsvOptions::default()).unwrap()
}

#[test]
fn parses_csv_with_header_quotes_and_missing() {
    let text = "name,age,score,active\n\"Smith, J\",31,1.5,true\n\"say \"\"hi\"\"\",NA,,FALSE\r\n\"multi\nline\",40,2.25,\n";
    let ds = csv(text);
    assert_eq!(ds.names(), vec!["name", "age", "score", "active"]);
    assert_eq!(ds.n_rows(), 3);
    let name = &ds.column("name").unwrap().data;
    assert_eq!(name.text(0).as_deref(), Some("Smith, J"));
    assert_eq!(name.text(1).as_deref(), Some("say \"hi\""));
    assert_eq!(name.text(2).as_deref(), Some("multi\nline"));
    match &ds.column("age").unwrap().data {
        ColumnData::Numeric(v) => {
            assert_eq!(v[0], 31.0);
            assert!(v[1].is_nan());
        }
        other => panic!("age should be numeric: {other:?}"),
    }
    assert_eq!(
        ds.column("active").unwrap().data,
        ColumnData::Bool(vec![Some(true), Some(false), None])
    );
    let prof = ds.profile();
    assert_eq!(prof[1].kind, ColumnKind::Numeric);
    assert_eq!(prof[1].missing, 1);
    assert_eq!(prof[1].distinct, 2);
    assert_eq!(prof[1].min, Some(31.0));
    assert_eq!(prof[1].max, Some(40.0));
    assert_eq!(prof[1].mean, Some(35.5));
    assert_eq!(prof[0].kind, ColumnKind::Text);
    assert_eq!(prof[0].distinct, 3);
    assert_eq!(prof[3].missing, 1);
}

#[test]
fn detects_delimiters_and_headers() {
    assert_eq!(detect_delimiter("a;b;c\n1;2;3\n"), b';');
    assert_eq!(detect_delimiter("a\tb\n1\t2\n"), b'\t');
    assert_eq!(detect_delimiter("a|b|c\n1|2,5|3\n"), b'|');
    assert_eq!(detect_delimiter("\"x;y\",z\n1,2\n"), b',');
    let ds = csv("1;2;3\n4;5;6\n");
    assert_eq!(ds.n_rows(), 2, "numeric first row is data");
    assert_eq!(ds.names(), vec!["column_0", "column_1", "column_2"]);
    let ds = csv("x;y\n1;2\n");
    assert_eq!(ds.names(), vec!["x", "y"]);
    let ds = csv("red,blue\ngreen,blue\n");
    assert_eq!(
        ds.n_rows(),
        2,
        "a repeated value in the column means no header"
    );
    let opts = CsvOptions {
        delimiter: Some(b','),
        has_header: Some(false),
        ..Default::default()
    };
    let ds = Dataset::from_csv("a,b\nc,d\n", &opts).unwrap();
    assert_eq!(ds.n_rows(), 2);
    // duplicate / empty header names are made unique
    let ds = csv("a,a,\n1,2,3\n");
    assert_eq!(ds.names(), vec!["a", "a.1", "column_2"]);
    // BOM and blank lines
    let ds = Dataset::from_csv_bytes(
        "\u{feff}x,y\n\n1,2\n\n3,4".as_bytes(),
        &CsvOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.names(), vec!["x", "y"]);
    assert_eq!(ds.n_rows(), 2);
}

#[test]
fn csv_errors_carry_row_and_column() {
    match Dataset::from_csv("a,b\n1,2\n3\n", &CsvOptions::default()) {
        Err(MlError::Parse { line, row, .. }) => assert_eq!((line, row), (3, 1)),
        other => panic!("{other:?}"),
    }
    match Dataset::from_csv("a,b\n1,\"2\n", &CsvOptions::default()) {
        Err(MlError::Parse { message, .. }) => assert!(message.contains("unterminated")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Dataset::from_csv("a,b\n\"1\"x,2\n", &CsvOptions::default()),
        Err(MlError::Parse { .. })
    ));
    assert!(Dataset::from_csv_bytes(b"a,b\n\xff,1\n", &CsvOptions::default()).is_err());
    assert_eq!(
        Dataset::from_csv("", &CsvOptions::default())
            .unwrap()
            .n_rows(),
        0
    );
}

#[test]
fn jsonl_round_trip_and_conversion() {
    let text =
        "{\"b\": 1.5, \"a\": \"x\", \"flag\": true}\n\n{\"a\": null, \"b\": 2, \"c\": \"new\"}\n";
    let ds = Dataset::from_jsonl(text).unwrap();
    assert_eq!(ds.names(), vec!["b", "a", "flag", "c"]);
    assert_eq!(
        ds.column("b").unwrap().data,
        ColumnData::Numeric(vec![1.5, 2.0])
    );
    assert_eq!(ds.column("a").unwrap().data.cell(1), Cell::Missing);
    assert_eq!(
        ds.column("flag").unwrap().data,
        ColumnData::Bool(vec![Some(true), None])
    );
    let out = ds.to_jsonl();
    assert_eq!(Dataset::from_jsonl(&out).unwrap(), ds);
    // JSONL -> CSV -> dataset
    let csv_text = ds.to_csv(b',');
    let back = Dataset::from_csv(&csv_text, &CsvOptions::default()).unwrap();
    assert_eq!(back, ds, "{csv_text}");
    // errors
    match Dataset::from_jsonl("{\"a\": 1}\n{\"a\": [1]}\n") {
        Err(MlError::Parse { line, column, .. }) => assert_eq!((line, column.as_str()), (2, "a")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Dataset::from_jsonl("{\"a\": 1}\nnot json\n"),
        Err(MlError::Parse { line: 2, .. })
    ));
    // mixed types become text
    let ds = Dataset::from_jsonl("{\"v\": 1}\n{\"v\": \"two\"}\n").unwrap();
    assert_eq!(ds.column("v").unwrap().data.kind(), ColumnKind::Text);
}

#[test]
fn csv_round_trip_keeps_values() {
    let text = "id;label;x\n1;\"a;b\";0.1\n2;NA;1e-300\n3;\" padded \";\n";
    let ds = csv(text);
    let out = ds.to_csv(b';');
    assert!(out.contains("1e-300"), "{out}");
    let back = Dataset::from_csv(&out, &CsvOptions::default()).unwrap();
    // (NaN != NaN, so compare through a canonical text form)
    assert_eq!(back.to_jsonl(), ds.to_jsonl(), "{out}");
    let tsv = ds.to_csv(b'\t');
    assert_eq!(
        Dataset::from_csv(&tsv, &CsvOptions::default())
            .unwrap()
            .to_jsonl(),
        ds.to_jsonl()
    );
}

#[test]
fn bundled_datasets_parse() {
    for (name, rows, cols) in [
        ("iris", 150, 5),
        ("wine", 178, 14),
        ("breast_cancer", 569, 31),
        ("diabetes", 442, 11),
    ] {
        let text = std::fs::read_to_string(format!(
            "{}/tests/data/{name}.csv",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let ds = csv(&text);
        assert_eq!((ds.n_rows(), ds.n_cols()), (rows, cols), "{name}");
        let prof = ds.profile();
        assert!(
            prof[..cols - 1]
                .iter()
                .all(|p| p.kind == ColumnKind::Numeric && p.missing > 0),
            "{name}"
        );
    }
}
