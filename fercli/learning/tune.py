"""`fer tune`: Bayesian hyperparameter search scored by cross-validation (thesis 3.2.3).

The thesis treats tuning as the search for the hyperparameter set with the best mean
validation accuracy over the folds; here every KerasTuner trial trains the model on each
fold (fixed epochs, as cv-train) and reports the mean of the folds' best validation
accuracies. The search space comes from the config (`tune.space`):

    tune:
      space:
        units: [64, 128, 256]            # a list: one of these values
        dropout: {min: 0.1, max: 0.8}    # a range: float (or int when both are ints)
        learning_rate: [1.0e-4, 1.0e-3]  # train-level keys: learning_rate, batch_size

Trials are stored in ``work/tune/<model>-<hash>/``, one folder per search (KerasTuner
reloads finished trials, so a killed search resumes); the results table and the best
configuration as a config snippet (`best.yaml`, ready for `--config` or to paste into
fer.yaml) are written next to them.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from ..core import layout
from ..core.config import Config, params_hash
from ..core.errors import ConfigError
from ..core.workspace import atomic_write_text, file_sha256, write_csv

TRAIN_KEYS = ("learning_rate", "batch_size")


def declare(hp, name: str, spec):
    """One search dimension from its config form: a list or a {min, max[, step]} range."""
    if isinstance(spec, list) and spec:
        return hp.Choice(name, spec)
    if isinstance(spec, dict) and {"min", "max"} <= set(spec):
        low, high = spec["min"], spec["max"]
        if isinstance(low, int) and isinstance(high, int):
            return hp.Int(name, low, high, step=spec.get("step", 1))
        return hp.Float(name, float(low), float(high), step=spec.get("step"),
                        sampling=spec.get("sampling", "linear"))
    raise ConfigError(f"tune.space.{name}: expected a list of values or {{min: .., max: ..}}, "
                      f"got {spec!r}")


def run_tune(config: Config, console: Console) -> dict:
    import keras_tuner as kt

    from ..core.layout import load_splits
    from .experiment import TrainingData, train_params
    from .training import honest_cv, mean_curve, train_resumable

    params = train_params(config)
    space = config["tune"]["space"]
    if not space:
        raise ConfigError("tune.space is empty", hint="Give the hyperparameters to search, "
                          "e.g. --set 'tune.space={units: [64, 128], dropout: {min: 0.1, "
                          "max: 0.7}}'")
    extract = layout.features_h5(config.workdir)
    if params["model"] in ("pooled", "lstm", "bilstm", "cnn1d") and not extract.is_file():
        from ..core.errors import MissingUpstreamError

        raise MissingUpstreamError("feature store is missing", path=extract,
                                   hint="Run `fer extract` first")
    load_splits(config.workdir)
    data = TrainingData(config.workdir, params)
    epochs = config["tune"]["epochs"] or params["epochs"]
    # one folder per search: another space, model or data must not reload these trials
    search_id = params_hash([params, config["tune"]["space"], epochs,
                             file_sha256(extract) if extract.is_file() else None])[:8]
    out_dir = layout.tune_dir(config.workdir) / f"{params['model']}-{search_id}"

    errors: list[Exception] = []

    class CrossValidationTuner(kt.BayesianOptimization):
        def run_trial(self, trial, *args, **kwargs):
            try:
                return self._cross_validate(trial)
            except ConfigError as exc:  # the same for every trial: stop the search
                errors.append(exc)
                self.oracle.max_trials = 0
                raise

        def _cross_validate(self, trial):
            hp = trial.hyperparameters
            values = {name: declare(hp, name, spec) for name, spec in space.items()}
            trial_params = {**params, **{k: values[k] for k in TRAIN_KEYS if k in values},
                            "model_params": {**params["model_params"],
                                             **{k: v for k, v in values.items()
                                                if k not in TRAIN_KEYS}}}
            from .experiment import build_fn

            histories = []
            for fold in range(data.n_folds):
                train_rows, val_rows = data.fold_rows(fold)
                run_dir = out_dir / "trials" / trial.trial_id / f"fold-{fold}"
                batch = trial_params["batch_size"]
                result = train_resumable(
                    run_dir, build_fn(data, trial_params),
                    data.dataset(train_rows, batch_size=batch, shuffle=True,
                                 seed=params["seed"] + fold, training=True),
                    data.dataset(val_rows, batch_size=batch, shuffle=False, seed=0),
                    epochs=epochs, seed=params["seed"] + fold, tensorboard=False,
                    class_weight=data.class_weight(train_rows))
                histories.append(result.history)
            honest = honest_cv(mean_curve(histories))  # one epoch for all folds
            console.print(f"trial {trial.trial_id}: {values} -> CV accuracy "
                          f"{honest['cv_accuracy']:.3f} at epoch {honest['cv_epoch']}")
            return {"val_accuracy": honest["cv_accuracy"]}

    tuner = CrossValidationTuner(objective=kt.Objective("val_accuracy", "max"),
                                 max_trials=config["tune"]["trials"], seed=config["seed"],
                                 directory=str(out_dir), project_name="search",
                                 overwrite=False)
    tuner.search()
    if errors:
        raise errors[0]
    rows = []
    for trial in tuner.oracle.get_best_trials(num_trials=config["tune"]["trials"]):
        if trial.score is None:
            continue  # a failed trial
        rows.append({"trial": trial.trial_id, "mean_val_accuracy": trial.score,
                     **trial.hyperparameters.values})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(out_dir / "trials.csv", columns, rows)
    if not rows:
        raise ConfigError(f"every trial failed; see {out_dir / 'search'}",
                          hint="Check tune.space against the model's parameters")
    best = rows[0]
    snippet = {"train": {"model": params["model"], "model_params": {
        **params["model_params"], **{k: best[k] for k in space if k not in TRAIN_KEYS}},
        **{k: best[k] for k in TRAIN_KEYS if k in space}}}
    atomic_write_text(out_dir / "best.yaml",
                      f"# fer tune: best of {len(rows)} trials, mean CV val accuracy "
                      f"{best['mean_val_accuracy']:.4f}\n" + yaml.safe_dump(snippet))
    table = Table(title=f"fer tune: {params['model']}, {data.n_folds}-fold CV, "
                        f"{epochs} epochs per fold")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{row.get(c):.4g}" if isinstance(row.get(c), float)
                        else str(row.get(c)) for c in columns))
    console.print(table)
    return {"trials": rows, "best": snippet, "out_dir": Path(out_dir)}
