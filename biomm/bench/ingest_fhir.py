"""`biomm bench ingest-fhir`: biomm's FHIR path against two peers, in the same run on the same files.

- fhir.resources: parse each file with orjson and validate every resource with its R4B pydantic
  model (what `--strict` adds);
- fhiry: `fhiry.parallel.process(folder)`, the FHIR-to-pandas library users pick (one worker process
  per core, every resource flattened into one DataFrame). fhiry reads only uncompressed `.json`, so
  this pair runs on an uncompressed copy of the bundles, biomm included.

biomm runs its default ingest into a fresh cohort (decode, extract, de-identify, write Parquet and
the manifest): more work per resource than either peer's output, which is neither de-identified
nor stored. Peak RSS is
measured in child processes for 1x and 4x the input (4x = the shipped bundles re-keyed, so that
they are new patients) to show memory stays flat as the input grows."""
from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

from biomm.bench.common import machine, peak_rss_mib, run_child
from biomm.resources import resource

SHIPPED = resource("data", "synthea")


def rekeyed_bundle(raw: bytes, k: int) -> bytes:
    """Bundle JSON `raw` as copy `k`: every resource id and `urn:uuid:` reference prefixed `c<k>-` (copy 0 as is),
    so each copy holds new patients."""
    if not k:
        return raw
    doc = orjson.loads(raw.replace(b"urn:uuid:", f"urn:uuid:c{k}-".encode()))
    for e in doc.get("entry", []):
        e["resource"]["id"] = f"c{k}-{e['resource'].get('id', '')}"
    return orjson.dumps(doc)


def rekeyed_copies(src: Path, dst: Path, copies: int) -> list[Path]:
    """`copies` x the bundles, each copy with new resource ids (and so new patients)."""
    dst.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(copies):
        for f in sorted(src.glob("*.json.gz")):
            out = dst / f"c{k}_{f.name}"
            if not out.exists():
                out.write_bytes(gzip.compress(rekeyed_bundle(gzip.decompress(f.read_bytes()), k), 6))
            files.append(out)
    return files


def count_resources(files: list[Path]) -> int:
    """Resources in the Bundles of `files`."""
    return sum(len(orjson.loads(gzip.decompress(f.read_bytes())).get("entry", [])) for f in files)


def peer_validate(files: list[Path]) -> float:
    """Seconds fhir.resources.R4B takes to validate every resource of `files` (the peer)."""
    from fhir.resources.R4B import get_fhir_model_class

    t0 = time.perf_counter()
    for f in files:
        for entry in orjson.loads(gzip.decompress(f.read_bytes()))["entry"]:
            res = entry["resource"]
            get_fhir_model_class(res["resourceType"]).model_validate(res)
    return time.perf_counter() - t0


def uncompressed_copies(files: list[Path], dst: Path) -> Path:
    """The bundles of `files` as plain `.json` files in `dst` (fhiry reads only those); returns `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        out = dst / f.name.removesuffix(".gz")
        if not out.exists():
            out.write_bytes(gzip.decompress(f.read_bytes()))
    return dst


def peer_fhiry(folder: Path) -> tuple[float, int]:
    """Seconds `fhiry.parallel.process` takes on a folder of `.json` bundles, and the rows of its DataFrame."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from fhiry import parallel

    t0 = time.perf_counter()
    df = parallel.process(str(folder))
    return time.perf_counter() - t0, len(df)


def biomm_ingest(files: list[Path], cohort: Path) -> float:
    """Seconds biomm's FHIR ingest takes on `files` into a new cohort."""
    from biomm.ingest.ehr.fhir import ingest

    t0 = time.perf_counter()
    ingest(files, cohort, progress=False)
    return time.perf_counter() - t0


def child_main(folder: str, cohort: str) -> None:
    """Child process: ingest a folder, print seconds and peak RSS."""
    files = sorted(Path(folder).glob("*.json.gz"))
    seconds = biomm_ingest(files, Path(cohort))
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "files": len(files)}))


def run(repeats: int = 3) -> dict:
    """The FHIR ingest benchmark: resources/s against the peer and peak RSS at 1x and 4x input, as one dict."""
    work = Path(tempfile.mkdtemp(prefix="biomm-bench-fhir-"))
    one = rekeyed_copies(SHIPPED, work / "x1", 1)
    rekeyed_copies(SHIPPED, work / "x4", 4)  # read by the 4x child below
    n = count_resources(one)
    # warm both paths once (imports, pydantic model build), then take the best of `repeats`
    peer_validate(one[:3])
    biomm_ingest(one[:3], work / "warm")
    ours = min(biomm_ingest(one, work / f"run{i}") for i in range(repeats))
    peer = min(peer_validate(one) for _ in range(max(1, repeats - 1)))
    plain = uncompressed_copies(one, work / "x1_json")
    plain_files = sorted(plain.glob("*.json"))
    peer_fhiry(plain)  # warm (imports, pool start-up paths)
    fhiry_runs = [peer_fhiry(plain) for _ in range(max(1, repeats - 1))]
    fhiry_s, fhiry_rows = min(r[0] for r in fhiry_runs), fhiry_runs[0][1]
    ours_plain = min(biomm_ingest(plain_files, work / f"plain{i}") for i in range(max(1, repeats - 1)))
    mem1 = run_child("biomm.bench.ingest_fhir", str(work / "x1"), str(work / "mem1"))
    mem4 = run_child("biomm.bench.ingest_fhir", str(work / "x4"), str(work / "mem4"))
    return {
        "bench": "ingest-fhir",
        "input": f"{len(one)} shipped Synthea R4 bundles, {n} resources",
        "biomm_resources_per_s": round(n / ours),
        "peer": "orjson + fhir.resources.R4B model_validate per resource (same files, same process)",
        "peer_resources_per_s": round(n / peer),
        "ratio": round(peer / ours, 2),
        "ratio_vs_fhir_resources": round(peer / ours, 2),
        "target_ratio": 20,
        "fhiry": {"peer": "fhiry.parallel.process(folder) -> one pandas DataFrame of flattened resources "
                          f"({os.cpu_count()} worker processes)", "input": "the same bundles, uncompressed .json",
                  "fhiry_resources_per_s": round(n / fhiry_s), "fhiry_dataframe_rows": fhiry_rows,
                  "biomm_resources_per_s": round(n / ours_plain)},
        "ratio_vs_fhiry": round(fhiry_s / ours_plain, 2),
        "target_ratio_vs_fhiry": 5,
        "peak_rss_mib": {"1x": mem1["peak_rss_mib"], "4x": mem4["peak_rss_mib"],
                         "ratio_4x_over_1x": round(mem4["peak_rss_mib"] / mem1["peak_rss_mib"], 2)},
        "resources_per_s_4x_child": round(4 * n / mem4["seconds"]),
        "machine": machine(),
    }


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
