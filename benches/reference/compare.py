"""Reference benchmark: tract (through `edgeseg bench`) against onnxruntime, graph by graph.

For each model package, `edgeseg bench` runs its sweep (precisions x thread counts) and dumps the
first inputs of every graph it ran. Each of those graphs is then loaded into onnxruntime (CPU
provider, intra-op threads = the run's thread count, one inter-op thread, sequential execution,
ORT_ENABLE_ALL) and timed on the same dumped inputs for the same warm-up and frame counts. f16
rows are compared with onnxruntime on the f32 file, which is what tract translates to f16.

  python benches/reference/compare.py [--edgeseg PATH] [--model DIR]... [--precision f32,int8]
      [--threads 1,2] [--frames N] [--warmup N] [--markdown FILE] [--json FILE]

Prints one table, one row per run and graph. Run it from anywhere; the defaults are relative to
the repository root.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ("clipseg-phantom", "sam-phantom", "unet-plain-phantom", "unet-conditioned-phantom",
                  "sam3d-phantom")
DTYPES = {"f32": np.float32, "i64": np.int64, "i32": np.int32, "u8": np.uint8, "i8": np.int8, "bool": np.bool_}
COLUMNS = ("model", "graph", "precision", "threads", "GFMA", "tract p50", "ort p50", "tract/ort",
           "tract p99", "ort p99", "tract<=ort", "ort finite")


def manifest(model_dir: Path) -> dict:
    """A package's model.toml."""
    return tomllib.loads((model_dir / "model.toml").read_text())


def prompt_flags(model_dir: Path, args) -> list[str]:
    """The prompt flags `edgeseg bench` needs for this package's family (model.toml)."""
    family = manifest(model_dir)["family"]
    if family == "vlsm":
        return ["--prompt", args.prompt]
    if family == "sam":
        return ["--point", args.point]
    if family == "conditioned":
        return ["--task", args.task, "--modality", args.modality]
    if family == "sam3d":
        return ["--volume", str(args.volume), "--point", args.volume_point]
    return []


def run_bench(model_dir: Path, args, work: Path) -> dict:
    """One `edgeseg bench` sweep over one package; its JSON report. Its own output goes to stderr."""
    report = work / f"{model_dir.name}.json"
    cmd = [str(args.edgeseg), "bench", "--model", str(model_dir), "--precision", args.precision,
           "--threads", args.threads, "--frames", str(args.frames), "--warmup", str(args.warmup),
           "--json", str(report), "--dump-inputs", str(work / "inputs"), *prompt_flags(model_dir, args)]
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
        sys.exit(f"edgeseg bench failed on {model_dir}")
    return json.loads(report.read_text())


def load_inputs(case: Path) -> dict[str, np.ndarray]:
    """The inputs of a dumped case: a TOML file listing raw little-endian C-order tensors beside it."""
    spec = tomllib.loads(case.read_text())
    feeds = {}
    for t in spec["inputs"]:
        dtype = np.dtype(DTYPES[t["dtype"]]).newbyteorder("<")
        data = np.fromfile(case.parent / t["file"], dtype=dtype)
        feeds[t["name"]] = data.reshape(t["shape"]).astype(dtype.newbyteorder("="))
    return feeds


def percentiles(samples_ms: list[float]) -> dict:
    """The fields of edgeseg's Percentiles, exact on the sorted samples: nearest rank
    (the ceil(q * n)-th smallest value, as edgeseg's histogram ranks), population stddev."""
    s = sorted(samples_ms)
    n = len(s)

    def rank(q: float) -> float:
        return s[max(math.ceil(q * n), 1) - 1]

    mean = sum(s) / n
    return {"count": n, "min": s[0], "p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99),
            "p999": rank(0.999), "max": s[-1], "mean": mean,
            "stddev": math.sqrt(max(sum(v * v for v in s) / n - mean * mean, 0.0))}


def time_ort(onnx: Path, feeds: dict[str, np.ndarray], threads: int, warmup: int, frames: int):
    """(latency percentiles in ms, whether every output of the last run is finite). Untimed: a
    first run and `warmup` more, as `edgeseg bench` leaves the first frame and its warm-up out."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
    for _ in range(1 + warmup):
        session.run(None, feeds)
    samples = []
    for _ in range(frames):
        start = time.perf_counter_ns()
        outputs = session.run(None, feeds)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    finite = all(np.isfinite(o).all() for o in outputs if np.issubdtype(o.dtype, np.floating))
    return percentiles(samples), finite


def compare(report: dict, args, inputs_dir: Path) -> list[dict]:
    """One row per run and graph of a bench report, with onnxruntime's figures beside tract's."""
    rows = []
    for run in report["runs"]:
        f32_files = {g["file"] for g in manifest(Path(run["dir"]))["graph"] if "f32" in g["precisions"]}
        for graph in run["graphs"]:
            onnx = Path(run["dir"]) / graph["file"]
            feeds = load_inputs(inputs_dir / run["model"] / graph["inputs"])
            ort_latency, finite = time_ort(onnx, feeds, run["threads"], args.warmup, args.frames)
            tract = graph["latency"]
            rows.append({
                "model": run["model"], "role": graph["role"], "file": graph["file"],
                "precision": run["precision"], "f32_file": graph["file"] in f32_files,
                "threads": run["threads"], "fmas": graph["fmas"], "tract": tract, "ort": ort_latency,
                "ratio_p50": tract["p50"] / ort_latency["p50"], "tract_le_ort": tract["p50"] <= ort_latency["p50"],
                "ort_finite": finite,
            })
            print(f"ort {run['model']} {graph['file']} x{run['threads']}: p50 {ort_latency['p50']:.3f} ms",
                  file=sys.stderr, flush=True)
    return rows


def cells(row: dict) -> list[str]:
    """A row as the table's text cells, milliseconds with 3 decimals. The precision is the run's;
    "(ort f32)" marks f16 rows (onnxruntime runs the f32 file tract translated), "(f32 graph)" a
    graph with no int8 file, which both run in f32 in an int8 run."""
    tract, ortl, precision = row["tract"], row["ort"], row["precision"]
    if precision == "f16":
        precision += " (ort f32)"
    elif precision == "int8" and row["f32_file"]:
        precision += " (f32 graph)"
    return [row["model"], row["role"], precision, str(row["threads"]), f"{row['fmas'] / 1e9:.3f}",
            f"{tract['p50']:.3f}", f"{ortl['p50']:.3f}", f"{row['ratio_p50']:.2f}", f"{tract['p99']:.3f}",
            f"{ortl['p99']:.3f}", "yes" if row["tract_le_ort"] else "no", "yes" if row["ort_finite"] else "NO"]


def text_table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    body = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    left = {0, 1, 2}
    return "\n".join("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in body)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    head = [c.replace("<=", "≤") for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def setting(machine: dict, args) -> str:
    """One line naming the machine, the versions and the sample counts."""
    return (f"{machine.get('cpu', '?')} ({machine.get('logical_cpus', '?')} logical CPUs, {machine.get('arch', '?')}); "
            f"onnxruntime {ort.__version__}, numpy {np.__version__}; per graph {args.frames} timed runs after "
            f"{1 + args.warmup} untimed; milliseconds per graph run")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edgeseg", type=Path, default=ROOT / "target/release/edgeseg", help="the edgeseg binary")
    ap.add_argument("--model", type=Path, action="append",
                    help="model package folder, repeatable (default: " + ", ".join(DEFAULT_MODELS) + ")")
    ap.add_argument("--precision", default="f32,int8", help="comma-separated, as edgeseg bench takes it")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--frames", type=int, default=50, help="timed runs per graph")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs after the first, before them")
    ap.add_argument("--prompt", default="dark round lesion", help="text prompt (vlsm)")
    ap.add_argument("--point", default="160,120", help="click X,Y (sam; the centre of the 320x240 phantom)")
    ap.add_argument("--task", default="lesion", help="task (conditioned)")
    ap.add_argument("--modality", default="US", help="modality (conditioned)")
    ap.add_argument("--volume", type=Path, default=ROOT / "tests/fixtures/volumes/lesion.nii.gz",
                    help="volume each sam3d iteration segments")
    ap.add_argument("--volume-point", default="31,18,23",
                    help="click X,Y,Z in voxels of --volume (sam3d; default: the lesion fixture's centre-most voxel)")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown")
    ap.add_argument("--json", type=Path, help="also write edgeseg's reports and the rows as JSON")
    args = ap.parse_args()
    models = args.model or [ROOT / "models" / m for m in DEFAULT_MODELS]

    reports, rows = [], []
    with tempfile.TemporaryDirectory(prefix="edgeseg-compare-") as tmp:
        work = Path(tmp)
        for model_dir in models:
            report = run_bench(model_dir, args, work)
            reports.append(report)
            rows += compare(report, args, work / "inputs")

    about = setting(reports[0].get("machine", {}), args)
    print(about)
    print(text_table(rows))
    for path in filter(None, (args.markdown, args.json)):
        path.parent.mkdir(parents=True, exist_ok=True)
    if args.markdown:
        args.markdown.write_text(f"{about}\n\n{markdown_table(rows)}\n")
    if args.json:
        args.json.write_text(json.dumps({"onnxruntime": ort.__version__, "numpy": np.__version__,
                                         "frames": args.frames, "warmup": args.warmup,
                                         "edgeseg": reports, "rows": rows}, indent=1) + "\n")
    if not all(r["ort_finite"] for r in rows):
        sys.exit("onnxruntime gave non-finite outputs (rows marked NO)")


if __name__ == "__main__":
    main()
