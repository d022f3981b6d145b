"""Find omics sources and open them as AnnData: .h5ad (backed when large), .zarr, 10x folders
and .h5 (scanpy's readers), MuData .h5mu. A file that cannot be read raises IngestError."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import h5py

from biomm.ingest.base import IngestError
from biomm.store.atomic import sha256_file

FILE_SUFFIXES = (".h5ad", ".h5", ".h5mu")


def is_10x_dir(p: Path) -> bool:
    """Whether `p` is a 10x `filtered_feature_bc_matrix` folder."""
    return p.is_dir() and any((p / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz"))


def is_zarr(p: Path) -> bool:
    """Whether `p` is a .zarr store."""
    return p.is_dir() and (p.suffix == ".zarr" or (p / ".zattrs").exists() or (p / "zarr.json").exists())


def discover(sources) -> list[Path]:
    """Files and folders into omics sources; a 10x folder or a .zarr store is one source."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"source not found: {p}")
        if p.is_file() or is_10x_dir(p) or is_zarr(p):
            out.append(p)
            continue
        for f in sorted(p.rglob("*")):
            if any(is_10x_dir(parent) or is_zarr(parent) for parent in f.parents if parent != p and p in parent.parents):
                continue
            if (f.is_file() and f.name.lower().endswith(FILE_SUFFIXES)) or is_10x_dir(f) or is_zarr(f):
                out.append(f)
    seen, unique = set(), []
    for f in out:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def source_checksum(p: Path) -> str:
    """sha256 of a file, or of the sorted (relative path, sha256) list of a folder's files."""
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p)}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


@dataclass
class OmicsSource:
    """One opened source: the AnnData (possibly backed), extra modalities of a MuData, and notes."""

    adata: ad.AnnData
    fmt: str
    backed: bool = False
    extra: dict[str, ad.AnnData] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _check_h5ad_shapes(path: Path) -> None:
    """obs/var lengths against X before anndata reads it, so the reason is plain."""
    try:
        with h5py.File(path, "r") as f:
            if "X" not in f:
                raise IngestError(path, "no X matrix in the file", field="X")
            x = f["X"]
            shape = tuple(x.attrs["shape"]) if isinstance(x, h5py.Group) else x.shape
            for axis, name in ((0, "obs"), (1, "var")):
                g = f.get(name)
                key = g.attrs.get("_index", "_index") if g is not None else None
                if g is not None and key in g and len(g[key]) != shape[axis]:
                    raise IngestError(path, f"{name} has {len(g[key])} rows but X has {shape[axis]} "
                                            f"{'cells' if axis == 0 else 'genes'}: mismatched {name} and X lengths",
                                      field=name)
    except IngestError:
        raise
    except Exception as exc:  # h5py raises OSError with several messages for a damaged file
        raise IngestError(path, f"not a readable HDF5 file (truncated or corrupt?): {exc}") from None


def read_source(path: Path, backed_above_mb: float = 1024.0, rna_modality: str | None = None) -> OmicsSource:
    """Open one source. .h5ad files above `backed_above_mb` open backed (read-only, lazily)."""
    name = path.name.lower()
    try:
        if is_10x_dir(path):
            import scanpy as sc

            # Ensembl ids as names: unique (symbols repeat in 10x features) and mapped by the vocabulary
            return OmicsSource(sc.read_10x_mtx(path, var_names="gene_ids"), "10x-mtx")
        if is_zarr(path):
            return OmicsSource(ad.read_zarr(path), "zarr")
        if name.endswith(".h5ad"):
            _check_h5ad_shapes(path)
            big = path.stat().st_size > backed_above_mb * 2**20
            return OmicsSource(ad.read_h5ad(path, backed="r" if big else None), "h5ad", backed=big)
        if name.endswith(".h5mu"):
            return _read_mudata(path, rna_modality)
        if name.endswith(".h5"):
            import scanpy as sc

            a = sc.read_10x_h5(path)
            if not a.var_names.is_unique and "gene_ids" in a.var:
                a.var_names = a.var["gene_ids"].astype(str)
            return OmicsSource(a, "10x-h5")
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(path, f"cannot read as {name.rsplit('.', 1)[-1]}: {type(exc).__name__}: {exc}") from None
    raise IngestError(path, "unknown omics format: expected .h5ad, .zarr, .h5, .h5mu or a 10x folder")


def _read_mudata(path: Path, rna_modality: str | None) -> OmicsSource:
    import mudata

    mudata.set_options(pull_on_update=False)
    md = mudata.read_h5mu(path)
    mods = list(md.mod)
    if not mods:
        raise IngestError(path, "MuData file holds no modality")
    if rna_modality is None:
        from biomm.vocab.genes import GeneVocab

        vocab = GeneVocab.default()
        rna_modality = max(mods, key=lambda m: (m.lower() in ("rna", "gex"), vocab.coverage(md[m].var_names)["n_mapped"]))
    if rna_modality not in md.mod:
        raise IngestError(path, f"no modality {rna_modality!r}; the file holds {mods}", field="mod")
    rna = md[rna_modality]
    common = rna.obs_names
    extra = {}
    notes = [f"MuData modalities {mods}; expression from {rna_modality!r}"]
    for m in mods:
        if m != rna_modality:
            common = common.intersection(md[m].obs_names, sort=False)
    if len(common) < rna.n_obs:
        notes.append(f"{rna.n_obs - len(common)} cells lack another modality and were left out")
    rna = rna[common].copy()
    for m in mods:
        if m != rna_modality:
            extra[m] = md[m][common].copy()
    return OmicsSource(rna, "h5mu", extra=extra, notes=notes)
