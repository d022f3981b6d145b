"""FASTA records (plain or gzipped) with per-record validation: each bad record gets its own reason."""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from biomm.vocab.tokenizers import DNA_IUPAC, PROTEIN_LETTERS

Alphabet = Literal["dna", "protein", "auto"]
_DNA = frozenset(DNA_IUPAC)
_PROTEIN = frozenset(PROTEIN_LETTERS)
_PLAIN_DNA = frozenset("ACGTN")
MIN_DETECT_LENGTH = 12  # shorter peptides may be made of A/C/G/T letters by chance


@dataclass
class FastaRecord:
    """One FASTA record: id, description, sequence, its raw bytes (for quarantine) and its first line."""

    id: str
    description: str
    sequence: str
    raw: bytes
    line: int


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Records of a FASTA file as bytes-level records (so one binary byte spoils one record only).
    Hand-written: Biopython is not a dependency, and its parser stops at the first bad byte."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    header, lines, start, raw = None, [], 0, []
    with opener(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if line.startswith(b">"):
                if header is not None:
                    yield _record(header, lines, start, raw)
                header, lines, start, raw = line[1:].strip(), [], n, [line]
            elif header is None:
                if line.strip():
                    raise ValueError(f"line {n}: sequence data before the first '>' header: not FASTA")
            else:
                lines.append(line.strip())
                raw.append(line)
    if header is not None:
        yield _record(header, lines, start, raw)


def _record(header: bytes, lines: list[bytes], start: int, raw: list[bytes]) -> FastaRecord:
    text = header.decode("utf-8", errors="replace")
    parts = text.split(None, 1)
    seq = b"".join(lines).decode("latin-1")  # keeps every byte visible for the check
    return FastaRecord(parts[0] if parts else "", parts[1] if len(parts) > 1 else "", seq, b"".join(raw), start)


def check_sequence(seq: str, alphabet: Alphabet) -> tuple[str, str]:
    """Upper-cased sequence and its alphabet ('dna' or 'protein'); ValueError with the reason if invalid.

    A trailing '*' (stop) on a protein is dropped; DNA allows IUPAC ambiguity codes. 'auto' decides
    per record: DNA when all letters are IUPAC nucleotide codes and >= 75% are A/C/G/T/N."""
    if not seq:
        raise ValueError("empty sequence")
    s = seq.upper()
    if alphabet in ("protein", "auto") and s.endswith("*"):
        s = s[:-1]
    detected = detect_alphabet(s)
    if alphabet == "auto":
        alphabet = detected
    elif alphabet == "protein" and set(s) <= _DNA and _plain_share(s) >= 0.9 and len(s) >= MIN_DETECT_LENGTH:
        # stricter than 'auto': a cysteine-rich peptide (S, C, T, V) can pass the 75% rule
        raise ValueError(f"looks like DNA ({_plain_share(s):.0%} A/C/G/T/N, only nucleotide codes) but is ingested "
                         "as protein: use --alphabet dna (or auto)")
    elif alphabet == "dna" and set(s) <= _PROTEIN and not set(s) <= _DNA and _plain_share(s) < 0.75:
        raise ValueError(f"looks like protein (amino-acid letters {''.join(sorted(set(s) - _DNA))}) but is "
                         "ingested as DNA: use --alphabet protein (or auto)")
    allowed = _DNA if alphabet == "dna" else _PROTEIN
    for i, ch in enumerate(s):
        if ch not in allowed:
            kind = "binary/control byte" if (ord(ch) < 32 or ord(ch) >= 127) else "invalid character"
            raise ValueError(f"{kind} {ch!r} (0x{ord(ch):02X}) at position {i + 1} for alphabet {alphabet} "
                             f"(allowed: {''.join(sorted(allowed))})")
    return s, alphabet


def link_from_header(regex: re.Pattern, header: str) -> str | None:
    """The link named by `regex` in a header: group 'link' if named, else group 1, else the whole match."""
    m = regex.search(header)
    if not m:
        return None
    if "link" in regex.groupindex:
        return m.group("link")
    return m.group(1) if regex.groups else m.group(0)


def _plain_share(s: str) -> float:
    return sum(ch in _PLAIN_DNA for ch in s) / max(len(s), 1)


def detect_alphabet(seq: str) -> str:
    """'dna' when every letter of the (upper-case) sequence is an IUPAC nucleotide code and at least 75%
    are A/C/G/T/N (a protein of those letters only is implausible at that composition), else 'protein'."""
    return "dna" if set(seq) <= _DNA and _plain_share(seq) >= 0.75 else "protein"


def header_label(description: str, key: str) -> str | None:
    """The value of `KEY=value` (or `KEY:value`) among the header's whitespace- or `|`-separated tokens; None without one."""
    for token in re.split(r"[\s|;]+", description):
        for sep in ("=", ":"):
            name, found, value = token.partition(sep)
            if found and name == key and value:
                return value
    return None


def filename_label(path: str | Path) -> str:
    """A file's name without its FASTA (and .gz) suffixes: `amp.fa.gz` -> `amp`."""
    name = Path(path).name
    for suffix in (".gz", ".fasta", ".fa", ".fna", ".faa"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name
