"""Row-by-row results of the validation/test loop's own forward, for a scorecard callback that needs them.

Each epoch the loop runs the net over every held-out digit once; the sponge check's calibration needs
each validation digit's activation statistics, and the membership attack the non-members' logits.
Recording them from that forward (hooks on the net for the epoch) spares a second pass over the same
digits. A record is used only when it is complete and aligned: the net ran once per batch, each batch's
inputs are the split's next rows (compared, not assumed) and the rows add up to the split. Otherwise
(DDP shards, ``limit_val_batches``, a shuffled loader, a step that calls the net twice) it is dropped and
the callback runs its own forward, so a record can make a callback cheaper, never different.
"""

from typing import List

import torch
from torch import nn

from secure_ml.defenses.energy import ActivationRecorder, LayerCall


class EvalRecord:
    """Hooks on ``net`` for one loop: :meth:`batch` after each step, :meth:`finish` at the end.

    Args:
        net: the net the loop calls.
        rows: the split's inputs, in the order a sequential loader yields them.
        activations: also record the summarised weight-layer calls (:class:`ActivationRecorder`).
    """

    def __init__(self, net: nn.Module, rows: torch.Tensor, activations: bool = False):
        self.rows, self.seen, self.aligned = rows, 0, True
        self.logits: List[torch.Tensor] = []
        self.calls: List[List[LayerCall]] = []
        self._outputs: List[torch.Tensor] = []
        self._handle = net.register_forward_hook(lambda module, args, out: self._outputs.append(out.detach()))
        self._recorder = ActivationRecorder(net, summarise=True).__enter__() if activations else None

    def batch(self, batch) -> None:
        """Take the step's forward; mark the record unusable unless it was one call on the split's next rows."""
        if self._handle is None:  # closed: the split was complete before this batch
            self.aligned = False
            return
        outputs, self._outputs = self._outputs, []
        calls = list(self._recorder.calls) if self._recorder is not None else []
        if self._recorder is not None:
            self._recorder.calls.clear()
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        end = self.seen + len(x)
        if not self.aligned or len(outputs) != 1 or end > len(self.rows) or not torch.equal(x.detach().cpu(), self.rows[self.seen : end]):
            self.aligned = False
        else:
            self.logits.append(outputs[0].cpu())
            if self._recorder is not None:
                self.calls.append(calls[1:])
            self.seen = end
        if not self.aligned or self.seen == len(self.rows):
            self.close()  # complete or unusable: no hooks on the attacks other callbacks run at epoch end

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        if self._handle is None:
            return
        self._handle.remove()
        self._handle = None
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)

    def finish(self) -> bool:
        """Remove the hooks; True when every row was recorded, in order."""
        self.close()
        return self.aligned and self.seen == len(self.rows) and len(self.rows) > 0
