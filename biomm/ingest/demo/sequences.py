"""Real sequence sets the project can reach offline, as FASTA files named by class (`--label-from filename`).

- Proteins: modlAMP's peptide sets (BSD-3, a test dependency), e.g. `AMPvsUniProt.csv` (2,600
  antimicrobial peptides against 2,600 random UniProt peptides). Written out as one FASTA per class.
- DNA: janggu's Oct4 and Mafk ChIP-seq peaks (`sample.fa`, `sample2.fa`, 200 bp; GPL-3, installed with
  `--no-deps`). Never copied: the class-named files are symbolic links to the installed package's files.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

MODLAMP_SETS = {  # file -> (label of class 1, label of class 0)
    "AMPvsUniProt.csv": ("antimicrobial", "non-antimicrobial"),
    "AMPvsTMset.csv": ("antimicrobial", "transmembrane"),
    "ACP_CancPPD_vs_TM.csv": ("anticancer", "transmembrane"),
    "ACP_CancPPD_vs_Random.csv": ("anticancer", "random"),
}
JANGGU_SETS = {"Oct4": "sample.fa", "Mafk": "sample2.fa"}  # class -> file of janggu/resources


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (janggu's import needs keras)."""
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"the package {name!r} is not installed (pip install {name}"
                                f"{' --no-deps' if name == 'janggu' else ''})")
    return Path(next(iter(found.submodule_search_locations)))


def modlamp_fasta(out_dir: str | Path, name: str = "AMPvsUniProt.csv", limit: int | None = None) -> list[Path]:
    """Write a modlAMP peptide set as one FASTA per class (`<label>.fa`, headers `>NAME_<row>`); returns the files.
    `limit`: at most this many peptides per class (the first ones)."""
    if name not in MODLAMP_SETS:
        raise ValueError(f"unknown modlAMP set {name!r} (known: {', '.join(MODLAMP_SETS)})")
    csv = package_dir("modlamp") / "data" / name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_class: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    lines = csv.read_text().splitlines()[1:]  # first line: counts and class names
    for row, line in enumerate(lines):
        seq, _, cls = line.rpartition(",")
        if seq.strip():
            by_class[int(cls)].append((row, seq.strip()))
    stem = name.rsplit(".", 1)[0]
    files = []
    for cls, label in zip((1, 0), MODLAMP_SETS[name]):
        path = out / f"{label}.fa"
        items = by_class[cls][:limit] if limit else by_class[cls]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f">{stem}_{row}\n{seq}\n" for row, seq in items))
        tmp.replace(path)
        files.append(path)
    return files


def janggu_fasta(out_dir: str | Path) -> list[Path]:
    """janggu's Oct4 and Mafk peaks as `Oct4.fa` and `Mafk.fa`: symbolic links into the installed package
    (GPL-3 data is used in place, never copied); returns the links."""
    resources = package_dir("janggu") / "resources"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    links = []
    for label, name in JANGGU_SETS.items():
        target, link = resources / name, out / f"{label}.fa"
        if not target.is_file():
            raise FileNotFoundError(f"janggu has no {target}")
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        links.append(link)
    return links
