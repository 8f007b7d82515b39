"""The live model behind a store: tokenize a prompt, read feature activations, ablate or clamp.

A store lives in its run folder (`runs/<name>/store/`); the trained model, tokenizer and SAEs
it was computed from are its siblings (`../model`, `../tokenizer`, `../sae/<size>`). Only the
prompt explorer needs them, so torch and TransformerLens are imported here lazily and only
when `LiveRun.open` is called; a store copied without its run folder still browses fine and
the prompt explorer says what is missing.

Interventions act on `blocks.0.mlp.hook_post` at every position but BOS (as the SAE metrics
do): *ablate* subtracts the feature's contribution f_i(x)·d_i (for a neuron, zeroes it);
*clamp* sets the feature's activation to a value wherever it is active, or everywhere with
`everywhere=True` (adding (v − f_i(x))·d_i). The SAE's reconstruction error is left in place,
so only the chosen feature's part of the activation changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.errors import FeatureNotFound, StoreError
from feature_store.records import NEURONS


@dataclass(frozen=True)
class PromptActivations:
    token_ids: tuple[int, ...]  # BOS first
    tokens: tuple[str, ...]  # display forms
    acts: np.ndarray  # [n_tokens, n_features] float32; row 0 (BOS) is zero for SAEs


@dataclass(frozen=True)
class NextTokenChange:
    """At one position: the next-token distribution before and after the intervention."""

    position: int
    top_before: tuple[tuple[str, float], ...]  # (display, probability), most likely first
    top_after: tuple[tuple[str, float], ...]
    # (display, Δp, Δ log p), largest |Δp| first: ranked by probability moved, so a rare
    # token whose log-probability swings a lot but stays negligible does not crowd the list
    biggest_changes: tuple[tuple[str, float, float], ...]
    kl: float  # KL(before ‖ after) in nats


class LiveRun:
    """Read-only after `open`; safe to share through `st.cache_resource` (calls use no_grad)."""

    def __init__(self, run_dir: Path, tokenizer, model, saes: dict[str, tuple[Any, dict]],
                 display: list[str], n_ctx: int):
        self.run_dir, self.tokenizer, self.model, self.saes = run_dir, tokenizer, model, saes
        self.display, self.n_ctx = display, n_ctx

    @classmethod
    def open(cls, store_path: str | Path) -> "LiveRun":
        store = Path(store_path)
        run_dir = store.resolve().parent
        needed = [run_dir / "model" / "model.safetensors", run_dir / "tokenizer" / "tokenizer.json"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise StoreError(f"{store}: the live model needs its run folder beside the store; "
                             f"missing {', '.join(missing)}")
        from tokenizers import Tokenizer

        from feature_store.sae_files import load_sae
        from feature_store.schema import dictionary_name
        from feature_store.transformer_files import load_transformer

        tokenizer_path = run_dir / "tokenizer" / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as err:  # tokenizers raises a bare Exception on a corrupt file
            raise StoreError(f"{tokenizer_path}: unreadable tokenizer ({err})") from None
        model = load_transformer(run_dir / "model")
        saes = {}
        for folder in sorted((run_dir / "sae").glob("*/"), key=lambda p: int(p.name) if p.name.isdigit() else 0):
            if (folder / "sae.safetensors").exists():
                spec, tensors = load_sae(folder)
                saes[dictionary_name(spec.d_sae)] = (spec, tensors)
        import pyarrow as pa
        import pyarrow.parquet as pq

        vocab_path = run_dir / "tokenizer" / "vocab.parquet"
        try:
            vocab = pq.read_table(vocab_path, columns=["display"])
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"{vocab_path}: unreadable ({err})") from None
        n_ctx = int(model.cfg.n_ctx)
        return cls(run_dir, tokenizer, model, saes, vocab.column("display").to_pylist(), n_ctx)

    def dictionaries(self) -> list[str]:
        return [NEURONS, *self.saes]

    def n_features(self, dictionary: str) -> int:
        if dictionary == NEURONS:
            return int(self.model.cfg.d_mlp)
        if dictionary not in self.saes:
            raise FeatureNotFound(f"no dictionary {dictionary!r} in {self.run_dir / 'sae'}; "
                                  f"known: {self.dictionaries()}")
        return self.saes[dictionary][0].d_sae

    def tokenize(self, text: str) -> list[int]:
        """BOS + the text's tokens, cut to the model's context."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [0, *ids][: self.n_ctx]

    def _check(self, dictionary: str, feature: int) -> None:
        n = self.n_features(dictionary)
        if not 0 <= feature < n:
            raise FeatureNotFound(f"feature {feature} is out of range for {dictionary!r} (0..{n - 1})")

    def _codes(self, dictionary: str, mlp):
        """Feature activations [batch, pos, n] of MLP activations `mlp`."""
        if dictionary == NEURONS:
            return mlp
        from feature_store.sae_files import encode

        spec, tensors = self.saes[dictionary]
        return encode(spec, tensors, mlp)

    def _direction(self, dictionary: str, feature: int):
        """The change in hook_post per unit of the feature's activation."""
        import torch

        if dictionary == NEURONS:
            return torch.nn.functional.one_hot(torch.tensor(feature), int(self.model.cfg.d_mlp)).float()
        from feature_store.sae_files import decoder_directions

        spec, tensors = self.saes[dictionary]
        return decoder_directions(spec, tensors, feature)

    def activations(self, text: str, dictionary: str) -> PromptActivations:
        import torch

        from feature_store.transformer_files import mlp_activations

        self.n_features(dictionary)
        ids = self.tokenize(text)
        with torch.no_grad():
            mlp = mlp_activations(self.model, torch.tensor([ids]))
            acts = self._codes(dictionary, mlp)[0].float().numpy().copy()
        if dictionary != NEURONS:
            acts[0] = 0.0  # BOS was never in the SAE's data: its code means nothing
        return PromptActivations(tuple(ids), tuple(self.display[i] for i in ids), acts)

    def intervene(self, text: str, dictionary: str, feature: int, mode: str = "ablate",
                  value: float = 0.0, everywhere: bool = False, top: int = 8) -> list[NextTokenChange]:
        """The next-token distribution at every position, before and after the intervention."""
        import torch

        from feature_store.transformer_files import HOOK_POST

        self._check(dictionary, feature)
        if mode not in ("ablate", "clamp"):
            raise ValueError(f"mode must be ablate or clamp, got {mode!r}")
        ids = torch.tensor([self.tokenize(text)])
        direction = self._direction(dictionary, feature)

        def hook(mlp, hook):
            f = self._codes(dictionary, mlp)[..., feature]
            if mode == "ablate":
                target = torch.zeros_like(f)
            else:
                target = torch.full_like(f, value) if everywhere else torch.where(f > 0, value, f)
            delta = (target - f).unsqueeze(-1) * direction
            delta[:, 0] = 0.0  # leave BOS alone
            return mlp + delta

        with torch.no_grad():
            before = self.model(ids).log_softmax(-1)[0]
            after = self.model.run_with_hooks(ids, fwd_hooks=[(HOOK_POST, hook)]).log_softmax(-1)[0]
        out = []
        for pos in range(ids.shape[1]):
            b, a = before[pos], after[pos]
            change = a - b
            moved_p = a.exp() - b.exp()
            top_b, top_a = b.topk(top), a.topk(top)
            moved = moved_p.abs().topk(top).indices
            out.append(NextTokenChange(
                position=pos,
                top_before=tuple((self.display[int(i)], float(b[i].exp())) for i in top_b.indices),
                top_after=tuple((self.display[int(i)], float(a[i].exp())) for i in top_a.indices),
                biggest_changes=tuple((self.display[int(i)], float(moved_p[i]), float(change[i]))
                                      for i in moved),
                kl=float((b.exp() * (b - a)).sum()),
            ))
        return out
