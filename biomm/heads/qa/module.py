"""QAHead: the patient's projected fused latents (LLaVA), the question and the retrieved facts, read by a causal
LM in one sequence; three outputs on its last hidden states:

    [fused latents T] [question tokens] <Q> [cand 1 tokens] <C> ... [cand K tokens] <C> <NONE> [answer tokens]

- intent: the question type, from the hidden state at <Q> (it sees the latents and the question);
- pointer: which candidate holds the answer (or <NONE>: not on record), a score per <C> (each sees the
  question and its candidate) plus a linear score of the candidate's retrieval features;
- text: the LM's own next-token answer after <NONE>, for answers that are not copied from an event
  (the chest X-ray finding).

The markers <Q>, <C>, <NONE> are learned vectors inserted among the token embeddings, so any local
`transformers` causal LM (and its tokenizer) works unchanged. Saved as `<model>/heads/qa/` (config.json,
head.safetensors, lm/, tokenizer/); config.json also keeps the code kinds the head was trained with."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from biomm.fusion.projector import build_projector
from biomm.heads.qa.config import QAConfig
from biomm.heads.qa.questions import QTYPES
from biomm.heads.qa.retrieval import N_FEATURES
from biomm.objectives.autoregressive import IGNORE, build_lm
from biomm.schema import QueryError

HEAD_DIR = Path("heads") / "qa"
Q_MARK, C_MARK, NONE_MARK = -1, -2, -3


def build_qa_tokenizer(texts: list[str], vocab_size: int):
    """A word-piece vocabulary of the QA corpus (digits split one by one, so any number can be spelt)."""
    from tokenizers import decoders, pre_tokenizers

    from biomm.vocab.text import build_text_tokenizer

    tok = build_text_tokenizer(texts, vocab_size)
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)])
    backend.decoder = decoders.WordPiece()
    return tok


@dataclass
class Example:
    """One encoded question: token ids with marker placeholders (negative), the candidates' features
    [K + 1, N_FEATURES] (the last row is <NONE>), the targets, and the answer's token ids (free text only)."""

    key: tuple[str, float]
    ids: list[int]
    features: list[list[float]]
    intent: int = IGNORE
    pointer: int = IGNORE
    answer: list[int] | None = None


@dataclass
class HeadOutput:
    """Per example: intent logits [B, Q], pointer logits [B, K + 1] (-inf on padding) and the LM's next-token
    logits at <NONE> [B, V]."""

    intent: torch.Tensor
    pointer: torch.Tensor
    lm_logits: torch.Tensor


class QAHead(nn.Module):
    """`loss(fused, mask, examples)`, `forward(fused, mask, examples) -> HeadOutput`, `generate(...)` over fused
    tokens [B, T, D] and their mask [B, T]. `kinds`: code -> kind of record, as trained."""

    def __init__(self, cfg: QAConfig, tokenizer, lm: nn.Module, projector: nn.Module, fused_width: int,
                 kinds: dict[str, str] | None = None):
        super().__init__()
        self.cfg, self.tokenizer, self.fused_width, self.kinds = cfg, tokenizer, fused_width, kinds or {}
        self.lm = lm
        if cfg.lm.freeze:
            self.lm.requires_grad_(False)
        hidden = lm.config.hidden_size
        self.projector = projector
        self.marks = nn.Parameter(torch.randn(3, hidden) * 0.02)  # <Q>, <C>, <NONE>
        self.intent_head = nn.Linear(hidden, len(QTYPES))
        self.pointer_head = nn.Linear(hidden, 1)
        self.feature_head = nn.Linear(N_FEATURES + 1, 1, bias=False)  # + the <NONE> flag
        self.stop_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if self.stop_id is None:
            raise ValueError("the QA tokenizer needs a [SEP] or end-of-sequence token")

    @classmethod
    def build(cls, cfg: QAConfig, texts: list[str], fused_width: int, init_projector: nn.Module | None = None,
              kinds: dict[str, str] | None = None) -> "QAHead":
        """A new head: the LM (local checkpoint + its tokenizer, or a random preset LM over a corpus vocabulary) and
        a projector, copied from the clinical model's when it maps to the LM's width."""
        if cfg.lm.pretrained:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.lm.pretrained, local_files_only=True)
            lm = build_lm(pretrained=cfg.lm.pretrained)
        else:
            tokenizer = build_qa_tokenizer(texts, cfg.lm.vocab_size)
            lm = build_lm(cfg.lm.kind, None, cfg.lm.preset, len(tokenizer))
        projector = build_projector(cfg.projector, fused_width, lm.config.hidden_size)
        if init_projector is not None:
            try:
                projector.load_state_dict(init_projector.state_dict())
            except RuntimeError:  # another shape or kind: keep the fresh projector
                pass
        return cls(cfg, tokenizer, lm, projector, fused_width, kinds)

    # ------------------------------------------------------------------ text
    def tokens(self, text: str, limit: int) -> list[int]:
        """Token ids of `text`, at most `limit`."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][:limit]

    def encode(self, key: tuple[str, float], question: str, candidates: list[str], features: list[list[float]],
               intent: int = IGNORE, pointer: int = IGNORE, answer: str | None = None) -> Example:
        """An Example: the question, <Q>, each candidate's text and <C>, then <NONE> (+ the answer's ids)."""
        ids = self.tokens(question, self.cfg.retrieval.question_tokens) + [Q_MARK]
        for text in candidates:
            ids += self.tokens(text, self.cfg.retrieval.candidate_tokens) + [C_MARK]
        ids.append(NONE_MARK)
        feats = [list(f) + [0.0] for f in features] + [[0.0] * N_FEATURES + [1.0]]
        ans = self.tokens(answer, 8) + [self.stop_id] if answer is not None else None
        return Example(key, ids, feats, intent, pointer, ans)

    def decode(self, ids: list[int]) -> str:
        """Answer text of token ids."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return re.sub(r"(?<=\d) (?=\d)", "", text).strip()

    # ------------------------------------------------------------------ tensors
    def _embed(self, fused: torch.Tensor, mask: torch.Tensor, seqs: list[list[int]]):
        """inputs_embeds [B, T + L, H] and attention mask [B, T + L] of the prefix and right-padded sequences."""
        length = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), length, dtype=torch.long)
        attn = torch.zeros(len(seqs), length, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
        table = self.lm.get_input_embeddings()
        emb = table(ids.clamp_min(0))
        marks = self.marks.to(emb.dtype)
        for j, mark in enumerate((Q_MARK, C_MARK, NONE_MARK)):
            emb = torch.where((ids == mark).unsqueeze(-1), marks[j], emb)
        prefix = self.projector(fused).to(emb.dtype)
        return torch.cat([prefix, emb], 1), torch.cat([mask.long(), attn], 1), ids

    def _hidden(self, fused: torch.Tensor, mask: torch.Tensor, seqs: list[list[int]]):
        """The LM's last hidden states [B, L, H] over the text part (after the prefix) and the text ids [B, L].
        The decoder runs without its output layer: vocabulary logits are taken only where needed."""
        embeds, attn, ids = self._embed(fused, mask, seqs)
        out = self.lm.base_model(inputs_embeds=embeds, attention_mask=attn)
        return out.last_hidden_state[:, fused.shape[1]:], ids

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM's next-token logits [..., V] of hidden states [..., H]."""
        return self.lm.get_output_embeddings()(hidden)

    def forward(self, fused: torch.Tensor, mask: torch.Tensor, examples: list[Example]) -> HeadOutput:
        """Intent and pointer logits, and the LM's logits after <NONE>, of encoded examples (answers not included)."""
        hidden, ids = self._hidden(fused, mask, [e.ids for e in examples])
        return self._outputs(hidden, ids, examples)

    def _outputs(self, hidden, ids, examples) -> HeadOutput:
        b = len(examples)
        q_pos = (ids == Q_MARK).float().argmax(1)
        none_pos = (ids == NONE_MARK).float().argmax(1)
        rows = torch.arange(b)
        intent = self.intent_head(hidden[rows, q_pos])
        k = max(len(e.features) for e in examples)
        feats = torch.zeros(b, k, N_FEATURES + 1)
        valid = torch.zeros(b, k, dtype=torch.bool)
        states = torch.zeros(b, k, hidden.shape[-1], dtype=hidden.dtype)
        for i, e in enumerate(examples):
            pos = torch.nonzero((ids[i] == C_MARK) | (ids[i] == NONE_MARK)).squeeze(1)
            states[i, :len(pos)] = hidden[i, pos]
            feats[i, :len(e.features)] = torch.tensor(e.features)
            valid[i, :len(e.features)] = True
        score = self.pointer_head(states).squeeze(-1).float() + self.feature_head(feats).squeeze(-1)
        pointer = score.masked_fill(~valid, float("-inf"))
        return HeadOutput(intent.float(), pointer, self.vocab_logits(hidden[rows, none_pos]).float())

    def loss(self, fused: torch.Tensor, mask: torch.Tensor, examples: list[Example]) -> torch.Tensor:
        """Intent CE + pointer CE + the answer tokens' next-token loss (free-text answers), in one LM pass."""
        seqs = [e.ids + (e.answer or []) for e in examples]
        hidden, ids = self._hidden(fused, mask, seqs)
        out = self._outputs(hidden, ids, examples)
        intent_t = torch.tensor([e.intent for e in examples])
        pointer_t = torch.tensor([e.pointer for e in examples])
        loss = F.cross_entropy(out.intent, intent_t, ignore_index=IGNORE)
        if bool((pointer_t != IGNORE).any()):
            loss = loss + F.cross_entropy(out.pointer, pointer_t, ignore_index=IGNORE)
        rows, cols, targets = [], [], []
        for i, e in enumerate(examples):
            if e.answer:
                start = len(e.ids) - 1  # the state at <NONE> predicts the first answer token
                rows += [i] * len(e.answer)
                cols += list(range(start, start + len(e.answer)))
                targets += e.answer
        if targets:
            logits = self.vocab_logits(hidden[torch.tensor(rows), torch.tensor(cols)]).float()
            loss = loss + F.cross_entropy(logits, torch.tensor(targets))
        return loss

    @torch.no_grad()
    def generate(self, fused: torch.Tensor, mask: torch.Tensor, example: Example, max_new: int = 6) -> tuple[str, float]:
        """Greedy answer text after <NONE> for one example (fused [1, T, D]) and its log-probability."""
        seq, out, logp = list(example.ids), [], 0.0
        for _ in range(max_new):
            hidden, _ = self._hidden(fused, mask, [seq])
            step = torch.log_softmax(self.vocab_logits(hidden[0, len(seq) - 1]).float(), -1)
            tok = int(step.argmax())
            logp += float(step[tok])
            if tok == self.stop_id:
                break
            out.append(tok)
            seq.append(tok)
        return self.decode(out), logp

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write the head (LM, tokenizer, the other weights, config and code kinds) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(folder / "lm"))
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("lm.")}
        save_file(state, str(folder / "head.safetensors"))
        (folder / "config.json").write_text(json.dumps(
            {"qa": self.cfg.model_dump(mode="json"), "fused_width": self.fused_width, "kinds": self.kinds}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "QAHead":
        """Read what `save` wrote, in eval mode."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "head.safetensors").exists():
            raise FileNotFoundError(f"no QA head at {folder}; train one with `biomm qa train MODEL --cohort DIR`")
        meta = json.loads((folder / "config.json").read_text())
        cfg = QAConfig.model_validate(meta["qa"])
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(str(folder / "lm"), local_files_only=True)
        projector = build_projector(cfg.projector, meta["fused_width"], lm.config.hidden_size)
        head = cls(cfg, tokenizer, lm, projector, meta["fused_width"], meta.get("kinds"))
        missing, unexpected = head.load_state_dict(load_file(str(folder / "head.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith("lm.")]
        if missing or unexpected:
            raise ValueError(f"{folder / 'head.safetensors'} does not fit this head: missing {missing}, "
                             f"unexpected {unexpected}")
        return head.eval()


def load_qa_head(model) -> QAHead:
    """The QA head saved under `<model>/heads/qa/` (a model folder or a loaded model); QueryError without one."""
    folder = Path(getattr(model, "folder", model)) / HEAD_DIR
    if not (folder / "head.safetensors").exists():
        raise QueryError(f"model {folder.parents[1]} has no QA head (or one from an older biomm); train one with "
                         "`biomm qa train MODEL --cohort DIR`")
    return QAHead.load(folder)
