//! `rhone.toml`: [`AppManifest::parse`] on any text.

use rhone_manifest::AppManifest;

/// Parses `data` as `rhone.toml`. An accepted manifest, written back as TOML, parses equal to
/// itself (what the artifact records is what the app declared); a refusal names at least one
/// problem, each at a line and column of the text, printed as `rhone.toml:LINE:COL: …`.
pub fn app_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match AppManifest::parse(text) {
        Ok(manifest) => {
            let written = toml::to_string(&manifest).expect("an accepted manifest serialises");
            let again = AppManifest::parse(&written).unwrap_or_else(|e| {
                panic!("the manifest written back does not parse:\n{written}\n{e}")
            });
            assert_eq!(again, manifest, "written back as:\n{written}");
        }
        Err(err) => {
            let problems = err.problems();
            assert!(!problems.is_empty(), "a refusal names a problem");
            // A problem may point just past the last line (a missing section at the end).
            let lines = text.split('\n').count();
            for problem in problems {
                assert!(
                    (1..=lines + 1).contains(&problem.line) && problem.column >= 1,
                    "{problem} is outside the {lines} lines of the text"
                );
                let shown = problem.to_string();
                assert!(shown.starts_with(&format!("rhone.toml:{}:", problem.line)));
            }
        }
    }
}
