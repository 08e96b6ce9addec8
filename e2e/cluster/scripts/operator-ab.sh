#!/usr/bin/env bash
# The operator benchmark with two builds of the operator in turns, on the local test cluster:
#   operator-ab.sh BASELINE_REV BASELINE_BINARY [PAIRS]
# The baseline is BASELINE_REV's operator, BASELINE_BINARY (`make bench-operator-ab` builds it
# once and caches it by revision, as it does the proxy's baseline); the build under test is the
# one installed (braid.local/braid-operator:dev: `make images install`). The benchmark runs
# PAIRS times (default 2) with each, the baseline first, the operator Deployment's image swapped
# between runs, so that the machine's drift over the runs falls on both alike (one run alone
# moves by a third here). Each run's report, log and rounds go to target/operator-ab/; the
# medians over the rounds of each build, and their ratio, to bench/results/operator-ab.md
# (operator-ab-<n>.md at BENCH_WORKLOADS=<n> other than 1,000). BENCH_WORKLOADS and
# BENCH_ITERATIONS pass through to the benchmark.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
repo=$(cd "$here/../../.." && pwd)
[ $# -ge 2 ] || die "usage: operator-ab.sh BASELINE_REV BASELINE_BINARY [PAIRS]"
rev=$(git -C "$repo" rev-parse --short "$1")
bin=$2
[ -x "$bin" ] && [ "$(basename "$bin")" = braid-operator ] \
  || die "$bin: not an executable named braid-operator (the image's entrypoint and the benchmark's process match go by the name)"
head=$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo "+changes")
pairs=${3:-2}
cargo=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-$repo/target}
out=$target/operator-ab
baseline_image=braid.local/braid-operator:baseline-$rev
# The local cluster's, for the benchmark as for kubectl.
export KUBECONFIG=${KUBECONFIG:-$KUBECONFIG_PATH}
kubectl() { "$here/kubectl.sh" "$@"; }

# Packed apart from target/images, which `images.sh import` loads whole.
rm -rf "$out" && mkdir -p "$out/images"
BRAID_IMAGES_DIR=$out/images "$here/images.sh" pack "$baseline_image" "$bin"
BRAID_IMAGES_DIR=$out/images "$here/images.sh" import
(cd "$repo" && "$cargo" build --release -q -p braid-e2e --bin bench-operator)

use_image() {
  kubectl -n braid-system set image deployment/braid-operator "operator=$1" >/dev/null
  kubectl -n braid-system rollout status deployment/braid-operator --timeout=300s >/dev/null
}
trap 'use_image braid.local/braid-operator:dev' EXIT
for pair in $(seq "$pairs"); do
  for build in baseline dev; do
    image=braid.local/braid-operator:dev
    [ "$build" = baseline ] && image=$baseline_image
    use_image "$image"
    # Until the new replicas' leader holds the Lease (the old one's lasts 15 s).
    sleep 20
    log "run $pair of $pairs with the $build operator ($image)"
    (cd "$repo" && BENCH_RESULTS=$out/$pair-$build.md BENCH_ROUNDS=$out/$pair-$build.tsv \
      in_cluster "$target/release/bench-operator" >/dev/null 2>"$out/$pair-$build.log") \
      || die "the benchmark failed; its log: $out/$pair-$build.log"
  done
done

# As the benchmark names its report: the scale in the name unless it is the default.
results=$repo/bench/results/operator-ab.md
[ "${BENCH_WORKLOADS:-1000}" = 1000 ] || results=$repo/bench/results/operator-ab-$BENCH_WORKLOADS.md
settings=$(env | grep -E '^BENCH_(WORKLOADS|ITERATIONS)=' | sort | tr '\n' ' ' || true)
python3 - "$out" "$rev" "$head" "$pairs" "${BENCH_WORKLOADS:-1000}" "$settings" >"$results" <<'EOF'
import csv, glob, statistics, sys
out, rev, head, pairs, workloads, settings = sys.argv[1:]
rounds = {"baseline": {}, "dev": {}}
for path in sorted(glob.glob(f"{out}/*.tsv")):
    build = path.rsplit("-", 1)[1].removesuffix(".tsv")
    for row in csv.DictReader(open(path), delimiter="\t"):
        for column, value in row.items():
            if column != "measure" and value:
                rounds[build].setdefault((row["measure"], column), []).append(float(value))
measures = [
    ("client", "applied_s", "client-side change (every pod nudged): applied by every running proxy, s"),
    ("client", "apiserver_cpu_s", "client-side change: API server CPU, s"),
    ("client", "operator_cpu_s", "client-side change: operator CPU (both replicas), s"),
    ("server", "applied_s", "server-side change (a tenth of the workloads): applied, s"),
    ("burst", "applied_s", "burst of 10 endpoint changes: applied after the last, s"),
    ("burst", "nudged_or_from_first_s", "burst: applied after the first, s"),
    ("burst", "pod_writes", "burst: pod writes"),
    ("converged", "applied_s", "initial convergence, s"),
]
print("# Operator: this build against a baseline build, in turns\n")
print(f"`{settings}make bench-operator-ab BASELINE={rev} PAIRS={pairs}`: {pairs} runs of the operator benchmark with "
      f"the baseline ({rev}) and {pairs} with this build ({head}), in turns on the same "
      f"cluster ({workloads} workloads), the operator Deployment's image swapped between runs. Each figure is the median "
      "over every round of the build's runs, [lowest, highest] beside it; the ratio is this "
      "build's median over the baseline's.\n")
print(f"| measure | rounds | baseline {rev} | this build {head} | ratio |")
print("|---|---|---|---|---|")
for measure, column, label in measures:
    a, b = (rounds[build].get((measure, column), []) for build in ("baseline", "dev"))
    if not a or not b:
        continue
    digits = 0 if column == "pod_writes" else 2
    cell = lambda xs: f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"
    print(f"| {label} | {len(a)} + {len(b)} | {cell(a)} | {cell(b)} | "
          f"{statistics.median(b) / statistics.median(a):.2f} |")
EOF
cat "$results"
