"""The scorecard: per-epoch dashboard in TensorBoard, hparams with final metrics, and the test report with gates."""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from secure_ml.callbacks._common import run_folder
from secure_ml.errors import ConfigError, SecureMLError
from secure_ml.release.artifact import weights_sha256
from secure_ml.report.dashboard import dashboard_figure
from secure_ml.report.gates import as_floats, check_gates, parse_gates
from secure_ml.report.table import scorecard_table

SCORE_PREFIXES = ("train/", "val/", "test/", "adv/", "mia/", "privacy/", "sponge/", "poison/")
# metric-name prefix → the CLI key of the callback that measures it, most specific first; DP_METRICS need a DP model
OWNERS = (("mia/rmia", "reference_mia"), ("privacy/audit_", "audit"), ("privacy/epsilon_lower_bound", "membership"))
OWNERS += (("mia/dp_tpr_bound", "membership"), ("mia/", "membership"), ("adv/", "robustness"), ("sponge/", "sponge"))
DP_METRICS = ("privacy/epsilon", "privacy/noise_multiplier", "mia/dp_tpr_bound@0.1%fpr")


class GateFailure(SecureMLError):
    """A security gate of the scorecard failed; the message lists which."""


def _scores(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: v for k, v in as_floats(metrics).items() if k.startswith(SCORE_PREFIXES)}


class Scorecard(Callback):
    """Collects the security metrics each epoch and reports them.

    During ``fit``: the dashboard figure goes to TensorBoard (``scorecard/dashboard``) at the end
    of fit (and every ``figure_every_n_epochs`` epochs if set: each figure costs about as much as
    the sponge check, mostly matplotlib text layout, while the same curves are TensorBoard
    scalars already), and the final metrics are attached to the run's hparams. The per-epoch history
    is stored in checkpoints, so ``secure-ml test --ckpt_path`` can draw the curves. During
    ``test``: prints the scorecard table, writes ``metrics.json`` and ``dashboard.png`` into
    the run's log folder, and raises (non-zero exit) when a gate fails.

    Args:
        gates: thresholds checked by ``test``, e.g. ``{"mia/auc": "<= 0.55", "adv/fgsm_acc@0.1": ">= 0.8"}``.
        log_figure: log the dashboard image to TensorBoard.
        figure_every_n_epochs: also log it every n-th epoch during fit; 0 (default): only at the end of fit.
    """

    def __init__(self, gates: Optional[Dict[str, str]] = None, log_figure: bool = True, figure_every_n_epochs: int = 0):
        if figure_every_n_epochs < 0:
            raise ConfigError(f"--scorecard.figure_every_n_epochs must be >= 0; got {figure_every_n_epochs}")
        self.gates = parse_gates(gates or {})
        self.log_figure = log_figure
        self.figure_every_n_epochs = figure_every_n_epochs
        self._figure_epoch: Optional[int] = None
        self.history: List[Dict[str, float]] = []
        self._epoch_pending: Optional[int] = None

    # Epoch metrics are complete only after the LightningModule's on_train_epoch_end (it logs ε),
    # which runs after callbacks' on_train_epoch_end: snapshot at the next epoch start / fit end.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._snapshot(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._snapshot(trainer)
        final = self.history[-1] if self.history else {}
        if final and self._figure_epoch != final["epoch"]:
            self._log_figure(trainer, step=trainer.global_step)
            self._figure_epoch = final["epoch"]
        if final:
            self._log_hparams(trainer, dict(pl_module.hparams), {k: v for k, v in final.items() if k != "epoch"})

    @rank_zero_only
    def _log_hparams(self, trainer, params: Dict[str, Any], metrics: Dict[str, float]) -> None:
        """The HPARAMS tab: hyper-parameters with the final metrics (their scalars are already logged, so
        unlike ``TensorBoardLogger.log_hyperparams(params, metrics)`` no duplicate point is written at step 0)."""
        if not isinstance(trainer.logger, TensorBoardLogger):
            return
        from lightning.fabric.utilities.logger import _flatten_dict, _sanitize_params
        from torch.utils.tensorboard.summary import hparams

        flat = _sanitize_params(_flatten_dict(params))
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}
        writer = trainer.logger.experiment._get_file_writer()
        for summary in hparams(flat, metrics):
            writer.add_summary(summary)

    def _snapshot(self, trainer) -> None:
        if self._epoch_pending is None or trainer.sanity_checking:
            return
        row = {"epoch": self._epoch_pending, **_scores(trainer.callback_metrics)}
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        self._epoch_pending = None
        if self.figure_every_n_epochs and row["epoch"] % self.figure_every_n_epochs == 0:
            self._log_figure(trainer, step=trainer.global_step)
            self._figure_epoch = row["epoch"]

    @rank_zero_only
    def _log_figure(self, trainer, step: int) -> None:
        if self.log_figure and isinstance(trainer.logger, TensorBoardLogger):
            import matplotlib.pyplot as plt

            fig = dashboard_figure(self.history)
            trainer.logger.experiment.add_figure("scorecard/dashboard", fig, global_step=step)
            plt.close(fig)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        # With ModelCheckpoint(save_on_train_epoch_end=True) this runs after the module's
        # on_train_epoch_end: the epoch's row is complete, so the checkpoint carries it.
        self._snapshot(trainer)
        checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":  # a validate-only run has no training epochs to wait for
            self._epoch_pending = trainer.current_epoch
            self._snapshot(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        final = _scores(trainer.callback_metrics)
        out = run_folder(trainer)  # every rank: a broadcast under DDP
        if trainer.is_global_zero:
            self._write_report(out, final, weights_sha256(pl_module.net))
        failures = check_gates(self.gates, final)
        if failures:
            raise GateFailure("security gate failed: " + "; ".join(failures))

    def _write_report(self, out: Path, final: Dict[str, float], weights: str) -> None:
        """metrics.json (with ``weights_sha256``: the tested weights, which ``secure-ml preflight`` ties to the artefact) and the dashboard."""
        import matplotlib.pyplot as plt

        out.mkdir(parents=True, exist_ok=True)
        gates = [{"gate": str(g), "passed": g.metric in final and g.passes(final[g.metric])} for g in self.gates]
        report = {"test": final, "history": self.history, "gates": gates, "weights_sha256": weights}
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
        fig = dashboard_figure(self.history, final)
        fig.savefig(out / "dashboard.png", dpi=120)
        plt.close(fig)
        print("\n" + scorecard_table(final))
        print(f"secure-ml: wrote {out / 'metrics.json'} and {out / 'dashboard.png'}")

    def state_dict(self) -> Dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def check_gates_measurable(trainer, pl_module) -> None:
    """Before a test (the CLI's ``test``, and ``fit --test_after_fit`` before it fits): refuse a gate of the Scorecard
    that no enabled callback, or no DP, can measure; it failed only after the whole (possibly hour-long) test, as
    "'mia/auc' was not measured". Sweeps do not call it: there a point's unmeasurable gate is a failed gate of that row."""
    from secure_ml import callbacks as c

    classes = {"reference_mia": c.ReferenceMIACallback, "audit": c.OneRunAuditCallback, "membership": c.MembershipInferenceCallback}
    classes.update(robustness=c.RobustnessCallback, sponge=c.SpongeCallback)
    on = [cb for cb in trainer.callbacks if getattr(cb, "enabled", True)]
    keys = {key for key, cls in classes.items() if any(isinstance(cb, cls) for cb in on)}
    for gate in (g for cb in trainer.callbacks if isinstance(cb, Scorecard) for g in cb.gates):
        owner = next((key for prefix, key in OWNERS if gate.metric.startswith(prefix)), None)
        if owner is not None and owner not in keys:
            raise ConfigError(
                f"--scorecard.gates: '{gate.metric}' is measured by the --{owner}.* callback, which is off in this test; "
                f"switch it on (--{owner}.enabled true) or drop the gate"
            )
        dp = getattr(pl_module, "dp", None)
        if gate.metric in DP_METRICS and not getattr(dp, "enabled", False):
            raise ConfigError(f"--scorecard.gates: '{gate.metric}' exists only for a DP model, and this checkpoint trained without DP")
