"""Mamba-2 math for the reference model: causal conv1d with state, the chunked SSD scan, the one-step update.

Each function here has a twin custom ONNX op (nemotron_export.ops) with the same inputs, outputs and
semantics; the ONNX function bodies follow these lines closely so a reader can check one against the other.

dt handling, one rule for prefill and decode: dt = clamp(softplus(dt_raw + dt_bias), *time_step_limit),
then dt = 0 wherever a position is padding. The model was trained with the mamba_ssm kernels, which clamp
to `time_step_limit` (default (0, inf), i.e. not at all), so we follow that in both paths. transformers up
to 5.24 clamped its prefill from below at `time_step_min` (its decode not at all); 5.25, the pinned
reference, clamps to `time_step_limit` as we do, and a dedicated parity test holds us to it where dt falls
under time_step_min.
A zero dt on padding makes the state pass through padded positions unchanged (decay exp(0*A) = 1, input
dt*x = 0), which is what lets right-padded batches end with each row's own final state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def process_dt(dt_raw: torch.Tensor, dt_bias: torch.Tensor, limit: tuple[float, float],
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """dt_raw [..., h], dt_bias [h], valid [...] bool -> dt [..., h] float32, zero where not valid."""
    dt = F.softplus(dt_raw.float() + dt_bias.float())
    dt = dt.clamp(min=limit[0], max=limit[1])
    if valid is not None:
        dt = dt * valid[..., None].to(dt.dtype)
    return dt


def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv1d + SiLU over a chunk that continues from `conv_state`.

    x [b, t, c], conv_state [b, c, k-1] (the k-1 inputs before this chunk), weight [c, k], bias [c],
    lengths [b] (valid tokens per row; the rest is right padding).
    Returns y [b, t, c] and the new state [b, c, k-1]: the k-1 inputs ending at each row's last valid token.
    """
    b, t, c = x.shape
    k = weight.shape[1]
    full = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=2)  # [b, c, k-1+t]
    y = F.conv1d(full, weight[:, None, :].to(x.dtype), bias, groups=c)  # [b, c, t]
    y = F.silu(y).transpose(1, 2)  # [b, t, c]
    idx = lengths.long()[:, None, None] + torch.arange(k - 1, device=x.device)[None, None, :]  # [b, 1, k-1]
    new_state = torch.gather(full, 2, idx.expand(b, c, k - 1))  # [b, c, k-1]
    return y, new_state


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a [..., L] -> [..., L, L] with out[l, s] = sum(a[s+1 : l+1]) for l >= s and -inf above the diagonal.

    Summing masked copies, rather than subtracting cumulative sums, avoids cancellation when the
    cumulative decay is large."""
    L = a.shape[-1]
    rep = a[..., :, None].expand(*a.shape, L)  # [..., L(k), L(s)] = a[k]
    below = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=-1)
    out = torch.cumsum(rep.masked_fill(~below, 0.0), dim=-2)  # [..., l, s] = sum_{s<k<=l} a[k]
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device))
    return out.masked_fill(~causal, -torch.inf)


def ssd_chunk_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor, initial_state: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba-2 SSD scan over a chunk of tokens, in float32 (Dao & Gu 2024, the "minimal SSD" form).

    x [b, t, h, p], dt [b, t, h] (processed: see process_dt), A [h] (negative), B, C [b, t, g, n], D [h],
    initial_state [b, h, p, n] float32. Recurrence per token: s = exp(dt*A) * s + dt * x (outer) B,
    y = s . C + D * x.  Returns y [b, t, h, p] float32 and the final state [b, h, p, n] float32.
    """
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    pad = (-t) % chunk_size
    x, dt, B, C = (F.pad(v.float(), (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, B, C))
    nc, L = (t + pad) // chunk_size, chunk_size
    B = B.repeat_interleave(h // g, dim=2)  # [b, T, h, n]: heads share their group's B
    C = C.repeat_interleave(h // g, dim=2)
    x = x.reshape(b, nc, L, h, p)
    dt = dt.reshape(b, nc, L, h)
    B = B.reshape(b, nc, L, h, n)
    C = C.reshape(b, nc, L, h, n)
    xdt = x * dt[..., None]  # [b, c, L, h, p]
    dA = (dt * A.float()).permute(0, 3, 1, 2)  # [b, h, c, L]
    seg = _segsum(dA)  # [b, h, c, L, L]

    # 1. within each chunk: y[l] = sum_{s<=l} (C[l].B[s]) exp(seg[l,s]) xdt[s]
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * torch.exp(seg)  # [b, h, c, L, L]
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. the state each chunk adds, decayed to the chunk's end
    decay_to_end = torch.exp(seg[..., -1, :])  # [b, h, c, L]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, xdt)  # [b, c, h, p, n]

    # 3. carry states across chunks: entering[c] = sum_{z<=c} exp(total decay from z to c) * states[z]
    states = torch.cat([initial_state.float()[:, None], chunk_states], dim=1)  # [b, c+1, h, p, n]
    chunk_total = F.pad(dA.sum(-1), (1, 0))  # [b, h, c+1]: index 0 is the initial state, no decay
    carry = torch.exp(_segsum(chunk_total))  # [b, h, c+1, c+1]
    carried = torch.einsum("bhzc,bchpn->bzhpn", carry, states)  # [b, c+1, h, p, n]
    entering, final_state = carried[:, :-1], carried[:, -1]

    # 4. contribution of the entering state to each position of its chunk
    decay_from_start = torch.exp(torch.cumsum(dA, dim=-1))  # [b, h, c, L]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, decay_from_start)

    y = (y_diag + y_off).reshape(b, nc * L, h, p)[:, :t]
    y = y + D.float()[:, None] * x.reshape(b, nc * L, h, p)[:, :t]
    return y, final_state


def ssm_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step. x [b, h, p], dt [b, h] (processed), A [h], B, C [b, g, n], D [h], state [b, h, p, n] f32.
    Returns y [b, h, p] float32 and the new state [b, h, p, n] float32."""
    h, g = x.shape[1], B.shape[1]
    B = B.float().repeat_interleave(h // g, dim=1)  # [b, h, n]
    C = C.float().repeat_interleave(h // g, dim=1)
    decay = torch.exp(dt * A.float())  # [b, h]
    xdt = x.float() * dt[..., None]  # [b, h, p]
    state = state.float() * decay[..., None, None] + xdt[..., None] * B[:, :, None, :]  # [b, h, p, n]
    y = torch.einsum("bhpn,bhn->bhp", state, C) + D.float()[:, None] * x.float()
    return y, state
