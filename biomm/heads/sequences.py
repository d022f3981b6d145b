"""Heads of a sequence model (`data.kind: sequences`): sequence embeddings, annotation by zero-shot label
prompts (cosine to the embedded prompts, CLIP / ProtST style) or by a linear probe on frozen embeddings,
and the bridge across scales: a gene table (gene symbol -> vector) from the sequence encoder's embeddings
of gene products, which a cell model's gene-identity embeddings start from (UCE style).

Sequence embeddings are the sequence modality's pooled embedding alone (`model.embed("sequence", ...)`):
the label prompt, the training text, never enters them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from biomm.data.sequence import DATA_ARTIFACT, SequenceDataModule
from biomm.data.text import encode_texts
from biomm.vocab.text import load_text_tokenizer
from biomm.heads.cells.annotation import LinearProbe, softmax, zero_shot_scores
from biomm.ingest.sequence.read import check_sequence, header_label, read_fasta
from biomm.model.bundle import Embeddings, LoadedModel
from biomm.schema import Evidence, Neighbor, QueryError, QueryRequest, QueryResponse

PROBE_DIR = Path("heads") / "sequence_probe"
ZERO_SHOT_TEMPERATURE = 0.05


def sequence_labels(loaded: LoadedModel) -> tuple[str | None, list[str], str]:
    """(label name, categories, prompt template) the sequence model was trained with."""
    path = loaded.folder / "artifacts" / DATA_ARTIFACT
    if not path.exists():
        raise QueryError(f"model {loaded.folder.name} is not a sequence model (no artifacts/{DATA_ARTIFACT})")
    info = json.loads(path.read_text())
    return info.get("label_name"), list(info["categories"]), info["prompt"]


def read_query_fasta(path: str | Path, alphabet: str, limit: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """(ids, sequences, problems) of a FASTA to annotate (a file path, or FASTA text itself when it starts with
    '>', as an HTTP client sends it); a bad record is left out with its reason."""
    ids, seqs, problems = [], [], []
    text = str(path).lstrip()
    try:
        if text.startswith(">"):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "query.fa").write_text(text)
                records, path = list(read_fasta(Path(tmp) / "query.fa")), "query"
        else:
            records = list(read_fasta(path))
    except (ValueError, OSError, EOFError) as exc:
        raise QueryError(f"{path}: not a readable FASTA file: {exc}") from None
    for rec in records:
        try:
            s, _ = check_sequence(rec.sequence, alphabet)
        except ValueError as exc:
            problems.append(f"{Path(path).name} [{rec.id or f'line {rec.line}'}]: {exc}")
            continue
        ids.append(rec.id)
        seqs.append(s)
        if limit and len(ids) >= limit:
            break
    if not ids:
        raise QueryError(f"{path}: no usable {alphabet} sequence" + (f" ({problems[0]})" if problems else ""))
    return ids, seqs, problems


class SequenceHeads:
    """A sequence model over a cohort: embeddings, zero-shot and probe annotation, similar sequences."""

    def __init__(self, loaded: LoadedModel, cohort: str | Path, embeddings: Embeddings | None = None):
        if loaded.kind != "sequences":
            raise QueryError(f"model {loaded.config.name} is a {loaded.kind} model; sequence heads need a sequence model")
        self.loaded, self.cohort = loaded, Path(cohort)
        self.label_name, self.categories, self.prompt = sequence_labels(loaded)
        self.dm: SequenceDataModule = loaded.datamodule(cohort, modalities=["sequence"])
        self.alphabet = self.dm.sources["sequence"].info["alphabet"]
        path = loaded.folder / PROBE_DIR
        self.probe = LinearProbe.load(path) if (path / "annotator.json").exists() else None
        self._prompts: np.ndarray | None = None
        self.embeddings = embeddings  # the cohort's embeddings when already made (the query engine's): reused
        self._cohort: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}

    # ----------------------------------------------------------------------- embeddings
    @torch.no_grad()
    def embed_batches(self, batches) -> tuple[list[str], np.ndarray]:
        """(ids, sequence embeddings [N, D]) of Batches carrying the sequence modality."""
        ids, out = [], []
        for b in batches:
            out.append(self.loaded.model.embed("sequence", b.modalities["sequence"].tensors).float().numpy())
            ids.extend(b.subject_ids)
        if not ids:
            raise QueryError("nothing to embed: no sequence")
        return ids, np.concatenate(out)

    def cohort_embeddings(self, split: str = "all") -> tuple[list[str], np.ndarray, np.ndarray]:
        """(subject ids, embeddings [N, D], label codes [N] (-1 = unlabelled)) of the cohort's sequences in `split`
        (embedded once per split, or taken from the embeddings the heads were given)."""
        if split in self._cohort:
            return self._cohort[split]
        samples = self.dm.samples[split]
        ids = [s.subject_id for s in samples]
        given = self.embeddings
        row = {sid: i for i, sid in enumerate(given.subject_ids)} if given is not None else {}
        if given is not None and "sequence" in given.modalities and all(i in row for i in ids):
            emb = given.modalities["sequence"][[row[i] for i in ids]]
        else:
            ids, emb = self.embed_batches(self.dm.loader(split))
        codes = np.array([s.labels.get(self.label_name, np.nan) if self.label_name else np.nan for s in samples])
        self._cohort[split] = (ids, emb, np.where(np.isnan(codes), -1, codes).astype(np.int64))
        return self._cohort[split]

    def embed_sequences(self, seqs: list[str], ids: list[str] | None = None) -> np.ndarray:
        """Embeddings [N, D] of sequences outside the cohort (tokenized as in training)."""
        ids = ids or [f"query{i}" for i in range(len(seqs))]
        return self.embed_batches(self.dm.sequence_batches(seqs, ids))[1]

    # ----------------------------------------------------------------------- annotation
    def prompt_embeddings(self) -> np.ndarray:
        """Text embeddings [C, D] of each category's label prompt."""
        if self._prompts is None:
            if "text" not in self.loaded.model.adapters:
                raise QueryError(f"model {self.loaded.config.name} has no text adapter: zero-shot needs one")
            tok = load_text_tokenizer(self.loaded.folder / "artifacts" / "text_tokenizer")
            enc = encode_texts(tok, [self.prompt.format(label=c) for c in self.categories],
                               self.loaded.config.data.text_max_length)
            with torch.no_grad():
                self._prompts = self.loaded.model.embed("text", enc).float().numpy()
        return self._prompts

    def zero_shot(self, emb: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] over the categories from cosines to the label prompts."""
        if not self.categories:
            raise QueryError(f"model {self.loaded.config.name} was trained without labels: no prompts to compare with")
        return softmax(zero_shot_scores(emb, self.prompt_embeddings()) / ZERO_SHOT_TEMPERATURE)

    def fit_probe(self, split: str = "train", save: bool = True) -> LinearProbe:
        """The linear probe on the `split` sequences' embeddings and labels (saved with the model)."""
        _, emb, codes = self.cohort_embeddings(split)
        keep = codes >= 0
        probe = LinearProbe.fit(emb[keep], codes[keep], self.categories)
        if save:
            probe.save(self.loaded.folder / PROBE_DIR)
        self.probe = probe
        return probe

    def annotate(self, emb: np.ndarray, method: str = "auto") -> tuple[list[str], np.ndarray, str]:
        """(labels [N], confidences [N], method used): `probe`, `zero-shot`, or `auto` (the probe when fitted)."""
        if method not in ("auto", "probe", "zero-shot"):
            raise QueryError(f"unknown annotation method {method!r} (auto, probe, zero-shot)")
        if method == "probe" and self.probe is None:
            raise QueryError("no fitted sequence probe: run `biomm eval` on the model first")
        if method == "zero-shot" or (method == "auto" and self.probe is None):
            p, classes, method = self.zero_shot(emb), self.categories, "zero-shot"
        else:
            p, classes, method = self.probe.proba(emb), self.probe.classes, "probe"
        return [classes[i] for i in p.argmax(1)], p.max(1), method

    def answer(self, request: QueryRequest) -> QueryResponse:
        """kind=annotate for a sequence model: the labels of `request.sequences` (a FASTA) or of the cohort's
        sequences, with each one's most similar cohort sequences as evidence."""
        problems: list[str] = []
        if request.sequences:
            ids, seqs, problems = read_query_fasta(request.sequences, self.alphabet, request.max_cells)
            emb = self.embed_sequences(seqs, ids)
        else:
            ids, emb, _ = self.cohort_embeddings("all")
            ids, emb = ids[: request.max_cells], emb[: request.max_cells]
        labels, conf, method = self.annotate(emb)
        counts = {c: labels.count(c) for c in sorted(set(labels))}
        ref_ids, ref_emb, ref_codes = self.cohort_embeddings("all")
        sims = zero_shot_scores(emb[:1], ref_emb)  # cosines of the first sequence to the cohort's
        top = np.argsort(-sims[0])[:5]
        neighbours = [Neighbor(subject_id=ref_ids[i], score=float(sims[0, i]),
                               label=self.categories[ref_codes[i]] if ref_codes[i] >= 0 else None) for i in top]
        warnings = list(problems)
        if method == "zero-shot":
            warnings.append("no fitted probe: zero-shot from label prompts (fit one with `biomm eval`)")
        return QueryResponse(
            kind="annotate", model=self.loaded.config.name, value=labels[0] if len(labels) == 1 else None,
            answer=f"{len(labels)} sequences annotated ({method}): " + ", ".join(f"{n} {c}" for c, n in counts.items()),
            details={"method": method, "counts": counts, "label_name": self.label_name,
                     "sequences": [{"id": i, "label": lab, "confidence": round(float(c), 4)}
                                   for i, lab, c in zip(ids, labels, conf)]},
            evidence=Evidence(similar_subjects=neighbours), warnings=warnings)


# --------------------------------------------------------------------------- the bridge across scales
def gene_symbols(ids: list[str], descriptions: list[str], symbol_from: str = "header:gene") -> list[str | None]:
    """The gene symbol of each FASTA record: `id` (the record id), `header:KEY` (a KEY=value token) or
    `regex:PATTERN` (group 1 of a regex on the id and description)."""
    if symbol_from == "id":
        return list(ids)
    if symbol_from.startswith("header:"):
        key = symbol_from.split(":", 1)[1]
        return [header_label(d, key) for d in descriptions]
    if symbol_from.startswith("regex:"):
        rx = re.compile(symbol_from.split(":", 1)[1])
        return [(m.group(1) if m and rx.groups else m.group(0) if m else None)
                for m in (rx.search(f"{i} {d}") for i, d in zip(ids, descriptions))]
    raise ValueError(f"symbol_from must be id, header:KEY or regex:PATTERN, got {symbol_from!r}")


def gene_table_from_fasta(loaded: LoadedModel, fasta: str | Path, cohort: str | Path,
                          symbol_from: str = "header:gene") -> tuple[list[str], np.ndarray, list[str]]:
    """(gene symbols [G], vectors [G, D], problems): the sequence model's embedding of each gene product in
    `fasta` (several products of one gene are averaged). `cohort`: the cohort the model reads (its tokenizer)."""
    heads = SequenceHeads(loaded, cohort)
    records = list(read_fasta(fasta))
    symbols = gene_symbols([r.id for r in records], [r.description for r in records], symbol_from)
    seqs, names, problems = [], [], []
    for rec, sym in zip(records, symbols):
        if not sym:
            problems.append(f"{Path(fasta).name} [{rec.id}]: no gene symbol ({symbol_from})")
            continue
        try:
            s, _ = check_sequence(rec.sequence, heads.alphabet)
        except ValueError as exc:
            problems.append(f"{Path(fasta).name} [{rec.id}]: {exc}")
            continue
        seqs.append(s)
        names.append(sym)
    if not seqs:
        raise QueryError(f"{fasta}: no gene product with a symbol and a valid {heads.alphabet} sequence")
    emb = heads.embed_sequences(seqs)
    order = sorted(set(names))
    index = {g: i for i, g in enumerate(order)}
    table = np.zeros((len(order), emb.shape[1]), dtype=np.float64)
    n = np.zeros(len(order))
    for sym, e in zip(names, emb):
        table[index[sym]] += e
        n[index[sym]] += 1
    return order, (table / n[:, None]).astype(np.float32), problems


def write_gene_table(path: str | Path, symbols: list[str], vectors: np.ndarray) -> Path:
    """Write a gene table as the omics adapter reads it (`adapters.omics.gene_embeddings`): the first column
    names the gene, the others hold its vector (`.parquet`, `.tsv` or `.csv` by the suffix). Atomic."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(vectors, columns=[f"e{i}" for i in range(vectors.shape[1])])
    df.insert(0, "gene", symbols)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, sep="," if path.suffix == ".csv" else "\t", index=False)
    tmp.replace(path)
    return path
