"""A plain PyTorch (eager) reference of siamax's networks, for ``throughput.py --compare torch``.

Same layer shapes as a ``siamax.ModelSpec`` (convolutions, ReLU, 2x2 max-pooling, sigmoid fc
embedding, weighted-L1 head), the paper's optimiser (per-layer SGD with momentum: one parameter
group per layer) and loss (binary cross-entropy with logits). Nothing here is tuned beyond what a
straightforward PyTorch user would write: NCHW tensors, ``nn.Conv2d``, ``torch.optim.SGD``,
``torch.no_grad`` for scoring. torch is not a dependency of siamax: this module is only imported
by the benchmark when the comparison is asked for.
"""

from __future__ import annotations

import torch
from torch import nn


class Tower(nn.Module):
    def __init__(self, spec):
        super().__init__()
        convs, cin = [], 1
        for f, k in zip(spec.filters, spec.kernels):
            convs.append(nn.Conv2d(cin, f, k, padding="same" if spec.padding == "SAME" else 0))
            cin = f
        self.convs = nn.ModuleList(convs)
        self.pools = tuple(spec.pools)
        h, w, c = spec.feature_shape
        # fc_units=0: no fc layer, the flattened last block is the embedding (as in siamax).
        self.fc = nn.Linear(h * w * c, spec.fc_units) if spec.fc_units else None
        self.fc_activation = spec.fc_activation

    def forward(self, x):
        for conv, pool in zip(self.convs, self.pools):
            x = torch.relu(conv(x))
            if pool:
                x = nn.functional.max_pool2d(x, 2)
        x = x.flatten(1)
        if self.fc is None:
            return x
        x = self.fc(x)
        if self.fc_activation == "sigmoid":
            return torch.sigmoid(x)
        if self.fc_activation == "relu":
            return torch.relu(x)
        return x


class SiameseTorch(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.tower = Tower(spec)
        self.head = nn.Linear(spec.embedding_dim, 1)

    def logits(self, x1, x2):
        """Both images of every pair through the one tower (one batched call), weighted L1 head."""
        e = self.tower(torch.cat([x1, x2]))
        e1, e2 = e.chunk(2)
        return self.head((e1 - e2).abs())[:, 0]

    def head_logits(self, e1, e2):
        return self.head((e1 - e2).abs())[..., 0]


def per_layer_sgd(model: SiameseTorch, lr: float = 0.01, momentum: float = 0.5):
    """torch.optim.SGD with one parameter group per layer (the paper's per-layer eta_j, mu_j)."""
    groups = [
        {"params": list(m.parameters()), "lr": lr, "momentum": momentum}
        for m in [*model.tower.convs, model.tower.fc, model.head]
        if m is not None
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


class TorchBench:
    """The three measured operations for one ModelSpec and batch size, float32 or bfloat16 (autocast),
    on the CPU or a CUDA GPU (there with cuDNN's autotuner on, as a speed-minded user would have it).
    Every operation waits for its result, so wall-clock timing around it is honest on a GPU too."""

    def __init__(
        self,
        spec,
        batch_size: int,
        dtype: str = "float32",
        threads: int | None = None,
        seed: int = 0,
        device: str = "cpu",
    ):
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        torch.backends.cudnn.benchmark = True
        self.device = device
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = SiameseTorch(spec).to(device)
        self.opt = per_layer_sgd(self.model)
        self.loss = nn.BCEWithLogitsLoss()
        s = spec.input_size
        g = torch.Generator().manual_seed(seed)
        self.x1 = (torch.rand(batch_size, 1, s, s, generator=g) > 0.8).float()
        self.x2 = (torch.rand(batch_size, 1, s, s, generator=g) > 0.8).float()
        self.y = (torch.rand(batch_size, generator=g) > 0.5).float()
        self.support = (torch.rand(20, 1, s, s, generator=g) > 0.8).float()
        self.queries = (torch.rand(20, 1, s, s, generator=g) > 0.8).float()
        for name in ("x1", "x2", "y", "support", "queries"):
            setattr(self, name, getattr(self, name).to(device))

    def _autocast(self):
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    def _sync(self, out):
        if self.device != "cpu":
            torch.cuda.synchronize()
        return out

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model.logits(self.x1, self.x2)
        loss = self.loss(logits.float(), self.y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def score(self):
        with self._autocast():
            return self._sync(torch.sigmoid(self.model.logits(self.x1, self.x2).float()))

    @torch.no_grad()
    def oneshot_run(self):
        """One 20-way run with embedding reuse: 20 queries x 20 shared support images -> 20 predictions."""
        with self._autocast():
            e = self.model.tower(torch.cat([self.queries, self.support]))
            q, s = e[:20], e[20:]
            logits = self.model.head_logits(q[:, None, :], s[None, :, :]).float()  # (20, 20)
        return self._sync(logits.argmax(1))
