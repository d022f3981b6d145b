"""Vocabularies and tokenizers shared by ingest and the model: the gene vocabulary of the shipped gene
table, and gene / protein / DNA tokenizers."""
