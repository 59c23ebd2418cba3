"""Both directions of a bidirectional GRU layer in one recurrence with a hand-written backward, for the CPU.

On a CPU with a few cores, torch's GRU spends much of its time on the number of kernel calls per time step:
per step and direction one small matmul and about 8 elementwise ops forward, as many again backward. Here a
step of both directions is 1 batched matmul and 5 elementwise ops forward, 1 batched matmul and 2
elementwise ops backward. What does not depend on the previous step (input projections, local derivatives
of the gates, weight and input gradients) is done a block of steps at a time, in matmuls over all the
block's rows and in elementwise ops over the whole block, into small buffers that stay in cache and are
reused: large fresh buffers are slow to touch for the first time (page faults) and to stream.

The equations are PyTorch's (`torch.nn.GRU`, gate order r, z, n in the weights), h_0 = 0:
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h = lerp(n, h, z)

Internally the recurrent weights are in gate order (n, r, z). The recurrent matmul also adds the biases
b_hh and b_ir, b_iz: the hidden states carry an extra constant-1 column and the weights an extra row. The
gradients of one step are laid out [d(W_hn h + b_hn) | d a_r | d a_z | d a_n] (a_* the pre-activations), so
that those of the recurrent matmul (n, r, z) and of the input projection (r, z, n) are contiguous ranges.
"""

from __future__ import annotations

import torch

BLOCK_ROWS = 512  # steps x batch rows per block: big enough for efficient matmuls, small enough for the cache


def _to_internal(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """Gate blocks (r, z, n) along dim 1 -> (n, r, z)."""
    return torch.cat([w[:, 2 * hidden:], w[:, :2 * hidden]], dim=1)


def _from_internal(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """Gate blocks (n, r, z) along dim 1 -> (r, z, n)."""
    return torch.cat([w[:, hidden:], w[:, :hidden]], dim=1)


def _blocks(steps: int, batch: int) -> tuple[int, list[tuple[int, int]]]:
    """The block size in steps, and the (start, stop) steps of each block."""
    size = min(max(1, BLOCK_ROWS // max(1, batch)), steps)
    return size, [(start, min(start + size, steps)) for start in range(0, steps, max(1, size))]


def _scan(x, w_ih, w_hh, b_ih, b_hh, h0=None):
    """The forward recurrence. Returns, time-major, each step's [W_hn h + b_hn | r | z] (T, 2, B, 3H) and
    n (T, 2, B, H), and the hidden states (2, T + 1, B, H + 1), h_0 (0, or `h0` (2, B, H)) first, with a
    constant-1 column."""
    ndir, steps, batch, dim = x.shape
    hidden = w_hh.shape[-1]
    w_in, b_in = w_ih.transpose(1, 2), b_ih[:, None, 2 * hidden:]
    # (2, H + 1, 3H), gate order (n, r, z): [h, 1] @ w_rec = W_hh h + b_hh + (0, b_ir, b_iz)
    bias = _to_internal(b_hh, hidden) + torch.cat([torch.zeros_like(b_ih[:, :hidden]), b_ih[:, :2 * hidden]], 1)
    w_rec = torch.cat([_to_internal(w_hh, hidden).transpose(1, 2), bias[:, None]], dim=1)

    gates = x.new_empty(steps, ndir, batch, 3 * hidden)
    cand = x.new_empty(steps, ndir, batch, hidden)
    hs = x.new_empty(ndir, steps + 1, batch, hidden + 1)
    hs[:, 0] = 0
    if h0 is not None:
        hs[:, 0, :, :hidden] = h0
    hs[..., hidden] = 1
    # per-step views made up front: indexing in the loop would cost about as much as a kernel call
    g = gates.unbind(0)
    ghn, rz = gates[..., :hidden].unbind(0), gates[..., hidden:].unbind(0)
    r, z = gates[..., hidden:2 * hidden].unbind(0), gates[..., 2 * hidden:].unbind(0)
    n = cand.unbind(0)  # contiguous: tanh is several times slower on row-strided views
    h_aug, h = hs.unbind(1), hs[..., :hidden].unbind(1)

    size, blocks = _blocks(steps, batch)
    proj = x.new_empty(ndir, size * batch, 3 * hidden)
    for start, stop in blocks:
        # the block's input projections (W_ir x | W_iz x | W_in x + b_in)
        p = proj[:, :(stop - start) * batch]
        torch.bmm(x[:, start:stop].reshape(ndir, -1, dim), w_in, out=p)
        p = p.view(ndir, stop - start, batch, 3 * hidden)
        p[..., 2 * hidden:].add_(b_in[:, None])
        p_rz, p_n = p[..., :2 * hidden].unbind(1), p[..., 2 * hidden:].unbind(1)
        for i, t in enumerate(range(start, stop)):
            torch.bmm(h_aug[t], w_rec, out=g[t])
            rz[t].add_(p_rz[i]).sigmoid_()
            torch.addcmul(p_n[i], r[t], ghn[t], out=n[t]).tanh_()
            torch.lerp(n[t], h[t], z[t], out=h[t + 1])
    return gates, cand, hs


def _coefficients(out, gates, n, h_next):
    """Writes the derivatives of h' with respect to [W_hn h + b_hn | a_r | a_z | a_n] into out (.., 4H),
    from a block of steps' saved tensors: the gradients of those, per unit dh' (they are linear in dh')."""
    hidden = n.shape[-1]
    ghn, r, z = gates.split(hidden, dim=-1)
    c_hn, c_r, c_z, c_n = out.split(hidden, dim=-1)
    torch.sub(h_next, n, out=c_z)                                       # h' - n = z (h - n)
    torch.addcmul(n.new_ones(()), n, n, value=-1, out=c_n)              # 1 - n^2
    out[..., 2 * hidden:].unflatten(-1, (2, hidden)).mul_((1 - z).unsqueeze(-2))  # both times (1 - z)
    torch.mul(c_n, r, out=c_hn)                                         # c_hn = c_n r
    torch.mul(c_hn, torch.addcmul(ghn, ghn, r, value=-1), out=c_r)      # c_r = c_n r (1 - r) ghn


class _BiGRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        gates, cand, hs = _scan(x, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, w_ih, w_hh, gates, cand, hs)
        return hs[:, 1:, :, :w_hh.shape[-1]]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w_ih, w_hh, gates, cand, hs = ctx.saved_tensors
        ndir, steps, batch, dim = x.shape
        hidden = w_hh.shape[-1]
        need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh = ctx.needs_input_grad
        w_rec = _to_internal(w_hh, hidden)  # (2, 3H, H), gate order (n, r, z)
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_w_ih = x.new_zeros(ndir, 3 * hidden, dim)
        grad_w_rec = x.new_zeros(ndir, 3 * hidden, hidden + 1)  # [dW_hh | db_hh], gate order (n, r, z)
        grad_b_in = x.new_zeros(ndir, hidden)

        size, blocks = _blocks(steps, batch)
        coef = x.new_empty(ndir, size, batch, 4 * hidden)
        z = gates[..., 2 * hidden:].unbind(0)
        g = grad_out.unbind(1)
        dh = g[-1] if steps else None
        for start, stop in reversed(blocks):
            # the block's local derivatives; scaled by each step's dh' in place, they become its gradients
            c = coef[:, :stop - start]
            _coefficients(c.transpose(0, 1), gates[start:stop], cand[start:stop],
                          hs[:, start + 1:stop + 1, :, :hidden].transpose(0, 1))
            c_steps, c_rec = c.unflatten(-1, (4, hidden)).unbind(1), c[..., :3 * hidden].unbind(1)
            for i in range(stop - start - 1, -1, -1):
                c_steps[i].mul_(dh.unsqueeze(2))
                if start + i:  # dh' back through z and through the recurrent matmul
                    dh = torch.addcmul(g[start + i - 1], dh, z[start + i])
                    dh.baddbmm_(c_rec[i], w_rec)

            # the block's share of the weight and input gradients
            rows = (stop - start) * batch
            g_rec = c[..., :3 * hidden].reshape(ndir, rows, 3 * hidden)  # (n, r, z)
            g_in = c[..., hidden:].reshape(ndir, rows, 3 * hidden)       # (r, z, n)
            x_block = x[:, start:stop].reshape(ndir, rows, dim)
            if need_x:
                torch.bmm(g_in, w_ih, out=grad_x[:, start:stop].view(ndir, rows, dim))
            if need_w_ih:
                grad_w_ih.baddbmm_(g_in.transpose(1, 2), x_block)
            if need_w_hh or need_b_hh or need_b_ih:
                # the constant-1 column of the hidden states yields the bias gradients in the same matmul
                grad_w_rec.baddbmm_(g_rec.transpose(1, 2), hs[:, start:stop].reshape(ndir, rows, hidden + 1))
            if need_b_ih:
                grad_b_in += c[..., 3 * hidden:].sum((1, 2))

        grad_b_hh = _from_internal(grad_w_rec[..., hidden], hidden)
        grad_b_ih = torch.cat([grad_b_hh[:, :2 * hidden], grad_b_in], dim=1)  # b_ir, b_hr: same gradient
        return (grad_x, grad_w_ih if need_w_ih else None,
                _from_internal(grad_w_rec[..., :hidden], hidden) if need_w_hh else None,
                grad_b_ih if need_b_ih else None, grad_b_hh if need_b_hh else None)


def bigru_scan(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
               b_hh: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Runs independent GRUs, one per leading index (2: the two directions of a layer; 1: a unidirectional
    layer), from h_0 = 0, or from `h0` (N, B, H) when given (inference only: no gradient flows into h0).

    x: (N, T, B, D) time-major inputs; w_ih (N, 3H, D), w_hh (N, 3H, H), b_ih and b_hh (N, 3H): each GRU's
    `weight_ih_l0` etc. Returns the hidden states (N, T, B, H). Computes in the inputs' dtype (fp32 or
    fp64), with autocast off, as torch's CPU GRU does. Raises ValueError for an `h0` that needs a gradient.
    """
    with torch.autocast(x.device.type, enabled=False):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_ih, w_hh, b_ih, b_hh)):
            if h0 is not None:
                raise ValueError("bigru_scan: an initial state h0 is for inference only (no gradient flows to it)")
            return _BiGRUScan.apply(x, w_ih, w_hh, b_ih, b_hh)
        return _scan(x, w_ih, w_hh, b_ih, b_hh, h0)[-1][:, 1:, :, :w_hh.shape[-1]]
