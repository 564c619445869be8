"""Policy check, forward pass and detector update, off the event loop and under a deadline.

Each accepted request runs one job on a small ``ThreadPoolExecutor``: ``InputPolicy.check`` (which may
run its own forward for the activation-energy limit), the model's forward, and the extraction detector's
update. The event loop waits for it with ``asyncio.wait_for(..., inference.timeout_s)``; queue time
counts. Past the deadline the client gets 504 at once and the job is told to stop at its next step
(a running forward cannot be interrupted, but every step is bounded: one fixed-shape image).
``inference.max_pending`` bounds the jobs queued or running (counted until they really finish, not
until their deadline); beyond it new requests get 503 without queueing.
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from secure_ml.models.registry import device_and_dtype
from secure_ml.serving.errors import ServiceError
from secure_ml.serving.extraction_detector import ExtractionDetector, Verdict


@dataclass
class Outcome:
    allowed: bool
    reason: str = "ok"  # "ok" or the failed check's name; never the policy's statistic or limit
    probabilities: Optional[torch.Tensor] = None
    label: Optional[int] = None
    verdict: Optional[Verdict] = None


class InferenceEngine:
    def __init__(
        self,
        model: nn.Module,
        policy=None,
        detector: Optional[ExtractionDetector] = None,
        workers: int = 1,
        timeout_s: float = 2.0,
        max_pending: int = 64,
        torch_threads: Optional[int] = None,
    ):
        self.model = model
        self.policy = policy
        self.detector = detector
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.device, self.dtype = device_and_dtype(model)
        init = (lambda: torch.set_num_threads(torch_threads)) if torch_threads else None
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="secure-ml-infer", initializer=init)
        self._pending = 0
        self._lock = threading.Lock()

    def _work(self, x: torch.Tensor, client: Optional[str], cancelled: threading.Event) -> Outcome:
        if self.policy is not None:
            decision = self.policy.check(x, self.model)
            if not decision.allowed:
                return Outcome(False, decision.reason)  # decision.detail may hold a statistic: it stays here
        if cancelled.is_set():
            return Outcome(False, "timeout")
        with torch.no_grad():
            logits = self.model(x.unsqueeze(0).to(device=self.device, dtype=self.dtype))
            probs = torch.softmax(logits.double(), dim=1)[0].cpu()
        if not torch.isfinite(probs).all():
            return Outcome(False, "non_finite")
        label = int(probs.argmax())
        verdict = None
        if self.detector is not None and client is not None and not cancelled.is_set():
            verdict = self.detector.observe(client, x.numpy(), label, float(probs[label]))
        return Outcome(True, probabilities=probs, label=label, verdict=verdict)

    def _done(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, x: torch.Tensor, client: Optional[str]) -> Outcome:
        with self._lock:
            if self._pending >= self.max_pending:
                raise ServiceError(
                    503,
                    "overloaded",
                    "overloaded",
                    "too many requests are being computed; retry later",
                    headers={"Retry-After": "1"},
                )
            self._pending += 1
        cancelled = threading.Event()
        try:
            future = self.executor.submit(self._work, x, client, cancelled)
        except RuntimeError:  # executor shut down
            with self._lock:
                self._pending -= 1
            raise ServiceError(503, "unavailable", "shutting_down", "the service is shutting down") from None
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            cancelled.set()
            raise ServiceError(504, "timeout", "timeout", f"the prediction did not finish within {self.timeout_s:g} s") from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
