"""A criss-cross attention whose forward is right but whose hand-written
backward forgets the softmax Jacobian's correction term for q.
Caught by `backward:q` (and gradcheck), never by `forward`."""

import torch

import attnbench


def _mask(H, W, device):
    y = torch.arange(H, device=device).repeat_interleave(W)
    x = torch.arange(W, device=device).repeat(H)
    return (y[:, None] == y[None, :]) | (x[:, None] == x[None, :])


class _CCA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        B, _, H, W = q.shape
        qf, kf, vf = (t.flatten(2) for t in (q, k, v))
        energy = (qf.transpose(1, 2) @ kf).masked_fill(~_mask(H, W, q.device), float("-inf"))
        attn = torch.softmax(energy, -1)  # [B, N, N]
        ctx.save_for_backward(qf, kf, vf, attn)
        ctx.shape = q.shape, v.shape
        return (vf @ attn.transpose(1, 2)).reshape(v.shape)

    @staticmethod
    def backward(ctx, gout):
        qf, kf, vf, attn = ctx.saved_tensors
        qshape, vshape = ctx.shape
        g = gout.flatten(2)  # [B, C, N]
        dattn = g.transpose(1, 2) @ vf  # [B, N, N]
        dv = g @ attn
        denergy = attn * (dattn - (attn * dattn).sum(-1, keepdim=True))
        dq = kf @ (attn * dattn).transpose(1, 2)  # bug: ignores the row-sum correction
        dk = qf @ denergy
        return dq.reshape(qshape), dk.reshape(qshape), dv.reshape(vshape)


@attnbench.register("ccnet", kind="user", name="bad_gradient")
def cca_bad_gradient(q, k, v):
    return _CCA.apply(q, k, v)
