//! The fuzz targets' checks on stable Rust: every committed corpus input of each target
//! (`proxy/fuzz/corpus/<target>/`), then mutations of them (bytes flipped, inserted, removed,
//! runs repeated, cut short) from a fixed seed, so that the run is the same every time. This is
//! what CI runs on every change when nightly Rust (which libFuzzer needs) is not to be had; with
//! nightly, `make fuzz` runs the same checks under libFuzzer for `FUZZ_SECONDS` each.

use std::path::Path;

use braid_proxy::fuzzing::TARGETS;

/// Mutations tried per target.
const MUTATIONS: usize = 20_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
        .collect();
    inputs.sort();
    inputs
}

fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=out.len());
        match rng.u8(0..5) {
            0 if at < out.len() => out[at] ^= 1 << rng.u8(0..8),
            1 => out.insert(at, rng.u8(..)),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => {
                let end = (at + rng.usize(1..16)).min(out.len());
                let run = out[at..end].to_vec();
                out.splice(at..at, run);
            }
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn every_fuzz_target_holds_on_its_corpus_and_mutations_of_it() {
    let mut rng = fastrand::Rng::with_seed(0x0062_7261_6964);
    for (target, check) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "{target} has no corpus");
        for input in &inputs {
            check(input);
        }
        for _ in 0..MUTATIONS {
            let input = &inputs[rng.usize(..inputs.len())];
            check(&mutate(&mut rng, input));
        }
    }
}
