"""``--ckpt_path`` against the ``--model.*`` flags typed on the command line.

LightningCLI re-parses a checkpoint's saved hyper-parameters (net, adversarial, DP) *over* the parsed
configuration, so the checkpoint's model is rebuilt whatever the configuration files say (a run's own
``config.yaml`` or another base can test any checkpoint). A flag typed on the command line was dropped
the same way, without a word: ``test --model.dp.delta 1e-7`` reported ε at the checkpoint's δ = 1e-5,
``fit --ckpt_path … --model.dp.noise_multiplier 3`` resumed at σ = 1, ``--model.dp.enabled false``
trained with DP. Now, after Lightning's parse, each typed ``--model.*`` value is compared with what
the checkpoint put there:

* ``--model.dp.delta`` wins: δ only chooses where the weights' own accountant history is read
  (``privacy/epsilon`` at the δ asked for);
* any other difference is one ConfigError naming the flag, the two values and the way out.
"""

from typing import Any, List, Optional, Sequence

from secure_ml.errors import ConfigError

COMMAND_LINE_WINS = ("model.dp.delta",)


def typed_model_flags(argv: Sequence[str]) -> List[str]:
    """The dotted keys of the ``--model.…`` options on the command line (``--model.dp.delta 1e-7``, ``--model.dp.delta=1e-7``)."""
    keys = []
    for arg in argv:
        if arg.startswith("--model.") or arg == "--model":
            key = arg[2:].split("=", 1)[0]
            if key not in keys:
                keys.append(key)
    return keys


def _plain(value: Any) -> Any:
    """A comparable form of a namespace value (jsonargparse Namespaces and dataclass-like objects become dicts)."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def _get(config: Any, key: str) -> Optional[Any]:
    try:
        return _plain(config.get(key))
    except (KeyError, AttributeError, TypeError):
        return None


def reconcile(before: Any, after: Any, keys: Sequence[str]) -> None:
    """Put the command line's value back where it wins (:data:`COMMAND_LINE_WINS`) into ``after``; raise where it differs."""
    for key in keys:
        typed, restored = _get(before, key), _get(after, key)
        if typed == restored:
            continue
        if key in COMMAND_LINE_WINS:
            after[key] = before[key]
            continue
        raise ConfigError(
            f"--{key} {typed} differs from the checkpoint's {restored}: --ckpt_path rebuilds the model from the checkpoint's "
            f"hyper-parameters, so the flag would be ignored; drop it (or start a new run without --ckpt_path)"
        )
