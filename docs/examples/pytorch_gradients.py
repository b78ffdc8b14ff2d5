"""A PyTorch user's saved per-example gradients, scored: every estimator against the exact Σ.

``grads.pt`` holds ``{name: (N, *param.shape)}`` tensors (e.g. from ``torch.func.vmap``
of ``torch.func.grad``, or BackPACK's ``grad_batch`` via ``interop.from_backpack``).
PyTorch's ``(out, in)`` weights are already rows = output side. Run:
``python docs/examples/pytorch_gradients.py [grads.pt]`` (without an argument a small file
is made first).
"""

import sys
import tempfile

import torch

from precond_lab import interop
from precond_lab.evaluate import ESTIMATORS, evaluate

if len(sys.argv) > 1:
    path = sys.argv[1]
else:  # make a small file of per-example gradients of a linear layer
    net = torch.nn.Linear(12, 5).double()
    xs, ys = torch.randn(64, 12, dtype=torch.float64), torch.randint(0, 5, (64,))

    def loss(p, xi, yi):
        logits = torch.func.functional_call(net, p, (xi[None],))
        return torch.nn.functional.cross_entropy(logits, yi[None])

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        dict(net.named_parameters()), xs, ys
    )
    path = f"{tempfile.mkdtemp()}/grads.pt"
    torch.save({k: v.detach() for k, v in grads.items()}, path)

# --- library calls (2) ----------------------------------------------------------------
g = interop.from_torch(path, key="weight")  # (N, out, in)
ds = evaluate(
    {"gradients": g},
    [n + s.example_args for n, s in ESTIMATORS.items() if not s.needs_kfac_inputs],
    damping=1e-3,
    progress=False,
)
# ----------------------------------------------------------------------------------------
print(ds["score"].sel(metric="cosine").squeeze().to_pandas().T.round(4))
