//! Replays the committed fuzz corpus (`shared/fuzz/corpus/<target>/`) through the very functions the
//! cargo-fuzz targets call, on stable: a finding that was fixed stays fixed, and CI needs no
//! nightly toolchain. A panic (an invariant of the harness) fails the test with the file name.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    // An empty or missing corpus would make this test pass without checking anything.
    assert!(
        files.len() >= 5,
        "{target}: only {} corpus files",
        files.len()
    );
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
    }
}

#[test]
fn v2_notification_corpus() {
    replay("v2_notification", harness::v2_notification);
}

#[test]
fn req_info_corpus() {
    replay("req_info", harness::req_info);
}

#[test]
fn v3_notification_corpus() {
    replay("v3_notification", harness::v3_notification);
}

/// The corpus holds genuinely signed notifications, so the replay reaches the code behind
/// the signature checks rather than stopping at the first rejection.
#[test]
fn corpus_reaches_past_the_signatures() {
    let verified_v2 = corpus("v2_notification").iter().any(|path| {
        let data = std::fs::read(path).expect("corpus file");
        wxpay_shared::v2::XmlFields::parse(&data)
            .is_ok_and(|fields| wxpay_shared::v2::verify(&fields, harness::V2_KEY).is_ok())
    });
    assert!(verified_v2, "no v2 seed verifies under harness::V2_KEY");
    let decrypted = corpus("req_info").iter().any(|path| {
        let data = std::fs::read(path).expect("corpus file");
        std::str::from_utf8(&data)
            .is_ok_and(|text| wxpay_shared::v2::decrypt_req_info(text, harness::V2_KEY).is_ok())
    });
    assert!(decrypted, "no req_info seed decrypts under harness::V2_KEY");
    let resource = corpus("v3_notification").iter().any(|path| {
        let data = std::fs::read(path).expect("corpus file");
        data.windows(2)
            .position(|pair| pair == b"\n\n")
            .and_then(|at| wxpay_shared::v3::NotificationEnvelope::parse(&data[at + 2..]).ok())
            .is_some_and(|envelope| envelope.decrypt(harness::V3_KEY).is_ok())
    });
    assert!(
        resource,
        "no v3 seed's resource decrypts under harness::V3_KEY"
    );
}
