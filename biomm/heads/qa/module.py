"""QAHead: a LLaVA projector + a causal LM that answers a question about the patient whose fused tokens
prefix it. Saved as `<model>/heads/qa/` (config.json, projector.safetensors, lm/, tokenizer/); config.json
also keeps the diagnosis codes (code -> display) the head was trained to ask about."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from biomm.fusion.projector import build_projector
from biomm.heads.qa.config import QAConfig
from biomm.objectives.autoregressive import IGNORE, Autoregressive, build_lm
from biomm.schema import QueryError
from biomm.types import Batch, Outputs

HEAD_DIR = Path("heads") / "qa"


def build_qa_tokenizer(texts: list[str], vocab_size: int):
    """A word-piece vocabulary of the QA corpus (digits split one by one, so any number can be spelt)."""
    from tokenizers import decoders, pre_tokenizers

    from biomm.data.text import build_text_tokenizer

    tok = build_text_tokenizer(texts, vocab_size)
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)])
    backend.decoder = decoders.WordPiece()
    return tok


class QAHead(nn.Module):
    """`loss(fused, mask, prompts, answers)`, `log_prob(...)`, `generate(...)` over fused tokens [B, T, D],
    their mask [B, T] and token id lists. `conditions`: the diagnosis codes (code -> display) it was trained on."""

    def __init__(self, cfg: QAConfig, tokenizer, lm: nn.Module, projector: nn.Module, fused_width: int,
                 conditions: dict[str, str] | None = None):
        super().__init__()
        self.cfg, self.tokenizer, self.fused_width = cfg, tokenizer, fused_width
        self.conditions = conditions
        self.projector = projector
        self.objective = Autoregressive(lm, "prefix", freeze_lm=cfg.lm.freeze)
        self.sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if self.sep_id is None:
            raise ValueError("the QA tokenizer needs a [SEP] or end-of-sequence token")

    @property
    def lm(self) -> nn.Module:
        """The causal language model."""
        return self.objective.lm

    @classmethod
    def build(cls, cfg: QAConfig, texts: list[str], fused_width: int, init_projector: nn.Module | None = None,
              conditions: dict[str, str] | None = None) -> "QAHead":
        """A new head: the LM (local checkpoint + its tokenizer, or a random preset LM over a corpus vocabulary) and
        a projector, copied from the clinical model's when it maps to the LM's width."""
        if cfg.lm.pretrained:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.lm.pretrained, local_files_only=True)
            lm = build_lm(pretrained=cfg.lm.pretrained)
        else:
            tokenizer = build_qa_tokenizer(texts, cfg.lm.vocab_size)
            lm = build_lm(cfg.lm.kind, None, cfg.lm.preset, len(tokenizer))
        hidden = lm.config.hidden_size
        projector = build_projector(cfg.projector, fused_width, hidden)
        if init_projector is not None:
            try:
                projector.load_state_dict(init_projector.state_dict())
            except RuntimeError:  # another shape or kind: keep the fresh projector
                pass
        return cls(cfg, tokenizer, lm, projector, fused_width, conditions)

    # ------------------------------------------------------------------ text
    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of a question, ending with the separator."""
        return self.tokenizer(question, add_special_tokens=False)["input_ids"] + [self.sep_id]

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer, ending with the separator (the stop token)."""
        return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.sep_id]

    def decode(self, ids: list[int]) -> str:
        """Answer text of token ids (digits joined back into numbers)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = re.sub(r"(?<=\d) (?=\d)", "", text)  # digits are spelt one token each
        return re.sub(r" ?([\[\]]) ?", r"\1", text).strip()

    # ------------------------------------------------------------------ tensors
    def _prefix(self, fused: torch.Tensor, mask: torch.Tensor) -> Outputs:
        return Outputs({}, {}, {}, fused, mask, aux={"lm_prefix": self.projector(fused), "lm_prefix_mask": mask})

    @staticmethod
    def _text_batch(prompts: list[list[int]], answers: list[list[int]]) -> dict[str, torch.Tensor]:
        length = max(len(p) + len(a) for p, a in zip(prompts, answers))
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            n = len(p) + len(a)
            ids[i, :n] = torch.tensor(p + a)
            attn[i, :n] = 1
            labels[i, len(p):n] = torch.tensor(a)
        return {"lm_input_ids": ids, "lm_attention_mask": attn, "lm_labels": labels}

    def loss(self, fused: torch.Tensor, mask: torch.Tensor, prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        """Next-token loss on the answer tokens only (the Autoregressive objective in prefix mode)."""
        batch = Batch({}, [""] * len(prompts), self._text_batch(prompts, answers))
        loss, _ = self.objective(self._prefix(fused, mask), batch)
        return loss

    def _logits(self, fused: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        out = self._prefix(fused, mask)
        embeds = self.lm.get_input_embeddings()(ids)
        embeds = torch.cat([out.aux["lm_prefix"].to(embeds.dtype), embeds], 1)
        attn = torch.cat([mask.long(), attn.long()], 1)
        return self.lm(inputs_embeds=embeds, attention_mask=attn).logits[:, fused.shape[1]:]

    def log_prob(self, fused: torch.Tensor, mask: torch.Tensor, prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        """Sum of the answer tokens' log-probabilities per example [B]."""
        t = self._text_batch(prompts, answers)
        logits = self._logits(fused, mask, t["lm_input_ids"], t["lm_attention_mask"]).float()
        logp = torch.log_softmax(logits[:, :-1], -1)
        target = t["lm_labels"][:, 1:]
        picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (picked * (target != IGNORE)).sum(1)

    @torch.no_grad()
    def generate(self, fused: torch.Tensor, mask: torch.Tensor, prompts: list[list[int]], max_new: int) -> list[str]:
        """Greedy answers; prompts of one batch must have the same length (no padding inside the text)."""
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("generate() takes prompts of equal length; group them by length")
        ids = torch.tensor(prompts)
        done = torch.zeros(len(prompts), dtype=torch.bool)
        out: list[list[int]] = [[] for _ in prompts]
        for _ in range(max_new):
            logits = self._logits(fused, mask, ids, torch.ones_like(ids))
            nxt = logits[:, -1].float().argmax(-1)
            for i, tok in enumerate(nxt.tolist()):
                if not done[i]:
                    if tok == self.sep_id:
                        done[i] = True
                    else:
                        out[i].append(tok)
            if bool(done.all()):
                break
            ids = torch.cat([ids, nxt[:, None]], 1)
        return [self.decode(o) for o in out]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write the head (LM, tokenizer, projector, config and diagnosis codes) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(folder / "lm"))
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()}, str(folder / "projector.safetensors"))
        (folder / "config.json").write_text(json.dumps(
            {"qa": self.cfg.model_dump(mode="json"), "fused_width": self.fused_width, "conditions": self.conditions},
            indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "QAHead":
        """Read what `save` wrote, in eval mode."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"no QA head at {folder}; train one with `biomm qa train MODEL --cohort DIR`")
        meta = json.loads((folder / "config.json").read_text())
        cfg = QAConfig.model_validate(meta["qa"])
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(str(folder / "lm"), local_files_only=True)
        projector = build_projector(cfg.projector, meta["fused_width"], lm.config.hidden_size)
        projector.load_state_dict(load_file(str(folder / "projector.safetensors")))
        return cls(cfg, tokenizer, lm, projector, meta["fused_width"], meta.get("conditions")).eval()


def load_qa_head(model) -> QAHead:
    """The QA head saved under `<model>/heads/qa/` (a model folder or a loaded model); QueryError without one."""
    folder = Path(getattr(model, "folder", model)) / HEAD_DIR
    if not (folder / "config.json").exists():
        raise QueryError(f"model {folder.parents[1]} has no QA head; train one with `biomm qa train MODEL --cohort DIR`")
    return QAHead.load(folder)
