//! Runs every fuzz target's body over its checked-in corpus (`fuzz/corpus/<target>/`): on
//! stable, in the ordinary test run, so the corpora (and every crash input kept in them) are
//! replayed without cargo fuzz.

use std::fs;
use std::path::Path;

use rhone_fuzz_targets::TARGETS;

#[test]
fn every_target_passes_over_its_corpus() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (name, target) in TARGETS {
        let dir = corpora.join(name);
        let mut inputs: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus {}: {e}", dir.display()))
            .map(|e| e.expect("a corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        for input in inputs {
            let data = fs::read(&input).expect("a corpus input reads");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} fails on {}", input.display());
        }
    }
}
