//! The record samples in docs/logging.md must be exactly what Tern writes:
//! each one is parsed and serialised again, byte for byte.

use tern_log::{LogRecord, RecordType};

#[test]
fn every_sample_in_the_logging_doc_round_trips() {
    let doc = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/logging.md"
    ));
    let samples = doc
        .split_once("### Samples")
        .expect("the doc has a Samples section")
        .1;
    let mut kinds = Vec::new();
    for block in samples.split("```json\n").skip(1) {
        let line = block.split_once("\n```").expect("closed code block").0;
        let record = LogRecord::from_json(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(record.to_json(), line, "sample differs from Tern's output");
        kinds.push(record.kind);
    }
    for kind in [
        RecordType::Reception,
        RecordType::Delivery,
        RecordType::TransientFailure,
        RecordType::Bounce,
        RecordType::Expiration,
        RecordType::AdminBounce,
        RecordType::OOB,
        RecordType::Feedback,
        RecordType::Rejection,
        RecordType::Delayed,
    ] {
        assert!(kinds.contains(&kind), "no sample of {kind}");
    }
}
