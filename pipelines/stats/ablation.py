"""Direct effects on the next-token logits, through LN_final and the unembedding: each unit's
logit weights, and the ablation effect of every example token (pass 3 of the statistics pass).

Ablation effect (Towards Monosemanticity): Δ log p(token[t+1]) at token t when the unit's
contribution a·v (v = direction · W_out, in the residual stream) is removed. In a one-layer
model the MLP writes straight into the final residual, so only the logits at t change:
logits' = LN_final(r_t − a·v)·W_U + b_U, with LN_final's real normalisation recomputed on the
modified residual. Computed without a new forward pass per pair: with c = r − mean(r),
G = diag(γ)·W_U, z = c·G and w = (v − mean(v))·G (the logit weights),
logits' = (z − a·w) / σ' + β·W_U + b_U, σ' = sqrt(mean((c − a·v_c)²) + ε): exact, and only
d_vocab work per (unit, token) instead of d_model·d_vocab. 0 where the unit is inactive; NaN
at the window's last token (its next token is not shown).

Logit weights: w_i = (v_i − mean(v_i))·diag(γ)·W_U: the direct effect on the logits per unit
of activation with LN_final's centring and γ folded in. LN's data-dependent scale 1/σ is NOT
folded in (it depends on the token), so the values rank tokens and compare features at one
scale, not the change in logit at a given token (the ablation effect gives that).

Neurons before the mid-MLP LayerNorm (`neurons_pre_ln`) have no fixed v: removing one
changes the LayerNorm's mean and scale, so every neuron after it moves. Their effect is
computed from the captured pre-LN vector u at the token: Δr = (LN(u with u_j = 0) − LN(u))·W_out,
then the same exact LN_final recomputation with Δr in place of −a·v (d_model·d_vocab work
per pair instead of d_vocab; few pairs, as for the neurons). Splitting Δr into a per-token
term (1/s0 − 1/s)·(γ⊙x)·W_out and a per-neuron term (u_j/s0)·γ_j·W_out[j] (centred) makes
the per-pair work O(d_vocab) but needs a [tokens, d_vocab] table per chunk; on tiny the pairs
are ~1.3 per token, so it measured no faster (4.9 vs 4.4 s for 367k pairs, 2026-12-07).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feature_store.transformer_files import HOOK_PRE_LN, capture, capture_many
from pipelines import progress
from pipelines.config import StatsConfig
from pipelines.model.readout import MidLN, Readout, mid_ln
from pipelines.stats.dictionaries import Dictionary
from pipelines.stats.sampling import Examples, window_layout

PAIR_CHUNK = 128  # pairs whose [pairs, d_vocab] logits are made at a time (2 MB at 4,096: in cache)
RESID_HOOK = "ln_final.hook_in"  # the final residual stream, what LN_final reads (TL 4.3 bridge)


@torch.no_grad()
def final_residual(model, tokens: torch.Tensor) -> torch.Tensor:
    """[S, n_ctx, d_model] input of LN_final."""
    return capture(model, tokens, RESID_HOOK).float()  # stops before the unembedding


@dataclass(frozen=True)
class AblationRequests:
    """The window cells of one dictionary's examples that need an ablation effect: active,
    inside the sequence, and not the window's last token. Arrays aligned by request."""

    dictionary: int  # position in the dictionaries list
    row: np.ndarray  # example row
    column: np.ndarray  # window column
    feature: np.ndarray
    seq_id: np.ndarray
    position: np.ndarray  # of the token whose next-token log-probability changes
    act: np.ndarray  # the unit's activation there


def ablation_requests(index: int, ex: Examples, cfg: StatsConfig,
                      n_ctx: int) -> AblationRequests:
    """Set `ex.ablation` to 0 inside the sequence and NaN elsewhere (padding and each window's
    last token), and list the cells still to compute."""
    pos, valid = window_layout(ex, cfg, n_ctx)
    last = valid & ~np.roll(valid, -1, axis=1)
    last[:, -1] = valid[:, -1]
    ex.ablation = np.where(valid, 0.0, np.nan).astype(np.float32)
    ex.ablation[last] = np.nan
    r, j = np.nonzero(valid & ~last & (ex.acts > 0))
    return AblationRequests(index, r, j, ex.feature[r], ex.seq_id[r], pos[r, j], ex.acts[r, j])


@torch.no_grad()
def fill_ablation(model, seqs: np.ndarray, dictionaries: list[Dictionary],
                  examples: dict[str, Examples], weights: dict[str, torch.Tensor], ro: Readout,
                  cfg: StatsConfig, n_ctx: int, device: str) -> int:
    """Pass 3: Δ log p(next token) for every active, non-final window token of every example,
    written into each `Examples.ablation`. Each distinct (unit, sequence, position) is computed
    once; returns how many there were. Dictionaries without a direction (neurons_pre_ln) go
    through the mid-MLP LayerNorm (module docstring). `ablation_plan` lists the pairs and
    their chunks of sequences, `ablation_chunks` computes chunks (here all of them; the Ray
    engine hands chunks to workers), `apply_ablation` writes the values back."""
    plan = ablation_plan(dictionaries, examples, cfg, n_ctx, seqs.shape[0])
    if plan is None:
        return 0
    bar = progress.bar(total=plan.u_feat.size, desc="stats (3/3 ablation)", unit="pair",
                       unit_scale=True)
    result = np.empty(plan.u_feat.size, dtype=np.float32)
    for idx, values in ablation_chunks(model, seqs, dictionaries, weights, ro, plan,
                                       range(len(plan.chunks)), device, bar):
        result[idx] = values
    bar.close()
    apply_ablation(plan, examples, dictionaries, result)
    return int(plan.u_feat.size)


@dataclass(frozen=True)
class AblationPlan:
    """Pass 3's work: the distinct (unit, sequence, position) pairs (`u_*`, unit = row in the
    dictionaries' concatenation) and the chunks of sequences they are computed in. A chunk's
    values do not depend on which process computes it or in what order."""

    requests: list[AblationRequests]
    inverse: np.ndarray  # request -> pair
    u_feat: np.ndarray
    u_seq: np.ndarray
    u_pos: np.ndarray
    u_act: np.ndarray
    chunks: list[np.ndarray]  # sorted sequence ids per chunk
    chunk_pairs: list[np.ndarray]  # pair indices per chunk


def ablation_plan(dictionaries: list[Dictionary], examples: dict[str, Examples],
                  cfg: StatsConfig, n_ctx: int, n_seqs: int) -> AblationPlan | None:
    """Every pair to compute, in chunks of up to 32 sequences (None: nothing to compute)."""
    requests = [ablation_requests(i, examples[d.name], cfg, n_ctx)
                for i, d in enumerate(dictionaries)]
    if not any(q.row.size for q in requests):
        return None
    which = np.concatenate([np.full(q.row.size, q.dictionary) for q in requests])
    feat = np.concatenate([q.feature for q in requests])
    seq = np.concatenate([q.seq_id for q in requests])
    pos = np.concatenate([q.position for q in requests])
    act = np.concatenate([q.act for q in requests]).astype(np.float32)
    offsets = np.cumsum([0] + [d.n for d in dictionaries])
    gfeat = offsets[which] + feat  # a unit's row in the concatenated tables below
    key = (gfeat * n_seqs + seq) * n_ctx + pos
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    u_seq = seq[first]
    order = np.argsort(u_seq, kind="stable")
    sorted_seq = u_seq[order]
    seq_list = np.unique(u_seq)
    per_batch = max(1, min(32, cfg.batch_tokens // n_ctx))  # z is [tokens, d_vocab]
    chunks, chunk_pairs = [], []
    for lo in range(0, seq_list.size, per_batch):
        chunk = seq_list[lo: lo + per_batch]
        a = np.searchsorted(sorted_seq, chunk[0], side="left")
        b = np.searchsorted(sorted_seq, chunk[-1], side="right")
        chunks.append(chunk)
        chunk_pairs.append(order[a:b])
    return AblationPlan(requests, inverse, gfeat[first], u_seq, pos[first], act[first],
                        chunks, chunk_pairs)


def apply_ablation(plan: AblationPlan, examples: dict[str, Examples],
                   dictionaries: list[Dictionary], result: np.ndarray) -> None:
    """Each pair's value (`result`, by pair) into its examples' `ablation` cells."""
    values = result[plan.inverse]
    at = 0
    for q in plan.requests:
        ex = examples[dictionaries[q.dictionary].name]
        ex.ablation[q.row, q.column] = values[at: at + q.row.size]
        at += q.row.size


@torch.no_grad()
def ablation_chunks(model, seqs: np.ndarray, dictionaries: list[Dictionary],
                    weights: dict[str, torch.Tensor], ro: Readout, plan: AblationPlan,
                    chunk_ids, device: str, bar=None):
    """Yields (pair indices, values) for each chunk in `chunk_ids`: one forward pass over the
    chunk's sequences, then the exact per-pair effect."""
    u_feat, u_seq, u_pos, u_act = plan.u_feat, plan.u_seq, plan.u_pos, plan.u_act
    d_model = ro.G.shape[0]
    out_dir = torch.cat([d.out_dir if d.has_direction
                         else torch.zeros(d.n, d_model, device=device) for d in dictionaries])
    all_w = torch.cat([weights[d.name] if d.has_direction
                       else torch.zeros(d.n, ro.G.shape[1], device=device) for d in dictionaries])
    # units read before the mid-MLP LayerNorm, and which neuron each is
    pre_unit = np.concatenate([np.full(d.n, not d.has_direction) for d in dictionaries])
    neuron_of = np.concatenate([np.arange(d.n) for d in dictionaries])
    ln = mid_ln(model) if pre_unit.any() else None
    if pre_unit[u_feat].any() and ln is None:
        raise ValueError("a dictionary before the mid-MLP LayerNorm needs a model with one")
    n_ctx = seqs.shape[1]
    G, bias = ro.G, ro.bias
    # [tokens, d_vocab] work tables, allocated once: a fresh 64 MB tensor per chunk costs the
    # kernel's page faults and zeroing on every chunk (and in `_delta_logp`, per 128 pairs)
    most = max((len(plan.chunks[ci]) for ci in chunk_ids), default=0) * n_ctx
    z_buf = torch.empty(most, G.shape[1], device=device)
    base_buf = torch.empty_like(z_buf)
    work = _Work.for_rows(min(PAIR_CHUNK, plan.u_feat.size), G.shape[1], device)
    for ci in chunk_ids:
        chunk, idx = plan.chunks[ci], plan.chunk_pairs[ci]
        tokens = torch.from_numpy(seqs[chunk].astype(np.int64)).to(device)
        pre = pre_unit[u_feat[idx]]
        if pre.any():
            got = capture_many(model, tokens, (HOOK_PRE_LN, RESID_HOOK))
            resid = got[RESID_HOOK].float().reshape(-1, G.shape[0])
            u_pre = got[HOOK_PRE_LN].float().reshape(-1, ln.gamma.shape[0])
        else:
            resid = final_residual(model, tokens).reshape(-1, G.shape[0])
        c = resid - resid.mean(1, keepdim=True)
        rows = c.shape[0]
        z = torch.mm(c, G, out=z_buf[:rows])  # [S * n_ctx, d_vocab]
        base = torch.div(z, ((c * c).mean(1, keepdim=True) + ro.eps).sqrt(), out=base_buf[:rows]).add_(bias)
        nxt_all = torch.roll(tokens, -1, dims=1).reshape(-1)  # the last position is never asked
        lp_base = _log_prob(base, nxt_all)  # spends base
        tok_np = np.searchsorted(chunk, u_seq[idx]) * n_ctx + u_pos[idx]
        values = np.empty(idx.size, dtype=np.float32)
        for through_ln in (False, True):
            sel = pre == through_ln
            part = idx[sel]
            if not part.size:
                continue
            tok = torch.from_numpy(tok_np[sel]).to(device)
            if through_ln:
                delta = _delta_logp_pre_ln(z, c, lp_base, nxt_all, u_pre, ln, ro, tok=tok,
                                           neuron=torch.from_numpy(neuron_of[u_feat[part]]).to(device),
                                           work=work)
            else:
                fi = torch.from_numpy(u_feat[part]).to(device)
                delta = _delta_logp(z, c, lp_base, nxt_all,
                                    torch.from_numpy(u_act[part]).to(device), out_dir, all_w, ro,
                                    tok=tok, fi=fi, work=work)
            values[sel] = delta.cpu().numpy()
        if bar is not None:
            bar.update(idx.size)
        yield idx, values


@dataclass(frozen=True)
class _Work:
    """Two [chunk, d_vocab] buffers the per-pair functions reuse for every chunk of pairs."""

    logits: torch.Tensor
    gathered: torch.Tensor

    @classmethod
    def for_rows(cls, rows: int, d_vocab: int, device: str) -> _Work:
        return cls(torch.empty(rows, d_vocab, device=device), torch.empty(rows, d_vocab, device=device))


def _log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[row, target[row]] per row; spends `logits` (exponentiated in place,
    so no second [rows, d_vocab] tensor is made)."""
    picked = logits.gather(1, target[:, None])[:, 0]
    top = logits.amax(1, keepdim=True)
    return picked - top[:, 0] - logits.sub_(top).exp_().sum(1).log_()


def _delta_logp_pre_ln(z, c, lp_base, next_tok, u_pre, ln: MidLN, ro: Readout,
                       tok: torch.Tensor, neuron: torch.Tensor, work: _Work,
                       chunk: int = PAIR_CHUNK) -> torch.Tensor:
    """Pairs of (token row tok[p], neuron[p]) of a pre-LN dictionary: zero the neuron before
    the mid-MLP LayerNorm, recompute it, and read the change through LN_final exactly."""
    n = tok.shape[0]
    out = torch.empty(n, device=tok.device)
    G, bias = ro.G, ro.bias
    for lo in range(0, n, chunk):
        t, j = tok[lo: lo + chunk], neuron[lo: lo + chunk]
        m = t.shape[0]
        u = u_pre[t]
        u0 = u.clone()
        u0[torch.arange(m, device=t.device), j] = 0.0
        dr = (ln(u0) - ln(u)) @ ln.W_out  # [m, d_model]: the change in the final residual
        dr = dr - dr.mean(1, keepdim=True)
        c2 = c[t] + dr
        inv = 1.0 / ((c2 * c2).mean(1, keepdim=True) + ro.eps).sqrt()
        new = torch.mm(dr, G, out=work.logits[:m])
        new.add_(torch.index_select(z, 0, t, out=work.gathered[:m])).mul_(inv).add_(bias)
        out[lo: lo + m] = _log_prob(new, next_tok[t]) - lp_base[t]
    return out


def _delta_logp(z, c, lp_base, next_tok, act, out_dir, weights, ro: Readout,
                tok: torch.Tensor, fi: torch.Tensor, work: _Work, chunk: int = PAIR_CHUNK) -> torch.Tensor:
    """The per-pair part: only O(d_vocab) work per pair (z = c·G precomputed per token).

    z, c, lp_base, next_tok are per-token tables and out_dir, weights per-unit tables; pair p
    reads token row tok[p] and unit row fi[p], gathered here a small chunk at a time into
    the same two buffers (`work`): materialising [pairs, d_vocab] copies up front cost more
    memory traffic than the arithmetic, and a fresh [chunk, d_vocab] tensor per chunk half
    the time (page faults; measured 15-16 vs 8 us a pair on 2 cores)."""
    n = act.shape[0]
    out = torch.empty(n, device=act.device)
    bias = ro.bias
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        t, f = tok[sl], fi[sl]
        m = t.shape[0]
        a = act[sl][:, None]
        od = out_dir[f]
        v = od - od.mean(1, keepdim=True)
        c2 = c[t] - a * v
        inv = 1.0 / ((c2 * c2).mean(1, keepdim=True) + ro.eps).sqrt()
        new = torch.index_select(weights, 0, f, out=work.logits[:m]).mul_(-a)
        new.add_(torch.index_select(z, 0, t, out=work.gathered[:m])).mul_(inv).add_(bias)
        out[sl] = _log_prob(new, next_tok[t]) - lp_base[t]
    return out
