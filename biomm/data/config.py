"""DataConfig: how a cohort is read into batches (the `data:` section of a training config)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from biomm.config import StrictModel
from biomm.data.omics import OmicsLoaderConfig


class DataConfig(StrictModel):
    """How subjects of a cohort become batches: their kind, the modalities fed, batch size, context lengths, vocabularies."""
    kind: Literal["patients", "cells", "sequences"] = Field(
        "patients", description="Subjects are patients (EHR, imaging, text), cells (omics, text) or sequences (sequence, text)")
    modalities: list[str] = Field(..., min_length=1, description="Modalities fed to the model; each must exist in the cohort")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0, description="Loader processes (0 = in the training process: safe on 2 cores)")
    max_events: int = Field(256, ge=1, description="Most recent EHR events per subject")
    ehr_min_count: int = Field(1, ge=1, description="Codes seen fewer times in the training split map to <unk>")
    text_vocab_size: int = Field(2000, ge=50, description="WordPiece vocabulary trained on the cohort's texts")
    text_max_length: int = Field(64, ge=8)
    text_tokenizer: str | None = Field(None, description="Local directory of a pretrained tokenizer (overrides training one)")
    text_notes: int = Field(3, ge=1, description="Most recent notes joined into a patient's text")
    train_times: Literal["record", "notes"] = Field(
        "record", description="Patients: training samples per subject. 'record': one, the whole record; 'notes': also "
                              "one as of each note's time (events, notes and images up to then, no label), so each "
                              "note pairs with the record a clinician had when writing it")
    imaging_modalities: list[str] | None = Field(None, description="DICOM modalities used (e.g. [CR, DX]); default: all")
    label_key: str | None = Field(None, description="Cells: obs column whose label prompt ('a {label} cell') is the text")
    label_name: str | None = Field(None, description="Patients: a cohort label (labels table) given to each sample, for supervised objectives; sequences: the label whose prompt is the text")
    prompt: str = Field("a {label} cell", description="Cells and sequences: label prompt template")
    omics: OmicsLoaderConfig = OmicsLoaderConfig(batch_size=64, chunk_size=32, preload_chunks=8)
    sequence_max_tokens: int = Field(512, ge=4, description="Sequences: tokens fed per sequence (longer ones are cut at the end)")
    dna_kmer: int = Field(6, ge=1, le=8, description="Sequences: k of the built-in DNA k-mer tokenizer (1 = single nucleotides)")
    val_fraction_min: int = Field(2, ge=1, description="A split with fewer subjects than this is an error")
