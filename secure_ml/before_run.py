"""What the CLI refuses once its classes are built and before a run starts (nothing written yet), each in one line:
a run that would do nothing (:mod:`secure_ml.empty_runs`), a fit into another run's folder
(:func:`secure_ml.run_folder.check_new_run_folder`), and a test gate nothing in the test can measure
(:func:`secure_ml.callbacks.scorecard.check_gates_measurable`)."""

from secure_ml.callbacks.scorecard import check_gates_measurable
from secure_ml.empty_runs import check_runs_something
from secure_ml.run_folder import check_new_run_folder


def check_before_run(trainer, model, subcommand: str, test_after_fit: bool, ckpt_path) -> None:
    check_runs_something(trainer, subcommand, test_after_fit)
    if subcommand == "fit":
        check_new_run_folder(trainer, ckpt_path)
    if subcommand == "test" or test_after_fit:
        check_gates_measurable(trainer, model)
