"""Fast sampling from audiocraft's MusicGen LM (`LMModel`), the same distribution as `LMModel.generate`.

What `LMModel.generate` spends its time on, per token: Python in every streaming module, a `torch.cat`
that regrows each layer's key/value cache, the cross-attention keys/values recomputed from the text,
one sampling call per row, and a few hundred small kernel launches. Here:
- prompts are batched, and the conditional and unconditional (CFG) rows run in one forward [2B, ...];
- each self-attention layer writes into a static, preallocated key/value cache [2B, H, slots, Dh];
- the cross-attention keys/values are computed once per generation, from the conditions;
- on a GPU the decode step (embeddings -> layers -> CFG -> top-k/top-p sampling -> write of the token)
  is captured once as a CUDA graph and replayed; its step counter lives on the device, so nothing is
  read back to the host until the end (no host sync per token);
- the model's own modules are called (norms, out_proj, feed-forward, embeddings, output heads, so LoRA
  wrappers on them apply); only the packed q/k/v projection `in_proj_weight`, which audiocraft uses
  through F.linear, is applied here, with its LoRA adapter in low rank when it has one (see _Attention).

Equivalence with audiocraft (tests/test_sampler.py): greedy tokens are identical to `LMModel.generate`,
the logits for the same prefix and conditions match to float tolerance (CFG and LoRA included), top-k
and top-p keep audiocraft's support. Conditions are encoded per prompt, each with its null condition, as
`LMModel.generate` encodes a single prompt: padding is never shared between prompts (masks hide the
batch's padding in cross-attention and in the prepended prefix), so a prompt's logits do not depend on
the other prompts of the batch. The fuser's 'cross' and 'prepend' conditions are supported (a melody
model's `self_wav`, any text conditioner); 'sum' and 'input_interpolate' are refused, as are rotary
embeddings, a finite past context and kv_repeat (no MusicGen uses them).

Randomness, reproducible whatever the batch: prompt i gets its own `torch.Generator` seeded with its
seed, and its conditions are encoded with Python's `random` seeded with it too (a melody model's Demucs
draws a random time shift from it; see seeded_python_random). Sampling is the exponential race
(Gumbel-max): with E_v ~ Exp(1) i.i.d. per vocabulary entry, argmax_v p_v / E_v is distributed exactly
as a draw from p (so from the top-k/top-p renormalised probabilities, which need no renormalising).
Each row's noise E [K, card] per step comes from its own generator, drawn ahead in chunks of NOISE_CHUNK
steps (outside the CUDA graph), so a prompt's noise never depends on which prompts share its batch, nor
on the batch size. The clip is then the same whenever its
logits are: bit-for-bit on a CPU in float32 in practice; with fp16 on a GPU, different batch shapes can
pick different matmul kernels, and a near-tie can rarely resolve differently.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lora import packed_adapter
from .melody import seeded_python_random

log = logging.getLogger(__name__)

NOISE_CHUNK = 32  # decode steps of noise drawn at once per row (part of what fixes a seed's clip)
GRAPH_BUCKET = 256  # on a GPU, one CUDA graph per 256 key slots: attention reads only the filled part


@dataclass
class SamplingParams:
    """How tokens are drawn: audiocraft's `LMModel.generate` arguments of the same names."""
    use_sampling: bool = True
    temp: float = 1.0
    top_k: int = 250
    top_p: float = 0.0  # nucleus sampling when > 0 (top_k is then ignored, as in audiocraft)
    cfg_coef: float = 3.0


def sample_tokens(logits: torch.Tensor, noise: torch.Tensor | None, params: SamplingParams) -> torch.Tensor:
    """Draw one token per row, as audiocraft's `_sample_next_token` does, without a host sync.

    Args:
        logits: [..., card] (after CFG).
        noise: [..., card] i.i.d. Exp(1) (unused when greedy).
    Returns:
        [...] long token ids: argmax when greedy (no sampling, or temp 0); otherwise a draw from
        softmax(logits / temp) restricted to audiocraft's top-p nucleus (top_p > 0) or top-k set
        (probabilities >= the k-th largest, ties included), through the exponential race.
    """
    if not params.use_sampling or params.temp <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temp, dim=-1)
    if params.top_p > 0.0:
        # audiocraft's sample_top_p: keep the sorted prefix whose mass before each entry is <= p
        p_sorted, idx = torch.sort(probs, dim=-1, descending=True)
        keep_sorted = (torch.cumsum(p_sorted, dim=-1) - p_sorted) <= params.top_p
        keep = torch.zeros_like(keep_sorted).scatter_(-1, idx, keep_sorted)
        probs = probs * keep
    elif params.top_k > 0:
        kth = torch.topk(probs, params.top_k, dim=-1).values[..., -1:]
        probs = probs * (probs >= kth)
    return (probs / noise).argmax(dim=-1)


def base_lm(lm):
    """audiocraft's LMModel `lm` itself (its LoRA adapters, if any, sit inside it).

    Raises:
        TypeError: `lm` is something else (a DDP wrapper, a peft model: unwrap or merge it first).
    """
    from audiocraft.models.lm import LMModel

    if not isinstance(lm, LMModel):
        raise TypeError(f"{type(lm).__name__} is not an audiocraft LMModel")
    return lm


class _Attention:
    """An audiocraft StreamingMultiheadAttention, with its packed projection's LoRA adapter if it has one.

    We never call the module (its streaming state is what we replace), so the projection is applied
    here: x W^T + b + scaling * (x A^T) B^T, which is x (W + delta)^T + b, in low rank rather than
    reading the parametrized W + delta (a [3D, D] matmul) at every decode step.
    """

    def __init__(self, module):
        from audiocraft.modules.transformer import StreamingMultiheadAttention

        if not isinstance(module, StreamingMultiheadAttention):
            raise TypeError(f"the sampler cannot see through {type(module).__name__} around an attention layer")
        if not module.custom:
            raise NotImplementedError("attention through nn.MultiheadAttention (custom=False, memory_efficient=False)")
        if module.rope is not None or module.past_context is not None or module.kv_repeat != 1:
            raise NotImplementedError("rotary embeddings, a finite past_context or kv_repeat > 1 (no MusicGen uses them)")
        self.m = module
        self.weight, self.adapter = packed_adapter(module, "in_proj_weight")
        self.heads = module.num_heads
        self.dim = module.embed_dim

    def project(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Rows [first*D, last*D) of the packed q/k/v projection of x [..., D] (0: q, 1: k, 2: v)."""
        rows = slice(first * self.dim, last * self.dim)
        bias = self.m.in_proj_bias
        y = F.linear(x, self.weight[rows], None if bias is None else bias[rows])
        if self.adapter is not None:
            a, b = self.adapter.lora_A, self.adapter.lora_B[rows]
            y = y + (F.linear(F.linear(x.to(a.dtype), a), b) * self.adapter.scaling).to(y.dtype)
        return y

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        """[R, T, H*Dh] -> [R, H, T, Dh]"""
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)


class _Generation:
    """The state of one batched generation: caches, conditions, the token sequence [B, K, S]."""

    def __init__(self, lm, attributes: list, seeds: list[int], max_gen_len: int, params: SamplingParams,
                 autocast_dtype: torch.dtype | None):
        from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

        self.lm = base_lm(lm)
        if self.lm.training:
            raise RuntimeError("call .eval() on the LM before generating")
        if not attributes:
            raise ValueError("no conditions: give one ConditioningAttributes per prompt")
        if len(seeds) != len(attributes):
            raise ValueError(f"{len(seeds)} seeds for {len(attributes)} prompts")
        lm_ = self.lm
        fuse = lm_.fuser.fuse2cond
        if fuse.get("sum") or fuse.get("input_interpolate"):
            raise NotImplementedError("'sum' and 'input_interpolate' condition fusing (no MusicGen uses them)")
        tr = lm_.transformer
        if tr.positional_embedding != "sin":
            raise NotImplementedError(f"positional embedding {tr.positional_embedding!r} (MusicGen uses 'sin')")
        self.params = params
        first = next(iter(lm_.parameters()))
        self.device, self.K, self.card = first.device, lm_.num_codebooks, lm_.card
        dev_type = self.device.type
        # MusicGen.generate runs the LM under fp16 autocast on a GPU; its cache would break graph replays
        self.autocast = (lambda: torch.autocast(dev_type, dtype=autocast_dtype, cache_enabled=False)) \
            if autocast_dtype is not None else contextlib.nullcontext
        self.layers = list(tr.layers)
        self.self_attn = [_Attention(layer.self_attn) for layer in self.layers]
        self.cross_attn = [None if layer.cross_attention is None else _Attention(layer.cross_attention)
                           for layer in self.layers]
        self.B = B = len(attributes)
        self.R = R = 2 * B  # rows: the B conditional ones, then their B unconditional ones
        D = lm_.dim
        emb_dtype = lm_.emb[0].weight.dtype

        # Conditions, per prompt with its null condition, exactly as LMModel.generate encodes one prompt.
        prefixes, crosses = [], []
        with self.autocast():
            for attr, seed in zip(attributes, seeds):
                pair = [attr] + ClassifierFreeGuidanceDropout(p=1.0)([attr])
                with seeded_python_random(int(seed)):  # a melody's Demucs shift: see seeded_python_random
                    cond = lm_.condition_provider(lm_.condition_provider.tokenize(pair))
                prefix, cross = lm_.fuser(torch.zeros(2, 0, D, device=self.device, dtype=emb_dtype), cond)
                prefixes.append(prefix)
                crosses.append(cross)
        order = [(i, 0) for i in range(B)] + [(i, 1) for i in range(B)]
        lens = torch.tensor([prefixes[i].shape[1] for i, _ in order])
        self.P = P = int(lens.max())
        self.pad = (P - lens).to(self.device)  # [R] left padding of each row's prefix
        self.prefix = torch.zeros(R, P, D, device=self.device, dtype=emb_dtype)
        for r, (i, j) in enumerate(order):
            if lens[r]:
                self.prefix[r, P - lens[r]:] = prefixes[i][j].to(emb_dtype)

        pattern = lm_.pattern_provider.get_pattern(max_gen_len)
        self.pattern = pattern
        unknown = torch.full((B, self.K, max_gen_len), -1, dtype=torch.long, device=self.device)
        self.seq, _, mask = pattern.build_pattern_sequence(unknown, lm_.special_token_id)
        self.valid = mask.to(self.device).bool()  # [K, S]
        self.S = self.seq.shape[-1]
        self.start = pattern.get_first_step_with_timesteps(0)
        assert self.start is not None and self.start >= 1
        self.slots = P + self.S - 1  # the last column is sampled, never fed back

        # Static caches: self-attention per layer [R, H, slots, Dh]; cross-attention computed once.
        dtype = autocast_dtype or first.dtype
        with self.autocast():
            self.k_cache, self.v_cache, self.cross_k, self.cross_v = [], [], [], []
            for attn, cross in zip(self.self_attn, self.cross_attn):
                shape = (R, attn.heads, self.slots, attn.dim // attn.heads)
                self.k_cache.append(torch.zeros(shape, device=self.device, dtype=dtype))
                self.v_cache.append(torch.zeros(shape, device=self.device, dtype=dtype))
                if cross is not None:
                    if crosses[0] is None:
                        raise ValueError("the model cross-attends, but the fuser sent no condition there")
                    src, self.cross_mask = self._cross_source(crosses, order)
                    k, v = cross.project(src, 1, 2), cross.project(src, 2, 3)
                    if cross.m.qk_layer_norm:
                        k = cross.m.k_layer_norm(k)
                    k, v = cross.heads_first(k), cross.heads_first(v)
                    if cross.m.attention_as_float32:
                        k, v = k.float(), v.float()
                    self.cross_k.append(k)
                    self.cross_v.append(v)
        self.key_slot = torch.arange(self.slots, device=self.device)
        self.col = torch.tensor(self.start + 1, device=self.device)  # the column the next decode step samples

        # Per-row noise, drawn ahead in chunks from per-prompt generators (see the module docstring).
        self.gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        self.noise = torch.empty(B, NOISE_CHUNK, self.K, self.card, device=self.device)
        self.recorded: list[torch.Tensor] | None = None  # logits per step, for tests (eager only)
        self.forced: torch.Tensor | None = None  # [B, K, S] tokens to feed instead of sampled ones (tests)

    def _cross_source(self, crosses, order):
        """The cross-attention input [R, Lc, D], each row right-padded, and its key mask [R, 1, 1, Lc]."""
        lens = torch.tensor([crosses[i].shape[1] for i, _ in order])
        if int(lens.min()) < 1:
            raise ValueError("an empty cross-attention condition")
        L = int(lens.max())
        src = torch.zeros(self.R, L, crosses[0].shape[-1], device=self.device, dtype=crosses[0].dtype)
        for r, (i, j) in enumerate(order):
            src[r, : lens[r]] = crosses[i][j]
        mask = (torch.arange(L)[None, :] < lens[:, None]).to(self.device)
        return src, mask[:, None, None, :]

    def refill_noise(self) -> None:
        for b, g in enumerate(self.gens):
            self.noise[b].exponential_(generator=g)

    # ---------------------------------------------------------------- the model
    def forward(self, x: torch.Tensor, slot0, kv_len: int) -> torch.Tensor:
        """Run T new positions through the transformer, writing their keys/values into the cache.

        Args:
            x: [R, T, D] input embeddings at slots slot0 .. slot0 + T - 1 (slot0: int or 0-dim tensor).
            kv_len: cache slots the attention reads (>= slot0 + T); the rest is masked anyway.
        Returns:
            the output of the last position [R, D] (after the output norm).
        """
        lm, T = self.lm, x.shape[1]
        tr = lm.transformer
        slots = slot0 + torch.arange(T, device=self.device)  # [T]
        positions = slots[None, :] - self.pad[:, None]  # [R, T]: each row's own positions (audiocraft's offsets)
        from audiocraft.modules.transformer import create_sin_embedding

        pos_emb = create_sin_embedding(positions[..., None], x.shape[-1], max_period=tr.max_period, dtype=x.dtype)
        x = x + tr.positional_scale * pos_emb
        keys = self.key_slot[:kv_len]
        # A key is visible if not in the future and not left padding; a padding query sees itself (no NaN).
        visible = (keys[None, None, :] <= slots[None, :, None]) & (
            (keys[None, None, :] >= self.pad[:, None, None]) | (keys[None, None, :] == slots[None, :, None]))
        visible = visible[:, None]  # [R, 1, T, kv_len]
        for i, layer in enumerate(self.layers):
            if layer.norm_first:
                x = x + layer.layer_scale_1(self._self_attention(i, layer.norm1(x), slots, kv_len, visible))
                if layer.cross_attention is not None:
                    x = x + layer.layer_scale_cross(self._cross_attention(i, layer.norm_cross(x)))
                x = x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))
            else:
                src = x
                x = layer.norm1(x + layer.layer_scale_1(self._self_attention(i, x, slots, kv_len, visible)))
                if layer.cross_attention is not None:
                    # audiocraft's post-norm layer cross-attends from the layer's input, not from x
                    x = layer.norm_cross(x + layer.layer_scale_cross(self._cross_attention(i, src)))
                x = layer.norm2(x + layer.layer_scale_2(layer._ff_block(x)))
        out = x[:, -1]
        return lm.out_norm(out) if lm.out_norm is not None else out

    def _self_attention(self, i: int, x, slots, kv_len: int, visible) -> torch.Tensor:
        attn = self.self_attn[i]
        m = attn.m
        R, T, _ = x.shape
        q, k, v = attn.project(x, 0, 3).view(R, T, 3, attn.heads, -1).permute(2, 0, 3, 1, 4)  # [R, H, T, Dh] each
        if m.qk_layer_norm:
            q = attn.heads_first(m.q_layer_norm(q.transpose(1, 2).reshape(R, T, -1)))
            k = attn.heads_first(m.k_layer_norm(k.transpose(1, 2).reshape(R, T, -1)))
        kc, vc = self.k_cache[i], self.v_cache[i]
        kc.index_copy_(2, slots, k.to(kc.dtype))
        vc.index_copy_(2, slots, v.to(vc.dtype))
        q, kk, vv = q.to(kc.dtype), kc[:, :, :kv_len], vc[:, :, :kv_len]
        if m.attention_as_float32:
            q, kk, vv = q.float(), kk.float(), vv.float()
        out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=visible)
        return m.out_proj(out.to(x.dtype).transpose(1, 2).reshape(R, T, -1))

    def _cross_attention(self, i: int, x) -> torch.Tensor:
        attn = self.cross_attn[i]
        m = attn.m
        q = attn.project(x, 0, 1)
        if m.qk_layer_norm:
            q = m.q_layer_norm(q)
        k = self.cross_k[i]
        q = attn.heads_first(q).to(k.dtype)
        out = F.scaled_dot_product_attention(q, k, self.cross_v[i], attn_mask=self.cross_mask)
        return m.out_proj(out.to(x.dtype).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """[R, K, T] tokens -> [R, T, D], audiocraft's sum of the per-codebook embeddings."""
        return sum([self.lm.emb[k](tokens[:, k]) for k in range(self.K)])

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """[R, D] -> CFG logits [B, K, card] in float32: uncond + (cond - uncond) * cfg_coef."""
        logits = torch.stack([self.lm.linears[k](out) for k in range(self.K)], dim=1).float()
        cond, uncond = logits.split(self.B, dim=0)
        return uncond + (cond - uncond) * self.params.cfg_coef

    def emit(self, logits: torch.Tensor, col, noise_idx) -> None:
        """Sample column `col` of the sequence (a 0-dim tensor or int) and write it in place."""
        if self.recorded is not None:
            self.recorded.append(logits.detach().clone())
        col = torch.as_tensor(col, device=self.device).view(1)
        if self.forced is not None:
            tokens = self.forced.index_select(2, col)[..., 0]
        else:
            noise = self.noise.index_select(1, torch.as_tensor(noise_idx, device=self.device).view(1))[:, 0]
            tokens = sample_tokens(logits, noise, self.params)
        valid = self.valid.index_select(1, col)[:, 0]  # [K]
        tokens = torch.where(valid[None, :], tokens, self.lm.special_token_id)
        self.seq.index_copy_(2, col, tokens[..., None])

    # ---------------------------------------------------------------- the loop
    def prefill(self) -> None:
        """Prefix conditions + the sequence's first columns (all special tokens), one forward."""
        with self.autocast():
            first = self.seq[..., : self.start]
            x = torch.cat([self.prefix, self.embed(torch.cat([first, first]))], dim=1)
            out = self.forward(x, 0, self.P + self.start)
            self.emit(self.logits(out), self.start, 0)

    def decode_step(self, kv_len: int) -> None:
        """Feed column col - 1, sample column col, advance col: only device tensors, graph-capturable."""
        with self.autocast():
            col = self.col.view(1)
            prev = self.seq.index_select(2, col - 1)  # [B, K, 1]
            x = self.embed(torch.cat([prev, prev]))
            out = self.forward(x, col - 1 + self.P, kv_len)
            self.emit(self.logits(out), col, (col - self.start) % NOISE_CHUNK)
            self.col += 1

    def run(self, use_graphs: bool, kv_bucket: int | None = None) -> torch.Tensor:
        """Generate every column; returns the codes [B, K, max_gen_len].

        Args:
            kv_bucket: the attention reads the cache in windows of this many slots (one CUDA graph per
                window; default GRAPH_BUCKET with graphs, else exactly the filled slots).
        """
        kv_bucket = kv_bucket or (GRAPH_BUCKET if use_graphs else 1)
        self.refill_noise()
        self.prefill()
        graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = torch.cuda.graph_pool_handle() if use_graphs else None
        for col in range(self.start + 1, self.S):
            if (col - self.start) % NOISE_CHUNK == 0:
                self.refill_noise()
            slot = self.P + col - 1
            kv_len = min(self.slots, (slot // kv_bucket + 1) * kv_bucket)
            if not use_graphs:
                self.decode_step(kv_len)
                continue
            if kv_len not in graphs:
                graphs[kv_len] = self._capture(kv_len, pool)
            graphs[kv_len].replay()
        out, _, _ = self.pattern.revert_pattern_sequence(self.seq, special_token=-1)
        max_gen_len = self.pattern.timesteps
        out = out[..., :max_gen_len]
        if bool((out < 0).any()) or bool((out >= self.card).any()):  # one check at the end, not per token
            raise RuntimeError("generation left unfilled or invalid codes (a pattern this sampler mishandles)")
        return out

    def _capture(self, kv_len: int, pool) -> "torch.cuda.CUDAGraph":
        """A CUDA graph of one decode step. The warm-up step it needs runs at the current column and is
        undone by resetting the counter: the replay rewrites the same cache slot and column."""
        saved = self.col.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.decode_step(kv_len)
            self.col.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.decode_step(kv_len)
        return graph


@torch.no_grad()
def generate_tokens(lm, attributes: list, seeds: list[int], max_gen_len: int, params: SamplingParams | None = None,
                    autocast_dtype: torch.dtype | None = "auto", cuda_graph: bool | None = None,
                    kv_bucket: int | None = None) -> torch.Tensor:
    """Generate codes for a batch of prompts, each with its own seed.

    Args:
        lm: audiocraft LMModel (full, merged-LoRA, or with LoRA adapters: lora.add_lora), in eval mode.
        attributes: one ConditioningAttributes per prompt, as MusicGen._prepare_tokens_and_attributes
            builds them (text 'description'; 'self_wav' for melody models).
        seeds: one per prompt; a prompt's clip depends on its seed, never on the rest of the batch.
        max_gen_len: frames to generate (duration x the codec's frame rate).
        autocast_dtype: "auto" is what MusicGen.generate does: fp16 autocast on a GPU, none on a CPU.
        cuda_graph: replay the decode step as a CUDA graph (default: on a GPU).
        kv_bucket: attention window granularity in cache slots (see _Generation.run); masked slots
            beyond the filled ones change nothing, which the tests check on the CPU with small windows.
    Returns:
        codes [B, K, max_gen_len] (long), as LMModel.generate returns them.
    """
    params = params or SamplingParams()
    device = next(iter(base_lm(lm).parameters())).device
    if autocast_dtype == "auto":
        autocast_dtype = torch.float16 if device.type == "cuda" else None
    gen = _Generation(lm, attributes, seeds, max_gen_len, params, autocast_dtype)
    use_graphs = device.type == "cuda" if cuda_graph is None else cuda_graph
    return gen.run(use_graphs, kv_bucket)


@torch.no_grad()
def step_logits(lm, attributes: list, codes: torch.Tensor, cfg_coef: float = 3.0) -> torch.Tensor:
    """The CFG logits this sampler computes at every sequence step when it is fed `codes` (for tests).

    Args:
        codes: [B, K, T] codes to teacher-force (T frames).
    Returns:
        [B, K, S - start, card]: the logits that sampled columns start .. S-1 of the pattern sequence.
    """
    gen = _Generation(lm, attributes, [0] * len(attributes), codes.shape[-1], SamplingParams(cfg_coef=cfg_coef),
                      None)
    gen.forced, _, _ = gen.pattern.build_pattern_sequence(codes.to(gen.device), gen.lm.special_token_id)
    gen.recorded = []
    gen.prefill()
    for col in range(gen.start + 1, gen.S):
        gen.decode_step(gen.P + col)
    return torch.stack(gen.recorded, dim=2)


__all__ = ["SamplingParams", "generate_tokens", "sample_tokens", "step_logits", "base_lm",
           "NOISE_CHUNK"]
