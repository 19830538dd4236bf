"""A compact Nemotron-H in PyTorch, written for export and for parity against transformers.

State is explicit: every call takes the per-layer states (named as in edge_runtime.bundle.state_layout) and
returns the new ones, so prefill, chunked prefill and decode are the same function over different inputs.
Parameter names match the Hugging Face checkpoint (`backbone.*`, `lm_head.*`), so a checkpoint's
state dict loads as it is.

Shapes: b batch, t new tokens, T past tokens, d hidden, h heads, p head dim, g groups, n state size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.bundle.model_config import ATTENTION, MAMBA, MLP, ModelConfig
from edge_runtime.bundle.state_layout import state_layout
from nemotron_export.ssm import causal_conv1d, process_dt, ssd_chunk_scan, ssm_step

States = dict[str, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class GatedGroupRMSNorm(nn.Module):
    """RMSNorm of y * silu(z), normalised separately over each of `groups` equal slices of the last axis."""

    def __init__(self, dim: int, groups: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.groups, self.eps = groups, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = z.dtype
        y = y.float() * F.silu(z.float())
        yg = y.unflatten(-1, (self.groups, -1))  # [..., g, dim/g]
        yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * yg.flatten(-2).to(dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.hidden_size, cfg.in_proj_dim, bias=cfg.mamba_proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.conv_kernel, groups=cfg.conv_dim,
                                bias=cfg.use_conv_bias, padding=cfg.conv_kernel - 1)
        self.dt_bias = nn.Parameter(torch.ones(cfg.mamba_num_heads))
        self.A_log = nn.Parameter(torch.zeros(cfg.mamba_num_heads))
        self.D = nn.Parameter(torch.ones(cfg.mamba_num_heads))
        self.norm = GatedGroupRMSNorm(cfg.mamba_inner, cfg.n_groups, cfg.layer_norm_epsilon)
        self.out_proj = nn.Linear(cfg.mamba_inner, cfg.hidden_size, bias=cfg.mamba_proj_bias)

    def forward(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor, lengths: torch.Tensor,
                decode: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cfg
        b, t, _ = u.shape
        h, p, g, n = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
        z, xbc, dt_raw = self.in_proj(u).split([c.mamba_inner, c.conv_dim, h], dim=-1)
        xbc, conv_state = causal_conv1d(xbc, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, lengths)
        x, B, C = xbc.split([c.mamba_inner, g * n, g * n], dim=-1)
        valid = torch.arange(t, device=u.device)[None, :] < lengths[:, None]  # [b, t]
        dt = process_dt(dt_raw, self.dt_bias, c.time_step_limit, valid)  # [b, t, h] float32
        A = -torch.exp(self.A_log.float())  # [h]
        if decode:
            y, ssm_state = ssm_step(x.view(b, h, p), dt[:, 0], A, B.view(b, g, n), C.view(b, g, n), self.D, ssm_state)
            y = y[:, None]  # [b, 1, h, p]
        else:
            y, ssm_state = ssd_chunk_scan(x.view(b, t, h, p), dt, A, B.view(b, t, g, n), C.view(b, t, g, n),
                                          self.D, ssm_state, c.chunk_size)
        y = self.norm(y.reshape(b, t, h * p), z)  # [b, t, h*p]
        return self.out_proj(y.to(u.dtype)), conv_state, ssm_state


class Attention(nn.Module):
    """Grouped-query attention without position encoding over the past K/V plus this chunk."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd, bias = cfg.head_dim, cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * hd, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=bias)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=bias)

    def forward(self, u: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                past_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cfg
        b, t, _ = u.shape
        q = self.q_proj(u).view(b, t, -1, c.head_dim).transpose(1, 2)  # [b, hq, t, hd]
        k = self.k_proj(u).view(b, t, -1, c.head_dim).transpose(1, 2)  # [b, hkv, t, hd]
        v = self.v_proj(u).view(b, t, -1, c.head_dim).transpose(1, 2)
        T = past_k.shape[2]
        keys = torch.cat([past_k.to(k.dtype), k], dim=2)  # [b, hkv, T+t, hd]
        values = torch.cat([past_v.to(v.dtype), v], dim=2)
        rep = c.num_attention_heads // c.num_key_value_heads
        keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)  # [b, hq, T+t, hd]
        past_ok = torch.arange(T, device=u.device)[None, :] < past_lengths[:, None]  # [b, T]
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=u.device))  # [t, t]
        mask = torch.cat([past_ok[:, None, :].expand(b, t, T), causal[None].expand(b, t, t)], dim=2)  # [b, t, T+t]
        scores = (q @ keys.transpose(2, 3)).float() * c.head_dim**-0.5  # [b, hq, t, T+t]
        scores = scores.masked_fill(~mask[:, None], -torch.inf)
        out = torch.softmax(scores, dim=-1).to(v.dtype) @ values  # [b, hq, t, hd]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), k, v


class MLPMixer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(u)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = {MAMBA: Mamba2Mixer, ATTENTION: Attention, MLP: MLPMixer}[kind](cfg)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, kind) for kind in cfg.pattern)
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class NemotronH(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def empty_states(self, batch: int, past_tokens: int = 0) -> States:
        """Zero states for `batch` fresh sequences, K/V with room for `past_tokens` (all masked out)."""
        dtype = self.lm_head.weight.dtype
        out: States = {}
        for s in state_layout(self.cfg):
            shape = list(s.shape)
            if s.per_token:
                shape[1] = past_tokens
            out[s.name] = torch.zeros(batch, *shape, dtype=torch.float32 if s.kind == "ssm" else dtype)
        return out

    def forward(self, input_ids: torch.Tensor, states: States, lengths: torch.Tensor | None = None,
                past_lengths: torch.Tensor | None = None, decode: bool = False,
                all_logits: bool = False) -> tuple[torch.Tensor, States]:
        """input_ids [b, t] right-padded to `lengths` [b]; `past_lengths` [b] tokens already in each row's K/V.

        Returns logits at each row's last valid token [b, vocab] (or at every position [b, t, vocab] with
        all_logits) and the new states: conv/ssm states after each row's last valid token, and the K/V of
        this chunk's tokens only ([b, hkv, t, hd]; the caller appends them to its cache).
        """
        b, t = input_ids.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long)
        if past_lengths is None:
            past_lengths = torch.zeros(b, dtype=torch.long)
        x = self.backbone.embeddings(input_ids)  # [b, t, d]
        new: States = {}
        for i, block in enumerate(self.backbone.layers):
            u = block.norm(x)
            if block.kind == MAMBA:
                out, new[f"present.{i}.conv"], new[f"present.{i}.ssm"] = block.mixer(
                    u, states[f"past.{i}.conv"], states[f"past.{i}.ssm"], lengths, decode)
            elif block.kind == ATTENTION:
                out, new[f"present.{i}.key"], new[f"present.{i}.value"] = block.mixer(
                    u, states[f"past.{i}.key"], states[f"past.{i}.value"], past_lengths)
            else:
                out = block.mixer(u)
            x = x + out
        x = self.backbone.norm_f(x)
        if not all_logits:
            x = x[torch.arange(b), lengths.long() - 1]  # [b, d]
        return self.lm_head(x).float(), new
