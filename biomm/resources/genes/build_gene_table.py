"""Rebuild `human_genes.tsv.gz` from Bioconductor's org.Hs.eg.db and GO.db SQLite files.

    apt-get download r-bioc-org.hs.eg.db r-bioc-go.db && dpkg -x FILE.deb DIR
    python -m biomm.resources.genes.build_gene_table ORG_HS_EG_SQLITE GO_SQLITE OUT.tsv.gz

Kept: genes that are protein-coding, RNA genes, or carry an Ensembl id (what single-cell
matrices name). Columns: entrez, symbol, ensembl ('|'-joined), type, name, aliases
('|'-joined, used only to map old symbols), go (up to 3 BP terms, experimental evidence first,
as 'GO:id term name'). Data: NCBI Gene and GO, CC BY 4.0.
"""
from __future__ import annotations

import csv
import gzip
import sqlite3
import sys
from collections import defaultdict

KEEP_TYPES = ("protein-coding", "ncRNA", "snoRNA", "rRNA", "tRNA", "snRNA", "scRNA")
EXPERIMENTAL = {"EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "HDA", "HMP", "TAS"}
MAX_GO = 3


def build(org_sqlite: str, go_sqlite: str, out: str) -> int:
    """Derive the compact gene table (symbol, Ensembl, Entrez, name, GO terms) from org.Hs.eg.db's SQLite."""
    con = sqlite3.connect(org_sqlite)
    go_names = dict(sqlite3.connect(go_sqlite).execute("SELECT go_id, term FROM go_term"))
    ens: dict[int, list[str]] = defaultdict(list)
    for _id, e in con.execute("SELECT _id, ensembl_id FROM ensembl ORDER BY ensembl_id"):
        ens[_id].append(e)
    aliases: dict[int, list[str]] = defaultdict(list)
    for _id, a in con.execute("SELECT _id, alias_symbol FROM alias ORDER BY alias_symbol"):
        aliases[_id].append(a)
    go: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for _id, g, ev in con.execute("SELECT _id, go_id, evidence FROM go_bp ORDER BY go_id"):
        if g != "GO:0008150":  # the root term says nothing
            go[_id].append((0 if ev in EXPERIMENTAL else 1, g))
    rows = con.execute(
        "SELECT g._id, g.gene_id, i.symbol, i.gene_name, t.gene_type FROM genes g "
        "JOIN gene_info i USING (_id) JOIN genetype t USING (_id) ORDER BY CAST(g.gene_id AS INTEGER)"
    ).fetchall()
    n = 0
    with gzip.open(out, "wt", newline="", compresslevel=9) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["entrez", "symbol", "ensembl", "type", "name", "aliases", "go"])
        for _id, entrez, symbol, name, gtype in rows:
            if gtype not in KEEP_TYPES and _id not in ens:
                continue
            terms = [g for _, g in sorted(set(go[_id]))[:MAX_GO]]
            w.writerow([entrez, symbol, "|".join(ens[_id]), gtype, name,
                        "|".join(a for a in aliases[_id] if a != symbol),
                        "; ".join(f"{g} {go_names.get(g, '')}".strip() for g in terms)])
            n += 1
    return n


if __name__ == "__main__":
    print(build(*sys.argv[1:4]), "genes written")
